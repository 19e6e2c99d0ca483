"""Re-rendering a photo through a lower resolution and a JPEG quality (``render:``).

When a photo's resolution or compression is tied to its label in the training data (on
VDS: small, heavily compressed web thumbnails of wrecks; large, clean close-ups of
scratches), a network can learn the camera instead of the damage. Rendering every photo
through the same distribution of shorter sides and JPEG qualities makes what the network
sees independent of the label in those properties:

- training: per image and epoch, a shorter side drawn uniformly from ``short_side`` and a
  quality from ``quality`` (every draw from ``random``, so the per-item streams of
  :mod:`members.streams` make it deterministic): down-sample (never up), re-encode, decode;
- val, test, OOB, predict and serve: the middle of both ranges, the same for every photo.

The member's view then resizes the result to its input size as usual.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image


def render_image(img: Image.Image, short_side: int, quality: int) -> Image.Image:
    """``img`` with its shorter side brought down to ``short_side`` (never up; Lanczos)
    and passed through a JPEG of ``quality``."""
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) > short_side:
        scale = short_side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def eval_setting(render: dict) -> tuple[int, int]:
    """The (shorter side, quality) every eval photo is rendered at: the middle of the ranges."""
    (s0, s1), (q0, q1) = render["short_side"], render["quality"]
    return (s0 + s1) // 2, (q0 + q1) // 2


def render_eval(arr: np.ndarray, render: dict | None) -> np.ndarray:
    """An HWC uint8 photo rendered at :func:`eval_setting` (unchanged when ``render`` is off)."""
    if not render or not render.get("short_side"):
        return arr
    side, quality = eval_setting(render)
    return np.asarray(render_image(Image.fromarray(arr), side, quality), dtype=np.uint8)


def describe_render(render: dict | None) -> list[str]:
    """The eval render in words, for exports (empty when off)."""
    if not render or not render.get("short_side"):
        return []
    side, quality = eval_setting(render)
    return [f"re-render: bring the shorter side down to {side} px (Lanczos, never up), then JPEG quality {quality}"]


class Rerender:
    """The training counterpart: a shorter side and a JPEG quality drawn per image (from
    ``random``) within the member's ``render`` ranges."""

    def __init__(self, short_side: tuple[int, int], quality: tuple[int, int]) -> None:
        self.short_side, self.quality = tuple(short_side), tuple(quality)

    def draw(self) -> tuple[int, int]:
        return random.randint(*self.short_side), random.randint(*self.quality)

    def __call__(self, img: Image.Image) -> Image.Image:
        return render_image(img, *self.draw())

    def __repr__(self) -> str:
        return f"Rerender(short_side={self.short_side}, quality={self.quality})"
