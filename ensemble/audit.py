"""``effens audit RUN --out DIR``: probably mislabelled photos, duplicates (and leaks across
splits) and odd images of a trained run's data.

Label issues come from out-of-sample probabilities: for training images the OOB vote of
the run's strategy (only members that left the image out), for val and test the
ensemble's (:mod:`ensemble.label_issues`). Duplicates and odd images come from per-file
signatures (:mod:`ensemble.duplicates`), cached in ``DIR`` so a second audit reads no image
twice. Writes ``label_issues.csv``, ``duplicates.csv``, ``odd_images.csv``, ``audit.json``
and ``index.html`` (with thumbnails).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .data import DataError, load_dataset
from .duplicates import Signature, find_duplicates, oddities, signature
from .files import read_json, refuse_foreign, write_owned
from .label_issues import find_label_issues
from .runfolder import RunFolder, load_run

log = logging.getLogger(__name__)

SIGNATURES = "signatures.json"


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _training_paths(run: RunFolder, data, n: int) -> list[str]:
    """The training images in the order the run's OOB arrays use (unreadable ones were skipped)."""
    metrics = run.report_dir / "metrics.json"
    skipped = set()
    if metrics.is_file():
        skipped = {d["path"] for d in (read_json(metrics).get("skipped_images") or {}).get("train", [])}
    paths = [p for p in data.train.paths if p not in skipped]
    if len(paths) != n:
        raise DataError(f"{run.root}: its training folder now holds {len(paths)} readable images, the run was "
                        f"trained on {n}; audit the data with a run trained on it")
    return paths


def _check_training_labels(run: RunFolder, data, paths: list[str], y: np.ndarray, classes: list[str]) -> None:
    labels = dict(zip(data.train.paths, data.train.labels))
    if [labels[p] for p in paths] != [classes[int(k)] for k in y]:
        raise DataError(f"{run.root}: the labels of its training images changed since training; audit the data "
                        f"with a run trained on it")


def cross_fitted_proba(features: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5,
                       seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities of a logistic regression on ``features`` (standardised):
    every image scored by a model fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)
    proba = np.zeros((len(y), n_classes))
    k = max(2, min(folds, int(np.bincount(y, minlength=n_classes)[np.bincount(y, minlength=n_classes) > 0].min())))
    for fit, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
        clf = LogisticRegression(max_iter=2000, C=0.1).fit(x[fit], y[fit])
        proba[np.ix_(held, clf.classes_)] = clf.predict_proba(x[held])
    return proba


def _pretrained_features(spec, paths: list[str], n_classes: int, device: str, out: Path) -> np.ndarray:
    """Pooled features of ``paths`` under ``spec``'s architecture with its pretrained weights
    (not the run's fine-tuned ones, which have seen these labels), cached in ``out``."""
    from safetensors.numpy import load_file, save

    from members.features import extract_features
    from members.models import create_member, pick_device
    from members.transforms import eval_tensor

    from .files import sha256_json
    from .images import decode_all
    from .schema import to_dict

    key = sha256_json({"spec": to_dict(spec), "paths": paths,
                       "stamps": [os.stat(p).st_mtime_ns if os.path.isfile(p) else 0 for p in paths]})
    path = out / "features.safetensors"
    if path.is_file() and (out / "features.json").is_file() and read_json(out / "features.json").get("key") == key:
        return load_file(str(path))["features"]
    member = create_member(spec, n_classes)
    images, bad = decode_all(paths, member.inputs.resize_size, on_bad="skip", desc="audit: features")
    if bad:
        raise DataError(f"{bad[0][0]}: cannot be read for the feature pass ({bad[0][1]})")
    feats = extract_features(member.model, eval_tensor(images, member.inputs), member.inputs,
                             spec.train.eval_batch_size, pick_device(device)).numpy()
    write_owned(out, {"features.safetensors": save({"features": feats}),
                      "features.json": {"key": key, "member": spec.name, "model": spec.model}}, "audit")
    return feats


def _signatures(paths: list[str], out: Path) -> tuple[dict[str, Signature], dict[str, str], dict]:
    """Path -> signature (cached in ``out`` by path, size and modification time), the
    unreadable paths with their reason, and the cache to write back."""
    from tqdm.auto import tqdm

    cache_path = out / SIGNATURES
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    stamp = {p: f"{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" if os.path.isfile(p) else "" for p in paths}
    got: dict[str, Signature] = {}
    bad: dict[str, str] = {}
    todo = []
    for p in paths:
        hit = cache.get(p)
        if hit and hit.get("stamp") == stamp[p]:
            got[p] = Signature(**hit["sig"])
        else:
            todo.append(p)

    def one(p: str):
        try:
            return signature(p)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one reason in the report
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for p, s in tqdm(zip(todo, pool.map(one, todo)), total=len(todo), desc="audit: signatures", leave=False,
                         unit="img", disable=None):
            if isinstance(s, str):
                bad[p] = s
            else:
                got[p] = s
    cache = {p: {"stamp": stamp[p], "sig": dataclasses.asdict(s)} for p, s in got.items()}
    return got, bad, cache


EXCLUDE_HEADER = "# effens audit: images to leave out (data.exclude)"


def exclude_lines(label_rows: list[dict], dup_rows: list[dict], threshold: float) -> list[str]:
    """What ``--write-exclude`` lists: training images flagged as mislabelled whose given label
    has out-of-sample probability below ``threshold``, and the training twin of every copy
    found across splits (so val and test stay as they are)."""
    lines = [EXCLUDE_HEADER]
    seen = set()
    for r in label_rows:
        if r["split"] == "train" and r["self_confidence"] < threshold and r["path"] not in seen:
            seen.add(r["path"])
            lines.append(f"{r['path']}  # labelled {r['given']}, p = {r['self_confidence']:.3f}; "
                         f"looks {r['suggested']}")
    for r in dup_rows:
        if not r["leakage"]:
            continue
        mine, other = (("a", "b") if r["a_split"] == "train" else ("b", "a"))
        if r[f"{mine}_split"] == "train" and r[f"{mine}_path"] not in seen:
            seen.add(r[f"{mine}_path"])
            lines.append(f"{r[f'{mine}_path']}  # {r['kind']} copy of {r[f'{other}_split']} image "
                         f"{os.path.basename(r[f'{other}_path'])}")
    return lines


def run_audit(run_dir: str, out: str, method: str = "prune_by_noise_rate", max_distance: int = 4,
              write_exclude: str | None = None, threshold: float = 0.1, cross_fit: bool = True) -> dict:
    """Audit a trained run's train/val/test images; returns ``audit.json``'s document. With
    ``write_exclude``, also writes an exclude list (see :func:`exclude_lines`) for ``data.exclude``."""
    from .runfolder import check_output_path

    out_dir = Path(out)
    check_output_path(out_dir, [run_dir])  # the CLI's rule, for Python callers too
    refuse_foreign(out_dir, "audit", "effens audit")
    if write_exclude is not None:
        check_output_path(write_exclude, [run_dir], folder=False)  # never inside the run, never over an input
        target = Path(write_exclude)
        if target.exists() and not (target.is_file() and
                                    target.read_text(encoding="utf-8", errors="replace").startswith(EXCLUDE_HEADER)):
            raise DataError(f"{target}: exists and was not written by `effens audit --write-exclude`; choose "
                            f"another file (effens never overwrites files it did not write)")
        if not 0 < threshold <= 1:
            raise DataError(f"`--threshold` must be in (0, 1]; got {threshold}")
    if not 0 <= max_distance <= 32:
        raise DataError(f"`--max-distance` must be in [0, 32] bits; got {max_distance}")
    ens = load_run(run_dir)
    run = RunFolder(run_dir)
    cfg = run.read_config()
    data = load_dataset(cfg.data, cfg.seed)
    classes = list(ens.classes_)
    splits: dict[str, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = {}  # paths, y, proba, scored

    from .combiners import oob_matrix

    full, available = oob_matrix(list(ens.oob_indices_), list(ens.oob_proba_), len(ens.y_train_), len(classes))
    covered, _, oob_p = ens.combiner_.get().apply_oob(full, available)
    train_paths = _training_paths(run, data, len(ens.y_train_))
    _check_training_labels(run, data, train_paths, ens.y_train_, classes)
    proba = np.full((len(train_paths), len(classes)), np.nan)
    proba[covered] = oob_p
    scored = np.isin(np.arange(len(train_paths)), covered)
    splits["train"] = (train_paths, ens.y_train_, proba, scored)
    if cross_fit and not scored.all():
        # images every member trained on: out-of-fold linear heads on pretrained features score them
        feats = _pretrained_features(cfg.members[0], train_paths, len(classes), cfg.device, out_dir)
        crossed = cross_fitted_proba(feats, np.asarray(ens.y_train_), len(classes), seed=cfg.seed)
        splits["train (cross-fitted)"] = (train_paths, ens.y_train_, crossed, ~scored)
    for split in ("val", "test"):
        got = run.load_predictions(split)
        if got is not None:
            paths, y, member_proba = got
            p = ens.combiner_.apply(member_proba)[1]
            splits[split] = (list(paths), np.asarray(y), p, np.ones(len(paths), dtype=bool))

    label_rows, noise = [], {}
    source = {"train": "OOB vote", "val": "ensemble", "test": "ensemble",
              "train (cross-fitted)": "cross-fitted linear head on pretrained features"}
    for split, (paths, y, p, scored) in splits.items():
        idx = np.flatnonzero(scored)
        if len(idx) < len(classes) * 2:
            continue
        if split == "train (cross-fitted)":  # thresholds from every image, issues among the not-OOB ones
            whole = find_label_issues(p, y, method)
            keep = np.isin(whole.issues, idx)
            audit = dataclasses.replace(whole, issues=whole.issues[keep])
            idx = np.arange(len(paths))
        else:
            audit = find_label_issues(p[idx], y[idx], method)
        noise[split] = {"n_scored": int(scored.sum()), "n_not_scored": int(len(paths) - scored.sum()),
                        "n_flagged": int(len(audit.issues)),
                        "thresholds": dict(zip(classes, audit.thresholds.round(4).tolist())),
                        "noise_rate": {f"{classes[i]} -> {classes[j]}": round(float(audit.noise_matrix[i, j]), 4)
                                       for i in range(len(classes)) for j in range(len(classes)) if i != j}}
        for rank, k in enumerate(audit.issues):
            i = idx[k]
            others = p[i].copy()
            others[y[i]] = -np.inf
            s = int(audit.suggested[k]) if audit.suggested[k] not in (-1, y[i]) else int(others.argmax())
            label_rows.append({"split": "train" if split.startswith("train") else split, "source": source[split],
                               "rank": rank + 1, "path": paths[i], "given": classes[y[i]],
                               "suggested": classes[s], "self_confidence": float(audit.self_confidence[k]),
                               "margin": float(audit.margin[k]), "p_suggested": float(p[i, s])})

    every = [(split, path, classes[int(lab)]) for split, (paths, y, _, _) in splits.items()
             if split in ("train", "val", "test") for path, lab in zip(paths, y)]
    sigs, unreadable, cache = _signatures(list(dict.fromkeys(p for _, p, _ in every)), out_dir)
    known = [(s, p, lab) for s, p, lab in every if p in sigs]
    pairs = find_duplicates([sigs[p] for _, p, _ in known], max_distance)
    dup_rows = []
    for d in pairs:
        (sa, pa, la), (sb, pb, lb) = known[d["a"]], known[d["b"]]
        dup_rows.append({"kind": "same file" if pa == pb else d["kind"], "distance": d["distance"], "mirrored": d["mirrored"],
                         "leakage": sa != sb, "conflicting_labels": la != lb,
                         "a_split": sa, "a_path": pa, "a_label": la, "b_split": sb, "b_path": pb, "b_label": lb})
    odd = {p: "; ".join(oddities(sigs[p])) for p in sigs}
    odd_rows = [{"split": s, "path": p, "what": odd[p]} for s, p, _ in known if odd[p]]
    odd_rows += [{"split": s, "path": p, "what": f"unreadable: {unreadable[p]}"} for s, p, _ in every if p in unreadable]
    stats = {}
    for split in ("train", "val", "test"):
        ss = [sigs[p] for s, p, _ in known if s == split]
        if ss:
            stats[split] = {"images": len(ss),
                            "median_width": float(np.median([x.width for x in ss])),
                            "median_height": float(np.median([x.height for x in ss])),
                            "median_aspect": round(float(np.median([max(x.width, x.height) / min(x.width, x.height)
                                                                    for x in ss])), 3),
                            "median_sharpness": round(float(np.median([x.sharpness for x in ss])), 1)}
    doc = {"run": str(Path(run_dir).resolve()), "classes": classes, "method": method, "max_distance": max_distance,
           "label_issues": noise, "n_label_issues": len(label_rows),
           "duplicates": {"exact": sum(1 for r in dup_rows if r["kind"] == "exact"),
                          "near": sum(1 for r in dup_rows if r["kind"] == "near"),
                          "leakage": sum(1 for r in dup_rows if r["leakage"]),
                          "conflicting_labels": sum(1 for r in dup_rows if r["conflicting_labels"])},
           "n_odd": len(odd_rows), "stats": stats}
    from .html_report import audit_page
    from .pages import make_thumbnails

    shown = [r["path"] for r in label_rows[:200]] + [p for r in dup_rows[:200] for p in (r["a_path"], r["b_path"])] \
        + [r["path"] for r in odd_rows[:200]]
    thumbs, files = make_thumbnails(shown, lambda name: (out_dir / name).is_file())
    files.update({
        "label_issues.csv": _csv(label_rows, ["split", "source", "rank", "path", "given", "suggested",
                                              "self_confidence", "margin", "p_suggested"]),
        "duplicates.csv": _csv(dup_rows, ["kind", "distance", "mirrored", "leakage", "conflicting_labels", "a_split",
                                          "a_path", "a_label", "b_split", "b_path", "b_label"]),
        "odd_images.csv": _csv(odd_rows, ["split", "path", "what"]),
        "audit.json": doc, SIGNATURES: cache,
        "index.html": audit_page(doc, label_rows, dup_rows, odd_rows, thumbs, str(out_dir))})
    write_owned(out_dir, files, "audit")
    if write_exclude is not None:
        from .files import atomic_write_text

        lines = exclude_lines(label_rows, dup_rows, threshold)
        atomic_write_text(write_exclude, "\n".join(lines) + "\n")
        doc["n_excluded_written"] = len(lines) - 1
    return doc
