import numpy as np
import pytest
from sklearn import metrics as skm

from ensemble.metrics import classification_report, confusion_matrix, expected_calibration_error, log_loss


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    proba = rng.dirichlet(np.ones(4), 200)
    proba[np.arange(200)[:120], y[:120]] += 1.0  # make it better than chance
    proba /= proba.sum(1, keepdims=True)
    return y, proba


def test_metrics_equal_sklearn(case):
    y, proba = case
    pred = proba.argmax(1)
    classes = ["a", "b", "c", "d"]
    r = classification_report(y, pred, proba, classes)
    labels = list(range(4))
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=labels))
    assert r["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted", labels=labels))
    assert r["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=labels))
    p, rc, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(classes):
        assert r["per_class"][c]["precision"] == pytest.approx(p[i])
        assert r["per_class"][c]["recall"] == pytest.approx(rc[i])
        assert r["per_class"][c]["f1"] == pytest.approx(f[i])
        assert r["per_class"][c]["support"] == s[i]
    norm = np.array(r["confusion_matrix_normalized"])
    np.testing.assert_allclose(norm, skm.confusion_matrix(y, pred, labels=labels, normalize="true"), atol=1e-6)


def test_absent_class_counts_as_zero_f1_like_sklearn():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    r = classification_report(y, pred, None, ["a", "b", "c"])
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0))
    assert "log_loss" not in r


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(np.array([0, 0, 2]), np.array([1, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_log_loss_clips_zero_probabilities():
    assert np.isfinite(log_loss(np.array([0]), np.array([[0.0, 1.0]])))


def test_ece_perfect_and_overconfident():
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.eye(2)[y]) == pytest.approx(0.0)
    wrong = np.eye(2)[1 - y]
    assert expected_calibration_error(y, wrong) == pytest.approx(1.0)


def test_diversity_by_hand():
    from ensemble.metrics import diversity

    y = np.array([0, 0, 1, 1])
    same = np.array([[0, 1, 1, 0], [0, 1, 1, 0]])
    d = diversity(same, y)
    assert d["disagreement"] == 0 and d["q_statistic"] == 1 and d["error_correlation"] == pytest.approx(1)
    # member 0 right on samples 0,2 ; member 1 right on 1,3: complementary
    comp = np.array([[0, 1, 1, 0], [1, 0, 0, 1]])
    d = diversity(comp, y)
    assert d["disagreement"] == 1 and d["q_statistic"] == -1 and d["error_correlation"] == pytest.approx(-1)
