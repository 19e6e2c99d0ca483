"""``effens train`` and ``effens fit-combiner``: config -> data -> bagging -> members ->
combiner -> report, with the run folder (:mod:`ensemble.runfolder`) the only state."""

from __future__ import annotations

import logging
import time

from .config import Config, check_against_classes, data_inputs, load_config
from .data import Dataset, load_dataset
from .estimator import images_fingerprint
from .fitting import (  # noqa: F401 (estimator_from_config re-exported)
    check_memory,
    data_record,
    decode_dataset,
    estimator_from_config,
    preflight,
    save_fitted,
    write_run_report,
)
from .runfolder import RunError, RunFolder, load_run

log = logging.getLogger(__name__)


def warn_overlaps(data: Dataset) -> None:
    """Warn about photos (same bytes) that sit in two splits: a test copy of a training photo
    inflates test scores (``effens audit`` is the full check)."""
    from .data import overlapping_images

    splits = {"train": data.train, "val": data.val, **({"test": data.test} if data.test else {})}
    for pair, found in overlapping_images(splits).items():
        first = "; ".join(f"{a} = {b}" for a, b in found["pairs"][:3])
        log.warning(
            "%d image(s) appear in both %s (same file contents), e.g. %s", found["n"], pair.replace("/", " and "), first
        )


def _card_shortcuts(data, seed: int) -> dict | None:
    """The run card's shortcut check from file headers; a failure costs the card its line,
    never the finished training."""
    from .auditing.shortcuts import header_check

    try:
        return header_check(data, seed)
    except Exception as exc:  # noqa: BLE001 - a report line, not the run: said, then left out
        log.warning("the run card's shortcut check failed (%s: %s); run `effens audit` for it", type(exc).__name__, exc)
        return None


def train_run(config_path: str, out: str, overrides: list[str] | None = None, restart: bool = False) -> dict:
    """Run ``effens train``; returns the metrics document written to ``report/metrics.json``.

    Every input is checked (config, data, classes, device, members) before the run folder
    is touched; the folder is locked while training.
    """
    cfg = load_config(config_path, overrides)
    data: Dataset = load_dataset(cfg.data, cfg.seed)
    check_against_classes(cfg, data.classes, str(config_path))
    preflight(cfg, data.classes, str(config_path))
    check_memory(cfg, data, str(config_path))
    warn_overlaps(data)
    from .tracking import check_tracking, config_params, environment_tags, tracking

    check_tracking(cfg.tracking, [config_path, *data_inputs(cfg)], [out])

    run = RunFolder(out).open_for_training(cfg, restart, ignore=("distill.",))  # read by `distill` only
    try:
        with tracking(
            cfg.tracking,
            "train",
            run.root.resolve().name,
            config_params(cfg),
            {**environment_tags("train", cfg), "effens.run_dir": str(run.root.resolve())},
        ) as tracker:
            return _train(cfg, data, run, tracker)
    finally:
        run.unlock()


def _train(cfg: Config, data: Dataset, run: RunFolder, tracker=None) -> dict:
    t_start = time.perf_counter()
    run.save_classes(data.classes)
    dec = decode_dataset(cfg, data)
    train, val = dec.train, dec.val
    y = train.encode(data.classes)
    y_val = val.encode(data.classes)
    ens = estimator_from_config(cfg)  # checked once, in train_run
    ens.fit(
        dec.train_images,
        y,
        X_val=dec.val_images,
        y_val=y_val,
        classes=data.classes,
        store=run,
        data_fingerprint=images_fingerprint(train.paths + val.paths, train.labels + val.labels),
    )
    save_fitted(run, ens, val, dec.test, dec.test_images)
    extra = {
        "shortcuts": _card_shortcuts(data, cfg.seed),
        **data_record(cfg, data, dec.bad),
        "timing": {
            "decode_s": dec.seconds,
            "total_s": time.perf_counter() - t_start,
            "members_train_s": {fm.name: fm.meta["train_seconds"] for fm in ens.members_},
        },
    }
    doc = write_run_report(run, ens, extra, cfg)
    run.record(cfg)
    log.info("report written to %s (%.0f s in all)", run.report_dir, time.perf_counter() - t_start)
    if tracker:
        from .tracking import log_train

        log_train(tracker, run, ens, doc)
    return doc


def refit_run_combiner(out: str, overrides: list[str] | None = None) -> dict:
    """``effens fit-combiner``: refit weights/stacking/calibration of a finished run, rewrite its report.

    Only ``combiner.*`` keys may be overridden; no network runs.
    """
    run = RunFolder(out)
    if overrides:
        bad = [o for o in overrides if not o.startswith(("combiner.", "decision.", "report."))]
        if bad:
            raise RunError(
                f"fit-combiner only changes `combiner.*`, `decision.*` and `report.*` keys; got {', '.join(bad)}"
            )
    run.lock()
    try:
        ens = load_run(run.root, adopt=True)  # every recorded file intact before anything changes
        new_cfg = run.read_config(overrides) if overrides else None  # a bad value: refused before any write
        with run.all_or_nothing():  # a failure below (e.g. no calibration images) changes nothing
            run.adopt_legacy_report()
            old = run.read_metrics()
            if new_cfg is not None:
                run.write_config(new_cfg)
                run.record()
                ens = load_run(run.root)
            ens.refit_combiner(ens.validated_config().combiner)
            run.save_combiner(ens.combiner_)
            doc = write_run_report(
                run,
                ens,
                {
                    k: old[k]
                    for k in ("skipped_images", "timing", "data_changes", "data_summary", "shortcuts", "distill")
                    if k in old
                },
                command=((old.get("card") or {}).get("reproduce") or {}).get("command"),
            )
            run.record()
        return doc
    finally:
        run.unlock()
