"""What every command that fits a run shares (``train``, ``distill``): the checks before
any work (device, members, memory), the estimator from a config, and a fitted run's cached
predictions and report written into its folder."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import numpy as np

from .config import Config
from .data import DataError, Dataset, Split, cache_size, decode_split
from .estimator import BaggedEnsemble
from .reporting.assets import report_files
from .reporting.evaluation import decision_report, evaluate_split
from .reporting.markdown import build_metrics
from .runfolder import RunFolder

log = logging.getLogger(__name__)


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


def check_memory(cfg: Config, data: Dataset, source: str, share: float = 0.7, extra: Sequence[str] = ()) -> None:
    """Refuse, before anything is decoded, a decode cache that would not fit in ``share`` of
    the memory available now (the kernel's OOM killer gives no message); ``extra``: more
    images to decode beside the splits."""
    from .images import available_memory, estimate_decoded_bytes

    size = cache_size(cfg)
    paths = data.train.paths + data.val.paths + (data.test.paths if data.test else []) + list(extra)
    need, have = estimate_decoded_bytes(paths, size), available_memory()

    def show(n: int) -> str:
        return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"

    log.info(
        "decode cache: about %s for %d images at shorter side %d px%s",
        show(need),
        len(paths),
        size,
        "" if have is None else f" ({show(have)} available)",
    )
    if have is not None and need > share * have:
        raise DataError(
            f"{source}: decoding {len(paths)} images at shorter side {size} px (from `image_size` or "
            f"`data.cache_size`) needs about {show(need)}, more than {share:.0%} of the "
            f"{show(have)} available; lower `image_size` or set a smaller `data.cache_size`"
        )


def estimator_from_config(cfg: Config) -> BaggedEnsemble:
    """The estimator of a checked config; its fit does not check it again."""
    return BaggedEnsemble.from_config(cfg)


@dataclasses.dataclass
class Decoded:
    """A data set's splits as decoded (unreadable images left out under `data.on_bad_image: skip`)."""

    train: Split
    train_images: list
    val: Split
    val_images: list
    test: Split | None
    test_images: list | None
    bad: dict[str, list]  # split -> (path, reason) of each image left out
    seconds: float


def decode_dataset(cfg: Config, data: Dataset) -> Decoded:
    """Decode every split once, at the shorter side the config's members need."""
    size = cache_size(cfg)
    log.info(
        "data: %d train, %d val, %s test images, classes %s; decoding once at shorter side %d px",
        len(data.train),
        len(data.val),
        len(data.test) if data.test else 0,
        data.classes,
        size,
    )
    t0 = time.perf_counter()
    train, train_imgs, bad_train = decode_split(data.train, size, cfg.data.on_bad_image, "train")
    val, val_imgs, bad_val = decode_split(data.val, size, cfg.data.on_bad_image, "val")
    bad = {"train": bad_train, "val": bad_val}
    test = test_imgs = None
    if data.test is not None:
        test, test_imgs, bad["test"] = decode_split(data.test, size, cfg.data.on_bad_image, "test")
    seconds = time.perf_counter() - t0
    log.info("decoded %d images in %.1f s", len(train) + len(val) + (len(test) if test else 0), seconds)
    return Decoded(train, train_imgs, val, val_imgs, test, test_imgs, bad, seconds)


def data_record(cfg: Config, data: Dataset, bad: dict[str, list]) -> dict:
    """``metrics.json``'s account of the data: images left out, list changes, sizes and fingerprints."""
    from .reporting.card import data_summary

    sources = {k: _source(getattr(cfg.data, k)) for k in ("train", "val", "test")}
    if data.val_in_train:
        sources["val"] = f"its {data.val_in_train} images are in train (`data.train_on_val`)"
    return {
        "skipped_images": {k: [{"path": p, "reason": r} for p, r in v] for k, v in bad.items() if v},
        "data_changes": data.changes,
        "data_summary": data_summary(data, sources),
    }


def _source(src) -> str:
    """Where a split came from, as the config names it (a folder or a CSV manifest)."""
    if src is None:
        return "held out of train (`data.val_fraction`)"
    return str(src.folder or src.csv)


def save_fitted(run: RunFolder, ens: BaggedEnsemble, val: Split, test: Split | None, test_images) -> None:
    """A fitted ensemble's combiner, training labels and val/test member probabilities, sealed
    (val's from the fit; test's computed here, on ``test_images``)."""
    run.save_combiner(ens.combiner_)
    run.save_train_labels(ens.y_train_)
    run.save_predictions("val", val.paths, ens.val_y_, ens.val_proba_)
    if test is not None:
        run.save_predictions(
            "test", test.paths, test.encode(ens.classes_), ens.member_proba(test_images, runtime="torch", pool=True)
        )
    run.seal_predictions()


def write_run_report(
    run: RunFolder,
    ens: BaggedEnsemble,
    extra: dict | None = None,
    cfg: Config | None = None,
    command: str | None = None,
) -> dict:
    """Evaluate every member and strategy on the cached val/test probabilities; write report/.
    ``cfg``: the run's config, checked (default: read from the run); ``command``: how to make
    the run again, for the card (default: ``effens train`` its config)."""
    comb = ens.combiner_
    names = [fm.name for fm in ens.members_]
    # one network (a student, a one-member run): every strategy answers as it does, so only the default is shown
    shown = [comb.strategy] if len(ens.pool_rows()) == 1 else None
    results: dict[str, dict] = {}
    split_data: dict[str, tuple] = {}  # split -> (paths, labels)
    for split in ("val", "test"):
        cached = run.load_predictions(split)
        if cached is None:
            continue
        paths, y, proba = cached
        if not len(y):  # val with `data.train_on_val`: in training, so never scored
            continue
        results[split] = evaluate_split(proba, y, comb, shown)
        split_data[split] = (paths, y)
    from .reporting.card import card_facts, card_lines

    cfg = run.read_config() if cfg is None else cfg
    doc = build_metrics(
        ens.classes_, names, results, ens.oob_report_, comb, labels={s: d[1] for s, d in split_data.items()}
    )
    if shown:
        note = comb.get(comb.strategy).describe(comb.names(comb.strategy))
        doc["combiner"]["notes"] = ([note] if note else []) + [
            f"One network: every vote is its answer (stacking only re-fits its probabilities), so the report "
            f"shows the default, {comb.strategy}; `effens evaluate RUN DATA --out DIR` scores every strategy."
        ]
        doc["combiner"]["fitted_on_val"] = [s for s in doc["combiner"].get("fitted_on_val", []) if s in shown]
    doc["decisions"] = decision_report(
        ens, cfg.decision, {s: (r[comb.strategy]["_proba"], split_data[s][1]) for s, r in results.items()}
    )
    doc.update(extra or {})
    doc["card"] = card_facts(
        cfg, ens, results, split_data, doc, command or f"effens train {run.config_path} --out NEW_RUN_FOLDER"
    )
    md = ""
    if cfg.data.train_on_val:
        doc["held_out"] = held_out_note(ens)
        md = doc["held_out"]["text"] + "\n\n"
    if doc.get("data_changes"):
        from .data import describe_changes

        md += f"Data changed by `data.exclude` / `data.relabel`: {describe_changes(doc['data_changes'])}.\n\n"
    if doc.get("skipped_images"):
        md += "Skipped unreadable images:\n\n" + "\n".join(
            f"- {k}: {d['path']} ({d['reason']})" for k, v in doc["skipped_images"].items() for d in v
        )
    files = report_files(doc, results, split_data, run.report_dir, ens, cfg.report.saliency, extra_md=md)
    files[run.card_path.name] = "\n".join(card_lines(doc))
    run.write_report(files)
    return doc


def held_out_note(ens: BaggedEnsemble) -> dict:
    """metrics.json's ``held_out`` for a ``data.train_on_val`` run: where every held-out figure comes from."""
    covered = len(np.unique(np.concatenate(ens.oob_indices_)))
    text = (
        f"Held-out images: `data.train_on_val` trained the members on train + val, so nothing is scored on val. "
        f"Each member's best epoch, the combiner, `auto`, temperatures and prediction sets come from out-of-bag "
        f"images: {covered} of the {len(ens.y_train_)} training images, each left out by at least one member "
        f"and voted on only by the members that left it out. OOB figures of a strategy fitted on OOB "
        f"(weighted, stacking, greedy) are in-sample; `auto` cross-fits them."
    )
    return {
        "source": "oob",
        "train_on_val": True,
        "n_oob_images": covered,
        "n_train_images": len(ens.y_train_),
        "text": text,
    }
