"""Grad-CAM saliency for any timm classifier, with two small hooks-free steps.

The class score's gradient with respect to the last feature map (``forward_features``)
weights that map's channels; their positive sum, upsampled to the input, shows where the
member looks. Written here (about twenty lines) rather than with ``pytorch-grad-cam``:
that package is not in our registry, and timm's ``forward_features`` / ``forward_head``
split gives the feature map directly.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .transforms import normalize


def gradcam(model: nn.Module, images: torch.Tensor, inputs, targets: np.ndarray) -> np.ndarray:
    """Saliency maps (N, S, S) in [0, 1] of uint8 images (N, 3, S, S) for classes ``targets``."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = normalize(images, inputs).float()
            feats = model.forward_features(x).detach().requires_grad_(True)
            logits = model.forward_head(feats)
            logits[torch.arange(len(targets)), torch.as_tensor(np.asarray(targets, dtype=np.int64))].sum().backward()
            weights = feats.grad.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * feats).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam.detach(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        top = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
        return (cam / top).numpy()
    finally:
        model.train(was_training)


def overlay_jpeg(image: np.ndarray, cam: np.ndarray, quality: int = 85) -> bytes:
    """A JPEG of ``image`` (H, W, 3 uint8) with ``cam`` (H, W in [0, 1]) as a heat overlay."""
    from matplotlib import colormaps
    from PIL import Image

    heat = (colormaps["jet"](cam)[..., :3] * 255).astype(np.float32)
    alpha = 0.45 * cam[..., None] + 0.15
    out = (image.astype(np.float32) * (1 - alpha) + heat * alpha).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
