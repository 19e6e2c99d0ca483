"""Combiners: pure numpy over member probabilities of shape (members, samples, classes)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _weights(weights: Sequence[float] | None, n_members: int) -> np.ndarray:
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


STRATEGIES = ("hard", "soft", "weighted", "stacking")
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


def combine(proba: np.ndarray, strategy: str, weights: Sequence[float] | None = None,
            stacking: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply a strategy -> (predictions, ensemble probabilities).

    ``soft``/``weighted``: weighted mean of probabilities (``weighted`` requires
    ``weights``); ``hard``: (weighted) majority vote, probabilities = vote shares;
    ``stacking``: the meta-learner ``(coef, intercept)``.
    """
    if strategy in ("soft", "weighted"):
        if strategy == "weighted" and weights is None:
            raise ValueError("strategy `weighted` needs member weights")
        p = soft_vote(proba, weights)
        return p.argmax(axis=1), p
    if strategy == "hard":
        return hard_vote(proba, weights), vote_shares(proba, weights)
    if strategy == "stacking":
        if stacking is None:
            raise ValueError("strategy `stacking` needs a fitted meta-learner")
        p = stacking_proba(proba, *stacking)
        return p.argmax(axis=1), p
    raise ValueError(f"`strategy` must be one of {', '.join(STRATEGIES)}; got {strategy!r}")


def oob_combine(proba: np.ndarray, seen: np.ndarray, strategy: str,
                weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine only the members that did *not* see each sample.

    ``seen`` is a boolean (members, samples) mask. Returns (covered sample indices,
    predictions, probabilities) for the samples at least one member left out.
    """
    m = proba.shape[0]
    w = _weights(weights, m)
    out_mask = ~np.asarray(seen, dtype=bool)
    covered = np.flatnonzero(out_mask.any(axis=0))
    preds, probs = [], []
    for i in covered:
        who = np.flatnonzero(out_mask[:, i])
        ww = w[who] if w[who].sum() > 0 else np.ones(len(who))
        pred, p = combine(proba[who][:, i:i + 1], strategy, ww)
        preds.append(pred[0])
        probs.append(p[0])
    c = proba.shape[2]
    return (covered, np.asarray(preds, dtype=np.int64),
            np.asarray(probs, dtype=np.float64).reshape(-1, c))
