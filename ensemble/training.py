"""``effens train`` and ``effens fit-combiner``: config -> data -> bagging -> members ->
combiner -> report, with the run folder (:mod:`ensemble.runfolder`) the only state."""
from __future__ import annotations

import logging
import time

import numpy as np

from .config import Config, check_against_classes, data_inputs, load_config
from .data import DataError, Dataset, cache_size, decode_split, load_dataset
from .estimator import BaggedEnsemble, images_fingerprint
from .evaluation import decision_report, evaluate_split
from .pages import report_files
from .report import build_metrics
from .runfolder import RunError, RunFolder, load_run

log = logging.getLogger(__name__)


def check_memory(cfg: Config, data: Dataset, source: str, share: float = 0.7) -> None:
    """Refuse, before anything is decoded, a decode cache that would not fit in ``share`` of
    the memory available now (the kernel's OOM killer gives no message)."""
    from .images import available_memory, estimate_decoded_bytes

    size = cache_size(cfg)
    paths = data.train.paths + data.val.paths + (data.test.paths if data.test else [])
    need, have = estimate_decoded_bytes(paths, size), available_memory()

    def show(n: int) -> str:
        return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"

    log.info("decode cache: about %s for %d images at shorter side %d px%s", show(need), len(paths), size,
             "" if have is None else f" ({show(have)} available)")
    if have is not None and need > share * have:
        raise DataError(f"{source}: decoding {len(paths)} images at shorter side {size} px (from `image_size` or "
                        f"`data.cache_size`) needs about {show(need)}, more than {share:.0%} of the "
                        f"{show(have)} available; lower `image_size` or set a smaller `data.cache_size`")


def warn_overlaps(data: Dataset) -> None:
    """Warn about photos (same bytes) that sit in two splits: a test copy of a training photo
    inflates test scores (``effens audit`` is the full check)."""
    from .data import overlapping_images

    splits = {"train": data.train, "val": data.val, **({"test": data.test} if data.test else {})}
    for pair, found in overlapping_images(splits).items():
        first = "; ".join(f"{a} = {b}" for a, b in found["pairs"][:3])
        log.warning("%d image(s) appear in both %s (same file contents), e.g. %s", found["n"], pair.replace("/", " and "),
                    first)


def estimator_from_config(cfg: Config) -> BaggedEnsemble:
    """The estimator of a checked config; its fit does not check it again."""
    return BaggedEnsemble.from_config(cfg)


def _card_shortcuts(data, seed: int) -> dict | None:
    """The run card's shortcut check from file headers; a failure costs the card its line,
    never the finished training."""
    from .shortcuts import header_check

    try:
        return header_check(data, seed)
    except Exception as exc:  # noqa: BLE001 - a report line, not the run: said, then left out
        log.warning("the run card's shortcut check failed (%s: %s); run `effens audit` for it",
                    type(exc).__name__, exc)
        return None


def write_run_report(run: RunFolder, ens: BaggedEnsemble, extra: dict | None = None,
                     cfg: Config | None = None) -> dict:
    """Evaluate every member and strategy on the cached val/test probabilities; write report/
    (``cfg``: the run's config, checked; default: read from the run)."""
    comb = ens.combiner_
    names = [fm.name for fm in ens.members_]
    results: dict[str, dict] = {}
    split_data: dict[str, tuple] = {}  # split -> (paths, labels)
    for split in ("val", "test"):
        cached = run.load_predictions(split)
        if cached is None:
            continue
        paths, y, proba = cached
        if not len(y):  # val with `data.train_on_val`: in training, so never scored
            continue
        results[split] = evaluate_split(proba, y, comb)
        split_data[split] = (paths, y)
    from .card import card_facts, card_lines

    cfg = run.read_config() if cfg is None else cfg
    doc = build_metrics(ens.classes_, names, results, ens.oob_report_, comb,
                        labels={s: d[1] for s, d in split_data.items()})
    doc["decisions"] = decision_report(ens, cfg.decision,
                                       {s: (r[comb.strategy]["_proba"], split_data[s][1]) for s, r in results.items()})
    doc.update(extra or {})
    doc["card"] = card_facts(cfg, ens, results, split_data, doc,
                             f"effens train {run.config_path} --out NEW_RUN_FOLDER")
    md = ""
    if cfg.data.train_on_val:
        doc["held_out"] = held_out_note(ens)
        md = doc["held_out"]["text"] + "\n\n"
    if doc.get("data_changes"):
        from .data import describe_changes

        md = f"Data changed by `data.exclude` / `data.relabel`: {describe_changes(doc['data_changes'])}.\n\n"
    if doc.get("skipped_images"):
        md += "Skipped unreadable images:\n\n" + "\n".join(
            f"- {k}: {d['path']} ({d['reason']})" for k, v in doc["skipped_images"].items() for d in v)
    files = report_files(doc, results, split_data, run.report_dir, ens, cfg.report.saliency, extra_md=md)
    files[run.card_path.name] = "\n".join(card_lines(doc))
    run.write_report(files)
    return doc


def held_out_note(ens: BaggedEnsemble) -> dict:
    """metrics.json's ``held_out`` for a ``data.train_on_val`` run: where every held-out figure comes from."""
    covered = len(np.unique(np.concatenate(ens.oob_indices_)))
    text = (f"Held-out images: `data.train_on_val` trained the members on train + val, so nothing is scored on val. "
            f"Each member's best epoch, the combiner, `auto`, temperatures and prediction sets come from out-of-bag "
            f"images: {covered} of the {len(ens.y_train_)} training images, each left out by at least one member "
            f"and voted on only by the members that left it out. OOB figures of a strategy fitted on OOB "
            f"(weighted, stacking, greedy) are in-sample; `auto` cross-fits them.")
    return {"source": "oob", "train_on_val": True, "n_oob_images": covered, "n_train_images": len(ens.y_train_),
            "text": text}


def preflight(cfg: Config, classes: list[str], source: str) -> None:
    """Everything that can be checked before any work: the device, and every member built
    once (model name, weights file or package, freezing) without touching any generator."""
    import torch

    from members.models import create_member, pick_device

    from .config import ConfigError

    try:
        pick_device(cfg.device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{source}: `device`: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        for i, spec in enumerate(cfg.members):
            try:
                create_member(spec, len(classes))
            except ValueError as exc:  # WeightsError is one; freezing beyond the blocks another
                text = str(exc)
                key = "weights" if "weights" in text.lower() or "package" in text else "train.freeze"
                raise ConfigError(f"{source}: `members.{i}.{key}`: {text}") from None


def train_run(config_path: str, out: str, overrides: list[str] | None = None,
              restart: bool = False) -> dict:
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

    run = RunFolder(out).open_for_training(cfg, restart)
    try:
        with tracking(cfg.tracking, "train", run.root.resolve().name, config_params(cfg),
                      {**environment_tags("train", cfg), "effens.run_dir": str(run.root.resolve())}) as tracker:
            return _train(cfg, data, run, tracker)
    finally:
        run.unlock()


def _train(cfg: Config, data: Dataset, run: RunFolder, tracker=None) -> dict:
    t_start = time.perf_counter()
    run.save_classes(data.classes)
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
    ens = estimator_from_config(cfg)  # checked once, in train_run
    ens.fit(train_imgs, y, X_val=val_imgs, y_val=y_val, classes=data.classes, store=run,
            data_fingerprint=images_fingerprint(train.paths + val.paths, train.labels + val.labels))
    run.save_combiner(ens.combiner_)
    run.save_train_labels(y)
    run.save_predictions("val", val.paths, y_val, ens.val_proba_)
    if test is not None and test_imgs is not None:
        run.save_predictions("test", test.paths, test.encode(data.classes),
                             ens.member_proba(test_imgs, runtime="torch", pool=True))
    run.seal_predictions()
    from .card import data_summary

    sources = {k: _source(getattr(cfg.data, k)) for k in ("train", "val", "test")}
    if data.val_in_train:
        sources["val"] = f"its {data.val_in_train} images are in train (`data.train_on_val`)"
    extra = {"shortcuts": _card_shortcuts(data, cfg.seed),
             "skipped_images": {k: [{"path": p, "reason": r} for p, r in v] for k, v in bad.items() if v},
             "data_changes": data.changes,
             "data_summary": data_summary(data, sources),
             "timing": {"decode_s": decode_s, "total_s": time.perf_counter() - t_start,
                        "members_train_s": {fm.name: fm.meta["train_seconds"] for fm in ens.members_}}}
    doc = write_run_report(run, ens, extra, cfg)
    run.record(cfg)
    log.info("report written to %s (%.0f s in all)", run.report_dir, time.perf_counter() - t_start)
    if tracker:
        from .tracking import log_train

        log_train(tracker, run, ens, doc)
    return doc


def _source(src) -> str:
    """Where a split came from, as the config names it (a folder or a CSV manifest)."""
    if src is None:
        return "held out of train (`data.val_fraction`)"
    return str(src.folder or src.csv)


def refit_run_combiner(out: str, overrides: list[str] | None = None) -> dict:
    """``effens fit-combiner``: refit weights/stacking/calibration of a finished run, rewrite its report.

    Only ``combiner.*`` keys may be overridden; no network runs.
    """
    run = RunFolder(out)
    if overrides:
        bad = [o for o in overrides if not o.startswith(("combiner.", "decision.", "report."))]
        if bad:
            raise RunError(f"fit-combiner only changes `combiner.*`, `decision.*` and `report.*` keys; "
                           f"got {', '.join(bad)}")
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
            doc = write_run_report(run, ens, {k: old[k] for k in ("skipped_images", "timing", "data_changes",
                                                                  "data_summary", "shortcuts") if k in old})
            run.record()
        return doc
    finally:
        run.unlock()
