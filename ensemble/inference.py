"""``effens predict`` and ``effens evaluate`` over a trained run folder."""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np


from .config import SplitSource
from .data import DataError, check_labels, expand_inputs, load_split
from .estimator import BaggedEnsemble, decode_size, images_fingerprint  # noqa: F401 (decode_size: re-exported)
from .evaluation import decision_report, evaluate_split
from .pages import report_files
from .files import (RunError, atomic_write_json, atomic_write_npy, atomic_write_text, read_json, read_npy,
                    refuse_foreign, sha256_json, write_owned)
from .images import decode_all
from .report import build_metrics, comparison_rows, format_table
from .runfolder import RunFolder, load_run, weights_hash

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How member probabilities are computed (defaults: the run's); ``predict`` and
    ``evaluate`` take one of these instead of five separate arguments."""

    batch_size: int | None = None     # images per inference step (default: each member's)
    device: str | None = None         # auto, cpu, cuda, cuda:N
    tta: bool | str = False           # True/"flip": with the mirror; "crop,letterbox,flip": over views
    runtime: str | None = None        # torch, openvino, onnxruntime, auto
    precision: str | None = None      # auto, fp32, bf16, fp16
    adapt_bn: bool = False            # re-estimate BatchNorm statistics on the images being predicted

    def member_proba(self, ens: BaggedEnsemble, images: Sequence[np.ndarray],
                     used: Sequence[bool] | None = None) -> np.ndarray:
        return ens.member_proba(images, **dataclasses.asdict(self), used=used)

    def plan(self, ens: BaggedEnsemble) -> dict:
        """The runtime and precision each member resolves to here (part of cache keys)."""
        plan = ens.inference_plan("torch" if self.adapt_bn else self.runtime, self.precision, self.device)
        return {"runtime": plan[0][0], "precision": [p.name for _, p in plan], "adapt_bn": self.adapt_bn}


@dataclasses.dataclass(frozen=True)
class DecisionOptions:
    """What ``predict`` adds to each row (defaults: the run's ``decision:`` settings)."""

    coverage: float | None = None          # a prediction set holding the truth this often
    by_class: bool = False                 # ... within every class
    review_rate: float | None = None       # send this share of the least confident images to review
    target_accuracy: float | None = None   # ... or as many as needed for this accuracy on the rest
    costs: list | None = None              # true x predicted; predictions minimise the expected cost
    calibration: str = "val"

    @classmethod
    def from_settings(cls, settings, coverage: float | None = None, by_class: bool | None = None,
                      review_rate: float | None = None, target_accuracy: float | None = None) -> "DecisionOptions":
        """The run's ``decision:`` settings with command-line values on top."""
        from .decisions import DecisionError

        if review_rate is not None and target_accuracy is not None:
            raise DecisionError("give one of --review-rate or --target-accuracy, not both")
        if review_rate is None and target_accuracy is None:
            review_rate, target_accuracy = settings.review_rate, settings.target_accuracy
        if by_class and coverage is None and settings.coverage is None:
            raise DecisionError("--coverage-by-class needs --coverage (or `decision.coverage` in the run's config)")
        checks = {f.name: f.metadata["check"] for f in dataclasses.fields(type(settings))}
        for flag, key, value in (("--coverage", "coverage", coverage), ("--review-rate", "review_rate", review_rate),
                                 ("--target-accuracy", "target_accuracy", target_accuracy)):
            problem = checks[key](value)  # the config schema's own bounds for these keys
            if problem:
                raise DecisionError(f"`{flag}` {problem}; got {value}")
        return cls(coverage if coverage is not None else settings.coverage,
                   settings.coverage_by_class if by_class is None else by_class,
                   review_rate, target_accuracy, settings.costs, settings.calibration)

    def columns(self) -> list[str]:
        return (["prediction_set"] if self.coverage else []) + \
            (["decision"] if self.review_rate is not None or self.target_accuracy is not None else [])


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_rows(ens: BaggedEnsemble, paths: Sequence[str], strategy: str | None = None,
                 options: InferenceOptions = InferenceOptions(), chunk: int = 256,
                 decisions: DecisionOptions = DecisionOptions()) -> list[dict]:
    """One row per path: prediction, class probabilities, each member's prediction, error;
    with ``decisions``, a prediction set and/or a review decision (:mod:`ensemble.decisions`)."""
    from .decisions import Decider, confidence
    from .evaluation import calibration_set

    classes = ens.classes_
    names = [fm.name for fm in ens.members_]
    size = decode_size(ens)
    decider = Decider(*calibration_set(ens, strategy, decisions.calibration), decisions.costs, classes)
    review = "decision" in decisions.columns()
    used = ens.combiner_.get(strategy).uses(len(names))  # members the strategy gives no weight are not run
    if not used.all():
        log.info("strategy %s uses %s: the other members are not run", strategy or ens.combiner_.strategy,
                 ", ".join(n for n, u in zip(names, used) if u))
    threshold = decider.review_threshold(decisions.review_rate, decisions.target_accuracy) if review else None
    if decisions.coverage:
        decider.sets(decider.cal_proba[:1], decisions.coverage, decisions.by_class)  # too few images: fail early
    rows: list[dict] = []
    if options.adapt_bn:  # the statistics come from every image given, not from chunks of them
        chunk = max(1, len(paths))
    for part in _chunks(list(paths), chunk):
        arrays, bad = decode_all(part, size, on_bad="skip", desc="decode")
        reasons = dict(bad)
        ok = [i for i, a in enumerate(arrays) if a is not None]
        if ok:
            member_proba = options.member_proba(ens, [arrays[i] for i in ok], used)
            _, proba = ens.combiner_.apply(member_proba, strategy)
            pred = decider.predict(proba)
            member_pred = member_proba.argmax(axis=2)
            sets = decider.sets(proba, decisions.coverage, decisions.by_class) if decisions.coverage else None
        results = {i: k for k, i in enumerate(ok)}
        for i, path in enumerate(part):
            row: dict = {"path": path}
            if i in results:
                k = results[i]
                row["prediction"] = classes[pred[k]]
                if sets is not None:
                    row["prediction_set"] = "|".join(c for j, c in enumerate(classes) if sets[k, j])
                if review:
                    row["decision"] = "review" if confidence(proba[k:k + 1])[0] < threshold else classes[pred[k]]
                row["proba"] = {c: float(proba[k, j]) for j, c in enumerate(classes)}
                row["votes"] = {n: classes[member_pred[m, k]] if used[m] else "" for m, n in enumerate(names)}
                row["error"] = ""
            else:
                row["prediction"] = ""
                row.update({c: "" for c in decisions.columns()})
                row["proba"] = {c: None for c in classes}
                row["votes"] = {n: "" for n in names}
                row["error"] = reasons.get(path, "not found")
            rows.append(row)
    return rows


OUTPUT_SUFFIXES = (".csv", ".json")


def check_output_file(out: str | Path) -> Path:
    """``predict --out``: a .csv or .json file name (any case) whose folder exists or can be made."""
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; --out names the output file (.csv or .json)")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"{out}: --out must end in .csv or .json; got {out.suffix or 'no suffix'!r}")
    if out.exists() and not _written_by_predict(out):
        raise DataError(f"{out}: exists and was not written by `effens predict`; choose another --out "
                        f"(effens never overwrites files it did not write)")
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


def flat_row(row: dict) -> dict:
    """A CSV row: probabilities as ``proba:<class>``, votes as ``vote:<member>`` (the prefixes
    keep class and member names from ever colliding with each other or the fixed columns)."""
    out = {k: v for k, v in row.items() if k not in ("proba", "votes")}
    out.update({f"proba:{c}": v for c, v in row["proba"].items()})
    out.update({f"vote:{n}": v for n, v in row["votes"].items()})
    return out


def write_rows(rows: list[dict], out: str | Path, columns: Sequence[str]) -> None:
    """CSV, or JSON (a list of objects, ``proba`` and ``votes`` nested) when the name ends in ``.json``."""
    if Path(out).suffix.lower() == ".json":
        atomic_write_json(out, rows)
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v)
                    for k, v in flat_row(r).items()})
    atomic_write_text(out, buf.getvalue())


def run_predict(run_dir: str, inputs: Sequence[str], out: str, strategy: str | None = None,
                options: InferenceOptions = InferenceOptions(), decisions: dict | None = None) -> dict:
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
        raise DataError(f"none of the {len(rows)} input image(s) could be predicted (first: {rows[0]['error']}); "
                        f"nothing written")
    columns = ["path", "prediction", *choice.columns(), *(f"proba:{c}" for c in ens.classes_),
               *(f"vote:{fm.name}" for fm in ens.members_), "error"]
    write_rows(rows, out, columns)
    n_bad = sum(1 for r in rows if r["error"])
    return {"n": len(rows), "n_errors": n_bad, "strategy": strategy or ens.combiner_.strategy,
            "inference": options.plan(ens), "n_review": sum(1 for r in rows if r.get("decision") == "review")}


def _member_hashes(ens: BaggedEnsemble) -> list:
    return [weights_hash(fm.meta) for fm in ens.members_]


def run_evaluate(run_dir: str, data: str | dict, out: str, strategy: str = "all",
                 options: InferenceOptions = InferenceOptions()) -> dict:
    """Report every member and strategy on a labelled folder or CSV.

    Member probabilities are cached in ``out``; a later call on the same run, data and
    TTA setting reuses them, so switching strategy never re-runs a network.
    """
    out_dir = Path(out)
    refuse_foreign(out_dir, "evaluate", "effens evaluate")  # before any work
    ens = load_run(run_dir)
    strategies = ens.combiner_.available() if strategy == "all" else [ens.combiner_.get(strategy).name]
    source = SplitSource.from_value(data, "data") if isinstance(data, str) else SplitSource(**data)
    split = load_split(source)
    check_labels(split, ens.classes_, "evaluation")
    key = {"data": images_fingerprint(split.paths, split.labels), "members": _member_hashes(ens),
           "tta": options.tta, "inference": options.plan(ens)}
    cache_json, cache_npy = out_dir / "member_proba.json", out_dir / "member_proba.npy"
    skipped: list = []
    if cache_json.is_file() and cache_npy.is_file() and read_json(cache_json).get("key") == sha256_json(key):
        meta = read_json(cache_json)
        member_proba = read_npy(cache_npy)
        keep, skipped = meta["kept"], meta["skipped"]
        log.info("reusing cached member probabilities in %s", cache_npy)
    else:
        arrays, bad = decode_all(split.paths, decode_size(ens), on_bad="skip", desc="decode")
        keep = [i for i, a in enumerate(arrays) if a is not None]
        skipped = [{"path": p, "reason": r} for p, r in bad]
        if not keep:
            raise DataError(f"{data}: none of its {len(arrays)} images could be read (first: {bad[0][1]})")
        member_proba = options.member_proba(ens, [arrays[i] for i in keep])
        atomic_write_npy(cache_npy, member_proba)
        atomic_write_json(cache_json, {"key": sha256_json(key), "kept": keep, "skipped": skipped,
                                       "paths": [split.paths[i] for i in keep]})
    split = split.subset(keep)
    y = split.encode(ens.classes_)
    comb = ens.combiner_
    names = [fm.name for fm in ens.members_]
    results = {"eval": evaluate_split(member_proba, y, comb, strategies)}
    doc = build_metrics(ens.classes_, names, results, None, comb,
                        strategy=strategies[0] if len(strategies) == 1 else None, labels={"eval": y})
    decide = strategies[0] if len(strategies) == 1 else comb.strategy
    run_cfg = RunFolder(run_dir).read_config()
    doc["decisions"] = decision_report(ens, run_cfg.decision,
                                       {"eval": (results["eval"][decide]["_proba"], y)}, decide)
    doc["skipped_images"] = {"eval": skipped} if skipped else {}
    doc["data"] = str(data)
    doc["inference"] = options.plan(ens)
    md = "Skipped unreadable images:\n\n" + "\n".join(f"- {d['path']} ({d['reason']})" for d in skipped) \
        if skipped else ""
    files = report_files(doc, results, {"eval": (split.paths, y)}, out_dir, ens, run_cfg.report.saliency, extra_md=md)
    write_owned(out_dir, files, "evaluate", also=[cache_json.name, cache_npy.name])
    doc["_table"] = format_table(comparison_rows(results["eval"]))
    return doc
