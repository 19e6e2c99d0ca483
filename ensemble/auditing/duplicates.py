"""Exact and near-duplicate images, and images that look odd, from small per-image signatures.

Exact: the SHA-256 of the file's bytes. Near: a 64-bit difference hash (dHash: a 9 x 8
grey thumbnail, one bit per pair of neighbours) of the image and of its mirror image, so
resized, re-compressed, slightly cropped and mirrored copies land within a few bits of each
other; pairs within ``max_distance`` bits are reported. Odd: tiny, very elongated,
near-blank, grey or blurry images, from the same small decode. Pure apart from reading the
files (PIL, numpy).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

#: below these an image is reported as odd
MIN_SIDE, MAX_ASPECT, MIN_STD, MIN_SHARPNESS = 64, 3.0, 4.0, 20.0


@dataclasses.dataclass
class Signature:
    sha256: str
    dhash: int  # of the image
    dhash_mirror: int  # of its mirror image
    width: int
    height: int
    std: float  # grey-level standard deviation (near-blank when tiny)
    grey: bool  # colour channels (almost) equal
    sharpness: float  # variance of the Laplacian of a 128 px grey copy
    bytes: int = 0  # file size
    brightness: float = 0.0  # mean grey level, 0-255
    entropy: float = 0.0  # of the grey histogram, bits (0-8)
    jpeg_quality: float | None = None  # estimated from the quantisation table; None: not a JPEG
    exif: bool = False  # EXIF metadata present


def _dhash(grey: np.ndarray) -> int:
    from PIL import Image

    small = np.asarray(Image.fromarray(grey).resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def signature(path: str) -> Signature:
    """One file's signature; ``OSError``/``ValueError`` when it cannot be read."""
    from PIL import Image, ImageOps

    data = open(path, "rb").read()
    with Image.open(path) as img:
        quality = jpeg_quality(img)
        exif = bool(img.getexif())
        img = ImageOps.exif_transpose(img)
        w, h = img.size
        img.draft("RGB", (256, 256))
        rgb = img.convert("RGB")
        rgb.thumbnail((256, 256))
    arr = np.asarray(rgb, dtype=np.uint8)
    grey = np.asarray(rgb.convert("L"), dtype=np.uint8)
    g128 = np.asarray(rgb.convert("L").resize((128, 128)), dtype=np.float64)
    lap = g128[1:-1, 1:-1] * 4 - g128[:-2, 1:-1] - g128[2:, 1:-1] - g128[1:-1, :-2] - g128[1:-1, 2:]
    spread = np.abs(arr.astype(np.int16) - arr.mean(axis=2, keepdims=True)).mean()
    hist = np.bincount(grey.ravel(), minlength=256) / grey.size
    entropy = float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())
    return Signature(
        hashlib.sha256(data).hexdigest(),
        _dhash(grey),
        _dhash(grey[:, ::-1].copy()),
        w,
        h,
        float(grey.std()),
        bool(spread < 2.0),
        float(lap.var()),
        len(data),
        float(grey.mean()),
        entropy,
        quality,
        exif,
    )


#: the IJG (libjpeg) base luminance quantisation table, which quality 50 uses as it is
_IJG_LUMA_MEAN = float(
    np.mean(
        [
            16,
            11,
            10,
            16,
            24,
            40,
            51,
            61,
            12,
            12,
            14,
            19,
            26,
            58,
            60,
            55,
            14,
            13,
            16,
            24,
            40,
            57,
            69,
            56,
            14,
            17,
            22,
            29,
            51,
            87,
            80,
            62,
            18,
            22,
            37,
            56,
            68,
            109,
            103,
            77,
            24,
            35,
            55,
            64,
            81,
            104,
            113,
            92,
            49,
            64,
            78,
            87,
            103,
            121,
            120,
            101,
            72,
            92,
            95,
            98,
            112,
            100,
            103,
            99,
        ]
    )
)


def jpeg_quality(img) -> float | None:
    """The IJG quality (1-100) a JPEG's luminance table was most likely scaled for, from
    its mean against the base table (libjpeg: scale 5000/q below 50, 200-2q above);
    None for other formats."""
    tables = getattr(img, "quantization", None)
    if img.format != "JPEG" or not tables:
        return None
    scale = 100.0 * float(np.mean(tables[min(tables)])) / _IJG_LUMA_MEAN
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return round(float(min(100.0, max(1.0, quality))), 1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes (broadcast)."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def find_duplicates(sigs: Sequence[Signature], max_distance: int = 4, chunk: int = 512) -> list[dict]:
    """Pairs (i < j) of exact copies (same bytes) or near copies (hash within ``max_distance``
    bits, either way round mirrored): ``{"a", "b", "kind", "distance", "mirrored"}``."""
    pairs: dict[tuple[int, int], dict] = {}
    by_sha: dict[str, list[int]] = {}
    for i, s in enumerate(sigs):
        by_sha.setdefault(s.sha256, []).append(i)
    for idx in by_sha.values():
        for k, i in enumerate(idx):
            for j in idx[k + 1 :]:
                pairs[(i, j)] = {"a": i, "b": j, "kind": "exact", "distance": 0, "mirrored": False}
    h = np.array([s.dhash for s in sigs], dtype=np.uint64)
    m = np.array([s.dhash_mirror for s in sigs], dtype=np.uint64)
    for start in range(0, len(h), chunk):
        rows = slice(start, start + chunk)
        plain = hamming(h[rows, None], h[None, :])
        mirror = hamming(h[rows, None], m[None, :])
        for d, mirrored in ((plain, False), (mirror, True)):
            ii, jj = np.nonzero(d <= max_distance)
            for i, j in zip((ii + start).tolist(), jj.tolist()):
                if (
                    i >= j
                    or (i, j) in pairs
                    and (pairs[(i, j)]["kind"] == "exact" or pairs[(i, j)]["distance"] <= d[i - start, j])
                ):
                    continue
                pairs[(int(i), int(j))] = {
                    "a": int(i),
                    "b": int(j),
                    "kind": "near",
                    "distance": int(d[i - start, j]),
                    "mirrored": mirrored,
                }
    return sorted(pairs.values(), key=lambda p: (p["distance"], p["a"], p["b"]))


def oddities(s: Signature) -> list[str]:
    """What is odd about one image (empty: nothing)."""
    out = []
    if min(s.width, s.height) < MIN_SIDE:
        out.append(f"tiny ({s.width} x {s.height} px)")
    if max(s.width, s.height) > MAX_ASPECT * min(s.width, s.height):
        out.append(f"elongated ({s.width} x {s.height} px)")
    if s.std < MIN_STD:
        out.append(f"near-blank (grey-level std {s.std:.1f})")
    if s.grey:
        out.append("grey (no colour)")
    if s.sharpness < MIN_SHARPNESS and s.std >= MIN_STD:
        out.append(f"blurry (Laplacian variance {s.sharpness:.1f})")
    return out


def similar_pairs(features: np.ndarray, min_cosine: float, chunk: int = 512) -> list[dict]:
    """Pairs (i < j) of images whose features (rows; NaN rows never pair), centred on their
    mean, have cosine similarity of at least ``min_cosine`` and where one is the other's
    nearest neighbour: copies a perceptual hash misses (a crop, another framing). Centring
    removes what every photo of the set shares, so only a twin stays close."""
    x = np.asarray(features, dtype=np.float32)
    good = np.asarray(np.isfinite(x).all(axis=1), dtype=bool)
    if good.sum() < 2:
        return []
    x = np.where(good[:, None], x - x[good].mean(axis=0), 0.0)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    nearest = np.empty(len(x), dtype=np.int64)
    hits = []
    for start in range(0, len(x), chunk):
        sim = x[start : start + chunk] @ x.T
        rows = np.arange(start, min(start + chunk, len(x)))
        sim[rows - start, rows] = -np.inf
        sim[:, ~good] = -np.inf
        nearest[rows] = sim.argmax(axis=1)
        ii, jj = np.nonzero(sim >= min_cosine)
        hits += [(int(i), int(j), float(sim[i - start, j])) for i, j in zip(ii + start, jj) if good[i]]
    out = {}
    for i, j, c in hits:
        if nearest[i] == j or nearest[j] == i:
            out[(min(i, j), max(i, j))] = c
    return [{"a": a, "b": b, "cosine": c} for (a, b), c in sorted(out.items())]


def similar_in_any(views: list[np.ndarray], min_cosine: float) -> list[dict]:
    """:func:`similar_pairs` under each of several feature matrices (one per view of the
    same images), united; a pair found under more than one keeps its highest cosine. Each
    view sees copies the others miss: a mirrored reframing, a watermark, the same car."""
    best: dict[tuple[int, int], float] = {}
    for feats in views:
        for p in similar_pairs(feats, min_cosine):
            key = (p["a"], p["b"])
            best[key] = max(best.get(key, -1.0), p["cosine"])
    return [{"a": a, "b": b, "cosine": c} for (a, b), c in sorted(best.items())]


def merge_pairs(hashed: list[dict], similar: list[dict]) -> list[dict]:
    """The hash pairs with each one's cosine added where the features found it too, and the
    features-only pairs as kind ``similar``; exact first, then near, then by similarity."""
    cos = {(p["a"], p["b"]): p["cosine"] for p in similar}
    out = [{**p, "cosine": cos.pop((p["a"], p["b"]), None)} for p in hashed]
    out += [
        {"a": a, "b": b, "kind": "similar", "distance": None, "mirrored": False, "cosine": c}
        for (a, b), c in cos.items()
    ]
    order = {"exact": 0, "near": 1, "similar": 2}
    return sorted(
        out,
        key=lambda p: (
            order[p["kind"]],
            p["distance"] if p["distance"] is not None else 0,
            -(p["cosine"] or 0.0),
            p["a"],
            p["b"],
        ),
    )
