"""``effens predict`` and ``effens evaluate`` over a trained run folder."""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence


from .config import SplitSource
from .data import DataError, check_labels, find_images, load_split
from .estimator import BaggedEnsemble, images_fingerprint
from .evaluation import evaluate_split
from .files import atomic_write_json, atomic_write_npy, atomic_write_text, read_json, read_npy, sha256_json, write_files
from .images import decode_all
from .report import build_metrics, comparison_rows, format_table, render_report
from .runfolder import load_run

log = logging.getLogger(__name__)


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
                out.extend(str((p.parent / r[path_column]).resolve()) if not os.path.isabs(r[path_column])
                           else r[path_column] for r in reader)
        else:
            out.append(str(p))
    return out


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_rows(ens: BaggedEnsemble, paths: Sequence[str], strategy: str | None = None,
                 batch_size: int | None = None, device: str | None = None, tta: bool = False,
                 chunk: int = 256, runtime: str | None = None, precision: str | None = None) -> list[dict]:
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
            member_proba = ens.member_proba([arrays[i] for i in ok], batch_size=batch_size,
                                            tta=tta, device=device, runtime=runtime, precision=precision)
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
                batch_size: int | None = None, device: str | None = None, tta: bool = False,
                runtime: str | None = None, precision: str | None = None) -> dict:
    ens = load_run(run_dir)
    paths = expand_inputs(inputs)
    if not paths:
        raise DataError("no input images found")
    rows = predict_rows(ens, paths, strategy, batch_size, device, tta, runtime=runtime, precision=precision)
    columns = ["path", "prediction", *ens.classes_, *(fm.name for fm in ens.members_), "error"]
    write_rows(rows, out, columns)
    n_bad = sum(1 for r in rows if r["error"])
    return {"n": len(rows), "n_errors": n_bad, "strategy": strategy or ens.combiner_.strategy,
            "inference": _inference_key(ens, runtime, precision, device)}


def _inference_key(ens: BaggedEnsemble, runtime: str | None, precision: str | None,
                   device: str | None) -> dict:
    """The runtime and precision each member resolves to here (part of the cache key)."""
    plan = ens.inference_plan(runtime, precision, device)
    return {"runtime": plan[0][0], "precision": [p.name for _, p in plan]}


def _member_hashes(ens: BaggedEnsemble) -> list:
    return [fm.meta["files"]["model.safetensors"] for fm in ens.members_]


def run_evaluate(run_dir: str, data: str | dict, out: str, strategy: str = "all",
                 batch_size: int | None = None, device: str | None = None, tta: bool = False,
                 runtime: str | None = None, precision: str | None = None) -> dict:
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
           "tta": tta, "inference": _inference_key(ens, runtime, precision, device)}
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
        member_proba = ens.member_proba([arrays[i] for i in keep], batch_size=batch_size, tta=tta,
                                        device=device, runtime=runtime, precision=precision)
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
    doc["inference"] = _inference_key(ens, runtime, precision, device)
    md = "Skipped unreadable images:\n\n" + "\n".join(f"- {d['path']} ({d['reason']})" for d in skipped) \
        if skipped else ""
    write_files(out_dir, render_report(doc, results, {"eval": (split.paths, y)}, extra_md=md))
    doc["_table"] = format_table(comparison_rows(results["eval"]))
    return doc
