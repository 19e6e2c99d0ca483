"""Batched inference over prepared uint8 image tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .inputs import InputConfig
from .precision import Precision, resolve_precision


def default_precision(device: torch.device) -> Precision:
    """What runs when no precision is given: mixed precision on GPU, fp32 elsewhere."""
    return resolve_precision("auto" if device.type == "cuda" else "fp32", device)


def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    inputs: InputConfig,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    tta: bool = False,
    precision: Precision | None = None,
) -> np.ndarray:
    """Softmax probabilities (N, C) for a uint8 tensor (N, 3, S, S), through the torch
    runtime (:class:`members.runtimes.TorchRuntime`); the model's train/eval mode is kept.

    With ``tta`` the probabilities of the image and its horizontal mirror are averaged;
    ``precision`` sets autocast (default: :func:`default_precision`).
    """
    from .runtimes import TorchRuntime, runtime_proba

    device = torch.device(device)
    was_training = model.training
    try:
        runtime = TorchRuntime(model, inputs, None, device, precision or default_precision(device))
        return runtime_proba(runtime, images, batch_size, tta)
    finally:
        model.train(was_training)
