"""``combiner.strategy: auto``: choose a strategy without chasing noise.

Every strategy not fitted on val is scored on the same held-out images:

* the validation images, and
* the OOB images (each voted on only by the members that left it out), where a strategy
  fitted on OOB is cross-fitted: refitted on ``folds - 1`` folds of the OOB images and
  applied to the remaining fold, so no strategy is scored on what it learned from.

A paired bootstrap over those images gives each strategy's mean ``metric`` (log loss, a
proper scoring rule, by default; or macro-F1) and the standard error of its difference
to the best one. Strategies within ``se`` standard errors of the best are a tie, and the
tie goes to the simplest (fewest fitted values, :meth:`Strategy.n_params`; then registry
order). Pure numpy; the result (every score with its 95% interval, and the reason) is
saved in combiner.json and shown in the report.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..metrics import log_loss, macro_f1, per_sample_log_loss

log = logging.getLogger(__name__)


def _held_out(
    fitted: dict, pool_data, n_classes: int, folds: int, seed: int, n_members: int | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, int, int]:
    """Per strategy: (predictions, probabilities) on val + the OOB images, in one order.

    ``pool_data`` holds the members' rows, then the pool candidates' (only a pool strategy
    sees those; a candidate leaves out the images its member left out, so the covered images
    are the same)."""
    data = pool_data.head(n_members) if n_members is not None else pool_data
    covered = np.flatnonzero(data.oob_available.any(axis=0)) if data.has_oob else np.arange(0)
    if len(covered) < 2 * folds and len(data.val_y):  # too few to cross-fit on: val alone
        covered = np.arange(0)
    fold_of = np.random.default_rng(seed).permutation(len(covered)) % folds
    out = {}
    members_data = data
    for name, s in fitted.items():
        data = pool_data if getattr(s, "pool", False) else members_data
        preds, probs = [], []
        if len(data.val_y):  # empty with `data.train_on_val`: the OOB images alone
            pred_v, p_v = s.apply(data.val_proba)
            preds, probs = [pred_v], [p_v]
        if len(covered):
            pred_o = np.empty(len(covered), dtype=np.int64)
            p_o = np.empty((len(covered), data.val_proba.shape[2]))
            if getattr(s, "source_", None) == "oob" and s.source is not None:
                for f in range(folds):
                    train, test = covered[fold_of != f], covered[fold_of == f]
                    if not len(test):
                        continue
                    clone = type(s)(s.settings, s.seed)
                    clone.fit(
                        data.oob_proba[:, train], data.oob_y[train], data.oob_available[:, train], n_classes=n_classes
                    )
                    clone.source_ = "oob"
                    got, pr, pp = clone.apply_oob(data.oob_proba[:, test], data.oob_available[:, test])
                    pred_o[fold_of == f], p_o[fold_of == f] = pr, pp
            else:
                got, pr, pp = s.apply_oob(data.oob_proba[:, covered], data.oob_available[:, covered])
                pred_o, p_o = pr, pp
            preds.append(pred_o)
            probs.append(p_o)
        out[name] = (np.concatenate(preds), np.concatenate(probs))
    data = members_data
    y = np.concatenate([data.val_y, data.oob_y[covered]]) if len(covered) else np.asarray(data.val_y)
    return out, y, len(data.val_y), len(covered)


def _score(metric: str, y: np.ndarray, pred: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    return log_loss(y, proba) if metric == "log_loss" else macro_f1(y, pred, n_classes)


def choose_strategy(
    fitted: dict, data, n_classes: int, settings: Any = None, seed: int = 0, n_members: int | None = None
) -> tuple[str, dict]:
    """(chosen strategy name, the record of how) for ``strategy: auto``; ``settings`` is an
    :class:`~ensemble.config.AutoConfig` (None: its defaults); ``data``'s first ``n_members``
    rows are the members, the rest pool candidates (default: all members)."""
    metric = getattr(settings, "metric", "log_loss")
    se_rule = float(getattr(settings, "se", 1.0))
    n_boot = int(getattr(settings, "bootstrap", 1000))
    folds = int(getattr(settings, "folds", 5))
    eligible = {
        n: s
        for n, s in fitted.items()
        if getattr(s, "source_", None) != "val" and (metric != "log_loss" or s.probabilities)
    }
    if not eligible:
        raise ValueError(
            "`combiner.strategy: auto` has no strategy to choose from (every one was fitted on val"
            + (" or gives no probabilities" if metric == "log_loss" else "")
            + ")"
        )
    held, y, n_val, n_oob = _held_out(eligible, data, n_classes, folds, seed, n_members)
    names = list(eligible)
    lower_is_better = metric == "log_loss"
    sign = 1.0 if lower_is_better else -1.0
    point = {n: _score(metric, y, held[n][0], held[n][1], n_classes) for n in names}
    # resample counts, shared by every strategy (paired): resample b takes image i counts[b, i] times;
    # drawn in chunks of resamples (the same stream as one draw) so memory stays bounded
    rng = np.random.default_rng(seed)
    losses = {n: per_sample_log_loss(y, held[n][1]) for n in names}
    chunk = max(1, min(n_boot, 20_000_000 // max(len(y), 1)))
    f1_parts, ll_parts = [], []
    for start in range(0, n_boot, chunk):
        counts = rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=min(chunk, n_boot - start))
        f1_parts.append(np.stack([_boot_macro_f1(counts, y, held[n][0], n_classes) for n in names], axis=1))
        ll_parts.append(np.stack([counts @ losses[n] / len(y) for n in names], axis=1))
    f1_boots = np.concatenate(f1_parts)
    boots = np.concatenate(ll_parts) if metric == "log_loss" else f1_boots
    loss = sign * boots  # lower is better
    best_j = int(np.argmin(sign * np.array([point[n] for n in names])))
    diffs = loss - loss[:, [best_j]]  # paired: same resample for every strategy
    table = {}
    for j, n in enumerate(names):
        d_mean, d_se = float(diffs[:, j].mean()), float(diffs[:, j].std(ddof=1))
        table[n] = {
            metric: point[n],
            f"{metric}_ci95": _ci(boots[:, j]),
            "macro_f1": macro_f1(y, held[n][0], n_classes),
            "macro_f1_ci95": _ci(f1_boots[:, j]),
            "diff_to_best": d_mean * sign if j != best_j else 0.0,
            "se_of_diff": d_se,
            "tie": bool(j == best_j or d_mean <= se_rule * d_se),
            "n_params": int(eligible[n].n_params()),
        }
    ties = [n for n in names if table[n]["tie"]]
    chosen = min(ties, key=lambda n: (table[n]["n_params"], names.index(n)))
    best = names[best_j]
    if chosen == best:
        reason = f"{best} has the best held-out {metric}" + (
            ""
            if len(ties) == 1
            else f" and is the simplest of the {len(ties)} within {se_rule:g} SE ({', '.join(ties)})"
        )
    else:
        k_chosen, k_best = eligible[chosen].n_params(), eligible[best].n_params()
        why = (
            f"simpler ({k_chosen} vs {k_best} fitted values)"
            if k_chosen < k_best
            else f"as simple ({k_chosen} fitted values each) and first in registry order"
        )
        reason = f"{best} has the best held-out {metric}, but {chosen} is within {se_rule:g} standard error(s) of it and {why}"
    log.info("combiner.strategy auto: %s (%s)", chosen, reason)
    return chosen, {
        "on": "val+oob" if n_oob else "val",
        "metric": metric,
        "n_val": n_val,
        "n_oob": n_oob,
        "se": se_rule,
        "bootstrap": n_boot,
        "folds": folds,
        "best": best,
        "chosen": chosen,
        "reason": reason,
        "table": table,
        "scores": {n: point[n] for n in names},
    }


def _boot_macro_f1(counts: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of every bootstrap resample at once, class by class (memory: resamples x classes)."""
    tp = np.empty((len(counts), n_classes))
    denom = np.empty((len(counts), n_classes))
    for c in range(n_classes):
        truth, said = (y == c).astype(np.float64), (pred == c).astype(np.float64)
        tp[:, c] = counts @ (truth * said)
        denom[:, c] = counts @ (truth + said)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=1)


def _ci(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
