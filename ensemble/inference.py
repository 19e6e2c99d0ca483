"""``effens predict`` and ``effens evaluate`` over a trained run folder."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import SplitSource
from .data import DataChanges, DataError, change_split, check_labels, expand_inputs, load_split
from .estimator import BaggedEnsemble, decode_size, images_fingerprint  # noqa: F401 (decode_size: re-exported)
from .files import (
    atomic_write_json,
    atomic_write_npy,
    atomic_write_text,
    read_json,
    read_npy,
    refuse_foreign,
    refuse_irregular,
    sha256_json,
    write_owned,
)
from .reporting.assets import report_files
from .reporting.evaluation import decision_report, evaluate_split
from .reporting.markdown import build_metrics, comparison_rows, format_table
from .runfolder import RunFolder, load_run
from .serving.answers import (  # noqa: F401 (re-exported)
    DecisionOptions,
    InferenceOptions,
    flat_row,
    member_hashes,
    predict_rows,
    readable_member_proba,
)

log = logging.getLogger(__name__)


OUTPUT_SUFFIXES = (".csv", ".json")


def check_output_file(out: str | Path) -> Path:
    """``predict --out``: a .csv or .json file name (any case) whose folder exists or can be made."""
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; --out names the output file (.csv or .json)")
    refuse_irregular(out, "--out")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{out}: --out must end in .csv or .json; got {out.suffix or 'no suffix'!r}")
    if out.exists() and not _written_by_predict(out):
        raise DataError(
            f"{out}: exists and was not written by `effens predict`; choose another --out "
            f"(effens never overwrites files it did not write)"
        )
    folder = out.parent if str(out.parent) else Path(".")
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{out}: cannot write in {folder} (permission denied); choose another --out")
    return out


def _written_by_predict(path: Path) -> bool:
    """Whether ``path`` looks like an earlier ``effens predict`` output (CSV or JSON)."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(64)
    return not head or head.startswith((b"path,prediction", b"[]", b'[\n  {\n    "path": '))


def write_rows(rows: list[dict], out: str | Path, columns: Sequence[str]) -> None:
    """CSV, or JSON (a list of objects, ``proba`` and ``votes`` nested) when the name ends in ``.json``."""
    if Path(out).suffix.lower() == ".json":
        atomic_write_json(out, rows)
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v) for k, v in flat_row(r).items()}
        )
    atomic_write_text(out, buf.getvalue())


def run_predict(
    run_dir: str,
    inputs: Sequence[str],
    out: str,
    strategy: str | None = None,
    options: InferenceOptions = InferenceOptions(),
    decisions: dict | None = None,
) -> dict:
    """``effens predict``; ``decisions``: command-line values for :class:`DecisionOptions`."""
    from .runfolder import check_output_path

    check_output_path(out, [run_dir, *inputs], folder=False)  # the CLI's rule, for Python callers too
    check_output_file(out)
    ens = load_run(run_dir)
    choice = DecisionOptions.from_settings(RunFolder(run_dir).read_config().decision, **(decisions or {}))
    paths = expand_inputs(inputs)
    if not paths:
        raise DataError("no input images found")
    rows = predict_rows(ens, paths, strategy, options, decisions=choice)
    if all(r["error"] for r in rows):
        raise DataError(
            f"none of the {len(rows)} input image(s) could be predicted (first: {rows[0]['error']}); nothing written"
        )
    columns = [
        "path",
        "prediction",
        *choice.columns(),
        *(f"proba:{c}" for c in ens.classes_),
        *(f"vote:{fm.name}" for fm in ens.members_),
        "error",
    ]
    write_rows(rows, out, columns)
    n_bad = sum(1 for r in rows if r["error"])
    return {
        "n": len(rows),
        "n_errors": n_bad,
        "strategy": strategy or ens.combiner_.strategy,
        "inference": options.plan(ens),
        "n_review": sum(1 for r in rows if r.get("decision") == "review"),
    }


def run_evaluate(
    run_dir: str,
    data: str | dict,
    out: str,
    strategy: str = "all",
    options: InferenceOptions = InferenceOptions(),
    tracking: list[str] | None = None,
) -> dict:
    """Report every member and strategy on a labelled folder or CSV.

    Member probabilities are cached in ``out``; a later call on the same run, data and
    TTA setting reuses them, so switching strategy never re-runs a network. The run's
    ``tracking:`` (with ``tracking``'s ``tracking.*=...`` overrides on top) logs the result.
    """
    from .tracking import check_tracking, config_params, environment_tags, final_metrics
    from .tracking import tracking as open_tracking

    out_dir = Path(out)
    refuse_foreign(out_dir, "evaluate", "effens evaluate")  # before any work
    ens = load_run(run_dir)
    run_cfg = RunFolder(run_dir).read_config(tracking or None)
    check_tracking(run_cfg.tracking, [run_dir, data if isinstance(data, str) else data.get("csv")], [out_dir])
    asked = {f"evaluate.{k}": v for k, v in dataclasses.asdict(options).items() if v not in (None, False)}
    with open_tracking(
        run_cfg.tracking,
        "evaluate",
        out_dir.resolve().name,
        {**config_params(run_cfg), "evaluate.data": str(data), "evaluate.strategy": strategy, **asked},
        {**environment_tags("evaluate", run_cfg), "effens.run_dir": str(Path(run_dir).resolve())},
    ) as tracker:
        doc = _evaluate(ens, run_cfg, data, out_dir, strategy, options)
        tracker.scalars(final_metrics(doc))
        tracker.folder(out_dir, "evaluate")
    return doc


def _evaluate(
    ens: BaggedEnsemble, run_cfg, data: str | dict, out_dir: Path, strategy: str, options: InferenceOptions
) -> dict:
    strategies = ens.combiner_.available() if strategy == "all" else [ens.combiner_.get(strategy).name]
    source = SplitSource.from_value(data, "data") if isinstance(data, str) else SplitSource(**data)
    split = load_split(source)
    try:  # the run's lists, as it trained with them
        wanted = DataChanges.read(run_cfg.data.exclude, run_cfg.data.relabel, ens.classes_)
    except DataError as exc:
        raise DataError(f"the run's config names this list, which evaluate applies too: {exc}") from None
    n = len(split)
    split, changes = change_split(split, wanted)
    if not len(split):
        raise DataError(
            f"{data}: the run's `data.exclude` {run_cfg.data.exclude} leaves out all {n} of its images; "
            f"nothing to evaluate"
        )
    if changes["excluded"] or changes["relabelled"]:
        log.warning(
            "the run's lists change what is scored: %d of the %d images left out (`data.exclude` %s), %d "
            "relabelled (`data.relabel` %s)",
            changes["excluded"],
            n,
            run_cfg.data.exclude,
            changes["relabelled"],
            run_cfg.data.relabel,
        )
    check_labels(split, ens.classes_, "evaluation")
    comb = ens.combiner_
    pool = any(comb.pooled(s) for s in strategies)  # a pool strategy: the candidates run too
    # every member runs (the report scores each); of the pool candidates, only those a strategy weighs
    rows = np.zeros(len(comb.member_names) + len(comb.candidate_names), dtype=bool)
    rows[: len(comb.member_names)] = True
    for s in strategies:
        rows |= comb.uses(s)
    used = rows if pool else None
    key = {
        "data": images_fingerprint(split.paths, split.labels),
        "members": member_hashes(ens, pool),
        "tta": options.tta,
        "inference": options.plan(ens),
        "used": None if used is None else used.tolist(),
    }
    cache_json, cache_npy = out_dir / "member_proba.json", out_dir / "member_proba.npy"
    skipped: list = []
    if cache_json.is_file() and cache_npy.is_file() and read_json(cache_json).get("key") == sha256_json(key):
        meta = read_json(cache_json)
        member_proba = read_npy(cache_npy)
        keep, skipped = meta["kept"], meta["skipped"]
        log.info("reusing cached member probabilities in %s", cache_npy)
    else:
        member_proba, keep, bad = readable_member_proba(ens, split.paths, options, used, pool)
        skipped = [{"path": p, "reason": r} for p, r in bad]
        if not keep:
            raise DataError(f"{data}: none of its {len(split.paths)} images could be read (first: {bad[0][1]})")
        atomic_write_npy(cache_npy, member_proba)
        atomic_write_json(
            cache_json,
            {"key": sha256_json(key), "kept": keep, "skipped": skipped, "paths": [split.paths[i] for i in keep]},
        )
    split = split.subset(keep)
    y = split.encode(ens.classes_)
    names = [fm.name for fm in ens.members_]
    results = {"eval": evaluate_split(member_proba, y, comb, strategies)}
    doc = build_metrics(
        ens.classes_,
        names,
        results,
        None,
        comb,
        strategy=strategies[0] if len(strategies) == 1 else None,
        labels={"eval": y},
    )
    decide = strategies[0] if len(strategies) == 1 else comb.strategy
    doc["decisions"] = decision_report(ens, run_cfg.decision, {"eval": (results["eval"][decide]["_proba"], y)}, decide)
    doc["skipped_images"] = {"eval": skipped} if skipped else {}
    doc["data"] = str(data)
    doc["inference"] = options.plan(ens)
    md = (
        "Skipped unreadable images:\n\n" + "\n".join(f"- {d['path']} ({d['reason']})" for d in skipped)
        if skipped
        else ""
    )
    if changes["excluded"] or changes["relabelled"]:
        doc["data_changes"] = {"eval": changes}
        md = (
            f"Data changed by the run's `data.exclude` / `data.relabel`: {changes['excluded']} excluded, "
            f"{changes['relabelled']} relabelled.\n\n"
        ) + md
    files = report_files(doc, results, {"eval": (split.paths, y)}, out_dir, ens, run_cfg.report.saliency, extra_md=md)
    write_owned(out_dir, files, "evaluate", also=[cache_json.name, cache_npy.name])
    doc["_table"] = format_table(comparison_rows(results["eval"]))
    return doc
