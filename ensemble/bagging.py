"""Per-member bootstrap samples and their out-of-bag (OOB) sets.

Seeded from the run seed and the member index, so one config always gives the same
samples, whatever order or process the members are trained in.
"""
from __future__ import annotations

import numpy as np


def member_rng(seed: int, member_index: int) -> np.random.Generator:
    """An independent generator per (run seed, member index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, member_index]))


def sample_size(n: int, ratio: float) -> int:
    """``round(ratio * n)``, at least 1."""
    if not 0 < ratio <= 1:
        raise ValueError(f"`ratio` must be in (0, 1]; got {ratio}")
    return max(1, int(round(ratio * n)))


def draw_sample(labels: np.ndarray, ratio: float, replace: bool, stratify: bool,
                rng: np.random.Generator) -> np.ndarray:
    """Indices of one member's training sample (sorted; repeats when ``replace``).

    With ``stratify`` each class contributes ``round(ratio * n_class)`` indices drawn
    from its own images, so class shares match the full training set.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not stratify:
        idx = rng.choice(n, size=sample_size(n, ratio), replace=replace)
        return np.sort(idx)
    parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = sample_size(len(members), ratio)
        parts.append(rng.choice(members, size=k, replace=replace))
    return np.sort(np.concatenate(parts))


def oob_indices(n: int, sample: np.ndarray) -> np.ndarray:
    """Indices in ``range(n)`` that ``sample`` never drew."""
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(sample, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def draw_all(labels: np.ndarray, bagging: list, seed: int) -> list[np.ndarray]:
    """One sample per member from its bagging settings (ratio, replace, stratify)."""
    return [draw_sample(labels, b.ratio, b.replace, b.stratify, member_rng(seed, i))
            for i, b in enumerate(bagging)]
