"""``effens predict`` and ``effens evaluate`` over a trained run folder."""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np


from .config import SplitSource
from .data import DataError, check_labels, find_images, load_split, manifest_path
from .estimator import BaggedEnsemble, images_fingerprint
from .evaluation import evaluate_split
from .files import atomic_write_json, atomic_write_npy, atomic_write_text, read_json, read_npy, sha256_json, write_files
from .images import decode_all
from .report import build_metrics, comparison_rows, format_table, render_report
from .runfolder import load_run, weights_hash

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How member probabilities are computed (defaults: the run's); ``predict`` and
    ``evaluate`` take one of these instead of five separate arguments."""

    batch_size: int | None = None     # images per inference step (default: each member's)
    device: str | None = None         # auto, cpu, cuda, cuda:N
    tta: bool = False                 # average with the horizontal mirror
    runtime: str | None = None        # torch, openvino, onnxruntime, auto
    precision: str | None = None      # auto, fp32, bf16, fp16

    def member_proba(self, ens: BaggedEnsemble, images: Sequence[np.ndarray]) -> np.ndarray:
        return ens.member_proba(images, **dataclasses.asdict(self))

    def plan(self, ens: BaggedEnsemble) -> dict:
        """The runtime and precision each member resolves to here (part of cache keys)."""
        plan = ens.inference_plan(self.runtime, self.precision, self.device)
        return {"runtime": plan[0][0], "precision": [p.name for _, p in plan]}


def decode_size(ens: BaggedEnsemble) -> int:
    """Shorter side to decode at: the largest resize any member needs."""
    return max(fm.inputs.resize_size for fm in ens.members_)


def expand_inputs(inputs: Sequence[str], path_column: str = "path") -> list[str]:
    """Files, folders (recursive) and CSV manifests -> image paths, in the order given.

    Paths that do not exist are kept, so that they get an error row.
    """
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = find_images(p)
            if not found:
                log.warning("%s: no image files inside", p)
            out.extend(found)
        elif p.suffix.lower() == ".csv" and p.is_file():
            with open(p, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if path_column not in (reader.fieldnames or []):
                    raise DataError(f"{p}: no `{path_column}` column; columns are "
                                    f"{', '.join(reader.fieldnames or [])}")
                out.extend(manifest_path(p, r[path_column]) for r in reader)
        else:
            out.append(str(p))
    return out


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_rows(ens: BaggedEnsemble, paths: Sequence[str], strategy: str | None = None,
                 options: InferenceOptions = InferenceOptions(), chunk: int = 256) -> list[dict]:
    """One row per path: prediction, class probabilities, each member's prediction, error."""
    classes = ens.classes_
    names = [fm.name for fm in ens.members_]
    size = decode_size(ens)
    rows: list[dict] = []
    for part in _chunks(list(paths), chunk):
        arrays, bad = decode_all(part, size, on_bad="skip", desc="decode")
        reasons = dict(bad)
        ok = [i for i, a in enumerate(arrays) if a is not None]
        if ok:
            member_proba = options.member_proba(ens, [arrays[i] for i in ok])
            pred, proba = ens.combiner_.apply(member_proba, strategy)
            member_pred = member_proba.argmax(axis=2)
        results = {i: k for k, i in enumerate(ok)}
        for i, path in enumerate(part):
            row: dict = {"path": path}
            if i in results:
                k = results[i]
                row["prediction"] = classes[pred[k]]
                row.update({c: float(proba[k, j]) for j, c in enumerate(classes)})
                row.update({n: classes[member_pred[m, k]] for m, n in enumerate(names)})
                row["error"] = ""
            else:
                row["prediction"] = ""
                row.update({c: None for c in classes})
                row.update({n: "" for n in names})
                row["error"] = reasons.get(path, "not found")
            rows.append(row)
    return rows


def write_rows(rows: list[dict], out: str | Path, columns: Sequence[str]) -> None:
    """CSV, or JSON (a list of objects) when the name ends in ``.json``."""
    if str(out).endswith(".json"):
        atomic_write_json(out, rows)
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(out, buf.getvalue())


def run_predict(run_dir: str, inputs: Sequence[str], out: str, strategy: str | None = None,
                options: InferenceOptions = InferenceOptions()) -> dict:
    ens = load_run(run_dir)
    paths = expand_inputs(inputs)
    if not paths:
        raise DataError("no input images found")
    rows = predict_rows(ens, paths, strategy, options)
    columns = ["path", "prediction", *ens.classes_, *(fm.name for fm in ens.members_), "error"]
    write_rows(rows, out, columns)
    n_bad = sum(1 for r in rows if r["error"])
    return {"n": len(rows), "n_errors": n_bad, "strategy": strategy or ens.combiner_.strategy,
            "inference": options.plan(ens)}


def _member_hashes(ens: BaggedEnsemble) -> list:
    return [weights_hash(fm.meta) for fm in ens.members_]


def run_evaluate(run_dir: str, data: str | dict, out: str, strategy: str = "all",
                 options: InferenceOptions = InferenceOptions()) -> dict:
    """Report every member and strategy on a labelled folder or CSV.

    Member probabilities are cached in ``out``; a later call on the same run, data and
    TTA setting reuses them, so switching strategy never re-runs a network.
    """
    ens = load_run(run_dir)
    source = SplitSource.from_value(data, "data") if isinstance(data, str) else SplitSource(**data)
    split = load_split(source)
    check_labels(split, ens.classes_, "evaluation")
    out_dir = Path(out)
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
        member_proba = options.member_proba(ens, [arrays[i] for i in keep])
        atomic_write_npy(cache_npy, member_proba)
        atomic_write_json(cache_json, {"key": sha256_json(key), "kept": keep, "skipped": skipped,
                                       "paths": [split.paths[i] for i in keep]})
    split = split.subset(keep)
    y = split.encode(ens.classes_)
    comb = ens.combiner_
    strategies = comb.available() if strategy == "all" else [strategy]
    for s in strategies:
        if s not in comb.available():
            raise DataError(f"strategy {s!r} is not available in this run ({', '.join(comb.available())})")
    names = [fm.name for fm in ens.members_]
    results = {"eval": evaluate_split(member_proba, y, comb, strategies)}
    doc = build_metrics(ens.classes_, names, results, None, comb,
                        strategy=strategies[0] if len(strategies) == 1 else None)
    doc["skipped_images"] = {"eval": skipped} if skipped else {}
    doc["data"] = str(data)
    doc["inference"] = options.plan(ens)
    md = "Skipped unreadable images:\n\n" + "\n".join(f"- {d['path']} ({d['reason']})" for d in skipped) \
        if skipped else ""
    write_files(out_dir, render_report(doc, results, {"eval": (split.paths, y)}, extra_md=md))
    doc["_table"] = format_table(comparison_rows(results["eval"]))
    return doc
