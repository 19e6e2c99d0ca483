"""``effens distill``: the ensemble's knowledge in one network (knowledge distillation, #40).

The teacher is a finished run's strategy (its default, or ``distill.strategy``) over its
members; the student is one member (by default the run's smallest member's architecture
and weights source) trained by the members' own trainer (:mod:`members.trainer`) with
:func:`members.trainer.distillation_loss`: per image, the teacher's softened probabilities
against the label's cross-entropy. The teacher labels the very augmented view the student
sees, every step (``distill.teacher_views: 0``), or N augmented views of each image once,
cached in the student's folder (``teacher_views: N``; epoch e trains on view e mod N).
Training images are taught by the whole ensemble or by their OOB vote (``distill.teaching``);
``--unlabelled`` photos by the teacher alone.

The student is a run: a run folder with one member, written by the code ``train`` writes
with (:mod:`ensemble.fitting`), so predict, evaluate, serve, export and audit take it
unchanged; its member.json records the teacher (run, strategy, SHA-256 of each member's
weights) and its report puts it beside the teacher and the teacher's best member.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from members.errors import EffensError

from .config import NOT_STUDENT_KEYS, Config, ConfigError, DistillConfig, MemberConfig, blamed, load_distill
from .data import Dataset, load_dataset
from .estimator import BaggedEnsemble, images_fingerprint, member_fingerprint, with_precision
from .files import file_digest, sha256_file, sha256_json
from .fitting import (
    check_memory,
    data_record,
    decode_dataset,
    estimator_from_config,
    save_fitted,
    write_run_report,
)
from .runfolder import RunError, RunFolder, TeacherCache, load_run, weights_hash
from .schema import build, to_dict

log = logging.getLogger(__name__)

#: the student's member name, unless `distill.student.name` gives another
STUDENT = "student"
#: val images the report times the student and the teacher on
SPEED_IMAGES = 256


class DistillError(EffensError, ValueError):
    """An input ``effens distill`` cannot take: the teacher run, the student, the photos."""


# ---------------------------------------------------------------- the teacher
class EnsembleTeacher:
    """A run's strategy over its members, labelling the student's own augmented inputs (a
    :class:`members.trainer.Teacher`).

    Each member sees the student's batch as the student does: normalisation undone, resized
    to the member's input size (bilinear, antialiased), rounded to 8-bit pixels and answered by
    the fastest inference runtime installed for the device (``runtime: auto``; OpenVINO on a
    CPU where it is installed), made on first use. With
    ``available`` (pool rows x images, from the run's OOB indices) an image is voted on only
    by the members that left it out; an image none left out (or an unlabelled one) by all.
    ``cache`` (views x images x classes) answers from labels made beforehand instead.
    """

    def __init__(
        self,
        ens: BaggedEnsemble,
        strategy: str,
        student_inputs,
        device,
        settings: DistillConfig,
        record: dict,
        available: np.ndarray | None = None,
        start: Path | None = None,
    ) -> None:
        import torch

        comb = ens.combiner_
        self.combiner, self.strategy = comb, strategy
        self.rows = len(comb.names(strategy))
        used = comb.uses(strategy)[: self.rows]
        self.models = [(j, fm) for j, (fm, _) in enumerate(ens.pool_rows()[: self.rows]) if used[j]]
        self.device = torch.device(device)
        self.ens = ens
        self.runtimes: dict = {}  # pool row -> its runtime, made on first use (a cached run needs none)
        self.n_classes = len(ens.classes_)
        self.mean = torch.tensor(student_inputs.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(student_inputs.std, device=self.device).view(1, 3, 1, 1)
        self.temperature, self.weight, self.views = settings.temperature, settings.soft_weight, settings.teacher_views
        self.record = record
        self.available = available
        self.start = start  # the trained weights the student starts from (`distill.init`), or None
        self.cache: np.ndarray | None = None

    def view(self, epoch: int) -> int:
        return epoch % self.views if self.views else epoch

    def __call__(self, x, index, epoch: int):
        import torch

        idx = np.asarray(index, dtype=np.int64)
        proba = self.cache[self.view(epoch), idx] if self.cache is not None else self.label(x, idx)
        return torch.as_tensor(proba, dtype=torch.float32, device=x.device)

    def label(self, x, index: np.ndarray) -> np.ndarray:
        """The strategy's probabilities (batch, classes) for the student's normalised inputs ``x``."""
        import torch
        from torch.nn import functional as F

        out = np.zeros((self.rows, len(x), self.n_classes))
        with torch.inference_mode():
            pixels = x.to(self.device).float() * self.std + self.mean
            for j, fm in self.models:
                size = fm.inputs.image_size
                seen = (
                    pixels
                    if pixels.shape[-1] == size and pixels.shape[-2] == size
                    else F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                )
                crops = (seen * 255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
                if j not in self.runtimes:
                    self.runtimes[j] = self.ens.member_runtime(j, self.device, runtime="auto")
                out[j] = self.runtimes[j].run(crops)
        return self.combine(out, index)

    def combine(self, member_proba: np.ndarray, index: np.ndarray) -> np.ndarray:
        comb = self.combiner
        calibrated = comb.calibrate(member_proba)
        proba = comb.apply(calibrated, self.strategy, calibrated=True)[1]
        if self.available is not None:
            avail = np.zeros((self.rows, len(index)), dtype=bool)
            inside = index < self.available.shape[1]  # unlabelled photos: no member saw them
            avail[:, inside] = self.available[: self.rows, index[inside]]
            covered, _, oob = comb.apply_oob(calibrated, avail, self.strategy)
            proba[covered] = oob
        return proba


def oob_availability(ens: BaggedEnsemble) -> np.ndarray:
    """(pool rows, training images): which members (and candidates) left each image out."""
    out = np.zeros((len(ens.oob_indices_), len(ens.y_train_)), dtype=bool)
    for j, idx in enumerate(ens.oob_indices_):
        out[j, idx] = True
    return out


def label_views(
    teacher: EnsembleTeacher, inputs, train_cfg, data, seed: int, views: int, batch_size: int
) -> np.ndarray:
    """(views, images, classes): the teacher on ``views`` augmented views of every training
    image, drawn as the student's epochs draw them (:func:`members.trainer.augmented_views`)."""
    from tqdm.auto import tqdm

    from members.trainer import augmented_views

    out = np.zeros((views, len(data.images), teacher.n_classes), dtype=np.float32)
    for v in tqdm(range(views), desc="teacher labels views", unit="view", leave=False, disable=None):
        for x, index in augmented_views(inputs, train_cfg, data, seed, v, batch_size):
            idx = index.numpy()
            out[v, idx] = teacher.label(x, idx)
    return out


# ---------------------------------------------------------------- the student
def smallest_member(ens: BaggedEnsemble, cfg: Config) -> MemberConfig:
    """The run's member with the fewest parameters (its settings as configured)."""
    sizes = [sum(p.numel() for p in fm.model.parameters()) for fm in ens.members_]
    return cfg.members[int(np.argmin(sizes))]


def student_base(cfg: Config, init: str, smallest: MemberConfig) -> MemberConfig:
    """The member whose settings the student takes: the one ``distill.init`` names (its
    architecture, weights source and inputs), else ``smallest``."""
    if init in ("weights", "member"):
        return smallest
    return next((m for m in cfg.members if m.name == init), smallest)  # no such member: `start_from_member` says so


def student_spec(
    base: MemberConfig, settings: DistillConfig, source: str, overrides: Sequence[str] = ()
) -> MemberConfig:
    """``distill.student`` over ``base``'s keys (mappings merged one level down), checked by the
    members' own schema (an error names the ``--set`` item, else ``source``); every training
    image, once, no pool candidates. A student that starts from a member's trained head
    (``distill.init``) has no linear probe to replace it unless ``student.train`` asks for one."""
    raw = {k: v for k, v in to_dict(base).items() if k not in NOT_STUDENT_KEYS}
    raw["name"] = STUDENT
    if settings.init != "weights":  # and so no WiSE-FT, which interpolates with the probe
        raw["train"] = {**raw["train"], "lp_epochs": 0, "wise_alpha": 1.0}
    for key, value in settings.student.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    raw.update(bagging={"ratio": 1.0, "replace": False, "stratify": True}, candidates={})
    try:
        return build(MemberConfig, raw, "distill.student")
    except ConfigError as exc:
        raise blamed(exc, list(overrides), source) from None


def start_from_member(ens: BaggedEnsemble, run: RunFolder, model: str, name: str) -> tuple[Path, dict]:
    """(weights file, provenance) of run member ``name``, the student's start (``distill.init``):
    a member of the student's architecture ``model``, whose trained weights it starts from."""
    members = {fm.name: fm for fm in ens.members_}
    if name not in members:
        raise ConfigError(
            f"`distill.init`: {name!r} is not a member of {run.root} ({', '.join(members)}; pool candidates "
            f"cannot start a student); use `weights`, `member` or one of them"
        )
    arch = members[name].meta.get("architecture")
    if arch != model:
        raise ConfigError(
            f"`distill.init`: member {name} is {arch}, the student {model}; name the member in `distill.init` "
            f"without `distill.student.model` (the student takes its architecture), or use `distill.init: weights`"
        )
    return run.member_weights(name).resolve(), {"member": name, "sha256": weights_hash(members[name].meta)}


def student_config(
    teacher_cfg: Config, spec: MemberConfig, settings: DistillConfig, device: str | None, source: str
) -> Config:
    """The student run's config: the teacher's data and seed, one member, its own voting
    (one member: the soft vote is the member), fitted on val (a student leaves nothing out)."""
    from .config import config_from_dict, config_to_dict

    raw = config_to_dict(teacher_cfg)
    raw.update(
        members=[to_dict(spec)], combiner=_fitted_on_val(), tune={}, parallel={}, tracking={}, distill=to_dict(settings)
    )
    if device:
        raw["device"] = device
    return config_from_dict(raw, source=source)


def _fitted_on_val() -> dict:
    """``combiner:`` of a student: the soft vote, every strategy that is fitted fitted on val."""
    from .combining.strategies import STRATEGIES

    out: dict = {"strategy": "soft"}
    for cls in STRATEGIES.values():
        if cls.source_key:
            *parents, last = cls.source_key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = "val"
    return out


def check_student(cfg: Config, n_classes: int, source: str):
    """Build the student once and run it on two blank images of its input size (nothing
    trained, no generator touched); returns its :class:`members.inputs.InputConfig`."""
    import torch

    from members.models import create_member, pick_device

    try:
        pick_device(cfg.device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{source}: `device`: {exc}") from None
    spec = cfg.members[0]
    with torch.random.fork_rng(devices=[]):
        try:
            member = create_member(spec, n_classes)
        except ValueError as exc:  # WeightsError is one; freezing beyond the blocks another
            raise ConfigError(f"{source}: `distill.student`: {exc}") from None
        size = member.inputs.image_size
        try:
            with torch.no_grad():
                member.model.eval()(torch.zeros(2, 3, size, size))
        except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistillError(
                f"{source}: `distill.student.image_size`: {spec.model} cannot take {size} px inputs "
                f"({first}); choose another size"
            ) from None
    return member.inputs


# ---------------------------------------------------------------- unlabelled photos
@dataclasses.dataclass
class Unlabelled:
    """Photos only the teacher labels, after the checks: what is used and what was left out."""

    source: str | None = None
    found: int = 0
    paths: list[str] = dataclasses.field(default_factory=list)
    left_out: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def leave_out(self, why: str, path: str) -> None:
        self.left_out[why] = self.left_out.get(why, 0) + 1
        self.examples.setdefault(why, [])
        if len(self.examples[why]) < 5:
            self.examples[why].append(path)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "found": self.found,
            "used": len(self.paths),
            "left_out": self.left_out,
            "examples": self.examples,
        }


def unlabelled_photos(source: str | None, data: Dataset) -> Unlabelled:
    """The photos of a folder (recursive) or CSV manifest (``path`` column), left out with a
    count: unreadable files, copies (same SHA-256) of a val or test photo (they would leak
    the teacher into the scores), of a training photo, and repeats."""
    from .data import expand_inputs

    if source is None:
        return Unlabelled()
    p = Path(source)
    if not p.exists():
        raise DistillError(f"--unlabelled {source}: no such folder or CSV file")
    if p.is_file() and p.suffix.lower() != ".csv":
        raise DistillError(f"--unlabelled {source}: must be a folder of photos or a CSV manifest with a `path` column")
    paths = expand_inputs([str(p)])
    if not paths:
        raise DistillError(f"--unlabelled {source}: holds no image files")
    out = Unlabelled(str(p), len(paths))
    splits = {"val": data.val, "test": data.test, "train": data.train}
    owner: dict[str, str] = {}
    for name, split in splits.items():
        for q in split.paths if split is not None else []:
            owner.setdefault(file_digest(q), name)
    owner.pop("unreadable", None)
    seen: set[str] = set()
    for q in paths:
        digest = file_digest(q)
        if digest == "unreadable":
            out.leave_out("unreadable", q)
        elif digest in owner:
            out.leave_out(f"duplicate_of_{owner[digest]}", q)
        elif digest in seen:
            out.leave_out("repeated", q)
        else:
            seen.add(digest)
            out.paths.append(q)
    return out


# ---------------------------------------------------------------- the command
@dataclasses.dataclass
class Plan:
    """Everything ``distill`` checked before any work."""

    teacher_run: RunFolder
    teacher: BaggedEnsemble
    strategy: str
    settings: DistillConfig
    cfg: Config
    data: Dataset
    unlabelled: Unlabelled
    inputs: object  # the student's InputConfig
    record: dict  # the teacher's provenance (member.json's `distill`)
    source: str
    start: Path | None = None  # `distill.init`: the member weights the student starts from


def plan_distill(
    run_dir: str,
    config: str | None = None,
    overrides: Sequence[str] = (),
    strategy: str | None = None,
    unlabelled: str | None = None,
    device: str | None = None,
) -> Plan:
    """Check every input of ``effens distill`` (one line each), before any work."""
    teacher_run = RunFolder(run_dir)
    if not teacher_run.config_path.is_file() and not teacher_run.marker_path.is_file():
        raise DistillError(f"{run_dir}: not a run folder (make one with `effens train CONFIG --out RUN`)")
    if teacher_run.marker_path.is_file() and not teacher_run.has_combiner():
        raise DistillError(
            f"{run_dir}: has no trained combiner (its training did not finish): finish it with "
            f"`effens train` on the same --out, then distil it"
        )
    teacher_cfg = teacher_run.read_config()
    settings = load_distill(config, teacher_cfg.distill, list(overrides))
    if strategy is not None:
        settings.strategy = strategy
    if unlabelled is not None:
        settings.unlabelled = str(Path(unlabelled).resolve())
        if settings.soft_weight == 0:
            raise ConfigError(
                "--unlabelled photos are taught by the teacher alone, so `distill.soft_weight` must be > 0; got 0"
            )
    source = str(config) if config else str(teacher_run.config_path)
    ens = load_run(run_dir)  # every file hash-checked
    name = settings.strategy or ens.combiner_.strategy
    if settings.strategy is None and not ens.combiner_.get(name).probabilities:
        # a vote count (hard: shares of 0, 1/3, 2/3, 1) teaches far less than probabilities
        log.info("distill: the run's default strategy %s gives vote shares, not probabilities: teaching by soft", name)
        name = "soft"
    ens.combiner_.get(name)  # unknown: one line with the run's strategies
    settings.strategy = name
    base = student_base(teacher_cfg, settings.init, smallest_member(ens, teacher_cfg))
    spec = student_spec(base, settings, source, overrides)
    start, started = None, None
    if settings.init != "weights":
        try:
            start, started = start_from_member(
                ens, teacher_run, spec.model, base.name if settings.init == "member" else settings.init
            )
        except ConfigError as exc:
            raise blamed(exc, list(overrides), source) from None
        if base.train.lp_epochs and not spec.train.lp_epochs:
            log.info(
                "distill.init: the student starts from member %s's trained head, so no linear probe replaces it "
                "(`distill.student.train.lp_epochs` asks for one)",
                started["member"],
            )
    cfg = student_config(teacher_cfg, spec, settings, device, source)
    data = load_dataset(cfg.data, cfg.seed)
    if data.classes != ens.classes_:
        raise DistillError(
            f"{run_dir}: its data now has classes {data.classes}; its members were trained on {ens.classes_}"
        )
    from .config import check_against_classes

    check_against_classes(cfg, data.classes, source)
    inputs = check_student(cfg, len(data.classes), source)
    photos = unlabelled_photos(settings.unlabelled, data)
    for why, n in photos.left_out.items():
        log.warning(
            "--unlabelled: left out %d photo(s): %s (e.g. %s)", n, why.replace("_", " "), photos.examples[why][0]
        )
    if settings.teaching == "oob":
        _check_same_training_split(teacher_run, ens, data)
    check_memory(cfg, data, source, extra=photos.paths)
    record = {
        "teacher": {
            "run": str(teacher_run.root.resolve()),
            "strategy": name,
            "run_record_sha256": sha256_file(teacher_run.marker_path),
            "members": {fm.name: weights_hash(fm.meta) for fm, _ in ens.pool_rows()},
        },
        **{k: v for k, v in to_dict(settings).items() if k not in ("student", "strategy", "init")},
    }
    if started:  # only then: a student begun before `distill.init` existed still resumes
        record["start"] = started
    return Plan(teacher_run, ens, name, settings, cfg, data, photos, inputs, record, source, start)


def _check_same_training_split(run: RunFolder, ens: BaggedEnsemble, data: Dataset) -> None:
    """OOB teaching reads the run's OOB indices: the training photos must be those it trained on."""
    from .reporting.card import fingerprints

    was = ((run.read_metrics().get("data_summary") or {}).get("train") or {}).get("ordered_fingerprint")
    same = (
        fingerprints(data.train.paths, data.train.labels)[1][:16] == was
        if was
        else len(data.train) == len(ens.y_train_)
    )
    if not same:
        raise DistillError(
            f"{run.root}: its training photos changed since it was trained, so its OOB indices name "
            f"other photos; use `distill.teaching: ensemble`, or train the run again"
        )


def distill_run(
    run_dir: str,
    out: str,
    config: str | None = None,
    overrides: Sequence[str] = (),
    strategy: str | None = None,
    unlabelled: str | None = None,
    device: str | None = None,
    restart: bool = False,
) -> dict:
    """Run ``effens distill``; returns the student's metrics document (``report/metrics.json``).

    Every input is checked before the student's folder is touched; it is locked while
    training, and a run killed midway resumes from its last epoch (same weights).
    """
    plan = plan_distill(run_dir, config, overrides, strategy, unlabelled, device)
    fingerprint = _data_fingerprint(plan)
    run = RunFolder(out).open_for_training(plan.cfg, restart)  # a changed config: refused, naming the keys
    try:
        spec = with_precision(plan.cfg.members, plan.cfg.precision)[0]
        was = run.member_fingerprint(spec.name)
        if (
            was is not None
            and not restart
            and was
            != member_fingerprint(spec, plan.data.classes, np.arange(len(plan.data.train)), fingerprint, plan.cfg.seed)
        ):
            raise RunError(
                f"{out}: holds a student of the same settings taught by another teacher or on other "
                f"photos; use another --out, or --restart to distil it again"
            )
        return _distill(plan, run, fingerprint)
    finally:
        run.unlock()


def _data_fingerprint(plan: Plan) -> str:
    """The student's data, photos and teacher: a student resumes only what all three made."""
    d = plan.data
    return sha256_json(
        [
            images_fingerprint(d.train.paths + d.val.paths, d.train.labels + d.val.labels),
            [file_digest(p) for p in plan.unlabelled.paths],
            plan.record,
        ]
    )


def _distill(plan: Plan, run: RunFolder, fingerprint: str) -> dict:
    from members.models import pick_device

    from .member_jobs import TrainingData, member_seed

    t_start = time.perf_counter()
    cfg, data, settings = plan.cfg, plan.data, plan.settings
    run.save_classes(data.classes)
    dec = decode_dataset(cfg, data)
    unlabelled = _decode_unlabelled(plan.unlabelled, cfg)
    y, y_val = dec.train.encode(data.classes), dec.val.encode(data.classes)
    if settings.teaching == "oob" and len(y) != len(plan.teacher.y_train_):
        raise DistillError(
            f"{plan.teacher_run.root}: {len(plan.teacher.y_train_) - len(y)} of its training photos "
            f"could not be read now, so its OOB indices name other photos; use "
            f"`distill.teaching: ensemble`"
        )
    device = pick_device(cfg.device)
    teacher = EnsembleTeacher(
        plan.teacher,
        plan.strategy,
        plan.inputs,
        device,
        settings,
        plan.record,
        oob_availability(plan.teacher) if settings.teaching == "oob" else None,
        plan.start,
    )
    t0 = time.perf_counter()
    if settings.teacher_views:
        spec = cfg.members[0]
        views = TrainingData(dec.train_images, y, [], y_val, data.classes, unlabelled, teacher).train_data(
            np.arange(len(y)), None, y_val
        )  # what the student's epochs draw (its sample: every image)
        answered_by = [r for r, _ in plan.teacher.inference_plan("auto", None, device)]  # labels differ by runtime
        cache = TeacherCache(
            run.root, sha256_json([fingerprint, to_dict(spec), cfg.seed, settings.teacher_views, answered_by])
        )
        teacher.cache = cache.load()
        if teacher.cache is None:
            log.info("teacher: labelling %d augmented view(s) of %d images", settings.teacher_views, len(views.images))
            teacher.cache = label_views(
                teacher,
                plan.inputs,
                spec.train,
                views,
                member_seed(cfg.seed, 0),
                settings.teacher_views,
                spec.train.eval_batch_size,
            )
            cache.save(teacher.cache)
    labelling_s = time.perf_counter() - t0
    ens = estimator_from_config(cfg)
    ens.fit(
        dec.train_images,
        y,
        X_val=dec.val_images,
        y_val=y_val,
        classes=data.classes,
        store=run,
        data_fingerprint=fingerprint,
        teacher=teacher,
        unlabelled=unlabelled,
    )
    save_fitted(run, ens, dec.val, dec.test, dec.test_images)
    report = distill_report(plan, ens, run, dec.val_images, str(device))
    if settings.teaching == "oob":
        covered = int(teacher.available.any(axis=0).sum()) if teacher.available is not None else 0
        report["oob"] = {"taught_by_oob": covered, "taught_by_all": int(len(y) - covered)}
    fm = ens.members_[0]
    extra = {
        **data_record(cfg, data, dec.bad),
        "distill": report,
        "timing": {
            "decode_s": dec.seconds,
            "teacher_labelling_s": labelling_s,
            "total_s": time.perf_counter() - t_start,
            "members_train_s": {fm.name: fm.meta["train_seconds"]},
        },
    }
    doc = write_run_report(
        run,
        ens,
        extra,
        command=f"effens distill {plan.teacher_run.root} --config {run.config_path} --out NEW_RUN_FOLDER",
    )
    run.record()
    log.info("student written to %s (%.0f s in all)", run.root, time.perf_counter() - t_start)
    return doc


def _decode_unlabelled(photos: Unlabelled, cfg: Config) -> list[np.ndarray]:
    """The photos decoded like the splits; unreadable ones leave with a count."""
    if not photos.paths:
        return []
    from .data import cache_size
    from .images import decode_all

    arrays, bad = decode_all(photos.paths, cache_size(cfg), on_bad="skip", desc="decode unlabelled")
    for path, _ in bad:
        photos.leave_out("unreadable", path)
    keep = [i for i, a in enumerate(arrays) if a is not None]
    photos.paths = [photos.paths[i] for i in keep]
    return [a for a in arrays if a is not None]


# ---------------------------------------------------------------- the report
def distill_report(
    plan: Plan, student: BaggedEnsemble, run: RunFolder, val_images: Sequence[np.ndarray], device: str
) -> dict:
    """``metrics.json``'s ``distill``: the teacher's provenance, the settings, the photos, and
    per split the student beside the teacher and the teacher's best member (on val)."""
    comb = plan.teacher.combiner_
    classes = student.classes_
    splits: dict[str, dict] = {}
    best = None
    for split in ("val", "test"):
        got = run.load_predictions(split)
        if got is None:
            continue
        paths, y, s_member = got
        s_pred, s_proba = student.combiner_.apply(s_member)
        t_member = comb.calibrate(_teacher_member_proba(plan, split, list(paths)))
        t_pred, t_proba = comb.apply(t_member, plan.strategy, calibrated=True)
        members = t_member[: len(comb.member_names)]
        if best is None:  # chosen on val, reported on every split
            from .metrics import macro_f1

            best = int(np.argmax([macro_f1(y, p.argmax(1), len(classes)) for p in members]))
        splits[split] = {
            who: compare_scores(y, p.argmax(1), p, t_pred, classes, seed=plan.cfg.seed)
            for who, p in (("student", s_proba), ("teacher", t_proba), ("best_member", members[best]))
        }
    spec = student.specs_[0]
    return {
        "teacher": plan.record["teacher"],
        "settings": {
            **{k: plan.record[k] for k in ("temperature", "soft_weight", "teacher_views", "teaching")},
            "init": plan.settings.init,
        },
        "start": plan.record.get("start"),
        "student": {
            "name": spec.name,
            "model": spec.model,
            "weights": spec.weights,
            "image_size": student.members_[0].inputs.image_size,
            "parameters": _parameters(student.members_[0].model),
        },
        "teacher_parameters": sum(_parameters(fm.model) for fm in _used_rows(plan)),
        "best_member": comb.member_names[best] if best is not None else None,
        "in_sample_share": float(1 - oob_availability(plan.teacher)[: len(comb.member_names)].mean()),
        "splits": splits,
        "unlabelled": plan.unlabelled.summary(),
        "speed": inference_speed(plan, student, val_images, device),
    }


def compare_scores(
    y: np.ndarray, pred: np.ndarray, proba: np.ndarray, teacher_pred: np.ndarray, classes: Sequence[str], seed: int = 0
) -> dict:
    """Macro-F1 with its bootstrap interval, accuracy, ECE, log loss, and agreement with the
    teacher's predictions, overall and per class the teacher predicts (None: it predicts none)."""
    from .metrics import expected_calibration_error, log_loss, macro_f1
    from .reporting.card import bootstrap_interval

    k = len(classes)
    per_class = {
        c: (float(np.mean(pred[teacher_pred == i] == i)) if (teacher_pred == i).any() else None)
        for i, c in enumerate(classes)
    }
    return {
        "macro_f1": macro_f1(y, pred, k),
        "interval": bootstrap_interval(y, pred, k, seed)["macro_f1"],
        "accuracy": float(np.mean(pred == y)),
        "ece": expected_calibration_error(y, proba),
        "log_loss": log_loss(y, proba),
        "agreement": float(np.mean(pred == teacher_pred)),
        "agreement_per_class": per_class,
    }


def _teacher_member_proba(plan: Plan, split: str, paths: list[str]) -> np.ndarray:
    """The teacher's member probabilities on ``paths``: the run's cached ones when it cached
    these very photos, else computed."""
    got = plan.teacher_run.load_predictions(split)
    if got is not None and list(got[0]) == paths:
        return got[2]
    return plan.teacher.member_proba(paths, runtime="torch", pool=True)


def _used_rows(plan: Plan) -> list:
    comb = plan.teacher.combiner_
    n = len(comb.names(plan.strategy))
    used = comb.uses(plan.strategy)[:n]
    return [fm for j, (fm, _) in enumerate(plan.teacher.pool_rows()[:n]) if used[j]]


def _parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def inference_speed(plan: Plan, student: BaggedEnsemble, images: Sequence[np.ndarray], device: str) -> dict:
    """Images per second of the student and of the teacher's strategy on up to
    :data:`SPEED_IMAGES` decoded val images (torch runtime, this process, after one warm-up
    batch): the networks' cost alone; ``scripts/benchmark_distill.py`` times whole processes."""
    import torch

    imgs = list(images[:SPEED_IMAGES])

    def rate(predict) -> float:
        predict(imgs[:2])
        t0 = time.perf_counter()
        predict(imgs)
        return len(imgs) / max(time.perf_counter() - t0, 1e-9)

    return {
        "images": len(imgs),
        "device": device,
        "threads": torch.get_num_threads(),
        "runtime": "torch",
        "student_images_per_s": rate(lambda x: student.predict_proba(x, runtime="torch", device=device)),
        "teacher_images_per_s": rate(
            lambda x: plan.teacher.predict_proba(x, plan.strategy, runtime="torch", device=device)
        ),
    }
