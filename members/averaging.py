"""Weight averaging during training (EMA, SWA) and weight interpolation (WiSE-FT).

Pure tensor arithmetic on state dicts, so the trainer, its checkpoints and the tests share
one definition:

- :class:`WeightAverages` keeps an exponential moving average of the weights, updated
  after every optimiser step (decay warmed up as ``min(decay, (1 + t) / (10 + t))`` so a
  short run is not dominated by its random start), and a uniform average of the weights
  at the end of each of the last ``swa_epochs`` epochs. BatchNorm statistics are averaged
  like the weights (no extra pass over the data); integer buffers keep the latest value.
- :func:`interpolate` is WiSE-FT: ``alpha * fine_tuned + (1 - alpha) * start``.
"""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def interpolate(
    fine_tuned: dict[str, torch.Tensor], start: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``alpha * fine_tuned + (1 - alpha) * start`` for floating tensors; others from ``fine_tuned``."""
    return {
        k: (alpha * v + (1.0 - alpha) * start[k].to(v.dtype)) if v.is_floating_point() else v.clone()
        for k, v in fine_tuned.items()
    }


def _fold(average: dict[str, torch.Tensor], model: nn.Module, weight: float) -> None:
    """``average += weight * (current - average)`` for floating tensors; integer buffers take
    the current value. EMA folds with ``1 - decay``, the running SWA mean with ``1 / count``."""
    for k, v in model.state_dict().items():
        avg = average[k]
        if avg.is_floating_point():
            avg.add_(v.detach().to("cpu", avg.dtype) - avg, alpha=weight)
        else:
            avg.copy_(v.detach().cpu())


class WeightAverages:
    """EMA (per step) and SWA (per epoch, last ``swa_epochs`` of ``epochs``) of a model's weights."""

    def __init__(self, ema: float | None, swa_epochs: int, epochs: int) -> None:
        self.decay, self.swa_epochs, self.epochs = ema, swa_epochs, epochs
        self.ema: dict[str, torch.Tensor] | None = None
        self.swa: dict[str, torch.Tensor] | None = None
        self.steps = 0
        self.swa_count = 0

    @property
    def active(self) -> bool:
        return bool(self.decay) or self.swa_epochs > 0

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """Fold the weights after one optimiser step into the EMA."""
        if not self.decay:
            return
        if self.ema is None:
            self.ema = snapshot(model)
        else:
            _fold(self.ema, model, 1.0 - min(self.decay, (1.0 + self.steps) / (10.0 + self.steps)))
        self.steps += 1

    @torch.no_grad()
    def after_epoch(self, epoch: int, model: nn.Module) -> None:
        """Add the weights after ``epoch`` (1-based) to the SWA average when it is one of the last epochs."""
        if self.swa_epochs <= 0 or epoch <= self.epochs - self.swa_epochs:
            return
        if self.swa is None:
            self.swa, self.swa_count = snapshot(model), 1
            return
        self.swa_count += 1
        _fold(self.swa, model, 1.0 / self.swa_count)

    def states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The averages made so far, by selection name (``ema``, ``swa``)."""
        return {name: s for name, s in (("ema", self.ema), ("swa", self.swa)) if s is not None}

    # --- checkpoints: tensors + a small JSON document -------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, s in self.states().items() for k, v in s.items()}

    def doc(self) -> dict:
        return {"steps": self.steps, "swa_count": self.swa_count}

    def load(self, tensors: dict[str, torch.Tensor], doc: dict | None) -> None:
        doc = doc or {}
        self.steps, self.swa_count = int(doc.get("steps", 0)), int(doc.get("swa_count", 0))
        for name in ("ema", "swa"):
            found = {k[len(name) + 1 :]: v.clone() for k, v in tensors.items() if k.startswith(name + ".")}
            setattr(self, name, found or None)
