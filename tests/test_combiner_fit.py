import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ensemble.combining.votes import (
    fit_stacking,
    fit_temperature,
    fit_weights,
    oob_matrix,
    soft_vote,
    stacking_features,
    stacking_proba,
    temperature_scale,
)
from ensemble.metrics import log_loss


def members(seed=0, n=300, k=3, quality=(2.0, 0.5, 0.0)):
    """Three members of decreasing quality (the last is noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    out = []
    for q in quality:
        logits = rng.normal(size=(n, k))
        logits[np.arange(n), y] += q
        e = np.exp(logits)
        out.append(e / e.sum(1, keepdims=True))
    return np.stack(out), y


def test_learned_weights_sum_to_one_and_beat_uniform():
    p, y = members()
    w = fit_weights(p, y)
    assert w.sum() == pytest.approx(1) and (w >= 0).all()
    assert log_loss(y, soft_vote(p, w)) <= log_loss(y, soft_vote(p)) + 1e-12
    assert w[0] == w.max() and w[2] < 0.1  # the best member leads, the noise member is dropped


def test_learned_weights_with_missing_members():
    p, y = members(1)
    avail = np.random.default_rng(0).random(p.shape[:2]) < 0.4
    w = fit_weights(p, y, avail)
    assert w.sum() == pytest.approx(1) and w[0] == w.max()


def test_stacking_matches_sklearn_and_is_deterministic():
    p, y = members(2)
    coef, intercept = fit_stacking(p, y, 3, C=0.5)
    clf = LogisticRegression(C=0.5, max_iter=2000).fit(stacking_features(p), y)
    np.testing.assert_allclose(stacking_proba(p, coef, intercept), clf.predict_proba(stacking_features(p)), atol=1e-6)
    again = fit_stacking(p, y, 3, C=0.5)
    np.testing.assert_array_equal(coef, again[0])


def test_stacking_on_oob_imputes_missing_members():
    p, y = members(3)
    idx = [np.arange(0, 300, 2), np.arange(0, 300, 3), np.arange(100, 200)]
    full, avail = oob_matrix(idx, [p[j, i] for j, i in enumerate(idx)], 300, 3)
    assert avail.sum() == sum(len(i) for i in idx)
    coef, intercept = fit_stacking(full, y, 3, available=avail)
    acc = (stacking_proba(p, coef, intercept).argmax(1) == y).mean()
    assert acc > 0.6


def test_stacking_class_never_seen_is_never_predicted():
    p, y = members(4)
    keep = y != 2
    coef, intercept = fit_stacking(p[:, keep], y[keep], 3)
    assert (stacking_proba(p, coef, intercept).argmax(1) != 2).all()


def test_temperature_fixes_overconfidence():
    p, y = members(5, quality=(1.0,))
    over = temperature_scale(p[0], 0.3)  # sharpen: overconfident
    t = fit_temperature(over, y)
    assert t > 1.5
    assert log_loss(y, temperature_scale(over, t)) < log_loss(y, over)
    np.testing.assert_allclose(temperature_scale(p[0], 1.0), p[0], atol=1e-9)


@pytest.mark.parametrize("stacking_source", ["oob", "val"])
def test_strategy_auto_takes_the_simplest_tie_of_strategies_not_fitted_on_val(stacking_source):
    from ensemble.combining.strategies import Combiner, FitData, StackingSettings, fit_combiner
    from ensemble.config import CombinerConfig
    from ensemble.metrics import log_loss

    p_val, y_val = members(3, quality=(1.5, 0.4, 0.0))
    p_oob, y_oob = members(4, quality=(1.5, 0.4, 0.0))
    data = FitData(p_val, y_val, p_oob, y_oob, np.ones(p_oob.shape[:2], dtype=bool))
    settings = CombinerConfig(
        strategy="auto", weights="auto", sections={"stacking": StackingSettings(source=stacking_source)}
    )
    comb = fit_combiner(settings, ["a", "b", "c"], ["x", "y", "z"], data)
    table = comb.choice["table"]
    # eligible: fitted on OOB or not at all, with probabilities (log loss ranks them); never hard
    eligible = [n for n in comb.available() if n != "hard" and not (n == "stacking" and stacking_source == "val")]
    assert set(table) == set(eligible)
    ties = [n for n in eligible if table[n]["tie"]]
    assert comb.strategy in ties
    assert table[comb.strategy]["n_params"] == min(table[n]["n_params"] for n in ties)
    best = comb.choice["best"]
    assert table[best]["log_loss"] == min(table[n]["log_loss"] for n in eligible)
    # the soft vote of members of which two are noise loses clearly to one that weighs them down
    assert not table["soft"]["tie"] and comb.strategy != "soft"
    # its held-out score covers val and the OOB images; soft's equals its plain val + OOB log loss
    soft_val = comb.apply(p_val, "soft")[1]
    soft_oob = comb.get("soft").apply_oob(p_oob, np.ones(p_oob.shape[:2], dtype=bool))[2]
    assert table["soft"]["log_loss"] == pytest.approx(
        log_loss(np.concatenate([y_val, y_oob]), np.concatenate([soft_val, soft_oob]))
    )
    again = Combiner.from_state(*comb.state())
    assert again.strategy == comb.strategy and again.choice == comb.choice
