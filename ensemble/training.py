"""``effens train``: config -> data -> bagging -> members -> combiner -> report, in a run folder."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from .config import Config, ConfigError, config_from_dict, config_to_dict, dump_config, load_config
from .data import Dataset, Split, load_dataset
from .estimator import BaggedEnsemble, images_fingerprint
from .images import decode_all
from .report import build_metrics, evaluate_split, write_report
from .run import (RunError, RunFolder, atomic_write_json, atomic_write_npy, atomic_write_text,
                  read_json, read_npy)

log = logging.getLogger(__name__)


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: obj}


def config_changes(old: dict, new: dict) -> list[str]:
    """Key paths whose values differ between two config dicts."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def prepare_run(cfg: Config, out: str | Path, restart: bool) -> RunFolder:
    """Create or reopen a run folder; refuse a changed config unless ``restart``."""
    run = RunFolder(out)
    if run.config_path.is_file():
        old = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
        try:  # fill keys a newer effens added with their defaults, so they do not count as changes
            old = config_to_dict(config_from_dict(old, source=str(run.config_path)))
        except ConfigError:
            pass
        changed = [k for k in config_changes(old, config_to_dict(cfg))
                   if not k.startswith(("combiner.", "tune.", "parallel."))]
        if changed and not restart:
            raise RunError(f"{run.root} holds a run with a different config (changed: "
                           f"{', '.join(changed[:10])}); use another --out, or --restart to start over")
        if changed:
            log.warning("--restart: discarding the previous run in %s (changed: %s)", run.root,
                        ", ".join(changed[:10]))
            for sub in ("members", "report", "predictions", "combiner"):
                shutil.rmtree(run.root / sub, ignore_errors=True)
        elif any((run.root / "members").glob("*/member.json")):
            log.info("resuming the run in %s", run.root)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config_path, dump_config(cfg))
    return run


def decode_split(split: Split, size: int, on_bad: str, name: str) -> tuple[Split, list, list]:
    """Decode a split; with ``skip``, unreadable files leave the split and are listed."""
    arrays, bad = decode_all(split.paths, size, on_bad=on_bad, desc=f"decode {name}")
    keep = [i for i, a in enumerate(arrays) if a is not None]
    return split.subset(keep), [arrays[i] for i in keep], bad


def cache_size(cfg: Config) -> int:
    from members.models import default_resize_size

    if cfg.data.cache_size:
        return cfg.data.cache_size
    return max(default_resize_size(m.model, m.image_size) for m in cfg.members)


def save_predictions(run: RunFolder, split: str, paths: list[str], y: np.ndarray,
                     member_proba: np.ndarray) -> None:
    """Cache a split's member probabilities so combiners and reports never re-run a network."""
    d = run.root / "predictions"
    atomic_write_npy(d / f"{split}_proba.npy", member_proba.astype(np.float64))
    atomic_write_npy(d / f"{split}_labels.npy", np.asarray(y, dtype=np.int64))
    atomic_write_json(d / f"{split}_paths.json", list(paths))


def load_predictions(run: RunFolder, split: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    d = run.root / "predictions"
    if not (d / f"{split}_proba.npy").is_file():
        return None
    return (read_json(d / f"{split}_paths.json"), read_npy(d / f"{split}_labels.npy"),
            read_npy(d / f"{split}_proba.npy"))


def write_run_report(run: RunFolder, ens: BaggedEnsemble, extra: dict | None = None) -> dict:
    """Evaluate every member and strategy on the cached val/test probabilities; write report/."""
    comb = ens.combiner_
    names = [fm.name for fm in ens.members_]
    results, split_data = {}, {}
    for split in ("val", "test"):
        cached = load_predictions(run, split)
        if cached is None:
            continue
        paths, y, proba = cached
        results[split] = evaluate_split(proba, y, ens.classes_, names, comb, comb.available())
        split_data[split] = (paths, y)
    doc = build_metrics(ens.classes_, names, results, ens.oob_score_, comb)
    doc.update(extra or {})
    md = ""
    if doc.get("skipped_images"):
        md = "Skipped unreadable images:\n\n" + "\n".join(
            f"- {k}: {d['path']} ({d['reason']})" for k, v in doc["skipped_images"].items() for d in v)
    write_report(run.report_dir, doc, results, split_data, extra_md=md)
    return doc


def train_run(config_path: str, out: str, overrides: list[str] | None = None,
              restart: bool = False) -> dict:
    """Run ``effens train``; returns the metrics document written to ``report/metrics.json``."""
    t_start = time.perf_counter()
    cfg = load_config(config_path, overrides)
    run = prepare_run(cfg, out, restart)
    data: Dataset = load_dataset(cfg.data, cfg.seed)
    if run.classes_path.is_file() and read_json(run.classes_path) != data.classes:
        raise RunError(f"{run.classes_path}: the run's classes {read_json(run.classes_path)} differ "
                       f"from the data's {data.classes}; use --restart")
    atomic_write_json(run.classes_path, data.classes)
    size = cache_size(cfg)
    log.info("data: %d train, %d val, %s test images, classes %s; decoding once at shorter side %d px",
             len(data.train), len(data.val), len(data.test) if data.test else 0, data.classes, size)
    t0 = time.perf_counter()
    train, train_imgs, bad_train = decode_split(data.train, size, cfg.data.on_bad_image, "train")
    val, val_imgs, bad_val = decode_split(data.val, size, cfg.data.on_bad_image, "val")
    bad = {"train": bad_train, "val": bad_val}
    test = test_imgs = None
    if data.test is not None:
        test, test_imgs, bad["test"] = decode_split(data.test, size, cfg.data.on_bad_image, "test")
    decode_s = time.perf_counter() - t0
    log.info("decoded %d images in %.1f s", len(train) + len(val) + (len(test) if test else 0), decode_s)

    y = train.encode(data.classes)
    y_val = val.encode(data.classes)
    ens = BaggedEnsemble(cfg.members, cfg.combiner, cfg.seed, cfg.device, cfg.parallel,
                         cfg.precision, cfg.runtime)
    ens.fit(train_imgs, y, data.classes, val_imgs, y_val, run=run,
            data_fingerprint=images_fingerprint(train.paths + val.paths, train.labels + val.labels))
    atomic_write_npy(run.root / "predictions" / "train_labels.npy", y)
    save_predictions(run, "val", val.paths, y_val, ens.val_proba_)
    if test is not None:
        save_predictions(run, "test", test.paths, test.encode(data.classes), ens.member_proba(test_imgs, runtime="torch"))
    run.seal("predictions")
    extra = {"skipped_images": {k: [{"path": p, "reason": r} for p, r in v] for k, v in bad.items() if v},
             "timing": {"decode_s": decode_s, "total_s": time.perf_counter() - t_start,
                        "members_train_s": {fm.name: fm.meta["train_seconds"] for fm in ens.members_}}}
    doc = write_run_report(run, ens, extra)
    log.info("report written to %s (%.0f s in all)", run.report_dir, time.perf_counter() - t_start)
    return doc


def refit_run_combiner(out: str, overrides: list[str] | None = None) -> dict:
    """``effens fit-combiner``: refit weights/stacking/calibration of a finished run, rewrite its report.

    Only ``combiner.*`` keys may be overridden; no network runs.
    """
    run = RunFolder(out)
    if overrides:
        bad = [o for o in overrides if not o.startswith("combiner.")]
        if bad:
            raise RunError(f"fit-combiner only changes `combiner.*` keys; got {', '.join(bad)}")
        cfg = load_config(run.config_path, overrides)
        atomic_write_text(run.config_path, dump_config(cfg))
    ens = BaggedEnsemble.load_run(str(run.root))
    ens.refit_combiner(ens.combiner)
    ens.combiner_.save(run.root / "combiner")
    run.seal("combiner")
    old = read_json(run.report_dir / "metrics.json") if (run.report_dir / "metrics.json").is_file() else {}
    return write_run_report(run, ens, {k: old[k] for k in ("skipped_images", "timing") if k in old})
