"""How a member looks at a whole photo: eval views, their training counterparts, TTA.

- ``crop`` (timm's default): resize the shorter side to ``resize_size``, cut the centre
  square. A 1.5:1 photo loses a third of its width, often the damaged corner.
- ``letterbox``: the whole photo, its longer side scaled to the input size, padded to a
  square with the normalisation mean (zero after normalising).
- ``squash``: the whole photo resized to the square input, aspect not kept.

A member uses its view for val, test, OOB, predict and export; with a whole-image view it
also trains on random-resized crops taken from the letterboxed or squashed image. A new
view is one function registered with ``@view``. TTA averages a member's probabilities over
several views (and their mirror images): ``flip`` plus any view names.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from .registry import Registry

_PIL_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}

VIEWS: Registry[Callable[[np.ndarray, object], np.ndarray]] = Registry("view")
TTA_ONLY: set[str] = set()  # views for test-time averaging that no member is trained on


def view(fn: Callable[[np.ndarray, object], np.ndarray] | None = None, *, tta_only: bool = False):
    """Register ``fn(image HWC uint8, inputs) -> (S, S, 3) uint8`` under its name
    (``@view`` or ``@view(tta_only=True)``)."""
    def register(f: Callable[[np.ndarray, object], np.ndarray]) -> Callable[[np.ndarray, object], np.ndarray]:
        VIEWS.add(f.__name__, f)
        if tta_only:
            TTA_ONLY.add(f.__name__)
        return f

    return register(fn) if fn is not None else register


def _interp(inputs) -> Image.Resampling:
    return _PIL_INTERP.get(inputs.interpolation, Image.Resampling.BICUBIC)


def _mean_colour(inputs) -> tuple[int, int, int]:
    return tuple(int(round(m * 255)) for m in inputs.mean)


def square_crop(arr: np.ndarray, inputs, where: float = 0.5) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` and cut an ``image_size`` square at
    ``where`` along each axis (0: left/top, 0.5: centre, 1: right/bottom)."""
    img = Image.fromarray(arr)
    w, h = img.size
    short = inputs.resize_size
    scale = short / min(w, h)
    new = (max(short, round(w * scale)), max(short, round(h * scale)))
    img = img.resize(new, _interp(inputs))
    s = inputs.image_size
    left, top = int((new[0] - s) * where), int((new[1] - s) * where)
    return np.array(img.crop((left, top, left + s, top + s)), dtype=np.uint8)


@view
def crop(arr: np.ndarray, inputs) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` and cut the centre square."""
    return square_crop(arr, inputs)


@view(tta_only=True)
def crop_start(arr: np.ndarray, inputs) -> np.ndarray:
    """The square at the start of the long side (left of a landscape, top of a portrait photo)."""
    return square_crop(arr, inputs, 0.0)


@view(tta_only=True)
def crop_end(arr: np.ndarray, inputs) -> np.ndarray:
    """The square at the end of the long side (right of a landscape, bottom of a portrait photo)."""
    return square_crop(arr, inputs, 1.0)


def letterbox_image(img: Image.Image, size: int, fill: tuple[int, int, int], interp) -> Image.Image:
    """The whole image, longer side ``size``, centred on a ``size`` square of ``fill``."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(img.resize(new, interp), ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


@view
def letterbox(arr: np.ndarray, inputs) -> np.ndarray:
    """The whole photo, aspect kept, padded with the mean colour."""
    return np.array(letterbox_image(Image.fromarray(arr), inputs.image_size, _mean_colour(inputs),
                                      _interp(inputs)), dtype=np.uint8)


@view
def squash(arr: np.ndarray, inputs) -> np.ndarray:
    """The whole photo resized to the square input (aspect not kept)."""
    s = inputs.image_size
    return np.array(Image.fromarray(arr).resize((s, s), _interp(inputs)), dtype=np.uint8)


def eval_array(images, inputs) -> np.ndarray:
    """Each image's view (``inputs.view``) stacked into one uint8 array (N, 3, S, S), the
    layout every runtime takes (numpy only: no torch on the exported-runtime path)."""
    s = inputs.image_size
    look = VIEWS.lookup(inputs.view)  # a view of a plugin that is not loaded: one clear line
    out = np.empty((len(images), 3, s, s), dtype=np.uint8)
    for i, arr in enumerate(images):
        out[i] = look(arr, inputs).transpose(2, 0, 1)
    return out


def describe_view(inputs) -> list[str]:
    """The view's steps in words, for a server without effens (``effens export``)."""
    i = inputs
    return {
        "crop": [f"resize the shorter side to {i.resize_size} px ({i.interpolation})",
                 f"centre crop {i.image_size} x {i.image_size}"],
        "letterbox": [f"resize the longer side to {i.image_size} px ({i.interpolation}), aspect kept",
                      f"paste centred on a {i.image_size} x {i.image_size} square filled with the mean "
                      f"colour {list(_mean_colour(i))}"],
        "squash": [f"resize to {i.image_size} x {i.image_size} ({i.interpolation}), aspect not kept"],
    }.get(i.view, [f"the `{i.view}` view of effens (members.views)"])


def view_names(member: bool = True) -> tuple[str, ...]:
    """Registered views; ``member``: only those a member may be trained on (no TTA-only views)."""
    return tuple(n for n in VIEWS if not (member and n in TTA_ONLY))


def parse_tta(value) -> tuple[str, ...]:
    """``True``/``flip`` -> ("flip",); ``"flip,letterbox"`` or a list -> those names (checked)."""
    if value in (None, False, "", "none"):
        return ()
    if value is True:
        return ("flip",)
    names = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())
    unknown = [n for n in names if n != "flip" and n not in VIEWS]
    if unknown:
        raise ValueError(f"TTA views must be flip or one of {', '.join(VIEWS)}; got {', '.join(unknown)}")
    return names


class WholeImage:
    """Training counterpart of a whole-image view: the letterboxed or squashed photo at
    ``size`` (the resize size), from which the random-resized crop is then taken."""

    def __init__(self, kind: str, size: int, fill: tuple[int, int, int], interp) -> None:
        self.kind, self.size, self.fill, self.interp = kind, size, fill, interp

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.kind == "squash":
            return img.resize((self.size, self.size), self.interp)
        return letterbox_image(img, self.size, self.fill, self.interp)

    def __repr__(self) -> str:
        return f"WholeImage({self.kind}, {self.size})"


def train_view(inputs) -> WholeImage | None:
    """What goes before the training crop for this member's view (None for ``crop``)."""
    if inputs.view == "crop":
        return None
    return WholeImage(inputs.view, inputs.resize_size, _mean_colour(inputs), _interp(inputs))
