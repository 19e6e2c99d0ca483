"""One member's job: seed, build, train, predict its OOB images; in process or in a worker.

:class:`TrainingData` (what every member shares) and :class:`MemberJob` (what one member
does) replace long argument lists; :func:`fit_member` is what ``train`` and ``tune``
both run, through :meth:`ensemble.estimator.BaggedEnsemble.fit`.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from typing import Any, Sequence

import numpy as np
import torch

from members.schema import to_dict

from . import __version__
from .metrics import selection_scores
from .parallel import torch_threads

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingData:
    """Decoded images and labels every member of one fit shares; for distillation
    (``effens distill``) the teacher (a :class:`members.trainer.Teacher`) and photos only it labels."""

    images: Sequence[np.ndarray]
    y: np.ndarray
    val_images: Sequence[np.ndarray]
    val_y: np.ndarray
    classes: list[str]
    unlabelled: Sequence[np.ndarray] = ()
    teacher: Any = None

    def train_data(self, sample: np.ndarray, val_images, val_y: np.ndarray):
        """The trainer's :class:`members.trainer.TrainData`: the member's sample, and every
        unlabelled photo (label -1) after the training images; ``val_*``: what it chooses its
        epoch on (:func:`held_out_images`)."""
        from members.trainer import TrainData

        images, labels, n = self.images, np.asarray(self.y), len(self.unlabelled)
        if n:
            if self.teacher is None:
                raise ValueError("unlabelled images need a teacher to label them")
            images = list(images) + list(self.unlabelled)
            labels = np.concatenate([labels, np.full(n, -1, dtype=labels.dtype)])
            sample = np.concatenate([sample, np.arange(len(self.images), len(images))])
        return TrainData(images, labels, sample, val_images, np.asarray(val_y))


@dataclasses.dataclass
class MemberJob:
    """One member's settings, sample and place to run."""

    index: int
    spec: Any  # MemberConfig, precision filled in
    seed: int  # the ensemble's seed
    sample: np.ndarray  # bootstrap indices into the training images
    oob: np.ndarray  # the indices it never drew
    fingerprint: str  # identifies settings + data, for resume
    device: str = "auto"
    threads: int | None = None  # torch threads for this job (None: leave as is)
    plugins: tuple[str, ...] = ()  # the config's plugins, imported again in a worker process

    @property
    def member_seed(self) -> int:
        return member_seed(self.seed, self.index)


def held_out_images(data: TrainingData, oob: np.ndarray) -> tuple[list, np.ndarray]:
    """The images a member chooses its epoch on: val, or with no val (``data.train_on_val``)
    its own out-of-bag images."""
    if len(data.val_y):
        return list(data.val_images), np.asarray(data.val_y)
    return [data.images[i] for i in oob], np.asarray(data.y)[oob]


def member_seed(seed: int, index: int) -> int:
    """Torch seed of member ``index`` (independent of the bagging stream)."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and NumPy's global generator.

    torch's drives the model's initialisation and dropout; the other two are seeded so
    that no draw in a member's job depends on what ran before it in the process
    (augmentation has its own per-item streams, :mod:`members.streams`).
    """
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict:
    import timm

    return {
        "effens": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def fit_member(job: MemberJob, data: TrainingData, store=None) -> dict:
    """Train one member; returns its ``state_dict``, ``meta`` (member.json) and ``arrays``.

    With ``store`` (see :class:`ensemble.runfolder.RunFolder`), epochs are checkpointed
    there and the finished member is saved before this returns.
    """
    from members.models import create_member, pick_device
    from members.precision import resolve_precision
    from members.predictor import predict_proba
    from members.trainer import TrainRun, train_member
    from members.transforms import eval_tensor

    from .plugins import load_entry_points, load_plugins

    load_entry_points()  # a worker process (loky, Ray, Dask) starts without them
    load_plugins(job.plugins)
    spec, classes = job.spec, data.classes
    with torch_threads(job.threads):
        device = pick_device(job.device)
        checkpoint = store.checkpoint(spec.name, job.fingerprint) if store is not None else None
        mseed = job.member_seed
        seed_everything(mseed)  # before the model is built: initialisation draws from it
        member = create_member(spec, len(classes))
        start = getattr(data.teacher, "start", None)  # `distill.init`: the student starts from a trained member
        if start is not None:
            from members.weights import load_trained_file

            load_trained_file(member.model, start)
        precision = resolve_precision(spec.precision or "auto", device)
        log.info("member %s: precision %s (%s)", spec.name, precision.name, precision.reason)
        k = len(classes)
        val_images, val_y = held_out_images(data, job.oob)
        train_data = data.train_data(job.sample, eval_tensor(val_images, member.inputs), val_y)
        run = TrainRun(
            spec.name,
            mseed,
            device,
            lambda y, p: selection_scores(y, p, k),
            precision,
            checkpoint,
            keep_probe="probe" in spec.candidates.weights,
            teacher=data.teacher,
        )
        result = train_member(member, spec.train, train_data, run)
        oob = job.oob
        oob_proba = (
            predict_proba(
                member.model,
                eval_tensor([data.images[i] for i in oob], member.inputs),
                member.inputs,
                spec.train.eval_batch_size,
                device,
                precision=precision,
            )
            if len(oob)
            else np.zeros((0, k))
        )
    meta = {
        "name": spec.name,
        "index": job.index,
        "architecture": spec.model,
        "weights": spec.weights,
        "weights_file": member.weights_file,
        "num_classes": k,
        "classes": list(classes),
        "inputs": dataclasses.asdict(member.inputs),
        "bagging": to_dict(spec.bagging),
        "train": to_dict(spec.train),
        "seed": job.seed,
        "member_seed": mseed,
        "device": str(device),
        "precision": result.precision,
        "precision_reason": precision.reason if precision.name == result.precision else "as in the checkpoint resumed",
        "allocator": result.allocator,
        "n_samples": int(len(job.sample)),
        "n_unique": int(len(np.unique(job.sample))),
        "n_oob": int(len(oob)),
        "best_epoch": result.best_epoch,
        "selection": result.selection,
        "selected_on": "val" if len(data.val_y) else "oob",
        "history": result.history,
        "train_seconds": result.seconds,
        "fingerprint": job.fingerprint,
        "versions": versions(),
    }
    if data.teacher is not None:  # who taught it, and the photos only the teacher labelled
        meta["distill"] = dict(data.teacher.record, n_unlabelled=len(data.unlabelled))
    arrays = {
        "samples": np.asarray(job.sample, dtype=np.int64),
        "oob": np.asarray(oob, dtype=np.int64),
        "oob_proba": oob_proba.astype(np.float32),
    }
    # candidates first: a member whose member.json exists always has its candidates beside it
    with torch_threads(job.threads):
        candidates = _fit_candidates(job, data, member, result, meta, arrays, device, precision, store)
    if store is not None:
        meta = store.save_member(spec.name, result.state_dict, meta, arrays)
        log.info("member %s saved (best epoch %d, %.0f s)", spec.name, result.best_epoch, result.seconds)
    return {"state_dict": result.state_dict, "meta": meta, "arrays": arrays, "candidates": candidates}


def _fit_candidates(
    job: MemberJob, data: TrainingData, member, result, meta: dict, arrays: dict, device, precision, store
) -> list[dict]:
    """The member's pool candidates (:mod:`ensemble.combining.pool`): each kept snapshot's weights, seen
    through its view, scored on the member's OOB images and saved like a member."""
    from members.predictor import predict_proba
    from members.transforms import eval_tensor

    from .combining.pool import member_candidates

    spec, k, oob = job.spec, len(data.classes), job.oob
    out = []
    for cand in member_candidates(spec):
        state = result.state_dict if cand.weights == spec.train.select else result.candidates[cand.weights]
        inputs = dataclasses.replace(member.inputs, view=cand.view)
        member.model.load_state_dict(state)
        proba = (
            predict_proba(
                member.model,
                eval_tensor([data.images[i] for i in oob], inputs),
                inputs,
                spec.train.eval_batch_size,
                device,
                precision=precision,
            )
            if len(oob)
            else np.zeros((0, k))
        )
        cmeta = dict(meta, name=cand.name, inputs=dataclasses.asdict(inputs), candidate=cand._asdict())
        carrays = dict(arrays, oob_proba=proba.astype(np.float32))
        if store is not None:
            cmeta = store.save_member(cand.name, state, cmeta, carrays)
        log.info("member %s: pool candidate %s saved", spec.name, cand.name)
        out.append({"state_dict": state, "meta": cmeta, "arrays": carrays})
    if out:
        member.model.load_state_dict(result.state_dict)
    return out
