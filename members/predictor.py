"""Batched inference over prepared uint8 image tensors."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .models import InputConfig
from .precision import Precision, resolve_precision
from .transforms import normalize


def default_precision(device: torch.device) -> Precision:
    """What runs when no precision is given: mixed precision on GPU, fp32 elsewhere."""
    return resolve_precision("auto" if device.type == "cuda" else "fp32", device)


@torch.inference_mode()
def predict_proba(model: nn.Module, images: torch.Tensor, inputs: InputConfig,
                  batch_size: int = 64, device: torch.device | str = "cpu",
                  tta: bool = False, precision: Precision | None = None) -> np.ndarray:
    """Softmax probabilities (N, C) for a uint8 tensor (N, 3, S, S).

    With ``tta`` the probabilities of the image and its horizontal mirror are averaged;
    ``precision`` sets autocast (default: :func:`default_precision`).
    """
    device = torch.device(device)
    precision = precision or default_precision(device)
    was_training = model.training
    model.eval()
    model.to(device=device, memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True), inputs)
        with precision.autocast():
            p = model(x).float().softmax(dim=1)
            if tta:
                p = (p + model(x.flip(3)).float().softmax(dim=1)) / 2
        out.append(p.cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float64)
