"""Classification metrics as pure numpy functions (checked against scikit-learn in tests)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

EPS = 1e-15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts; row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (rows without samples stay zero)."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined, as sklearn does)."""
    tp = np.diag(cm).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def per_sample_log_loss(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of the true class per sample (probabilities clipped, renormalised)."""
    p = np.clip(np.asarray(proba, dtype=np.float64), EPS, 1 - EPS)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(p)), np.asarray(y_true, dtype=np.int64)])


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped, renormalised)."""
    return float(np.mean(per_sample_log_loss(y_true, proba)))


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y_true)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, classes: Sequence[str]
) -> dict:
    """Every figure the reports show, as JSON-ready Python values."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)
    pc = per_class(cm)
    support = pc["support"]
    present = support > 0
    n = max(int(support.sum()), 1)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": float(pc["recall"][present].mean()) if present.any() else 0.0,
        "macro_f1": float(pc["f1"].mean()),
        "weighted_f1": float((pc["f1"] * support).sum() / n),
        "per_class": {
            c: {
                "precision": float(pc["precision"][i]),
                "recall": float(pc["recall"][i]),
                "f1": float(pc["f1"][i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.round(normalize_rows(cm), 6).tolist(),
    }
    if proba is not None:
        out["log_loss"] = log_loss(y_true, proba)
        out["ece"] = expected_calibration_error(y_true, proba)
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(per_class(confusion_matrix(y_true, y_pred, n_classes))["f1"].mean())


def selection_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """Macro-F1 of the argmax and log loss: what a member's best epoch is chosen by."""
    return {"macro_f1": macro_f1(y_true, np.asarray(proba).argmax(1), n_classes), "log_loss": log_loss(y_true, proba)}


def leave_one_out(member_proba: np.ndarray, y_true: np.ndarray, names: Sequence[str]) -> list[dict]:
    """Each member's effect on the soft vote: macro-F1 and log loss of the mean of all
    members minus those of the mean of the others (positive macro-F1 / negative log loss:
    the member helps)."""
    p = np.asarray(member_proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    k = p.shape[2]
    full = p.mean(axis=0)
    f1_all, ll_all = macro_f1(y, full.argmax(1), k), log_loss(y, full)
    out = []
    for j, name in enumerate(names):
        rest = np.delete(p, j, axis=0).mean(axis=0)
        out.append(
            {
                "member": name,
                "macro_f1_gain": f1_all - macro_f1(y, rest.argmax(1), k),
                "log_loss_gain": log_loss(y, rest) - ll_all,
            }
        )
    return out


def pairwise_diversity(member_pred: np.ndarray, y_true: np.ndarray, names: Sequence[str] | None = None) -> list[dict]:
    """Diversity of every pair of members' predictions (members, samples).

    ``disagreement``: share of samples the two label differently; ``q_statistic``: Yule's
    Q of their correct/wrong outcomes (1 = always right and wrong together, 0 =
    independent, negative = complementary); ``error_correlation``: Pearson correlation of
    their 0/1 error indicators (0 where a member's errors are constant).
    """
    member_pred = np.asarray(member_pred)
    right = member_pred == np.asarray(y_true)[None]
    m = len(member_pred)
    names = list(names) if names is not None else [str(i) for i in range(m)]
    out = []
    for i in range(m):
        for j in range(i + 1, m):
            n11 = np.sum(right[i] & right[j])
            n00 = np.sum(~right[i] & ~right[j])
            n10 = np.sum(right[i] & ~right[j])
            n01 = np.sum(~right[i] & right[j])
            den = n11 * n00 + n01 * n10
            ei, ej = (~right[i]).astype(float), (~right[j]).astype(float)
            out.append(
                {
                    "a": names[i],
                    "b": names[j],
                    "disagreement": float(np.mean(member_pred[i] != member_pred[j])),
                    "q_statistic": float((n11 * n00 - n01 * n10) / den) if den else 0.0,
                    "error_correlation": (float(np.corrcoef(ei, ej)[0, 1]) if ei.std() > 0 and ej.std() > 0 else 0.0),
                }
            )
    return out


def diversity(member_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """Mean of :func:`pairwise_diversity` over all pairs of members."""
    pairs = pairwise_diversity(member_pred, y_true)
    mean = lambda k: float(np.mean([p[k] for p in pairs])) if pairs else 0.0  # noqa: E731
    return {k: mean(k) for k in ("disagreement", "q_statistic", "error_correlation")}
