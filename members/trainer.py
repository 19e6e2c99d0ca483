"""One member's training loop: AdamW, warm-up + cosine, best epoch on validation."""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointStore
from .models import Member, set_train_mode
from .precision import Precision
from .predictor import default_precision, predict_proba
from .transforms import SampleDataset, train_transform

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A member's training failed (for example, the loss became NaN)."""


@dataclasses.dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict]
    seconds: float
    precision: str = "fp32"  # what the forward/backward passes ran in


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 backbone_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in four groups: head/backbone x decay/no decay.

    The classifier trains at ``lr``, everything else at ``lr * backbone_lr_scale``; biases
    and norm weights (1-d tensors) get no weight decay.
    """
    head = {id(p) for p in model.get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head, p.ndim <= 1), []).append(p)
    return [{"params": ps, "lr": lr * (1.0 if is_head else backbone_lr_scale),
             "weight_decay": 0.0 if no_decay else weight_decay}
            for (is_head, no_decay), ps in groups.items()]


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


def step_probe(member: Member, batch_size: int, image_size: int,
               device: torch.device) -> Callable[[Precision], None]:
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
            made.update(model=model, x=x.contiguous(memory_format=torch.channels_last),
                        y=torch.zeros(batch_size, dtype=torch.long, device=device))
        model = made["model"]
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(made["x"]).float(), made["y"])
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def _macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    from ensemble.metrics import confusion_matrix, per_class

    return float(per_class(confusion_matrix(y, pred, k))["f1"].mean())


def train_member(member: Member, cfg, images: Sequence[np.ndarray], labels: np.ndarray,
                 sample: np.ndarray, val_images: torch.Tensor, val_labels: np.ndarray,
                 num_classes: int, device: torch.device, seed: int, name: str = "member",
                 on_epoch_end: Callable[[int, dict], None] | None = None,
                 checkpoint: CheckpointStore | None = None,
                 precision: Precision | None = None) -> TrainResult:
    """Train ``member.model`` on ``images[sample]``; keep the epoch best on validation.

    The best epoch has the highest validation macro-F1 (ties: lower validation log loss).
    With ``checkpoint``, every finished epoch is saved there and a matching checkpoint
    found at the start is resumed (same weights as an uninterrupted run on CPU).
    ``precision`` sets autocast for the forward/backward passes and validation; the
    weights, optimiser moments and checkpoints stay fp32 (default: fp32 on CPU, mixed
    precision on GPU).
    """
    from tqdm.auto import tqdm

    from ensemble.metrics import log_loss

    torch.manual_seed(seed)
    precision = precision or default_precision(device)
    resumed = checkpoint.load() if checkpoint is not None else None
    if resumed is not None and resumed.get("precision", precision.name) != precision.name:
        # a resumed member finishes in the precision it started in (``auto`` may measure anew)
        precision = Precision(resumed["precision"], device.type, "as in the checkpoint being resumed")
        log.info("%s: continuing in %s, the precision of its checkpoint", name, precision.name)
    model = member.model.to(device=device, memory_format=torch.channels_last)
    sizes = epoch_sizes(cfg.epochs, member.inputs.image_size, cfg.min_image_size)
    dataset = SampleDataset(images, labels, sample, None, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    transforms: dict[int, object] = {}

    def loader_for(size: int) -> torch.utils.data.DataLoader:
        if size not in transforms:
            transforms[size] = train_transform(dataclasses.replace(member.inputs, image_size=size), cfg)
        dataset.transform = transforms[size]
        return torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) > cfg.batch_size,
            num_workers=cfg.num_workers, generator=gen, pin_memory=device.type == "cuda")

    steps_per_epoch = len(loader_for(sizes[0]))
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_scale))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, int(round(cfg.warmup_epochs * steps_per_epoch))))
    scaler = torch.amp.GradScaler("cuda", enabled=precision.uses_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    best: tuple[float, float] | None = None
    best_state, best_epoch = None, -1
    history: list[dict] = []
    first_epoch = 0
    if resumed is not None:
        best_state = checkpoint.restore(resumed, model=model, optimizer=optimizer, scheduler=scheduler,
                                        scaler=scaler, generator=gen)
        best, best_epoch = tuple(resumed["best_key"]), resumed["best_epoch"]
        history, first_epoch = resumed["history"], resumed["epoch"]
        log.info("%s: resuming after epoch %d/%d from %s", name, first_epoch, cfg.epochs,
                 checkpoint.json_path)
    start = time.perf_counter()
    for epoch in range(first_epoch, cfg.epochs):
        set_train_mode(model, member.frozen, True)
        loader = loader_for(sizes[epoch])
        dataset.epoch = epoch
        t0 = time.perf_counter()
        seen, loss_sum = 0, 0.0
        bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{cfg.epochs} @{sizes[epoch]}px", leave=False,
                   unit="batch", disable=None)
        for x, y in bar:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with precision.autocast():
                loss = criterion(model(x).float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"member {name}: loss became {loss.item()} at epoch {epoch + 1}; "
                                    f"try a lower `lr`")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{rate:.1f}")
        train_s = time.perf_counter() - t0
        proba = predict_proba(model, val_images, member.inputs, cfg.eval_batch_size, device,
                              precision=precision)
        val_f1 = _macro_f1(val_labels, proba.argmax(1), num_classes)
        val_loss = log_loss(val_labels, proba)
        record = {"epoch": epoch + 1, "image_size": sizes[epoch], "train_loss": loss_sum / max(seen, 1),
                  "val_macro_f1": val_f1, "val_log_loss": val_loss, "train_images_per_s": seen / max(train_s, 1e-9),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        log.info("%s epoch %d/%d @%dpx: loss %.4f, val macro-F1 %.4f, val log loss %.4f, %.1f img/s",
                 name, epoch + 1, cfg.epochs, sizes[epoch], record["train_loss"], val_f1, val_loss,
                 record["train_images_per_s"])
        key = (val_f1, -val_loss)
        if best is None or key > best:
            best, best_epoch = key, epoch + 1
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if checkpoint is not None:
            checkpoint.save(epoch=epoch + 1, model=model, optimizer=optimizer, scheduler=scheduler,
                            scaler=scaler, generator=gen, best_state=best_state, best_key=list(best),
                            best_epoch=best_epoch, history=history, precision=precision.name)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    assert best_state is not None
    model.load_state_dict(best_state)
    set_train_mode(model, member.frozen, False)
    return TrainResult(state_dict=best_state, best_epoch=best_epoch, history=history,
                       seconds=time.perf_counter() - start, precision=precision.name)
