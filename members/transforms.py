"""From decoded uint8 arrays to model input: eval crops, training augmentation, normalising."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .models import InputConfig
from .streams import HorizontalFlip, item_streams

_PIL_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def center_crop(arr: np.ndarray, inputs: InputConfig) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` and cut the centre square (HWC uint8)."""
    img = Image.fromarray(arr)
    w, h = img.size
    short = inputs.resize_size
    scale = short / min(w, h)
    new = (max(short, round(w * scale)), max(short, round(h * scale)))
    img = img.resize(new, _PIL_INTERP.get(inputs.interpolation, Image.Resampling.BICUBIC))
    s = inputs.image_size
    left, top = (new[0] - s) // 2, (new[1] - s) // 2
    return np.array(img.crop((left, top, left + s, top + s)), dtype=np.uint8)


def eval_tensor(images: Sequence[np.ndarray], inputs: InputConfig) -> torch.Tensor:
    """Stack centre crops into one uint8 tensor (N, 3, S, S): made once, reused every epoch."""
    s = inputs.image_size
    out = torch.empty((len(images), 3, s, s), dtype=torch.uint8)
    for i, arr in enumerate(images):
        out[i] = torch.from_numpy(center_crop(arr, inputs)).permute(2, 0, 1)
    return out


def normalize(batch: torch.Tensor, inputs: InputConfig) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> normalised float, channels_last."""
    mean = torch.tensor(inputs.mean, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(inputs.std, device=batch.device).view(1, 3, 1, 1) * 255
    x = (batch.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def train_transform(inputs: InputConfig, train_cfg):
    """timm's training preset (random-resized crop, flip, auto-augment), on PIL images.

    Its flip is swapped for one drawing from `random`, so that every random choice is
    made by the generators :func:`members.streams.item_streams` provides.
    """
    from timm.data import create_transform
    from torchvision.transforms import RandomHorizontalFlip

    augment = train_cfg.augment
    if augment in (None, "", "none"):
        augment = None
    compose = create_transform(
        input_size=inputs.image_size, is_training=True, scale=tuple(train_cfg.crop_scale),
        hflip=train_cfg.hflip, vflip=0.0, color_jitter=None, auto_augment=augment,
        interpolation=inputs.interpolation, mean=inputs.mean, std=inputs.std,
        re_prob=0.0)
    compose.transforms = [HorizontalFlip(t.p) if isinstance(t, RandomHorizontalFlip) else t
                          for t in compose.transforms]
    return compose


class SampleDataset(torch.utils.data.Dataset):
    """A member's bootstrap sample over the shared decoded images (repeats allowed).

    Item ``i`` of epoch ``epoch`` is augmented with random streams seeded by
    ``(seed, epoch, i)`` only (:func:`members.streams.item_streams`).
    """

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray, indices: np.ndarray,
                 transform, seed: int = 0) -> None:
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        with item_streams(self.seed, self.epoch, i):
            x = self.transform(Image.fromarray(self.images[j]))
        return x, int(self.labels[j])
