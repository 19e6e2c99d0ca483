"""How a member looks at a whole photo: eval views, their training counterparts, TTA.

- ``crop`` (timm's default): resize the shorter side to ``resize_size``, cut the centre
  square. A 1.5:1 photo loses a third of its width, often the damaged corner.
- ``letterbox``: the whole photo, its longer side scaled to the input size, padded to a
  square with the normalisation mean (zero after normalising).
- ``squash``: the whole photo resized to the square input, aspect not kept.

A member uses its view for val, test, OOB, predict and export; with a whole-image view it
also trains on random-resized crops taken from the letterboxed or squashed image. A new
view is one function registered with ``@view`` (optionally with its training counterpart
and its description, :class:`View`; by default a member trains on random crops of the
view itself at the resize size). TTA averages a member's probabilities over several
views (and their mirror images): ``flip`` plus any view names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from PIL import Image

from .inputs import InputConfig
from .registry import Registry

_PIL_INTERP = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclasses.dataclass(frozen=True)
class View:
    """A registered view and its whole contract: ``look`` (eval: an HWC uint8 photo and the
    member's inputs -> the (S, S, 3) input), ``train`` (inputs -> what goes before the
    training crop, or None for nothing; unset: the view itself rendered at the resize
    size, :class:`WholeImage`), ``describe`` (inputs -> its steps in words, for exports;
    unset: the first line of ``look``'s docstring) and ``tta_only`` (never trained on)."""

    name: str
    look: Callable[[np.ndarray, InputConfig], np.ndarray]
    train: Callable[[InputConfig], Callable | None] | None = None
    describe: Callable[[InputConfig], list[str]] | None = None
    tta_only: bool = False

    def __call__(self, arr: np.ndarray, inputs) -> np.ndarray:
        return self.look(arr, inputs)


VIEWS: Registry[View] = Registry("view")


def view(
    fn: Callable[[np.ndarray, InputConfig], np.ndarray] | None = None,
    *,
    tta_only: bool = False,
    train: Callable[[InputConfig], Callable | None] | None = None,
    describe: Callable[[InputConfig], list[str]] | None = None,
):
    """Register ``fn(image HWC uint8, inputs) -> (S, S, 3) uint8`` under its name, with its
    training counterpart and description (``@view`` or ``@view(tta_only=True, ...)``;
    see :class:`View`). Returns ``fn`` unchanged."""

    def register(f: Callable[[np.ndarray, InputConfig], np.ndarray]) -> Callable[[np.ndarray, InputConfig], np.ndarray]:
        VIEWS.add(f.__name__, View(f.__name__, f, train, describe, tta_only), f.__module__)
        return f

    return register(fn) if fn is not None else register


def _interp(inputs) -> Image.Resampling:
    return _PIL_INTERP.get(inputs.interpolation, Image.Resampling.BICUBIC)


def _mean_colour(inputs) -> tuple[int, int, int]:
    red, green, blue = (int(round(m * 255)) for m in inputs.mean)
    return red, green, blue


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


def _nothing_before_the_crop(inputs) -> None:
    return None


def _describe_crop(i) -> list[str]:
    return [
        f"resize the shorter side to {i.resize_size} px ({i.interpolation})",
        f"centre crop {i.image_size} x {i.image_size}",
    ]


@view(train=_nothing_before_the_crop, describe=_describe_crop)
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


def _describe_letterbox(i) -> list[str]:
    return [
        f"resize the longer side to {i.image_size} px ({i.interpolation}), aspect kept",
        f"paste centred on a {i.image_size} x {i.image_size} square filled with the mean "
        f"colour {list(_mean_colour(i))}",
    ]


@view(describe=_describe_letterbox)
def letterbox(arr: np.ndarray, inputs) -> np.ndarray:
    """The whole photo, aspect kept, padded with the mean colour."""
    return np.array(
        letterbox_image(Image.fromarray(arr), inputs.image_size, _mean_colour(inputs), _interp(inputs)), dtype=np.uint8
    )


@view(describe=lambda i: [f"resize to {i.image_size} x {i.image_size} ({i.interpolation}), aspect not kept"])
def squash(arr: np.ndarray, inputs) -> np.ndarray:
    """The whole photo resized to the square input (aspect not kept)."""
    s = inputs.image_size
    return np.array(Image.fromarray(arr).resize((s, s), _interp(inputs)), dtype=np.uint8)


def eval_array(images, inputs) -> np.ndarray:
    """Each image's view (``inputs.view``) stacked into one uint8 array (N, 3, S, S), the
    layout every runtime takes (numpy only: no torch on the exported-runtime path)."""
    from .render import render_eval

    s = inputs.image_size
    look = VIEWS.lookup(inputs.view)  # a view of a plugin that is not loaded: one clear line
    render = getattr(inputs, "render", None)
    out = np.empty((len(images), 3, s, s), dtype=np.uint8)
    for i, arr in enumerate(images):
        out[i] = look(render_eval(arr, render), inputs).transpose(2, 0, 1)
    return out


def describe_view(inputs) -> list[str]:
    """The view's steps in words (after the eval render, when the member has one), for a
    server without effens (``effens export``)."""
    from .render import describe_render

    v = VIEWS.lookup(inputs.view)
    first = describe_render(getattr(inputs, "render", None))
    if v.describe is not None:
        return first + v.describe(inputs)
    doc = (v.look.__doc__ or "").strip().splitlines()
    return first + [f"the `{v.name}` view" + (f": {doc[0].rstrip('.')}" if doc else "") + f" ({v.look.__module__})"]


def view_names(member: bool = True) -> tuple[str, ...]:
    """Registered views; ``member``: only those a member may be trained on (no TTA-only views)."""
    return tuple(n for n, v in VIEWS.items() if not (member and v.tta_only))


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
    """Training counterpart of a whole-image view (any view but ``crop``, unless it says
    otherwise): the photo as the view shows it, rendered at ``size`` (the resize size),
    from which the random-resized crop is then taken. Holds the view's name, so that it
    pickles into DataLoader workers."""

    def __init__(self, name: str, inputs) -> None:
        self.name, self.inputs = name, inputs

    def __call__(self, img: Image.Image) -> Image.Image:
        return Image.fromarray(VIEWS.lookup(self.name)(np.asarray(img.convert("RGB")), self.inputs))

    def __repr__(self) -> str:
        return f"WholeImage({self.name}, {self.inputs.image_size})"


def train_view(inputs):
    """What goes before the training crop for this member's view (None: nothing)."""
    v = VIEWS.lookup(inputs.view)
    if v.train is not None:
        return v.train(inputs)
    return WholeImage(v.name, dataclasses.replace(inputs, image_size=inputs.resize_size))
