"""From decoded uint8 arrays to model input: eval crops, training augmentation, normalising."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .inputs import InputConfig
from .settings import TrainConfig
from .streams import HorizontalFlip, item_streams
from .views import VIEWS, eval_array, train_view


def center_crop(arr: np.ndarray, inputs: InputConfig) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` and cut the centre square (HWC uint8)."""
    return VIEWS["crop"](arr, inputs)


def eval_tensor(images: Sequence[np.ndarray], inputs: InputConfig) -> torch.Tensor:
    """Each image's view (``inputs.view``, :mod:`members.views`) as one uint8 tensor
    (N, 3, S, S) (:func:`members.views.eval_array`): made once, reused every epoch."""
    return torch.from_numpy(eval_array(images, inputs))


def normalize(batch: torch.Tensor, inputs: InputConfig) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> normalised float, channels_last."""
    mean = torch.tensor(inputs.mean, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(inputs.std, device=batch.device).view(1, 3, 1, 1) * 255
    x = (batch.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def train_transform(inputs: InputConfig, train_cfg: TrainConfig):
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
        input_size=inputs.image_size,
        is_training=True,
        scale=tuple(train_cfg.crop_scale),
        hflip=train_cfg.hflip,
        vflip=0.0,
        color_jitter=None,
        auto_augment=augment,
        interpolation=inputs.interpolation,
        mean=inputs.mean,
        std=inputs.std,
        re_prob=0.0,
    )
    compose.transforms = [HorizontalFlip(t.p) if isinstance(t, RandomHorizontalFlip) else t for t in compose.transforms]
    whole = train_view(inputs)
    if whole is not None:  # whole-image views train on crops of the whole image
        compose.transforms.insert(0, whole)
    robust = ROBUST_PRESETS[train_cfg.robust]
    if robust is not None:  # after the crop, before auto-augment: on the PIL image
        compose.transforms.insert(1 if whole is None else 2, RobustAugment(**robust))
    if inputs.render:  # first of all: the photo as the drawn camera would have taken it
        from .render import Rerender

        compose.transforms.insert(0, Rerender(inputs.render["short_side"], inputs.render["quality"]))
    return compose


#: per-image probabilities and ranges of the robustness preset (``train.robust``)
ROBUST_PRESETS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "light": dict(
        p_downscale=0.25,
        scale=(0.35, 0.85),
        p_jpeg=0.25,
        quality=(30, 90),
        p_blur=0.1,
        radius=(0.3, 1.0),
        p_jitter=0.3,
        jitter=0.2,
    ),
    "strong": dict(
        p_downscale=0.5,
        scale=(0.2, 0.7),
        p_jpeg=0.5,
        quality=(15, 80),
        p_blur=0.2,
        radius=(0.4, 1.6),
        p_jitter=0.5,
        jitter=0.3,
    ),
}


class RobustAugment:
    """Photos from other phones and sources: each op applied with its own probability, every
    draw from ``random`` (so the per-item streams of :mod:`members.streams` make it
    deterministic): downscale-then-upscale, JPEG re-encoding, mild blur, photometric jitter
    (brightness, contrast, saturation, a little hue)."""

    def __init__(
        self,
        p_downscale: float,
        scale: tuple,
        p_jpeg: float,
        quality: tuple,
        p_blur: float,
        radius: tuple,
        p_jitter: float,
        jitter: float,
    ) -> None:
        self.p_downscale, self.scale, self.p_jpeg, self.quality = p_downscale, scale, p_jpeg, quality
        self.p_blur, self.radius, self.p_jitter, self.jitter = p_blur, radius, p_jitter, jitter

    def __call__(self, img: Image.Image) -> Image.Image:
        import io
        import random

        from PIL import ImageEnhance, ImageFilter

        if random.random() < self.p_downscale:
            f = random.uniform(*self.scale)
            w, h = img.size
            img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BILINEAR).resize(
                (w, h), Image.Resampling.BILINEAR
            )
        if random.random() < self.p_jpeg:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=random.randint(*self.quality))
            buf.seek(0)
            img = Image.open(buf).convert("RGB")
        if random.random() < self.p_blur:
            img = img.filter(ImageFilter.GaussianBlur(random.uniform(*self.radius)))
        if random.random() < self.p_jitter:
            j = self.jitter
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                img = enhance(img).enhance(random.uniform(1 - j, 1 + j))
            hue = round(random.uniform(-0.1, 0.1) * j * 255)
            if hue:
                h, s_, v = img.convert("HSV").split()
                h = h.point(lambda x: (x + hue) % 256)
                img = Image.merge("HSV", (h, s_, v)).convert("RGB")
        return img

    def __repr__(self) -> str:
        return (
            f"RobustAugment(p_downscale={self.p_downscale}, p_jpeg={self.p_jpeg}, p_blur={self.p_blur}, "
            f"p_jitter={self.p_jitter})"
        )


class SampleDataset(torch.utils.data.Dataset):
    """A member's bootstrap sample over the shared decoded images (repeats allowed).

    Item ``i`` of epoch ``epoch`` is augmented with random streams seeded by
    ``(seed, epoch, i)`` only (:func:`members.streams.item_streams`); it is ``(input, label)``,
    or ``(input, label, image index)`` with ``with_index`` (what a teacher looks images up by).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: np.ndarray,
        indices: np.ndarray,
        transform,
        seed: int = 0,
        with_index: bool = False,
    ) -> None:
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        with item_streams(self.seed, self.epoch, i):
            x = self.transform(Image.fromarray(self.images[j]))
        return (x, int(self.labels[j]), j) if self.with_index else (x, int(self.labels[j]))
