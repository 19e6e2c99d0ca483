"""Shortcuts: properties of a photo that are not its content (size, compression, sharpness,
brightness, source folder...) but still predict its label.

A network is free to learn such a property instead of the damage: on VDS, a photo's
resolution and JPEG compression are tied to its label in train and val and absent in test.
For every nuisance property this module measures, on the training split,

- how well it alone (and all of them together) predicts the label: the out-of-fold
  macro-F1 (stratified 5-fold) of a naive Bayes classifier on 16 quantile bins of each
  property, with a bootstrap interval; and
- how its distribution moves between splits, per class (quartiles, and the
  Kolmogorov-Smirnov distance of each split from train).

Chance is measured, not assumed: the same classifiers on ``N_NULL`` shuffles of the
labels. A property is *flagged* when fewer than 2.5% of the shuffles let the best of all
properties score as high (a permutation test over all properties at once, so checking
fourteen properties does not multiply false alarms) and it beats chance's mean by at
least ``MIN_GAIN``; all properties together likewise, against themselves on the same
shuffles. So properties independent of the label raise an alarm in at most about 5% of
data sets (``ALPHA``; tests/test_shortcuts.py counts it on made-up data and checks that a
planted tie is found).
Pure functions on arrays (numpy, scikit-learn); the audit reads the files
(:mod:`ensemble.auditing.duplicates`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np

from ..metrics import macro_f1

#: a flagged property predicts the label at least this much above chance (macro-F1)
MIN_GAIN = 0.05
#: label shuffles chance is measured on, and the false-alarm rate of the whole check (half of it for
#: the best single property, half for all together)
N_NULL, ALPHA = 50, 0.05
#: at most this many source folders are told apart (the rest are one, "other")
MAX_SOURCES = 250
#: a split differs from train in a property when their KS distance is at least this
MIN_SHIFT = 0.3


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """One property of a photo that is not its content: its name, what it is in words and
    how to read it from a :class:`ensemble.auditing.duplicates.Signature` (NaN: not known)."""

    name: str
    about: str
    read: Callable[[Any], float]  # an image's signature (ensemble.auditing.duplicates) -> the value


def _jpeg(s) -> float:
    return float("nan") if s.jpeg_quality is None else float(s.jpeg_quality)


#: the properties checked, in report order (size and compression first: VDS's shortcut)
NUISANCES: tuple[Nuisance, ...] = (
    Nuisance("short_side", "shorter side (px)", lambda s: float(min(s.width, s.height))),
    Nuisance("width", "width (px)", lambda s: float(s.width)),
    Nuisance("height", "height (px)", lambda s: float(s.height)),
    Nuisance("pixels", "pixel count (megapixels)", lambda s: s.width * s.height / 1e6),
    Nuisance("aspect", "longer / shorter side", lambda s: max(s.width, s.height) / max(1, min(s.width, s.height))),
    Nuisance("bytes_per_pixel", "file bytes per pixel", lambda s: s.bytes / max(1, s.width * s.height)),
    Nuisance("jpeg_quality", "JPEG quality estimated from the quantisation table", _jpeg),
    Nuisance("sharpness", "variance of the Laplacian (blurry when low)", lambda s: s.sharpness),
    Nuisance("brightness", "mean grey level (dark or light)", lambda s: s.brightness),
    Nuisance("contrast", "grey-level standard deviation", lambda s: s.std),
    Nuisance("information", "entropy of the grey histogram (bits; low information when low)", lambda s: s.entropy),
    Nuisance("grayscale", "no colour (1) or colour (0)", lambda s: float(s.grey)),
    Nuisance("exif", "EXIF metadata present (1) or not (0)", lambda s: float(s.exif)),
)


def source_folders(paths: Sequence[str], labels: Sequence[str]) -> list[str] | None:
    """Each file's folders below its class folder (``train/minor/kaggle/a.jpg`` -> ``kaggle``):
    where the photo came from, when a data set keeps its sources apart. None unless every
    photo sits below a folder named as its label (class folders): elsewhere (a manifest) a
    folder may be the class itself."""
    out = []
    for path, label in zip(paths, labels):
        parts = os.path.dirname(os.path.abspath(path)).split(os.sep)
        if label not in parts:
            return None
        last = len(parts) - 1 - parts[::-1].index(label)
        out.append("/".join(parts[last + 1 :]))
    return out if out else None


def property_table(
    sigs: Sequence, sources: Sequence[str] | None = None, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Name -> one float per image (NaN where unknown) for every nuisance (or those in
    ``names``); ``source`` (category codes) when the images come from more than one source
    folder."""
    table = {
        n.name: np.array([n.read(s) for s in sigs], dtype=np.float64)
        for n in NUISANCES
        if names is None or n.name in names
    }
    return _with_sources(table, sources)


def _with_sources(table: dict[str, np.ndarray], sources: Sequence[str] | None) -> dict[str, np.ndarray]:
    """``table`` plus ``source`` (category codes, the ``MAX_SOURCES`` most common apart) when
    the photos come from several source folders."""
    if sources is not None and len(set(sources)) > 1:
        from collections import Counter

        common = [name for name, _ in Counter(sources).most_common(MAX_SOURCES)]
        codes = {name: i for i, name in enumerate(sorted(common))}
        table["source"] = np.array([codes.get(x, len(codes)) for x in sources], dtype=np.float64)
    return table


#: the properties a file's header gives without decoding its pixels (the run card's check)
HEADER_PROPERTIES = ("short_side", "width", "height", "pixels", "aspect", "bytes_per_pixel", "jpeg_quality", "exif")


@dataclasses.dataclass(frozen=True)
class Header:
    """What a photo's header says: upright size, file size, JPEG quality, EXIF presence."""

    width: int
    height: int
    bytes: int
    jpeg_quality: float | None
    exif: bool


def read_header(path: str) -> Header | None:
    """A file's :class:`Header` (its pixels are not decoded); None when it cannot be read."""
    from PIL import Image

    from .duplicates import jpeg_quality

    try:
        with Image.open(path) as img:
            exif = img.getexif()
            w, h = img.size
            if exif.get(0x0112) in (5, 6, 7, 8):  # EXIF orientation: turned a quarter
                w, h = h, w
            return Header(w, h, os.path.getsize(path), jpeg_quality(img), bool(exif))
    except Exception:  # noqa: BLE001 - an unreadable file is simply left out of the check
        return None


def header_check(data, seed: int = 0) -> dict:
    """:func:`check_shortcuts` over the header properties of every image of a
    :class:`ensemble.data.Dataset` (fast: no pixel is decoded), for the run card."""
    rows = [
        (split, p, lab)
        for split in ("train", "val", "test")
        if getattr(data, split) is not None
        for p, lab in zip(getattr(data, split).paths, getattr(data, split).labels)
    ]
    heads = [read_header(p) for _, p, _ in rows]
    kept = [(r, h) for r, h in zip(rows, heads) if h is not None]
    splits, paths, labels = ([r[i] for r, _ in kept] for i in range(3))
    table = property_table([h for _, h in kept], source_folders(paths, labels), HEADER_PROPERTIES)
    return check_shortcuts(table, labels, splits, list(data.classes), seed)


def about(name: str) -> str:
    """A property's description."""
    return next((n.about for n in NUISANCES if n.name == name), "source folder (below the class folder)")


def _bins(train: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges: the training values' quantiles (unique), NaN kept apart as its own bin."""
    finite = train[np.isfinite(train)]
    if not len(finite):
        return np.array([])
    return np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1]))


def _log_likelihood(
    x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, n_classes: int, n_bins: int, categorical: bool
) -> np.ndarray:
    """log p(bin | class) of each new value, from one property's bins (a category, or a
    quantile bin; NaN its own bin) counted on the fitting rows, Laplace-smoothed."""
    if categorical:
        cats = np.unique(x_fit[np.isfinite(x_fit)])

        def where(v):
            return np.where(np.isfinite(v), np.searchsorted(cats, v), len(cats))  # noqa: E306

        n = len(cats) + 1
    else:
        edges = _bins(x_fit, n_bins)

        def where(v):
            return np.where(np.isfinite(v), np.searchsorted(edges, v, side="right"), len(edges) + 1)  # noqa: E306,E501

        n = len(edges) + 2
    counts = np.ones((n, n_classes))
    np.add.at(counts, (where(x_fit), y_fit), 1)
    return np.log(counts / counts.sum(axis=0, keepdims=True))[np.clip(where(x_new), 0, n - 1)]


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A stratified fold number per row: each class's rows shuffled (seeded) and dealt out."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = (np.arange(len(rows)) + start) % k
        start += len(rows)
    return fold


def out_of_fold(
    x: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    categorical: Sequence[bool] | None = None,
    n_bins: int = 16,
) -> np.ndarray:
    """Out-of-fold predicted classes (stratified ``folds``-fold) of a naive Bayes classifier
    over the binned columns of ``x`` with equal class priors (balanced, as macro-F1 asks):
    with one column, each bin's class is the one whose share of the bin most exceeds its
    share overall. Pure numpy, fast enough to refit on many label shuffles."""
    n_classes = int(y.max()) + 1
    counts = np.bincount(y)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        return np.full(len(y), counts.argmax())
    cat = np.zeros(x.shape[1], dtype=bool) if categorical is None else np.asarray(categorical, dtype=bool)
    fold = _folds(y, k, seed)
    pred = np.zeros(len(y), dtype=np.int64)
    for f in range(k):
        fit, held = fold != f, fold == f
        score = sum(
            _log_likelihood(x[fit, j], y[fit], x[held, j], n_classes, n_bins, bool(cat[j])) for j in range(x.shape[1])
        )
        pred[held] = np.argmax(score, axis=1)
    return pred


def _bootstrap_macro_f1(
    y: np.ndarray, pred: np.ndarray, n_classes: int, seed: int, resamples: int = 400
) -> tuple[float, float]:
    """95% percentile interval of macro-F1 over images resampled (vectorised)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (resamples, len(y)))
    yy, pp = y[idx], pred[idx]
    f1 = np.zeros(resamples)
    for k in range(n_classes):
        tp = np.sum((yy == k) & (pp == k), axis=1)
        denom = np.sum(yy == k, axis=1) + np.sum(pp == k, axis=1)
        f1 += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    f1 /= n_classes
    return round(float(np.percentile(f1, 2.5)), 4), round(float(np.percentile(f1, 97.5)), 4)


def _scored(y: np.ndarray, pred: np.ndarray, n_classes: int, seed: int) -> dict:
    low, high = _bootstrap_macro_f1(y, pred, n_classes, seed)
    return {"macro_f1": macro_f1(y, pred, n_classes), "low": low, "high": high}


def _p_value(observed: float, null: np.ndarray) -> float:
    """Permutation p-value: the share of shuffles scoring at least ``observed`` (counting it)."""
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def predictive_power(table: dict[str, np.ndarray], y: np.ndarray, n_classes: int, seed: int = 0) -> dict:
    """How well each property (and all together, ``all``) predicts ``y`` out of fold:
    ``{name: {macro_f1, low, high, p}}``, where ``p`` is the permutation p-value against the
    best single property on each of ``N_NULL`` label shuffles (for ``all``: all together on
    the same shuffles); ``chance``: the mean score of a property and of all together there."""
    y = np.asarray(y, dtype=np.int64)
    names = [n for n, v in table.items() if np.isfinite(v).any() and np.nanstd(v) > 0]
    if not names:
        return {"properties": {}, "chance": {"mean": 1.0 / n_classes, "mean_all": 1.0 / n_classes, "shuffles": 0}}
    cat = [n == "source" for n in names]
    x = np.column_stack([table[n] for n in names])

    def scores(labels: np.ndarray) -> np.ndarray:
        """Each property alone, then all together."""
        single = [
            macro_f1(labels, out_of_fold(x[:, [j]], labels, seed, categorical=[cat[j]]), n_classes)
            for j in range(len(names))
        ]
        return np.array(single + [macro_f1(labels, out_of_fold(x, labels, seed, categorical=cat), n_classes)])

    rng = np.random.default_rng(seed + 1)
    null = np.array([scores(rng.permutation(y)) for _ in range(N_NULL)])
    out: dict = {}
    for j, name in enumerate([*names, "all"]):
        pred = out_of_fold(x if name == "all" else x[:, [j]], y, seed, categorical=cat if name == "all" else [cat[j]])
        out[name] = _scored(y, pred, n_classes, seed)
        out[name]["p"] = _p_value(out[name]["macro_f1"], null[:, -1] if name == "all" else null[:, :-1].max(axis=1))
    return {
        "properties": out,
        "chance": {"mean": float(null[:, :-1].mean()), "mean_all": float(null[:, -1].mean()), "shuffles": N_NULL},
    }


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between two samples (NaN dropped; 0 when one is empty)."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not len(a) or not len(b):
        return 0.0
    grid = np.concatenate([a, b])
    return float(
        np.max(
            np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b))
        )
    )


def _quartiles(v: np.ndarray) -> dict | None:
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(len(v)), "q25": float(q25), "median": float(q50), "q75": float(q75)}


def split_shift(values: np.ndarray, labels: Sequence[str], splits: Sequence[str], classes: Sequence[str]) -> dict:
    """One property across splits: per split and class, the count and quartiles; per split
    other than train, its KS distance from train (all classes, and per class)."""
    label, split_of = np.asarray(labels, dtype=object), np.asarray(splits, dtype=object)
    out: dict = {"by_class": {}, "ks_from_train": {}, "ks_from_train_by_class": {}}
    train = split_of == "train"
    for split in dict.fromkeys(split_of.tolist()):
        here = split_of == split
        out["by_class"][split] = {
            c: _quartiles(values[here & (label == c)]) for c in classes if (here & (label == c)).any()
        }
        if split != "train":
            out["ks_from_train"][split] = _ks(values[here], values[train])
            out["ks_from_train_by_class"][split] = {
                c: _ks(values[here & (label == c)], values[train & (label == c)])
                for c in classes
                if (here & (label == c)).any()
            }
    return out


def check_shortcuts(
    table: dict[str, np.ndarray], labels: Sequence[str], splits: Sequence[str], classes: Sequence[str], seed: int = 0
) -> dict:
    """The whole check (audit.json's ``shortcuts``): per property its predictive power on
    train, whether it is flagged, and its shift between splits; ``flagged`` names the
    flagged properties, best first; ``findings`` says each in one sentence."""
    splits_a = np.asarray(splits, dtype=object)
    train = splits_a == "train"
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lab] for lab, s in zip(labels, splits) if s == "train"], dtype=np.int64)
    if len(set(y.tolist())) < 2:
        power: dict[str, Any] = {
            "properties": {},
            "chance": {"mean": 1.0 / len(classes), "mean_all": 1.0 / len(classes), "shuffles": 0},
        }
    else:
        power = predictive_power({n: v[train] for n, v in table.items()}, y, len(classes), seed)
    chance = power["chance"]

    def flag(p: dict | None, mean: float) -> bool:
        return bool(p is not None and p["p"] <= ALPHA / 2 and p["macro_f1"] >= mean + MIN_GAIN)

    props = {}
    for name, values in table.items():
        p = power["properties"].get(name)
        props[name] = {
            "about": about(name),
            "predicts": p,
            "flagged": flag(p, chance["mean"]),
            **split_shift(values, labels, splits, classes),
        }
    flagged = sorted((n for n, v in props.items() if v["flagged"]), key=lambda n: -props[n]["predicts"]["macro_f1"])
    every = power["properties"].get("all")
    all_flagged = flag(every, chance["mean_all"])
    findings = [finding(n, props[n], chance["mean"]) for n in flagged]
    if all_flagged:
        findings.append(
            f"all properties together predict the label on train at macro-F1 {every['macro_f1']:.2f} "
            f"[{every['low']:.2f}, {every['high']:.2f}], chance {chance['mean_all']:.2f}"
        )
    return {
        "n_train": int(len(y)),
        "chance": chance,
        "alpha": ALPHA,
        "min_gain": MIN_GAIN,
        "all": every,
        "all_flagged": all_flagged,
        "properties": props,
        "flagged": flagged,
        "findings": findings,
    }


def finding(name: str, prop: dict, chance: float) -> str:
    """One sentence: how well a property predicts the label, and where the splits move."""
    p = prop["predicts"]
    text = (
        f"{name} ({prop['about']}) predicts the label on train at macro-F1 {p['macro_f1']:.2f} "
        f"[{p['low']:.2f}, {p['high']:.2f}], chance {chance:.2f}"
    )
    moved = [f"{s} KS {d:.2f}" for s, d in prop["ks_from_train"].items() if d >= MIN_SHIFT]
    return text + (f"; it differs from train in {', '.join(moved)}" if moved else "")


def summary_line(doc: dict) -> str:
    """The CLI's and the card's short form: the flagged properties, or that none is."""
    if not doc["flagged"] and doc.get("all_flagged"):
        return (
            f"the nuisance properties together predict the label (macro-F1 {doc['all']['macro_f1']:.2f}, "
            f"chance {doc['chance']['mean']:.2f}), none alone"
        )
    if not doc["flagged"]:
        return (
            f"no nuisance property predicts the label (all together: macro-F1 "
            f"{doc['all']['macro_f1']:.2f}, chance {doc['chance']['mean']:.2f})"
            if doc.get("all")
            else "no nuisance property could be measured"
        )
    best = doc["properties"][doc["flagged"][0]]["predicts"]
    return (
        f"{len(doc['flagged'])} nuisance properties predict the label ({', '.join(doc['flagged'][:4])}"
        f"{', ...' if len(doc['flagged']) > 4 else ''}; best macro-F1 {best['macro_f1']:.2f}, chance "
        f"{doc['chance']['mean']:.2f})"
    )
