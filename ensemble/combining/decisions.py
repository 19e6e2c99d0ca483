"""Decisions on top of a strategy's ensemble probabilities: prediction sets with a coverage
guarantee, abstention for review, and cost-sensitive predictions. Pure numpy.

- **Prediction sets** (split conformal prediction): the non-conformity score of an image
  is ``1 - p(true class)``; on ``n`` calibration images (val or OOB, never the images
  being predicted) the threshold is the ``ceil((n + 1) * coverage) / n`` empirical
  quantile of the scores, and a class joins an image's set when ``1 - p(class)`` is at
  most the threshold. If calibration and new images are exchangeable, the set holds the
  true class with probability at least ``coverage``. ``by_class`` (Mondrian conformal)
  takes one threshold per true class, for the guarantee within every class.
  Written here rather than with MAPIE or crepes: both expect an estimator to wrap, while
  effens already holds calibration probabilities; the rule is a few lines.
- **Review**: an image goes to review when the ensemble's confidence (its top
  probability) is below a threshold chosen on the calibration images, either so that a
  share ``review_rate`` of them goes to review, or as the lowest threshold whose kept
  images reach ``target_accuracy``. Confidence rather than member disagreement or set
  size: it is defined for every strategy, it orders images finely (disagreement among
  three members takes four values), and it is the standard selective-classification
  baseline.
- **Costs**: ``costs[i][j]`` is the cost of predicting class ``j`` when the truth is
  ``i``; the prediction minimises the expected cost ``sum_i p_i * costs[i][j]``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from members.errors import EffensError


class DecisionError(EffensError, ValueError):
    """A decision cannot be made as asked (too few calibration images, bad settings)."""


# ---------------------------------------------------------------- prediction sets
def min_calibration_size(coverage: float) -> int:
    """The fewest calibration images for which ``coverage`` is attainable: n >= c / (1 - c), and one."""
    return max(1, int(math.ceil(coverage / (1.0 - coverage) - 1e-9)))


def conformal_rank(n: int, coverage: float) -> int:
    """``ceil((n + 1) * coverage)``, at least 1 for any coverage above 0: the rank of the
    calibration score that bounds the sets. The 1e-9 absorbs rounding (``10 * 0.9`` is
    ``9.000000000000002``); without the floor of 1 a coverage below ``1e-9 / (n + 1)`` would
    give rank 0, that is ``scores[-1]``, the largest score and the fullest sets. Nondecreasing
    in ``coverage``, so a smaller coverage never gives larger sets."""
    return max(1, int(math.ceil((n + 1) * coverage - 1e-9)))


def conformal_threshold(scores: np.ndarray, coverage: float, what: str = "calibration images") -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest score (split conformal quantile)."""
    if not 0 < coverage < 1:
        raise DecisionError(f"`coverage` must be in (0, 1); got {coverage}")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    k = conformal_rank(n, coverage)
    if k > n:
        raise DecisionError(f"coverage {coverage:g} needs at least {min_calibration_size(coverage)} {what}; got {n}")
    return float(scores[k - 1])


def fit_conformal(
    proba: np.ndarray, y: np.ndarray, coverage: float, by_class: bool = False, classes: Sequence[str] | None = None
) -> np.ndarray:
    """Per-class thresholds (C,) on ``1 - p``; all equal unless ``by_class`` (``classes``
    names the classes in messages)."""
    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y, dtype=np.int64)
    scores = 1.0 - proba[np.arange(len(y)), y]
    k = proba.shape[1]
    if not by_class:
        return np.full(k, conformal_threshold(scores, coverage))
    return np.array(
        [
            conformal_threshold(
                scores[y == c], coverage, f"calibration images of class {classes[c] if classes else c!r}"
            )
            for c in range(k)
        ]
    )


def prediction_sets(proba: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Boolean (N, C): class ``c`` is in an image's set when ``1 - p_c <= thresholds[c]``."""
    return (1.0 - np.asarray(proba, dtype=np.float64)) <= np.asarray(thresholds)[None, :] + 1e-12


def set_metrics(sets: np.ndarray, y: np.ndarray) -> dict:
    """Empirical coverage, mean set size and the share of empty sets."""
    sets, y = np.asarray(sets, dtype=bool), np.asarray(y, dtype=np.int64)
    if not len(y):
        return {"n": 0, "coverage": float("nan"), "mean_set_size": float("nan"), "empty": float("nan")}
    return {
        "n": int(len(y)),
        "coverage": float(sets[np.arange(len(y)), y].mean()),
        "mean_set_size": float(sets.sum(axis=1).mean()),
        "empty": float((sets.sum(axis=1) == 0).mean()),
    }


# ---------------------------------------------------------------- review
def confidence(proba: np.ndarray) -> np.ndarray:
    return np.asarray(proba, dtype=np.float64).max(axis=1)


def review_threshold(
    conf: np.ndarray, correct: np.ndarray, review_rate: float | None = None, target_accuracy: float | None = None
) -> float:
    """Confidence below which an image goes to review, chosen on calibration images.

    ``review_rate``: the share of calibration images sent to review (the threshold is
    their ``review_rate`` quantile; 0 sends none). ``target_accuracy``: the lowest
    threshold whose kept calibration images are at least that accurate (inf when no
    threshold reaches it: everything goes to review).
    """
    conf = np.asarray(conf, dtype=np.float64)
    if (review_rate is None) == (target_accuracy is None):
        raise DecisionError("give exactly one of `review_rate` or `target_accuracy`")
    if not len(conf):
        raise DecisionError("no calibration images to choose a review threshold on")
    order = np.sort(conf)
    if review_rate is not None:
        if not 0 <= review_rate <= 1:
            raise DecisionError(f"`review_rate` must be in [0, 1]; got {review_rate}")
        k = int(math.floor(review_rate * len(order) + 1e-9))
        return float("-inf") if k == 0 else (float("inf") if k >= len(order) else float(order[k]))
    assert target_accuracy is not None  # exactly one of the two was given
    if not 0 < target_accuracy <= 1:
        raise DecisionError(f"`target_accuracy` must be in (0, 1]; got {target_accuracy}")
    idx = np.argsort(-conf, kind="stable")
    acc = np.cumsum(np.asarray(correct, dtype=np.float64)[idx]) / np.arange(1, len(idx) + 1)
    # keeping the top-k most confident images: the largest k whose accuracy reaches the target,
    # cut where the confidence changes so that ties are kept or reviewed together
    sorted_conf = conf[idx]
    ok = [
        k
        for k in range(1, len(idx) + 1)
        if acc[k - 1] >= target_accuracy - 1e-12 and (k == len(idx) or sorted_conf[k] < sorted_conf[k - 1])
    ]
    return float(sorted_conf[max(ok) - 1]) if ok else float("inf")


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share kept, accuracy of the kept) as the most confident images are kept first."""
    idx = np.argsort(-np.asarray(conf, dtype=np.float64), kind="stable")
    kept = np.arange(1, len(idx) + 1)
    return kept / max(len(idx), 1), np.cumsum(np.asarray(correct, dtype=np.float64)[idx]) / kept


def review_metrics(conf: np.ndarray, correct: np.ndarray, threshold: float) -> dict:
    keep = np.asarray(conf) >= threshold
    n = len(keep)
    return {
        "threshold": threshold,
        "n": int(n),
        "reviewed": float(1 - keep.mean()) if n else float("nan"),
        "accuracy_kept": float(np.asarray(correct)[keep].mean()) if keep.any() else float("nan"),
        "accuracy_all": float(np.mean(correct)) if n else float("nan"),
    }


# ---------------------------------------------------------------- costs
def check_costs(costs, n_classes: int, where: str = "decision.costs") -> np.ndarray:
    c = np.asarray(costs, dtype=np.float64)
    if c.shape != (n_classes, n_classes):
        raise DecisionError(
            f"`{where}` must be {n_classes} x {n_classes} (true x predicted, in class order); "
            f"got shape {'x'.join(map(str, c.shape))}"
        )
    if not np.isfinite(c).all() or (c < 0).any():
        raise DecisionError(f"`{where}` must hold finite non-negative numbers")
    return c


def min_cost_decisions(proba: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """The class minimising the expected cost ``sum_i p_i * costs[i, j]`` per image (ties: lowest index)."""
    return (np.asarray(proba, dtype=np.float64) @ np.asarray(costs, dtype=np.float64)).argmin(axis=1)


def cost_metrics(proba: np.ndarray, y: np.ndarray, costs: np.ndarray) -> dict:
    """Expected (under ``proba``) and realised (against ``y``) mean cost, argmax vs cost rule."""
    proba, costs = np.asarray(proba, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    out = {}
    for rule, pred in (("argmax", proba.argmax(axis=1)), ("min_cost", min_cost_decisions(proba, costs))):
        expected = (proba @ costs)[np.arange(len(pred)), pred]
        out[rule] = {
            "expected_cost": float(expected.mean()) if len(y) else float("nan"),
            "realised_cost": float(costs[y, pred].mean()) if len(y) else float("nan"),
            "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        }
    return out


# ---------------------------------------------------------------- all of it, fitted on calibration images
REPORT_COVERAGES = (0.8, 0.9, 0.95)
REPORT_REVIEW_RATES = (0.1, 0.2, 0.3)


class Decider:
    """Decisions for one strategy, fitted on its calibration probabilities and labels.

    ``costs`` (true x predicted) makes :meth:`predict` minimise the expected cost;
    correctness for review thresholds is that of these predictions.
    """

    def __init__(
        self,
        cal_proba: np.ndarray,
        cal_y: np.ndarray,
        costs: np.ndarray | Sequence[Sequence[float]] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.classes = list(classes) if classes is not None else None
        self.cal_proba = np.asarray(cal_proba, dtype=np.float64)
        self.cal_y = np.asarray(cal_y, dtype=np.int64)
        self.costs = None if costs is None else check_costs(costs, self.cal_proba.shape[1])

    def predict(self, proba: np.ndarray) -> np.ndarray:
        proba = np.asarray(proba, dtype=np.float64)
        return proba.argmax(axis=1) if self.costs is None else min_cost_decisions(proba, self.costs)

    def sets(self, proba: np.ndarray, coverage: float, by_class: bool = False) -> np.ndarray:
        return prediction_sets(proba, fit_conformal(self.cal_proba, self.cal_y, coverage, by_class, self.classes))

    def review_threshold(self, review_rate: float | None = None, target_accuracy: float | None = None) -> float:
        correct = self.predict(self.cal_proba) == self.cal_y
        return review_threshold(confidence(self.cal_proba), correct, review_rate, target_accuracy)

    def report(
        self,
        proba: np.ndarray,
        y: np.ndarray,
        by_class: bool = False,
        coverages=REPORT_COVERAGES,
        review_rates=REPORT_REVIEW_RATES,
    ) -> dict:
        """Coverage and set size per target, accuracy kept per review rate, costs: one split."""
        proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y, dtype=np.int64)
        out: dict = {"coverage": {}, "review": {}}
        for c in coverages:
            try:
                got = set_metrics(self.sets(proba, c, by_class), y)
            except DecisionError as exc:
                out["coverage"][f"{c:g}"] = {"target": c, "error": str(exc)}
                continue
            out["coverage"][f"{c:g}"] = dict(got, target=c, below_target=bool(got["coverage"] < c))
        correct = self.predict(proba) == y
        for r in review_rates:
            out["review"][f"{r:g}"] = dict(
                review_metrics(confidence(proba), correct, self.review_threshold(r)), review_rate=r
            )
        if self.costs is not None:
            out["costs"] = cost_metrics(proba, y, self.costs)
        return out
