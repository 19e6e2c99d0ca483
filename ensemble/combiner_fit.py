"""Fitting what the combiners need, from member probabilities alone (no network runs).

- learned weights for weighted soft voting (minimum log loss, non-negative, sum 1);
- the stacking meta-learner (multinomial logistic regression);
- per-member temperatures (calibration on validation).

Sources are validation probabilities or out-of-bag (OOB) probabilities; for OOB, each
training image counts only the members that left it out (``available`` masks).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from .combiners import PROBA_FLOOR, combine, softmax, stacking_features, temperature_scale
from .run import atomic_write_json, atomic_write_npy, read_json, read_npy

log = logging.getLogger(__name__)


def oob_matrix(oob_indices: list[np.ndarray], oob_proba: list[np.ndarray], n: int,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Members' OOB probabilities as (M, n, C) plus an ``available`` (M, n) mask."""
    m = len(oob_indices)
    full = np.zeros((m, n, n_classes))
    available = np.zeros((m, n), dtype=bool)
    for j, (idx, p) in enumerate(zip(oob_indices, oob_proba)):
        full[j, idx] = p
        available[j, idx] = True
    return full, available


def _masked_mix(proba: np.ndarray, available: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the available members of each sample (weights renormalised)."""
    ww = w[:, None] * available  # (M, N)
    tot = ww.sum(axis=0)
    tot = np.where(tot > 0, tot, 1.0)
    return np.einsum("mn,mnc->nc", ww, proba) / tot[:, None]


def impute_missing(proba: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Fill each unavailable member's probabilities with the available members' mean."""
    mean = _masked_mix(proba, available, np.ones(proba.shape[0]))
    return np.where(available[:, :, None], proba, mean[None])


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], PROBA_FLOOR, 1.0))))


def fit_weights(proba: np.ndarray, y: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the soft vote's log loss.

    Starts from uniform weights and keeps them if the optimiser cannot improve, so the
    result never does worse than uniform on the data it was fitted on.
    """
    from scipy.optimize import minimize

    proba = np.asarray(proba, dtype=np.float64)
    m = proba.shape[0]
    available = np.ones(proba.shape[:2], dtype=bool) if available is None else available
    keep = available.any(axis=0)
    proba, available, y = proba[:, keep], available[:, keep], np.asarray(y)[keep]

    def loss(z: np.ndarray) -> float:
        return _nll(_masked_mix(proba, available, softmax(z[None])[0]), y)

    uniform = np.full(m, 1.0 / m)
    res = minimize(loss, np.zeros(m), method="L-BFGS-B")
    w = softmax(res.x[None])[0]
    return w if loss(res.x) <= loss(np.zeros(m)) else uniform


def fit_stacking(proba: np.ndarray, y: np.ndarray, n_classes: int, C: float = 1.0,
                 available: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on member log-probabilities -> (coef, intercept).

    Missing members (OOB source) are imputed with the mean of the available members'
    probabilities for that image; images no member left out are dropped.
    """
    from sklearn.linear_model import LogisticRegression

    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y)
    if available is not None:
        keep = available.any(axis=0)
        proba, available, y = proba[:, keep], available[:, keep], y[keep]
        proba = impute_missing(proba, available)
    X = stacking_features(proba)
    present = np.unique(y)
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.fit(X, y)
    coef = np.zeros((n_classes, X.shape[1]))
    intercept = np.full(n_classes, -1e3)  # a class never seen in fitting is never predicted
    if len(present) == 2 and clf.coef_.shape[0] == 1:  # binary: sklearn keeps one row
        coef[present[1]], intercept[present[1]] = clf.coef_[0], clf.intercept_[0]
        coef[present[0]], intercept[present[0]] = 0.0, 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    return coef, intercept


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in [0.05, 20] minimising the log loss of softmax(log p / T)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda t: _nll(temperature_scale(proba, np.exp(t)), y),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


@dataclasses.dataclass
class FittedCombiner:
    """Everything needed to apply any strategy to member probabilities."""

    strategy: str
    classes: list[str]
    member_names: list[str]
    vote_weights: list[float] | None          # YAML weights for hard/soft (None = equal)
    learned_weights: list[float]              # for `weighted`
    weights_source: str                       # "config", "oob" or "val"
    stacking_coef: np.ndarray | None = None
    stacking_intercept: np.ndarray | None = None
    stacking_source: str | None = None
    stacking_C: float | None = None
    temperatures: list[float] | None = None   # per member, when calibrated

    def calibrate(self, member_proba: np.ndarray) -> np.ndarray:
        """Apply per-member temperatures (identity when not calibrated)."""
        if not self.temperatures:
            return np.asarray(member_proba, dtype=np.float64)
        return np.stack([temperature_scale(p, t) for p, t in zip(member_proba, self.temperatures)])

    def available(self) -> list[str]:
        return ["hard", "soft", "weighted"] + (["stacking"] if self.stacking_coef is not None else [])

    def apply(self, member_proba: np.ndarray, strategy: str | None = None,
              calibrated: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, probabilities) of ``strategy`` (default: the run's)."""
        strategy = strategy or self.strategy
        p = member_proba if calibrated else self.calibrate(member_proba)
        if strategy == "weighted":
            return combine(p, "weighted", self.learned_weights)
        if strategy == "stacking":
            if self.stacking_coef is None:
                raise ValueError("this run has no stacking meta-learner; run `effens fit-combiner`")
            return combine(p, "stacking", stacking=(self.stacking_coef, self.stacking_intercept))
        return combine(p, strategy, self.vote_weights)

    # persistence: arrays as .npy, the rest as JSON
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        doc = {k: v for k, v in dataclasses.asdict(self).items()
               if k not in ("stacking_coef", "stacking_intercept")}
        if self.stacking_coef is not None:
            atomic_write_npy(folder / "stacking_coef.npy", self.stacking_coef)
            atomic_write_npy(folder / "stacking_intercept.npy", self.stacking_intercept)
            doc["stacking_features"] = "log(clip(p, 1e-6, 1)) of members in member_names order, " \
                                       "classes in classes order; proba = softmax(X @ coef.T + intercept)"
        atomic_write_json(folder / "combiner.json", doc)

    @classmethod
    def load(cls, folder: str | Path) -> "FittedCombiner":
        folder = Path(folder)
        doc = read_json(folder / "combiner.json")
        doc.pop("stacking_features", None)
        if (folder / "stacking_coef.npy").is_file() and doc.get("stacking_source"):
            doc["stacking_coef"] = read_npy(folder / "stacking_coef.npy")
            doc["stacking_intercept"] = read_npy(folder / "stacking_intercept.npy")
        return cls(**doc)


def fit_combiner(cfg_combiner, member_names: list[str], classes: list[str], y_train: np.ndarray,
                 oob_indices: list[np.ndarray], oob_proba: list[np.ndarray],
                 val_proba: np.ndarray, y_val: np.ndarray, seed: int = 0) -> FittedCombiner:
    """Fit temperatures (optional), learned weights and the stacking meta-learner."""
    k = len(classes)
    temperatures = None
    if cfg_combiner.calibrate:
        temperatures = [fit_temperature(p, y_val) for p in val_proba]
        val_proba = np.stack([temperature_scale(p, t) for p, t in zip(val_proba, temperatures)])
        oob_proba = [temperature_scale(p, t) if len(p) else p for p, t in zip(oob_proba, temperatures)]
    oob_full, oob_avail = oob_matrix(oob_indices, oob_proba, len(y_train), k)
    has_oob = bool(oob_avail.any())

    def source_data(source: str):
        if source == "oob" and has_oob:
            return oob_full, y_train, oob_avail
        if source == "oob":
            log.warning("no member left any training image out (ratio 1 without replacement): "
                        "fitting the combiner on validation probabilities instead")
        return val_proba, y_val, None

    def actual(source: str) -> str:
        return source if source == "val" or has_oob else "val"

    w = cfg_combiner.weights
    if isinstance(w, list):
        learned, weights_source = list(map(float, np.asarray(w) / np.sum(w))), "config"
    else:
        src = cfg_combiner.weights_source
        learned, weights_source = fit_weights(*source_data(src)).tolist(), actual(src)
    st = cfg_combiner.stacking
    p, yy, avail = source_data(st.source)
    coef, intercept = fit_stacking(p, yy, k, st.C, avail, seed)
    return FittedCombiner(
        strategy=cfg_combiner.strategy, classes=list(classes), member_names=list(member_names),
        vote_weights=list(map(float, w)) if isinstance(w, list) else None,
        learned_weights=learned, weights_source=weights_source, stacking_coef=coef,
        stacking_intercept=intercept, stacking_source=actual(st.source), stacking_C=st.C,
        temperatures=temperatures)
