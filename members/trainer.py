"""One member's training loop: AdamW, warm-up + cosine, then the weights it keeps.

Optionally a linear probe first (LP-FT: the head trained on frozen features, then the whole
member fine-tuned from that head); during training an EMA and/or SWA of the weights
(:mod:`members.averaging`); at the end ``train.select`` keeps the best epoch on validation,
the last epoch, the EMA or the SWA weights, optionally interpolated with the linear-probe
weights (WiSE-FT, ``train.wise_alpha``). Every candidate's validation score is recorded.

What to train on (:class:`TrainData`) and how the run goes (:class:`TrainRun`: name,
seed, device, precision, where checkpoints go, how validation is scored) come in as two
small objects; validation scores and checkpoint storage are passed in, so this package
knows nothing of the ensemble around it. A :class:`Teacher` in ``TrainRun.teacher`` turns
the loop into knowledge distillation (``effens distill``): each step's loss is then
:func:`distillation_loss` against what the teacher says of that very batch.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from .allocator import keep_freed_memory
from .averaging import WeightAverages, interpolate, snapshot
from .checkpoint import Checkpointer, pack_state, restore_state, saved_averages
from .errors import EffensError
from .models import Member, set_train_mode
from .precision import Precision
from .predictor import default_precision, predict_proba
from .schedule import warmup_cosine
from .settings import TrainConfig
from .transforms import SampleDataset, train_transform

log = logging.getLogger(__name__)


class TrainingError(EffensError, RuntimeError):
    """A member's training failed (for example, the loss became NaN)."""


@dataclasses.dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict]
    seconds: float
    precision: str = "fp32"  # what the forward/backward passes ran in
    selection: dict = dataclasses.field(default_factory=dict)  # what was kept; val scores of each candidate
    candidates: dict[str, dict] = dataclasses.field(default_factory=dict)  # best/last/ema/swa/probe weights
    allocator: str = ""  # what the C allocator did during training (members/allocator.py)


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in four groups: head/backbone x decay/no decay.

    The classifier trains at ``lr``, everything else at ``lr * backbone_lr_scale``; biases
    and norm weights (1-d tensors) get no weight decay.
    """
    head = {id(p) for p in model.get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head, p.ndim <= 1), []).append(p)
    return [
        {
            "params": ps,
            "lr": lr * (1.0 if is_head else backbone_lr_scale),
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (is_head, no_decay), ps in groups.items()
    ]


def epoch_sizes(epochs: int, size: int, min_size: int | None, multiple: int = 32) -> list[int]:
    """Progressive resizing: training size per epoch, from ``min_size`` up to ``size``.

    Grows linearly over the first two thirds of the epochs (rounded to ``multiple``);
    the last third trains at ``size``.
    """
    if not min_size or min_size >= size or epochs < 2:
        return [size] * epochs
    ramp = max(1, int(round(epochs * 2 / 3)))
    out = []
    for e in range(epochs):
        if e >= ramp:
            out.append(size)
            continue
        s = min_size + (size - min_size) * e / ramp
        out.append(min(size, max(min_size, int(round(s / multiple)) * multiple)))
    return out


def step_probe(member: Member, batch_size: int, image_size: int, device: torch.device) -> Callable[[Precision], None]:
    """One training step's forward and backward pass (no update) on a copy of the member.

    For :func:`members.precision.resolve_precision`'s ``auto``: timed in fp32 and bf16
    to choose the faster on this machine. Nothing is copied until the first call (an
    explicit precision never calls it); draws nothing from the global generators.
    """
    made: dict = {}  # the copy and the batch, made on the first call only

    def step(precision: Precision) -> None:
        if not made:
            model = copy.deepcopy(member.model).to(device=device, memory_format=torch.channels_last).train()
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
            made.update(
                model=model,
                x=x.contiguous(memory_format=torch.channels_last),
                y=torch.zeros(batch_size, dtype=torch.long, device=device),
            )
        model = made["model"]
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(made["x"]).float(), made["y"])
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


class Teacher(Protocol):
    """Soft targets for distillation: what a teacher says of the batch the student sees.

    ``temperature`` and ``weight`` set :func:`distillation_loss`; ``record`` is what the
    student's record (member.json) keeps about the teacher; ``start``, when not None, is a
    trained network's weights file the student starts from, head included.
    """

    temperature: float
    weight: float
    record: dict
    start: Path | None

    def view(self, epoch: int) -> int:
        """The augmentation streams epoch ``epoch`` draws (a teacher that labelled N views
        of each image beforehand answers ``epoch % N``: every image comes back as one of them)."""

    def __call__(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Probabilities (batch, classes) for ``x``, the student's normalised input, of images ``index``."""


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_proba: torch.Tensor,
    temperature: float,
    weight: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Knowledge distillation's loss (Hinton et al., 2015), averaged over the batch: per image,
    ``weight`` x T² x KL(teacher ‖ student), both softened by temperature T (the teacher's
    probabilities raised to 1/T and renormalised), plus (1 - ``weight``) x cross-entropy with
    the label; an image labelled -1 (unlabelled) has no label term."""
    t = float(temperature)
    logits = logits.float()
    log_student = nn.functional.log_softmax(logits / t, dim=1)
    log_teacher = nn.functional.log_softmax(torch.log(teacher_proba.float().clamp_min(1e-12)) / t, dim=1)
    soft = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1) * (t * t)
    labelled = labels >= 0
    hard = (
        nn.functional.cross_entropy(logits, labels.clamp_min(0), label_smoothing=label_smoothing, reduction="none")
        * labelled
    )
    return (weight * soft + (1.0 - weight) * hard).mean()


Scorer = Callable[[np.ndarray, np.ndarray], dict]
"""(labels, probabilities) -> {"macro_f1": ..., "log_loss": ...} for best-epoch selection."""


@dataclasses.dataclass
class TrainData:
    """A member's training sample and its validation set."""

    images: Sequence[np.ndarray]  # decoded RGB uint8 images of the whole training split
    labels: np.ndarray  # their class indices
    sample: np.ndarray  # this member's (bootstrap) indices into them
    val_images: torch.Tensor  # validation images as an eval uint8 tensor
    val_labels: np.ndarray

    @property
    def labelled_sample(self) -> np.ndarray:
        """The sample without the images labelled -1 (only a teacher labels those)."""
        return self.sample[np.asarray(self.labels)[self.sample] >= 0]


@dataclasses.dataclass
class TrainRun:
    """How one member's training runs."""

    name: str
    seed: int
    device: torch.device
    score: Scorer
    precision: Precision | None = None  # default: fp32 on CPU, mixed precision on GPU
    checkpoint: Checkpointer | None = None  # every finished epoch is saved here and resumed from
    keep_probe: bool = False  # make the linear probe on resume too (it is kept as a candidate)
    teacher: Teacher | None = None  # distillation: soft targets for every batch


@dataclasses.dataclass
class BestEpoch:
    """The epoch with the highest validation macro-F1 (ties: lower log loss) and its weights."""

    key: tuple[float, float] | None = None
    epoch: int = -1
    state: dict | None = None

    def update(self, epoch: int, scores: dict, model: nn.Module) -> None:
        key = (scores["macro_f1"], -scores["log_loss"])
        if self.key is None or key > self.key:
            self.key, self.epoch = key, epoch
            self.state = snapshot(model)


def linear_probe(member: Member, cfg: TrainConfig, data: TrainData, run: TrainRun, precision: Precision) -> dict:
    """LP-FT's first stage: train the head alone on the frozen network's features of the
    sample (un-augmented, the member's view; :mod:`members.features`, as ``tune`` does),
    install it in ``member.model`` and return the model's weights with that head."""
    from .features import extract_features, train_head
    from .transforms import eval_tensor

    sample = data.labelled_sample
    uniq = np.unique(sample)
    # in place before inference mode: weights converted inside it could not be trained afterwards
    member.model.to(device=run.device, memory_format=torch.channels_last)
    feats = extract_features(
        member.model,
        eval_tensor([data.images[i] for i in uniq], member.inputs),
        member.inputs,
        cfg.eval_batch_size,
        run.device,
        precision,
    ).clone()
    rows = torch.full((len(data.images),), -1, dtype=torch.long)
    rows[torch.as_tensor(uniq, dtype=torch.long)] = torch.arange(len(uniq))
    classifier = member.model.get_classifier()
    head = train_head(
        lambda idx: feats[rows[idx]],
        feats.shape[1],
        data.labels,
        sample,
        classifier.out_features,
        cfg,
        run.seed,
        epochs=cfg.lp_epochs,
    )
    with torch.no_grad():
        classifier.weight.copy_(head.weight)
        classifier.bias.copy_(head.bias)
    log.info("%s: linear probe trained on frozen features (%d epochs, %d images)", run.name, cfg.lp_epochs, len(uniq))
    return snapshot(member.model)


class _Loop:
    """Optimiser, schedule, loaders and the per-epoch parts of :func:`train_member`."""

    def __init__(self, member: Member, cfg: TrainConfig, data: TrainData, run: TrainRun, precision: Precision) -> None:
        self.member, self.cfg, self.data, self.run, self.precision = member, cfg, data, run, precision
        device = run.device
        self.model = member.model.to(device=device, memory_format=torch.channels_last)
        self.sizes = epoch_sizes(cfg.epochs, member.inputs.image_size, cfg.min_image_size)
        self.dataset = SampleDataset(data.images, data.labels, data.sample, None, seed=run.seed, with_index=True)
        self.gen = torch.Generator().manual_seed(run.seed)
        self.transforms: dict[int, object] = {}
        steps_per_epoch = len(self.loader(self.sizes[0]))
        total = steps_per_epoch * cfg.epochs
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_scale))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total, int(round(cfg.warmup_epochs * steps_per_epoch)))
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision.uses_scaler)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.averages = WeightAverages(cfg.ema, cfg.swa_epochs, cfg.epochs)

    def loader(self, size: int) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        if size not in self.transforms:
            self.transforms[size] = train_transform(dataclasses.replace(self.member.inputs, image_size=size), cfg)
        self.dataset.transform = self.transforms[size]
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=len(self.dataset) > cfg.batch_size,
            num_workers=cfg.num_workers,
            generator=self.gen,
            pin_memory=self.run.device.type == "cuda",
        )

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over the sample -> (mean loss, images seen)."""
        from tqdm.auto import tqdm

        cfg, device, name, teacher = self.cfg, self.run.device, self.run.name, self.run.teacher
        set_train_mode(self.model, self.member.frozen, True)
        loader = self.loader(self.sizes[epoch])
        self.dataset.epoch = epoch if teacher is None else teacher.view(epoch)
        t0 = time.perf_counter()
        seen, loss_sum = 0, 0.0
        bar = tqdm(
            loader,
            desc=f"{name} epoch {epoch + 1}/{cfg.epochs} @{self.sizes[epoch]}px",
            leave=False,
            unit="batch",
            disable=None,
        )
        for x, y, index in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            target = None if teacher is None else teacher(x, index, epoch)  # before the student: no draw between
            with self.precision.autocast():
                if teacher is None or target is None:
                    loss = self.criterion(self.model(x).float(), y)
                else:
                    loss = distillation_loss(
                        self.model(x), y, target, teacher.temperature, teacher.weight, cfg.label_smoothing
                    )
            if not torch.isfinite(loss):
                raise TrainingError(f"member {name}: loss became {loss.item()} at epoch {epoch + 1}; try a lower `lr`")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.averages.after_step(self.model)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.1f}")
        return loss_sum / max(seen, 1), seen

    def evaluate(self, state: dict | None = None) -> dict:
        """Validation scores (see :data:`Scorer`) of the current weights, or of ``state`` (on a copy)."""
        model = self.model
        if state is not None:
            model = copy.deepcopy(self.model)
            model.load_state_dict(state)
        proba = predict_proba(
            model,
            self.data.val_images,
            self.member.inputs,
            self.cfg.eval_batch_size,
            self.run.device,
            precision=self.precision,
        )
        return self.run.score(self.data.val_labels, proba)

    def checkpoint(self, epoch: int, best: BestEpoch, history: list[dict]) -> None:
        if self.run.checkpoint is not None:
            assert best.key is not None and best.state is not None  # called after each epoch's BestEpoch.update
            self.run.checkpoint.save(
                *pack_state(
                    epoch=epoch,
                    model=self.model,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    scaler=self.scaler,
                    generator=self.gen,
                    best_state=best.state,
                    best_key=list(best.key),
                    best_epoch=best.epoch,
                    history=history,
                    precision=self.precision.name,
                    averages=(self.averages.tensors(), self.averages.doc()) if self.averages.active else None,
                )
            )

    def resume(self, resumed: tuple[dict, dict]) -> tuple[BestEpoch, list[dict], int]:
        assert self.run.checkpoint is not None  # what was resumed came from it
        tensors, doc = resumed
        state = restore_state(
            tensors,
            doc,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            generator=self.gen,
        )
        best = BestEpoch(tuple(doc["best_key"]), doc["best_epoch"], state)
        self.averages.load(*saved_averages(tensors, doc))
        log.info(
            "%s: resuming after epoch %d/%d from %s",
            self.run.name,
            doc["epoch"],
            self.cfg.epochs,
            self.run.checkpoint.where,
        )
        return best, doc["history"], doc["epoch"]


def augmented_views(
    inputs, cfg: TrainConfig, data: TrainData, seed: int, view: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised batch, image indices) of the training inputs an epoch drawing augmentation
    streams ``view`` gives (:class:`Teacher`), at ``inputs.image_size``, in sample order: what a
    teacher labels beforehand when it caches views. ``seed``: the member's (``TrainRun.seed``)."""
    dataset = SampleDataset(
        data.images, data.labels, data.sample, train_transform(inputs, cfg), seed=seed, with_index=True
    )
    dataset.epoch = view
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=cfg.num_workers)
    for x, _, index in loader:
        yield x, index


def train_member(member: Member, cfg: TrainConfig, data: TrainData, run: TrainRun) -> TrainResult:
    """Train ``member.model`` on ``data.images[data.sample]``; keep the best epoch on validation.

    ``cfg`` is the member's training settings (:class:`~members.settings.TrainConfig`).
    With ``run.checkpoint``, every finished epoch is saved there and a checkpoint found at
    the start is resumed (same weights as an uninterrupted run on CPU); a resumed member
    finishes in the precision of its checkpoint. ``run.precision`` sets autocast for the
    forward/backward passes and validation; the weights, optimiser moments and
    checkpoints stay fp32.
    """
    torch.manual_seed(run.seed)
    allocator = keep_freed_memory() if run.device.type == "cpu" else "system defaults (not a CPU)"
    precision = run.precision or default_precision(run.device)
    resumed = run.checkpoint.load() if run.checkpoint is not None else None
    if resumed is not None and resumed[1].get("precision", precision.name) != precision.name:
        # a resumed member finishes in the precision it started in (``auto`` may measure anew)
        precision = Precision(resumed[1]["precision"], run.device.type, "as in the checkpoint being resumed")
        log.info("%s: continuing in %s, the precision of its checkpoint", run.name, precision.name)
    # the probe is made again on resume only where WiSE-FT needs it (the model comes from the checkpoint)
    need_probe = cfg.lp_epochs and (resumed is None or cfg.wise_alpha < 1 or run.keep_probe)
    probe = linear_probe(member, cfg, data, run, precision) if need_probe else None
    torch.manual_seed(run.seed)
    loop = _Loop(member, cfg, data, run, precision)
    best, history, first_epoch = loop.resume(resumed) if resumed is not None else (BestEpoch(), [], 0)
    start = time.perf_counter()
    for epoch in range(first_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loss, seen = loop.train_epoch(epoch)
        train_s = time.perf_counter() - t0
        scores = loop.evaluate()
        record = {
            "epoch": epoch + 1,
            "image_size": loop.sizes[epoch],
            "train_loss": loss,
            "val_macro_f1": scores["macro_f1"],
            "val_log_loss": scores["log_loss"],
            "train_images_per_s": seen / max(train_s, 1e-9),
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        log.info(
            "%s epoch %d/%d @%dpx: loss %.4f, val macro-F1 %.4f, val log loss %.4f, %.1f img/s",
            run.name,
            epoch + 1,
            cfg.epochs,
            loop.sizes[epoch],
            loss,
            scores["macro_f1"],
            scores["log_loss"],
            record["train_images_per_s"],
        )
        best.update(epoch + 1, scores, loop.model)
        loop.averages.after_epoch(epoch + 1, loop.model)
        loop.checkpoint(epoch + 1, best, history)
    assert best.state is not None
    kept, selection, candidates = _select(loop, best, history, probe)
    loop.model.load_state_dict(kept)
    set_train_mode(loop.model, member.frozen, False)
    return TrainResult(
        state_dict=kept,
        best_epoch=best.epoch,
        history=history,
        seconds=time.perf_counter() - start,
        precision=precision.name,
        selection=selection,
        candidates=candidates,
        allocator=allocator,
    )


def _select(loop: _Loop, best: BestEpoch, history: list[dict], probe: dict | None) -> tuple[dict, dict, dict]:
    """(kept weights, selection record, every candidate's weights) after the last epoch."""
    cfg = loop.cfg
    assert best.key is not None and best.state is not None  # at least one epoch was scored
    candidates: dict[str, dict] = {"best": best.state, "last": snapshot(loop.model), **loop.averages.states()}
    scores = {
        "best": {"macro_f1": best.key[0], "log_loss": -best.key[1]},
        "last": {"macro_f1": history[-1]["val_macro_f1"], "log_loss": history[-1]["val_log_loss"]},
    }
    for name in loop.averages.states():
        scores[name] = loop.evaluate(candidates[name])
    kept = candidates[cfg.select]
    selection: dict = {"select": cfg.select, "val": scores}
    if probe is not None:
        candidates["probe"] = probe
        if cfg.wise_alpha < 1:
            kept = interpolate(kept, probe, cfg.wise_alpha)
            selection["wise_alpha"] = cfg.wise_alpha
            scores[f"{cfg.select}+wise"] = loop.evaluate(kept)
    log.info(
        "%s keeps %s%s (val macro-F1: %s)",
        loop.run.name,
        cfg.select,
        f" interpolated with the linear probe, alpha {cfg.wise_alpha}" if "wise_alpha" in selection else "",
        ", ".join(f"{k} {v['macro_f1']:.4f}" for k, v in scores.items()),
    )
    return kept, selection, candidates
