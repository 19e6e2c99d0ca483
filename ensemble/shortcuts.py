"""Shortcuts: properties of a photo that are not its content (size, compression, sharpness,
brightness, source folder...) but still predict its label.

A network is free to learn such a property instead of the damage: on VDS, a photo's
resolution and JPEG compression are tied to its label in train and val and absent in test.
For every nuisance property this module measures, on the training split,

- how well it alone (and all of them together) predicts the label: the out-of-fold
  macro-F1 (stratified 5-fold) of a classifier on 16 quantile bins of the property (all
  together: a depth-2 gradient-boosting classifier), with a bootstrap interval, against
  chance (the all-together classifier on shuffled labels, a generous chance level); and
- how its distribution moves between splits, per class (medians, and the
  Kolmogorov-Smirnov distance of each split from train).

A property is *flagged* when the lower end of its interval clears the chance level's
95th percentile by ``MIN_GAIN``: a nuisance independent of the label is never flagged
(tests/test_shortcuts.py checks both ways on made-up data). Pure functions on arrays
(numpy, scikit-learn); the audit reads the files (:mod:`ensemble.duplicates`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

#: a flagged property predicts the label at least this much above chance (macro-F1)
MIN_GAIN = 0.05
#: a split differs from train in a property when their KS distance is at least this
MIN_SHIFT = 0.3


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """One property of a photo that is not its content: its name, what it is in words and
    how to read it from a :class:`ensemble.duplicates.Signature` (NaN: not known)."""

    name: str
    about: str
    read: Callable[[object], float]


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
    Nuisance("information", "entropy of the grey histogram (bits; low information when low)",
             lambda s: s.entropy),
    Nuisance("grayscale", "no colour (1) or colour (0)", lambda s: float(s.grey)),
    Nuisance("exif", "EXIF metadata present (1) or not (0)", lambda s: float(s.exif)),
)


def source_folders(paths: Sequence[str], labels: Sequence[str], splits: Sequence[str]) -> list[str]:
    """Each file's folder below its split's common root, with the class folder left out
    (``train/minor/kaggle/a.jpg`` -> ``kaggle``): where the photo came from, when a data
    set keeps its sources apart. Empty when the folder is only the class folder."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    roots = {s: os.path.commonpath([f for f, s_ in zip(folders, splits) if s_ == s]) for s in set(splits)}
    return ["/".join(c for c in os.path.relpath(f, roots[s]).split(os.sep) if c not in (".", lab))
            for f, lab, s in zip(folders, labels, splits)]


def property_table(sigs: Sequence, sources: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Name -> one float per image (NaN where unknown); ``source`` (category codes) when
    the images come from more than one source folder."""
    table = {n.name: np.array([n.read(s) for s in sigs], dtype=np.float64) for n in NUISANCES}
    return _with_sources(table, sources)


def _with_sources(table: dict[str, np.ndarray], sources: Sequence[str] | None) -> dict[str, np.ndarray]:
    """``table`` plus ``source`` (category codes) when the photos come from several source folders."""
    if sources is not None and len(set(sources)) > 1:
        codes = {name: i for i, name in enumerate(sorted(set(sources)))}
        table["source"] = np.array([codes[x] for x in sources], dtype=np.float64)
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
    rows = [(split, p, lab) for split in ("train", "val", "test") if getattr(data, split) is not None
            for p, lab in zip(getattr(data, split).paths, getattr(data, split).labels)]
    heads = [read_header(p) for _, p, _ in rows]
    kept = [(r, h) for r, h in zip(rows, heads) if h is not None]
    splits, paths, labels = ([r[i] for r, _ in kept] for i in range(3))
    table = {n.name: np.array([n.read(h) for _, h in kept], dtype=np.float64) for n in NUISANCES
             if n.name in HEADER_PROPERTIES}
    return check_shortcuts(_with_sources(table, source_folders(paths, labels, splits)), labels, splits,
                           list(data.classes), seed)


def about(name: str) -> str:
    """A property's description."""
    return next((n.about for n in NUISANCES if n.name == name), "source folder (below the class folder)")


def _macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    f1 = []
    for k in range(n_classes):
        tp = np.sum((pred == k) & (y == k))
        denom = np.sum(pred == k) + np.sum(y == k)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def _bins(train: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges: the training values' quantiles (unique), NaN kept apart as its own bin."""
    finite = train[np.isfinite(train)]
    if not len(finite):
        return np.array([])
    return np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1]))


def _binned_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, n_classes: int,
                    n_bins: int, categorical: bool) -> np.ndarray:
    """One property as a classifier: per bin (a category, or a quantile bin), the class whose
    share of the bin most exceeds its share overall (balanced, like class weights)."""
    if categorical:
        cats = np.unique(x_fit[np.isfinite(x_fit)])
        def where(v): return np.where(np.isfinite(v), np.searchsorted(cats, v), len(cats))  # noqa: E306
        n = len(cats) + 1
    else:
        edges = _bins(x_fit, n_bins)
        def where(v): return np.where(np.isfinite(v), np.searchsorted(edges, v, side="right"), len(edges) + 1)  # noqa: E306,E501
        n = len(edges) + 2
    counts = np.ones((n, n_classes))  # Laplace smoothing: an empty bin predicts by the priors
    np.add.at(counts, (where(x_fit), y_fit), 1)
    prior = np.bincount(y_fit, minlength=n_classes) + 1.0
    score = (counts / counts.sum(axis=1, keepdims=True)) / (prior / prior.sum())
    return score.argmax(axis=1)[np.clip(where(x_new), 0, n - 1)]


def out_of_fold(x: np.ndarray, y: np.ndarray, seed: int = 0, folds: int = 5,
                categorical: Sequence[bool] | None = None, n_bins: int = 16) -> np.ndarray:
    """Out-of-fold predicted classes, stratified ``folds``-fold: one column is binned
    (:func:`_binned_predict`, fast and exact to read); several go to a depth-2
    gradient-boosting classifier with balanced class weights (NaN allowed)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    n_classes = int(y.max()) + 1
    n_splits = int(min(folds, np.bincount(y).min()))
    pred = np.zeros(len(y), dtype=np.int64)
    if n_splits < 2:
        return np.full(len(y), np.bincount(y).argmax())
    cat = np.zeros(x.shape[1], dtype=bool) if categorical is None else np.asarray(categorical, dtype=bool)
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit, held in cv.split(x, y):
        if x.shape[1] == 1:
            pred[held] = _binned_predict(x[fit, 0], y[fit], x[held, 0], n_classes, n_bins, bool(cat[0]))
            continue
        model = HistGradientBoostingClassifier(max_depth=2, max_iter=30, class_weight="balanced",
                                               early_stopping=False, random_state=seed,
                                               categorical_features=cat if cat.any() else None)
        with threadpool_limits(1):  # tiny fits: threads only wait on each other (and on a busy CPU)
            model.fit(x[fit], y[fit])
            pred[held] = model.predict(x[held])
    return pred


def _interval(y: np.ndarray, pred: np.ndarray, n_classes: int, seed: int, n_boot: int = 200) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    scores = [_macro_f1(y[i], pred[i], n_classes) for i in rng.integers(0, len(y), (n_boot, len(y)))]
    return float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))


def predictive_power(table: dict[str, np.ndarray], y: np.ndarray, n_classes: int, seed: int = 0,
                     n_null: int = 3) -> dict:
    """How well each property (and all together, ``all``) predicts ``y`` out of fold:
    ``{name: {macro_f1, low, high}}``, and ``chance``: the mean and 95th percentile of the
    same classifier on ``n_null`` shuffles of the labels (all properties together, the most
    flexible fit, so the chance level is a generous one)."""
    y = np.asarray(y, dtype=np.int64)
    names = [n for n, v in table.items() if np.isfinite(v).any() and np.nanstd(v) > 0]
    out: dict = {}
    for name in names:
        x = table[name][:, None]
        pred = out_of_fold(x, y, seed, categorical=[name == "source"])
        low, high = _interval(y, pred, n_classes, seed)
        out[name] = {"macro_f1": _macro_f1(y, pred, n_classes), "low": low, "high": high}
    if names:
        x = np.column_stack([table[n] for n in names])
        cat = [n == "source" for n in names]
        pred = out_of_fold(x, y, seed, categorical=cat)
        low, high = _interval(y, pred, n_classes, seed)
        out["all"] = {"macro_f1": _macro_f1(y, pred, n_classes), "low": low, "high": high}
        rng = np.random.default_rng(seed + 1)
        null = [_macro_f1(yy, out_of_fold(x, yy, seed, categorical=cat), n_classes)
                for yy in (rng.permutation(y) for _ in range(n_null))]
    else:
        null = [1.0 / n_classes]
    return {"properties": out, "chance": {"mean": float(np.mean(null)), "p95": float(np.percentile(null, 95))}}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between two samples (NaN dropped; 0 when one is empty)."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not len(a) or not len(b):
        return 0.0
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                               - np.searchsorted(b, grid, side="right") / len(b))))


def _quartiles(v: np.ndarray) -> dict | None:
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(len(v)), "q25": float(q25), "median": float(q50), "q75": float(q75)}


def split_shift(values: np.ndarray, labels: Sequence[str], splits: Sequence[str], classes: Sequence[str]) -> dict:
    """One property across splits: per split and class, the count and quartiles; per split
    other than train, its KS distance from train (all classes, and per class)."""
    labels, splits = np.asarray(labels, dtype=object), np.asarray(splits, dtype=object)
    out: dict = {"by_class": {}, "ks_from_train": {}, "ks_from_train_by_class": {}}
    train = splits == "train"
    for split in dict.fromkeys(splits.tolist()):
        here = splits == split
        out["by_class"][split] = {c: _quartiles(values[here & (labels == c)]) for c in classes
                                  if (here & (labels == c)).any()}
        if split != "train":
            out["ks_from_train"][split] = _ks(values[here], values[train])
            out["ks_from_train_by_class"][split] = {
                c: _ks(values[here & (labels == c)], values[train & (labels == c)]) for c in classes
                if (here & (labels == c)).any()}
    return out


def check_shortcuts(table: dict[str, np.ndarray], labels: Sequence[str], splits: Sequence[str],
                    classes: Sequence[str], seed: int = 0) -> dict:
    """The whole check (audit.json's ``shortcuts``): per property its predictive power on
    train, whether it is flagged, and its shift between splits; ``flagged`` names the
    flagged properties, best first; ``findings`` says each in one sentence."""
    splits_a = np.asarray(splits, dtype=object)
    train = splits_a == "train"
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lab] for lab, s in zip(labels, splits) if s == "train"], dtype=np.int64)
    power = predictive_power({n: v[train] for n, v in table.items()}, y, len(classes), seed) if len(y) else \
        {"properties": {}, "chance": {"mean": 1.0 / len(classes), "p95": 1.0 / len(classes)}}
    chance = power["chance"]
    bar = max(chance["p95"], chance["mean"] + MIN_GAIN)
    props = {}
    for name, values in table.items():
        p = power["properties"].get(name)
        props[name] = {"about": about(name), "predicts": p,
                       "flagged": bool(p is not None and p["low"] > bar),
                       **split_shift(values, labels, splits, classes)}
    flagged = sorted((n for n, v in props.items() if v["flagged"]),
                     key=lambda n: -props[n]["predicts"]["macro_f1"])
    every = power["properties"].get("all")
    return {"n_train": int(len(y)), "chance": chance, "min_gain": MIN_GAIN, "bar": bar,
            "all": every, "all_flagged": bool(every is not None and every["low"] > bar),
            "properties": props, "flagged": flagged,
            "findings": [finding(n, props[n], chance["mean"]) for n in flagged]}


def finding(name: str, prop: dict, chance: float) -> str:
    """One sentence: how well a property predicts the label, and where the splits move."""
    p = prop["predicts"]
    text = (f"{name} ({prop['about']}) predicts the label on train at macro-F1 {p['macro_f1']:.2f} "
            f"[{p['low']:.2f}, {p['high']:.2f}], chance {chance:.2f}")
    moved = [f"{s} KS {d:.2f}" for s, d in prop["ks_from_train"].items() if d >= MIN_SHIFT]
    return text + (f"; it differs from train in {', '.join(moved)}" if moved else "")


def summary_line(doc: dict) -> str:
    """The CLI's and the card's short form: the flagged properties, or that none is."""
    if not doc["flagged"]:
        return (f"no nuisance property predicts the label (all together: macro-F1 "
                f"{doc['all']['macro_f1']:.2f}, chance {doc['chance']['mean']:.2f})" if doc.get("all") else
                "no nuisance property could be measured")
    best = doc["properties"][doc["flagged"][0]]["predicts"]
    return (f"{len(doc['flagged'])} nuisance properties predict the label ({', '.join(doc['flagged'][:4])}"
            f"{', ...' if len(doc['flagged']) > 4 else ''}; best macro-F1 {best['macro_f1']:.2f}, chance "
            f"{doc['chance']['mean']:.2f})")
