"""Combiners: pure numpy over member probabilities of shape (members, samples, classes).

Applying (soft and hard votes, the stacking meta-learner, temperature scaling) and
fitting (learned weights, the meta-learner, temperatures) from probabilities alone; no
network runs here. The strategies that use them are in :mod:`ensemble.combining.strategies`.
For out-of-bag (OOB) data an ``available`` (members, samples) mask says which members
left each image out, i.e. may vote on it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _weights(weights: np.ndarray | Sequence[float] | None, n_members: int) -> np.ndarray:
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_members,):
        raise ValueError(f"`weights` must have one entry per member ({n_members}); got {w.shape[0]}")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"`weights` must be non-negative with a positive sum; got {w.tolist()}")
    return w / w.sum()


def soft_vote(proba: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of member probabilities -> (samples, classes)."""
    proba = np.asarray(proba, dtype=np.float64)
    w = _weights(weights, proba.shape[0])
    return np.tensordot(w, proba, axes=1)


def vote_shares(proba: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Each member votes for its argmax class with its weight -> vote shares (samples, classes)."""
    proba = np.asarray(proba, dtype=np.float64)
    m, n, c = proba.shape
    w = _weights(weights, m)
    shares = np.zeros((n, c))
    picks = proba.argmax(axis=2)  # (members, samples)
    for j in range(m):
        np.add.at(shares, (np.arange(n), picks[j]), w[j])
    return shares


def hard_vote(proba: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted majority vote -> predicted class per sample.

    Tie rule: among the classes with the most votes, the one with the highest weighted
    mean probability wins; if that ties too, the lowest class index.
    """
    shares = vote_shares(proba, weights)
    soft = soft_vote(proba, weights)
    top = np.isclose(shares, shares.max(axis=1, keepdims=True), rtol=0, atol=1e-12)
    return np.where(top, soft, -np.inf).argmax(axis=1)


PROBA_FLOOR = 1e-6


def stacking_features(proba: np.ndarray) -> np.ndarray:
    """Meta-learner input: each member's clipped log-probabilities side by side (N, M*C)."""
    proba = np.asarray(proba, dtype=np.float64)
    m, n, c = proba.shape
    return np.log(np.clip(proba, PROBA_FLOOR, 1.0)).transpose(1, 0, 2).reshape(n, m * c)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def stacking_proba(proba: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Multinomial logistic meta-learner applied with numpy -> (samples, classes)."""
    return softmax(stacking_features(proba) @ np.asarray(coef).T + np.asarray(intercept))


def temperature_scale(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities of logits / T (computed from probabilities: softmax(log p / T))."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), PROBA_FLOOR / 100, 1.0))
    return softmax(logp / temperature)


def masked_vote(
    proba: np.ndarray, available: np.ndarray, vote, weights: np.ndarray | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``vote(proba, weights) -> (pred, proba)`` per image over its available members.

    Returns (covered sample indices, predictions, probabilities) for the images at least
    one member may vote on; each image's weights are renormalised over its voters.
    """
    m = proba.shape[0]
    w = _weights(weights, m)
    available = np.asarray(available, dtype=bool)
    covered = np.flatnonzero(available.any(axis=0))
    preds, probs = [], []
    for i in covered:
        who = np.flatnonzero(available[:, i])
        ww = w[who] if w[who].sum() > 0 else np.ones(len(who))
        pred, p = vote(proba[who][:, i : i + 1], ww)
        preds.append(pred[0])
        probs.append(p[0])
    c = proba.shape[2]
    return (covered, np.asarray(preds, dtype=np.int64), np.asarray(probs, dtype=np.float64).reshape(-1, c))


# ---------------------------------------------------------------- fitting
def oob_matrix(
    oob_indices: list[np.ndarray], oob_proba: list[np.ndarray], n: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
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


def fit_stacking(
    proba: np.ndarray, y: np.ndarray, n_classes: int, C: float = 1.0, available: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
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
    coef = np.zeros((n_classes, X.shape[1]))
    intercept = np.full(n_classes, -1e3)  # a class never seen in fitting is never predicted
    if len(present) == 1:  # one class to fit on (a tiny or lopsided split): always that class
        intercept[present[0]] = 0.0
        return coef, intercept
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.fit(X, y)
    if len(present) == 2 and clf.coef_.shape[0] == 1:  # binary: sklearn keeps one row
        coef[present[1]], intercept[present[1]] = clf.coef_[0], clf.intercept_[0]
        coef[present[0]], intercept[present[0]] = 0.0, 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    return coef, intercept


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in [0.05, 20] minimising the log loss of softmax(log p / T)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda t: _nll(temperature_scale(proba, np.exp(t)), y), bounds=(np.log(0.05), np.log(20.0)), method="bounded"
    )
    return float(np.exp(res.x))


# ---------------------------------------------------------------- greedy ensemble selection
GREEDY_METRICS = ("log_loss", "brier", "macro_f1")


def _greedy_loss(p: np.ndarray, y: np.ndarray, metric: str) -> float:
    """Loss to minimise of mixed probabilities ``p`` (N, C) against labels ``y``."""
    if metric == "log_loss":
        return _nll(p, y)
    if metric == "brier":
        onehot = np.zeros_like(p)
        onehot[np.arange(len(y)), y] = 1.0
        return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    if metric == "macro_f1":
        c = p.shape[1]
        pred = p.argmax(axis=1)
        f1 = []
        for k in range(c):
            tp = np.sum((pred == k) & (y == k))
            denom = np.sum(pred == k) + np.sum(y == k)
            f1.append(2 * tp / denom if denom else 0.0)
        return -float(np.mean(f1))
    raise ValueError(f"`metric` must be one of {', '.join(GREEDY_METRICS)}; got {metric!r}")


def _greedy_once(
    proba: np.ndarray, y: np.ndarray, available: np.ndarray, n_iter: int, metric: str
) -> tuple[np.ndarray | None, list[dict]]:
    """Forward selection with replacement (Caruana et al., 2004) over all of ``proba``'s
    candidates -> (counts of the best prefix of the path or None if no step scored, the whole path).

    An image's mix is the count-weighted mean of the selected candidates available on it;
    an image none of them may score keeps the mean of its available candidates, so every
    step is scored on the same images.
    """
    m, n, _ = proba.shape
    avail = available.astype(np.float64)
    fallback = _masked_mix(proba, available, np.ones(m))
    num = np.zeros(proba.shape[1:])
    tot = np.zeros(n)
    counts = np.zeros(m, dtype=np.int64)
    path: list[dict] = []
    best_counts, best_loss = None, np.inf
    scorers = np.flatnonzero(available.any(axis=1))  # a candidate that may score no image is never added
    for step in range(n_iter):
        losses = np.full(m, np.inf)
        for cand in scorers:
            t = tot + avail[cand]
            mix = np.where(
                t[:, None] > 0, (num + avail[cand][:, None] * proba[cand]) / np.where(t > 0, t, 1.0)[:, None], fallback
            )
            losses[cand] = _greedy_loss(mix, y, metric)
        losses[~np.isfinite(losses)] = np.inf  # NaN probabilities never win
        if not np.isfinite(losses).any():
            break
        k = int(np.argmin(losses))  # ties: the earlier candidate
        counts[k] += 1
        num += avail[k][:, None] * proba[k]
        tot += avail[k]
        path.append({"step": step + 1, "added": k, "loss": float(losses[k])})
        if losses[k] < best_loss - 1e-12:
            best_loss, best_counts = float(losses[k]), counts.copy()
        if len(scorers) == 1:  # adding the one candidate again changes no mix
            break
    return best_counts, path


def greedy_selection(
    proba: np.ndarray,
    y: np.ndarray,
    available: np.ndarray | None = None,
    n_iter: int = 25,
    metric: str = "log_loss",
    bags: int = 0,
    bag_fraction: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, list[dict]]:
    """Greedy ensemble selection with replacement -> (weights summing to 1, selection path).

    ``proba`` is (candidates, samples, classes); ``available`` masks the candidates that
    may score each image (OOB: those that left it out; images no candidate may score are
    dropped). The weights are the selection counts of the path's best prefix. With
    ``bags`` > 0 the selection is repeated on that many seeded random subsets of
    ``bag_fraction`` of the candidates and the weights are averaged (bagged ensemble
    selection, against overfitting the selection data); the path is always that of the
    whole pool.
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    m = proba.shape[0]
    available = np.ones(proba.shape[:2], dtype=bool) if available is None else np.asarray(available, dtype=bool)
    keep = available.any(axis=0)
    proba, available, y = proba[:, keep], available[:, keep], y[keep]
    if n_iter < 1:
        raise ValueError(f"`iterations` must be at least 1; got {n_iter}")
    if not len(y):
        return np.full(m, 1.0 / m), []
    counts, path = _greedy_once(proba, y, available, n_iter, metric)
    if counts is None:  # no candidate gives a finite loss anywhere
        return np.full(m, 1.0 / m), path
    weights = counts / counts.sum()
    if bags:
        rng = np.random.default_rng(seed)
        size = max(1, int(round(bag_fraction * m)))
        acc = np.zeros(m)
        for _ in range(bags):
            pick = np.sort(rng.choice(m, size=size, replace=False))
            c, _ = _greedy_once(proba[pick], y, available[pick], n_iter, metric)
            if c is not None:  # a bag whose candidates score no image adds nothing
                acc[pick] += c / c.sum()
        weights = acc / acc.sum() if acc.sum() > 0 else weights
    return weights, path
