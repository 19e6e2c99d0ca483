"""Per-member bootstrap samples and their out-of-bag (OOB) sets.

Seeded from the run seed and the member index, so one config always gives the same
samples, whatever order or process the members are trained in.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def member_rng(seed: int, member_index: int) -> np.random.Generator:
    """An independent generator per (run seed, member index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, member_index]))


def sample_size(n: int, ratio: float) -> int:
    """``round(ratio * n)``, at least 1."""
    if not 0 < ratio <= 1:
        raise ValueError(f"`ratio` must be in (0, 1]; got {ratio}")
    return max(1, int(round(ratio * n)))


def draw_sample(
    labels: np.ndarray, ratio: float, replace: bool, stratify: bool, rng: np.random.Generator
) -> np.ndarray:
    """Indices of one member's training sample (sorted; repeats when ``replace``).

    The sample holds ``round(ratio * n)`` indices. With ``stratify`` they are shared
    out over the classes in proportion to class size (largest remainders get the
    leftover places), each class drawing from its own images.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not stratify:
        idx = rng.choice(n, size=sample_size(n, ratio), replace=replace)
        return np.sort(idx)
    classes, counts = np.unique(labels, return_counts=True)
    parts = []
    for c, k in zip(classes, stratified_sizes(counts, sample_size(n, ratio))):
        members = np.flatnonzero(labels == c)
        parts.append(rng.choice(members, size=k, replace=replace))
    return np.sort(np.concatenate(parts))


def stratified_sizes(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = total * counts / counts.sum()
    sizes = np.floor(exact).astype(np.int64)
    leftover = total - sizes.sum()
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[:leftover]] += 1
    return sizes


def oob_indices(n: int, sample: np.ndarray) -> np.ndarray:
    """Indices in ``range(n)`` that ``sample`` never drew."""
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(sample, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def draw_all(labels: np.ndarray, bagging: list, seed: int) -> list[np.ndarray]:
    """One sample per member from its bagging settings (ratio, replace, stratify)."""
    samples = [draw_sample(labels, b.ratio, b.replace, b.stratify, member_rng(seed, i)) for i, b in enumerate(bagging)]
    present = set(np.unique(labels).tolist())
    for i, s in enumerate(samples):
        missing = sorted(present - set(np.unique(np.asarray(labels)[s]).tolist()))
        if missing:
            log.warning(
                "member %d's bagging sample holds no image of class index(es) %s: it cannot learn them "
                "(raise its ratio, or set `bagging.stratify: true`)",
                i,
                ", ".join(map(str, missing)),
            )
    return samples
