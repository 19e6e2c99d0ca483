import numpy as np
import pytest

from ensemble.combining.strategies import STRATEGIES, strategy_class
from ensemble.combining.votes import hard_vote, soft_vote, vote_shares

# 3 members, 4 samples, 3 classes; worked out by hand below.
P = np.array(
    [
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]],
        [[0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]],
        [[0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]],
    ]
)


def test_soft_vote_by_hand():
    expected = np.array([[1.3, 1.4, 0.3], [0.6, 1.0, 1.4], [1.0, 1.4, 0.6], [0.6, 0.9, 1.5]]) / 3
    np.testing.assert_allclose(soft_vote(P), expected)
    assert soft_vote(P).argmax(1).tolist() == [1, 2, 1, 2]


def test_weighted_soft_vote_by_hand():
    # weights 2:1:1 -> (2*P0 + P1 + P2) / 4
    w = [2, 1, 1]
    expected0 = (2 * np.array([0.6, 0.3, 0.1]) + [0.5, 0.4, 0.1] + [0.2, 0.7, 0.1]) / 4
    np.testing.assert_allclose(soft_vote(P, w)[0], expected0)
    assert soft_vote(P, w).argmax(1)[0] == 0  # 0.475 vs 0.425


def test_hard_vote_by_hand():
    # votes: s0 -> 0,0,1 ; s1 -> 1,2,2 ; s2 -> tie 0/1 for m0 (argmax picks 0), 1, 0 ; s3 -> 2,1,2
    assert hard_vote(P).tolist() == [0, 2, 0, 2]
    np.testing.assert_allclose(vote_shares(P)[0], [2 / 3, 1 / 3, 0])


def test_hard_vote_ties_broken_by_soft_probability():
    two = P[:2]  # sample 0: votes 0,0 ; sample 3: votes 2 vs 1 -> tie
    # sample 3 tie between class 2 (0.8 + 0.1) and class 1 (0.1 + 0.6): class 2 has more mass
    assert hard_vote(two)[3] == 2
    flipped = two[:, :, [0, 2, 1]]  # same tie, other class order: still the higher mass wins
    assert hard_vote(flipped)[3] == 1


def test_hard_vote_total_tie_goes_to_lowest_index():
    p = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])
    assert hard_vote(p).tolist() == [0]


def test_weighted_hard_vote():
    # sample 0: m0->0 (w=1), m1->0 (w=1), m2->1 (w=3): class 1 wins with weight 3 vs 2
    assert hard_vote(P, [1, 1, 3])[0] == 1


def test_registry_dispatch_and_errors():
    pred, proba = strategy_class("soft")().apply(P)
    np.testing.assert_allclose(proba.sum(1), 1)
    pred, proba = strategy_class("hard")().apply(P)
    np.testing.assert_allclose(proba.sum(1), 1)
    assert list(STRATEGIES)[:4] == ["hard", "soft", "weighted", "stacking"]
    with pytest.raises(ValueError, match="strategy"):
        strategy_class("median")
    with pytest.raises(ValueError, match="one entry per member"):
        soft_vote(P, [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        soft_vote(P, [1, -1, 1])


def test_oob_combine_uses_only_members_that_left_the_sample_out():
    seen = np.array([[True, False, False, True], [False, True, False, True], [True, True, True, True]])
    covered, pred, proba = strategy_class("soft")().apply_oob(P, ~seen)
    assert covered.tolist() == [0, 1, 2]  # sample 3 was seen by every member
    np.testing.assert_allclose(proba[0], P[1, 0])  # only member 1 left sample 0 out
    np.testing.assert_allclose(proba[1], P[0, 1])
    np.testing.assert_allclose(proba[2], (P[0, 2] + P[1, 2]) / 2)
    assert pred.tolist() == [0, 1, 1]


def test_stacking_by_hand():
    from ensemble.combining.votes import stacking_proba

    # two members, one sample, two classes; features are log-probabilities [m0c0, m0c1, m1c0, m1c1]
    p = np.array([[[0.5, 0.5]], [[0.25, 0.75]]])
    coef = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # class 1 logit = log p(m1, c1)
    intercept = np.array([np.log(0.75), 0.0])  # class 0 logit = log 0.75
    np.testing.assert_allclose(stacking_proba(p, coef, intercept), [[0.5, 0.5]])
    coef[1, 3] = 0.0
    intercept = np.array([0.0, np.log(3.0)])
    np.testing.assert_allclose(stacking_proba(p, coef, intercept), [[0.25, 0.75]])
