"""Image decoding (EXIF orientation, colour modes, bad files) and the decoded-image cache.

Every image is decoded once, to RGB ``uint8`` with its shorter side resized to the
cache size; all members and all epochs then work from these arrays, never from the
JPEG again.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Literal, Sequence

import numpy as np
from PIL import Image, ImageOps

from members.errors import EffensError

log = logging.getLogger(__name__)


class BadImageError(EffensError, ValueError):
    """An image file cannot be decoded into pixels."""


#: longer side / shorter side beyond which an image is refused: resizing its shorter side
#: to the cache size would make the longer side enormous (a tiny 100000 x 1 PNG would need
#: gigabytes), and no photo of a car is shaped like that
MAX_ASPECT = 20


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    if img.mode in ("LA", "RGBA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (aspect ratio kept)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def decode_image(path: str | os.PathLike | IO[bytes], size: int | None = None) -> np.ndarray:
    """Decode one file (a path, or an open binary file such as served bytes) to an RGB uint8
    array (H, W, 3), upright per its EXIF tag.

    Raises :class:`BadImageError` for empty, truncated, non-image and oversized files.
    """
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise BadImageError(
            f"{path}: "
            + (
                "not a regular file (a FIFO, socket or device); not opened"
                if os.path.exists(path)
                else "file not found"
            )
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
                    raise BadImageError(f"{path}: {w} x {h} px is more elongated than {MAX_ASPECT}:1; not decoded")
                if size is not None and img.format == "JPEG":
                    img.draft("RGB", (size, size))  # let libjpeg downscale by 1/2..1/8 for free
                img = ImageOps.exif_transpose(img)
                img = to_rgb(img)
                if size is not None:
                    img = resize_shorter(img, size)
                arr = np.asarray(img, dtype=np.uint8)
    except BadImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise BadImageError(f"{path}: decoded to an unusable shape {arr.shape}")
    return np.ascontiguousarray(arr)


def decode_all(
    paths: Sequence[str],
    size: int | None,
    on_bad: Literal["error", "skip"] = "error",
    n_threads: int = 2,
    desc: str = "decode",
) -> tuple[list[np.ndarray | None], list[tuple[str, str]]]:
    """Decode many files in threads (Pillow releases the GIL while decoding).

    Returns the arrays (``None`` where a file was skipped) and the skipped
    ``(path, reason)`` pairs. With ``on_bad="error"`` the first bad file raises.
    """
    from tqdm.auto import tqdm

    def one(p: str) -> np.ndarray | str:
        try:
            return decode_image(p, size)
        except BadImageError as exc:
            if on_bad == "error":
                raise
            return str(exc)

    out: list[np.ndarray | None] = []
    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        results = pool.map(one, paths)
        for p, r in tqdm(zip(paths, results), total=len(paths), desc=desc, leave=False, unit="img", disable=None):
            if isinstance(r, str):
                bad.append((p, r))
                out.append(None)
            else:
                out.append(r)
    if bad:
        log.warning(
            "%s: skipped %d unreadable image(s): %s",
            desc,
            len(bad),
            ", ".join(p for p, _ in bad[:10]) + (" ..." if len(bad) > 10 else ""),
        )
    return out, bad


def estimate_decoded_bytes(paths: Sequence[str], size: int | None, sample: int = 400) -> int:
    """Bytes the decoded RGB arrays of ``paths`` at shorter side ``size`` will take, from the
    headers of up to ``sample`` evenly spaced files (no pixels are decoded)."""
    if not paths:
        return 0
    step = max(1, len(paths) // sample)
    picked = list(paths)[::step]
    total, seen = 0.0, 0
    for p in picked:
        try:
            with Image.open(p) as img:
                w, h = img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        if size is not None and min(w, h) > 0:
            scale = size / min(w, h)
            w, h = max(1, round(w * scale)), max(1, round(h * scale))
        total += 3.0 * w * h
        seen += 1
    return int(total / max(seen, 1) * len(paths))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: Linux MemAvailable, lowered to the
    cgroup's limit minus its use inside a container (None where neither is known)."""
    have = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit.isdigit():
            with open("/sys/fs/cgroup/memory.current") as fh:
                free = int(limit) - int(fh.read().strip())
            have = free if have is None else min(have, free)
    except (OSError, ValueError):
        pass
    return have
