"""Frozen-backbone features, computed once, and linear heads trained on them.

With ``freeze: backbone`` only the classifier learns, so the backbone's pooled features
of each (centre-cropped, un-augmented) image can be computed once and reused by every
bagging candidate: a candidate's sample becomes an index list into the cached tensor.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .allocator import keep_freed_memory
from .predictor import default_precision
from .schedule import warmup_cosine
from .settings import TrainConfig
from .transforms import normalize


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    inputs,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision=None,
) -> torch.Tensor:
    """Pooled pre-logit features (N, D) of uint8 images (N, 3, S, S), model in eval mode."""
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    precision = precision or default_precision(device)
    model.eval().to(device=device, memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device), inputs)
        with precision.autocast():
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.num_features)


def train_head(
    features: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    labels: np.ndarray,
    sample: np.ndarray,
    num_classes: int,
    cfg: TrainConfig,
    seed: int,
    epochs: int | None = None,
) -> nn.Linear:
    """Train a zero-initialised linear head as the member trainer would (AdamW, warm-up +
    cosine per step, label smoothing, shuffled batches) on ``features(index_tensor)``.

    ``features`` maps sample indices to feature rows: a cached tensor lookup, or a pass
    through the frozen network; both give the same head.
    """
    epochs = epochs or cfg.epochs
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(
        [{"params": [head.weight], "weight_decay": cfg.weight_decay}, {"params": [head.bias], "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    sample = torch.as_tensor(np.asarray(sample, dtype=np.int64))
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    n = len(sample)
    bs = cfg.batch_size
    steps = n // bs if n > bs else 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps * epochs, int(round(cfg.warmup_epochs * steps))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for _ in range(epochs):
        order = sample[torch.randperm(n, generator=gen)]
        for s in range(steps):
            idx = order[s * bs : (s + 1) * bs]
            loss = loss_fn(head(features(idx)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def head_proba(head: nn.Linear, features: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return head(features).softmax(dim=1).double().numpy()
