import numpy as np
import pytest

from ensemble.bagging import draw_all, draw_sample, member_rng, oob_indices, sample_size
from ensemble.config import BaggingConfig

LABELS = np.repeat([0, 1, 2], [50, 30, 20])


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("replace", [True, False])
def test_sizes_and_replacement(ratio, replace):
    s = draw_sample(LABELS, ratio, replace, stratify=False, rng=member_rng(0, 0))
    assert len(s) == round(ratio * len(LABELS))
    if not replace:
        assert len(np.unique(s)) == len(s)
    assert s.min() >= 0 and s.max() < len(LABELS)


def test_with_replacement_repeats_at_full_ratio():
    s = draw_sample(LABELS, 1.0, True, False, member_rng(0, 0))
    assert len(np.unique(s)) < len(s)  # ~63% unique in expectation
    s = draw_sample(LABELS, 1.0, False, False, member_rng(0, 0))
    assert np.array_equal(s, np.arange(len(LABELS)))


def test_stratified_keeps_class_shares():
    s = draw_sample(LABELS, 0.5, True, stratify=True, rng=member_rng(1, 2))
    counts = np.bincount(LABELS[s], minlength=3)
    assert counts.tolist() == [25, 15, 10]


def test_oob_is_the_complement():
    s = draw_sample(LABELS, 0.7, True, True, member_rng(0, 1))
    oob = oob_indices(len(LABELS), s)
    assert set(oob).isdisjoint(set(s))
    assert set(oob) | set(s) == set(range(len(LABELS)))


def test_determinism_and_member_independence():
    bag = [BaggingConfig(0.8, True, True)] * 3
    a = draw_all(LABELS, bag, seed=7)
    b = draw_all(LABELS, bag, seed=7)
    c = draw_all(LABELS, bag, seed=8)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], a[1])  # members differ
    assert not np.array_equal(a[0], c[0])  # seeds differ


def test_ratio_is_checked():
    with pytest.raises(ValueError, match=r"`ratio` must be in \(0, 1\]; got 1.5"):
        sample_size(10, 1.5)


def test_stratified_total_is_round_ratio_n():
    labels = np.repeat([0, 1, 2], [16, 16, 16])
    s = draw_sample(labels, 0.8, True, True, member_rng(0, 0))
    assert len(s) == round(0.8 * 48)  # 38, not 3 * round(12.8) = 39
    assert sorted(np.bincount(labels[s]).tolist()) == [12, 13, 13]


def test_progressive_sizes():
    from members.trainer import epoch_sizes

    nine = epoch_sizes(9, 224, 128)
    assert nine[0] == 128 and nine[-3:] == [224] * 3 and nine == sorted(nine)
    assert all(s % 32 == 0 for s in nine) and len(set(nine)) >= 3  # it really ramps
    assert epoch_sizes(3, 224, None) == [224, 224, 224]
    assert epoch_sizes(1, 224, 128) == [224]
    sizes = epoch_sizes(12, 240, 128)
    assert sizes == sorted(sizes) and sizes[-4:] == [240] * 4 and sizes[0] == 128
