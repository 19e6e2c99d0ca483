"""Prediction sets, review and costs (ensemble/combining/decisions.py) and their doors (config, predict, reports)."""

import csv
import json
import shutil

import numpy as np
import pytest
import synth
import yaml

from ensemble.cli import main
from ensemble.combining.decisions import (
    Decider,
    DecisionError,
    conformal_threshold,
    cost_metrics,
    fit_conformal,
    min_calibration_size,
    min_cost_decisions,
    prediction_sets,
    review_threshold,
    set_metrics,
)


def synthetic(rng, n, k=3, sharp=2.0):
    """Probabilities of a calibrated model: labels are drawn from them."""
    logits = rng.normal(size=(n, k)) * sharp
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_split_conformal_coverage_holds_over_many_seeds(coverage):
    covered = []
    for seed in range(120):
        rng = np.random.default_rng(seed)
        p_cal, y_cal = synthetic(rng, 300)
        p_new, y_new = synthetic(rng, 1000)
        sets = prediction_sets(p_new, fit_conformal(p_cal, y_cal, coverage))
        covered.append(set_metrics(sets, y_new)["coverage"])
    covered = np.array(covered)
    # E[coverage] is in [c, c + 1/(n+1)] for continuous scores; the mean of 120 draws is within ~0.005
    assert coverage - 0.01 <= covered.mean() <= coverage + 1 / 301 + 0.01, covered.mean()
    assert (covered >= coverage - 0.08).all()


def test_class_conditional_sets_cover_every_class():
    per_class = {c: [] for c in range(3)}
    for seed in range(60):
        rng = np.random.default_rng(100 + seed)
        p_cal, y_cal = synthetic(rng, 600)
        p_cal[:, 2] *= 0.3  # a class the model under-predicts: marginal sets would miss it more
        p_cal /= p_cal.sum(1, keepdims=True)
        p_new, y_new = synthetic(rng, 1500)
        p_new[:, 2] *= 0.3
        p_new /= p_new.sum(1, keepdims=True)
        sets = prediction_sets(p_new, fit_conformal(p_cal, y_cal, 0.9, by_class=True))
        for c in range(3):
            per_class[c].append(sets[y_new == c, c].mean())
    for c, got in per_class.items():
        assert np.mean(got) >= 0.9 - 0.015, (c, np.mean(got))


def test_too_few_calibration_images_names_the_minimum():
    assert min_calibration_size(0.9) == 9 and min_calibration_size(0.95) == 19 and min_calibration_size(0.8) == 4
    conformal_threshold(np.linspace(0, 1, 9), 0.9)
    with pytest.raises(DecisionError, match="coverage 0.9 needs at least 9 calibration images; got 8"):
        conformal_threshold(np.linspace(0, 1, 8), 0.9)


def test_conformal_threshold_by_hand():
    scores = np.arange(1, 11) / 10  # 0.1 .. 1.0, n = 10
    # ceil(11 * 0.8) = 9 -> the 9th smallest score
    assert conformal_threshold(scores, 0.8) == pytest.approx(0.9)
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    sets = prediction_sets(p, np.full(3, 0.7))  # classes with p >= 0.3
    assert sets.tolist() == [[True, False, False], [True, True, False]]


def test_tiny_coverages_give_the_smallest_sets_not_the_full_ones():
    """A smaller coverage never gives larger sets, down to the smallest float (#41)."""
    rng = np.random.default_rng(3)
    p_cal, y_cal = synthetic(rng, 90)
    p_new, _ = synthetic(rng, 200)
    coverages = [5e-324, 1e-300, 1e-12, 1e-9, 1e-3, 0.1, 0.5, 0.9]
    sizes = [prediction_sets(p_new, fit_conformal(p_cal, y_cal, c)).sum() for c in coverages]
    assert sizes == sorted(sizes), dict(zip(coverages, sizes))
    assert sizes[0] == sizes[4] < p_new.size  # ceil((n + 1) * c) is 1 for every tiny c
    assert min_calibration_size(1e-12) == 1
    with pytest.raises(DecisionError, match="needs at least 1 calibration images; got 0"):
        conformal_threshold(np.array([]), 1e-12)


def test_predict_with_a_tiny_coverage_gives_the_smallest_sets(trained, tiny_data, tmp_path):
    _, run = trained
    sizes = {}
    for coverage in ("1e-300", "1e-12", "0.001", "0.5", "0.9"):
        out = tmp_path / f"p{coverage}.csv"
        assert (
            main(["predict", str(run), str(tiny_data / "test"), "--out", str(out), "--coverage", coverage, "-q"]) == 0
        )
        sizes[coverage] = sum(
            len(r["prediction_set"].split("|")) if r["prediction_set"] else 0 for r in csv.DictReader(out.open())
        )
    assert list(sizes.values()) == sorted(sizes.values()), sizes
    assert sizes["1e-300"] == sizes["1e-12"] == sizes["0.001"], sizes


def test_cost_rule_by_hand():
    p = np.array([[0.6, 0.3, 0.1], [0.98, 0.01, 0.01]])
    costs = np.array([[0, 1, 1], [1, 0, 1], [10, 5, 0]])  # calling a severe car minor costs 10
    # image 0: expected costs 1.3 (minor), 1.1 (moderate), 0.9 (severe) -> severe, though argmax is minor
    # image 1: 0.11, 1.03, 0.99 -> minor
    assert min_cost_decisions(p, costs).tolist() == [2, 0]
    got = cost_metrics(p, np.array([2, 0]), costs)
    assert got["argmax"]["realised_cost"] == pytest.approx(5.0)  # (10 + 0) / 2
    assert got["min_cost"]["realised_cost"] == pytest.approx(0.0)
    assert got["min_cost"]["expected_cost"] == pytest.approx((0.9 + 0.11) / 2)
    assert got["argmax"]["expected_cost"] == pytest.approx((1.3 + 0.11) / 2)


def test_review_thresholds_are_monotone_and_keep_what_they_promise():
    rng = np.random.default_rng(0)
    p, y = synthetic(rng, 500)
    conf, correct = p.max(1), p.argmax(1) == y
    rates = [0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9]
    th = [review_threshold(conf, correct, review_rate=r) for r in rates]
    assert th == sorted(th)
    for r, t in zip(rates, th):
        assert (conf < t).mean() == pytest.approx(r, abs=0.003)
    targets = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
    th = [review_threshold(conf, correct, target_accuracy=a) for a in targets]
    assert th == sorted(th)
    for a, t in zip(targets, th):
        kept = conf >= t
        assert not kept.any() or correct[kept].mean() >= a
    with pytest.raises(DecisionError, match="`review_rate` must be in \\[0, 1\\]; got 1.5"):
        review_threshold(conf, correct, review_rate=1.5)


def test_decider_report_on_a_shifted_split_says_coverage_fell():
    rng = np.random.default_rng(1)
    p_cal, y_cal = synthetic(rng, 400)
    p_new, _ = synthetic(rng, 400)
    y_wrong = (p_new.argmax(1) + 1) % 3  # a shifted split: the model is usually wrong
    rep = Decider(p_cal, y_cal).report(p_new, y_wrong)
    assert rep["coverage"]["0.9"]["below_target"] is True
    assert set(rep["review"]) == {"0.1", "0.2", "0.3"}


# ---------------------------------------------------------------- the doors
@pytest.mark.parametrize(
    "decision, message",
    [
        ({"coverage": 1.0}, "`decision.coverage` must be in (0, 1); got 1.0"),
        ({"review_rate": -0.1}, "`decision.review_rate` must be in [0, 1]; got -0.1"),
        ({"costs": [[0, 1], [1, 0, 2]]}, "`decision.costs` must be a square matrix"),
        ({"costs": [[0, -1, 1], [1, 0, 1], [1, 1, 0]]}, "`decision.costs` must hold finite non-negative numbers"),
        ({"costs": [[0, 1], [1, 0]]}, "`decision.costs` must be 3 x 3 (classes circle, square, stripes); got 2 x 2"),
        ({"review_rate": 0.1, "target_accuracy": 0.9}, "give one, not both"),
    ],
)
def test_bad_decision_settings_are_refused_before_training(tiny_data, tmp_path, caplog, decision, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, decision=decision)))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert message in caplog.text
    assert not (tmp_path / "run/members").exists()


def test_predict_with_sets_and_review(trained, tiny_data, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                str(run),
                str(tiny_data / "val"),
                "--out",
                str(out),
                "--coverage",
                "0.9",
                "--review-rate",
                "0.2",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:4] == ["path", "prediction", "prediction_set", "decision"]
    classes = json.loads((run / "classes.json").read_text())
    for r in rows:
        assert r["decision"] in ("review", r["prediction"])
        members = r["prediction_set"].split("|") if r["prediction_set"] else []
        assert set(members) <= set(classes)
    # val is the calibration split: a 20% review rate sends about 20% of it to review
    reviewed = sum(r["decision"] == "review" for r in rows)
    assert reviewed <= round(0.2 * len(rows)) + 1
    assert "marked review" in capsys.readouterr().out or reviewed == 0
    # coverage on the calibration images themselves is at least the target
    truth = [r["path"].split("/")[-2] for r in rows]
    assert np.mean([t in r["prediction_set"].split("|") for t, r in zip(truth, rows)]) >= 0.9


def test_predict_refuses_bad_decision_flags(trained, tiny_data, tmp_path, caplog):
    _, run = trained
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(tiny_data / "val"), "--out", str(out), "--coverage", "1.2"]) == 2
    assert "`--coverage` must be in (0, 1); got 1.2" in caplog.text
    assert main(["predict", str(run), str(tiny_data / "val"), "--out", str(out), "--coverage", "0.99"]) == 2
    assert "coverage 0.99 needs at least 99 calibration images; got 18" in caplog.text
    assert (
        main(
            [
                "predict",
                str(run),
                str(tiny_data / "val"),
                "--out",
                str(out),
                "--review-rate",
                "0.1",
                "--target-accuracy",
                "0.9",
            ]
        )
        == 2
    )
    assert not out.exists()


def test_reports_give_coverage_set_size_and_review(trained, tiny_data, tmp_path):
    _, run = trained
    doc = json.loads((run / "report/metrics.json").read_text())
    dec = doc["decisions"]
    assert dec["calibration"] == "val" and dec["n_calibration"] == 18 and set(dec["splits"]) == {"val", "test"}
    for split in ("val", "test"):
        cov = dec["splits"][split]["coverage"]
        assert set(cov) == {"0.8", "0.9", "0.95"}
        assert cov["0.9"]["n"] == 18 and 1 <= cov["0.9"]["mean_set_size"] <= 3
    assert dec["splits"]["val"]["coverage"]["0.9"]["coverage"] >= 0.9  # in-sample: by construction
    md = (run / "report/report.md").read_text()
    assert "## Decisions" in md and "risk_coverage_test.png" in md and (run / "report/risk_coverage_val.png").is_file()
    assert main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert set(ev["decisions"]["splits"]) == {"eval"}


def test_costs_change_predictions_and_are_reported(tiny_data, tmp_path):
    costs = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1, decision={"costs": costs})))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "-q"]) == 0
    dec = json.loads((tmp_path / "run/report/metrics.json").read_text())["decisions"]
    c = dec["splits"]["test"]["costs"]
    # 0/1 costs: the cost rule is the argmax rule, and realised cost = 1 - accuracy
    assert c["min_cost"]["realised_cost"] == pytest.approx(1 - c["min_cost"]["accuracy"])
    assert c["min_cost"]["accuracy"] == pytest.approx(c["argmax"]["accuracy"])
    assert "`min_cost` is what `predict` outputs" in (tmp_path / "run/report/report.md").read_text()


def test_calibration_on_oob_images(trained, tmp_path):
    """`decision.calibration: oob` fits sets and thresholds on the OOB images, each voted on
    only by the members that left it out."""
    from ensemble.reporting.evaluation import calibration_set
    from ensemble.runfolder import load_run

    cfg, run = trained
    ens = load_run(run)
    proba, y = calibration_set(ens, "soft", "oob")
    assert len(y) == ens.oob_report_["n_covered"] and len(y) != len(ens.val_y_)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)  # float32 rows: sums within rounding
    out = tmp_path / "p.csv"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["fit-combiner", str(copy), "--set", "decision.calibration=oob", "-q"]) == 0
    dec = json.loads((copy / "report/metrics.json").read_text())["decisions"]
    assert dec["calibration"] == "oob" and dec["n_calibration"] == len(y)
    assert main(["predict", str(copy), str(out.parent), "--out", str(out), "--coverage", "0.9"]) == 0


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
def test_coverage_messages_name_the_class(trained, tiny_data, tmp_path, fails):
    _, run = trained
    text = fails(
        main(
            [
                "predict",
                str(run),
                str(tiny_data / "test/circle"),
                "--out",
                str(tmp_path / "p.csv"),
                "--coverage",
                "0.99",
                "--coverage-by-class",
            ]
        ),
        "calibration images of class",
    )
    assert "class 'circle'" in text or "class 'square'" in text or "class 'stripes'" in text
