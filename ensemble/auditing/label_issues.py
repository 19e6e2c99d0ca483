"""Confident learning (Northcutt et al., 2021): which given labels are probably wrong.

Pure numpy. In: out-of-sample class probabilities (an image scored only by models that did
not train on it: OOB votes for training images, the ensemble for val/test) and the given
labels. Out: per-class thresholds, the confident joint of given and likely true labels, the
estimated noise rate per class pair, and the images flagged as label issues, ranked.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LabelAudit:
    thresholds: np.ndarray  # (C,) mean probability of class j on images labelled j
    confident_joint: np.ndarray  # (C, C) counts, rows given label, columns likely true label
    noise_matrix: np.ndarray  # (C, C) P(true = j | given = i), estimated; rows sum to 1
    issues: np.ndarray  # indices of flagged images, most likely wrong first
    suggested: np.ndarray  # (N,) likely true label per image (-1: none above its threshold)
    self_confidence: np.ndarray  # (N,) p[i, given]
    margin: np.ndarray  # (N,) p[i, given] - max over other classes (negative: another wins)


def class_thresholds(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per class: the mean probability of that class over the images labelled with it."""
    n_classes = proba.shape[1]
    return np.array([proba[y == j, j].mean() if np.any(y == j) else 1.0 for j in range(n_classes)])


def confident_joint(proba: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confident joint, suggested label per image): an image counts for the class with the
    highest probability among those at or above their threshold (none: not counted, -1)."""
    above = proba >= thresholds[None, :] - 1e-12
    masked = np.where(above, proba, -np.inf)
    suggested = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    n_classes = proba.shape[1]
    joint = np.zeros((n_classes, n_classes), dtype=np.int64)
    ok = suggested >= 0
    np.add.at(joint, (y[ok], suggested[ok]), 1)
    return joint, suggested


def find_label_issues(proba: np.ndarray, y: np.ndarray, method: str = "prune_by_noise_rate") -> LabelAudit:
    """Flag images whose given label is probably wrong.

    ``confident``: every image counted off the diagonal of the confident joint.
    ``prune_by_noise_rate`` (default, as cleanlab's): for each given class i and other class
    j, the estimated number of i-labelled images that are really j (the calibrated joint),
    taken among the i-labelled images with the largest margin p[j] - p[i].
    As cleanlab does, an image whose given label is already its most probable class is never
    flagged. Ranked by margin, p[given] minus the best other class (most negative first).
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if proba.ndim != 2 or len(proba) != len(y):
        raise ValueError(f"proba must be (images, classes) with one label per image; got {proba.shape}, {y.shape}")
    n, n_classes = proba.shape
    thresholds = class_thresholds(proba, y)
    joint, suggested = confident_joint(proba, y, thresholds)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    rows = joint.sum(axis=1, keepdims=True).astype(np.float64)
    calibrated = np.divide(joint, rows, out=np.zeros_like(joint, dtype=np.float64), where=rows > 0) * counts[:, None]
    noise = np.divide(calibrated, counts[:, None], out=np.zeros_like(calibrated), where=counts[:, None] > 0)
    for i in range(n_classes):  # a class never counted: assume its labels are right
        if rows[i, 0] == 0:
            noise[i, i] = 1.0
    self_conf = proba[np.arange(n), y]
    others = proba.copy()
    others[np.arange(n), y] = -np.inf
    margin = self_conf - others.max(axis=1)
    if method == "confident":
        flagged = np.flatnonzero((suggested >= 0) & (suggested != y))
    elif method == "prune_by_noise_rate":
        chosen: set[int] = set()
        for i in range(n_classes):
            idx = np.flatnonzero(y == i)
            for j in range(n_classes):
                k = int(round(calibrated[i, j])) if i != j else 0
                if k <= 0 or not len(idx):
                    continue
                gap = proba[idx, j] - proba[idx, i]
                chosen.update(idx[np.argsort(-gap, kind="stable")[:k]].tolist())
        flagged = np.array(sorted(chosen), dtype=np.int64)
    else:
        raise ValueError(f"`method` must be prune_by_noise_rate or confident; got {method!r}")
    flagged = flagged[proba[flagged].argmax(axis=1) != y[flagged]] if len(flagged) else flagged
    order = flagged[np.argsort(margin[flagged], kind="stable")] if len(flagged) else flagged
    return LabelAudit(thresholds, joint, noise, order, suggested, self_conf, margin)
