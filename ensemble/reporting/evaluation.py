"""Scores of members and strategies on labelled splits and out-of-bag: the one place the
report, ``evaluate``, ``tune`` and the estimator's ``oob_score_`` take their figures from.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..combining.votes import oob_matrix
from ..metrics import classification_report


def evaluate_split(
    member_proba: np.ndarray, y: np.ndarray, combiner, strategies: Sequence[str] | None = None
) -> dict[str, dict]:
    """Metrics of every member and every strategy (default: all the combiner has) on one split.

    ``member_proba`` is (members, samples, classes) before calibration; each entry also
    keeps its predictions and probabilities under ``_pred``/``_proba``, and whether those
    are probabilities (not vote shares) under ``_probabilities`` (not written to JSON).
    """
    classes = combiner.classes
    calibrated = combiner.calibrate(member_proba)
    out = {}
    for name, proba in zip(combiner.member_names, calibrated):
        pred = proba.argmax(axis=1)
        out[name] = classification_report(y, pred, proba, classes) | {
            "_pred": pred,
            "_proba": proba,
            "_probabilities": True,
        }
    for strategy in strategies or combiner.available():
        pred, proba = combiner.apply(calibrated, strategy, calibrated=True)
        out[strategy] = classification_report(y, pred, proba, classes) | {
            "_pred": pred,
            "_proba": proba,
            "_probabilities": combiner.get(strategy).probabilities,
        }
    return out


def oob_report(combiner, y: np.ndarray, oob_indices: Sequence[np.ndarray], oob_proba: Sequence[np.ndarray]) -> dict:
    """Each member on its OOB images and each strategy's OOB vote.

    An image is voted on only by the members that left it out (see each strategy's
    ``apply_oob``). Returns ``members`` -> name -> metrics or None, ``strategies`` ->
    name -> metrics or None, ``n_covered``, ``n_excluded`` (images every member saw).
    """
    classes = combiner.classes
    y = np.asarray(y)
    n = len(y)
    calibrated, full, available = _oob_inputs(combiner, n, oob_indices, oob_proba)
    out: dict = {"members": {}, "strategies": {}}
    for name, idx, proba in zip(combiner.member_names, oob_indices, calibrated):
        out["members"][name] = classification_report(y[idx], proba.argmax(1), proba, classes) if len(idx) else None
    n_covered = int(available.any(axis=0).sum())
    for name in combiner.available():
        if not n_covered:
            out["strategies"][name] = None
            continue
        covered, pred, proba = combiner.apply_oob(full, available, name)
        out["strategies"][name] = classification_report(y[covered], pred, proba, classes)
    out["n_covered"] = n_covered
    out["n_excluded"] = int(n - n_covered)
    return out


def _oob_inputs(combiner, n: int, oob_indices: Sequence[np.ndarray], oob_proba: Sequence[np.ndarray]):
    """Calibrated per-member OOB probabilities, and as an (M, n, C) matrix with its mask."""
    calibrated = [combiner.calibrate_row(j, p) for j, p in enumerate(oob_proba)]
    full, available = oob_matrix(list(oob_indices), calibrated, n, len(combiner.classes))
    return calibrated, full, available


def calibration_source(ens, asked: str) -> str:
    """The calibration images decisions are fitted on: ``asked``, or OOB when the ensemble
    has no val images (``data.train_on_val``)."""
    return asked if len(ens.val_y_) else "oob"


def calibration_set(ens, strategy: str | None = None, source: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(ensemble probabilities, labels) of a fitted ensemble's calibration images for
    decisions (:mod:`ensemble.combining.decisions`): its validation images, or its OOB images
    voted on only by the members that left them out (:func:`calibration_source`)."""
    comb = ens.combiner_
    if calibration_source(ens, source) == "val":
        return comb.apply(ens.val_proba_, strategy)[1], np.asarray(ens.val_y_)
    _, full, available = _oob_inputs(comb, len(ens.y_train_), ens.oob_indices_, ens.oob_proba_)
    covered, _, proba = comb.apply_oob(full, available, strategy)
    return proba, np.asarray(ens.y_train_)[covered]


def decision_report(
    ens, settings, splits: dict[str, tuple[np.ndarray, np.ndarray]], strategy: str | None = None
) -> dict:
    """``metrics.json``'s ``decisions``: prediction sets, review and costs of ``strategy``
    (default: the run's) on each split's (ensemble probabilities, labels), fitted on the
    calibration images ``settings.calibration`` names (a :class:`~ensemble.config.DecisionConfig`)."""
    from ..combining.decisions import Decider

    strategy = strategy or ens.combiner_.strategy
    source = calibration_source(ens, settings.calibration)
    cal_proba, cal_y = calibration_set(ens, strategy, source)
    decider = Decider(cal_proba, cal_y, settings.costs, ens.classes_)
    fitted_on = getattr(ens.combiner_.get(strategy), "source_", None)
    return {
        "strategy": strategy,
        "calibration": source,
        "n_calibration": int(len(cal_y)),
        "by_class": settings.coverage_by_class,
        "in_sample": fitted_on == source,
        "costs": settings.costs,
        "splits": {split: decider.report(p, y, settings.coverage_by_class) for split, (p, y) in splits.items()},
    }


def oob_score(report: dict, strategy: str, metric: str = "macro_f1") -> float:
    """One figure from :func:`oob_report`: ``strategy``'s OOB ``metric`` (nan without OOB images)."""
    got = report["strategies"].get(strategy)
    return float("nan") if got is None else float(got[metric])
