"""Test-time BatchNorm adaptation: re-estimate a member's BatchNorm statistics on the
unlabelled images being predicted, on a copy (the trained weights never change).

Photos from another source shift the activations' means and variances; re-estimating
them on the new photos (AdaBN, Li et al. 2016) is a cheap, label-free correction. The
statistics become the equal-weight average over batches of the new images.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .transforms import normalize

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def adapt_batchnorm(
    model: nn.Module, images: torch.Tensor, inputs, batch_size: int = 64, device: torch.device | str = "cpu"
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics come from ``images`` (uint8 N x 3 x S x S)."""
    device = torch.device(device)
    adapted = copy.deepcopy(model).to(device).eval()
    norms = [m for m in adapted.modules() if isinstance(m, _BN)]
    if not norms or not len(images):
        return adapted
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            adapted(normalize(images[start : start + batch_size].to(device), inputs))
    return adapted.eval()
