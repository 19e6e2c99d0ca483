"""Greedy ensemble selection and the noise-aware `strategy: auto` rule (issue #21)."""

import json

import numpy as np
import pytest

from ensemble.combining.auto import choose_strategy
from ensemble.combining.strategies import Combiner, FitData, GreedySettings, fit_combiner
from ensemble.combining.votes import greedy_selection, soft_vote
from ensemble.config import AutoConfig, CombinerConfig
from ensemble.metrics import log_loss


def _noisy(y: np.ndarray, n_classes: int, strength: float, rng) -> np.ndarray:
    """Probabilities whose logit for the true class is raised by ``strength``."""
    z = rng.normal(size=(len(y), n_classes))
    z[np.arange(len(y)), y] += strength
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_greedy_finds_the_known_optimum_of_a_two_candidate_mix():
    # candidate 0 says 0.9 for the truth on the first half and 0.1 on the second; candidate 1
    # the reverse; the log loss of their mix is minimised by equal weights (0.5 each)
    y = np.zeros(20, dtype=np.int64)
    a = np.array([[0.9, 0.1]] * 10 + [[0.1, 0.9]] * 10)
    b = a[::-1].copy()
    junk = np.tile([[0.2, 0.8]], (20, 1))  # always wrong: never chosen
    w, path = greedy_selection(np.stack([a, b, junk]), y, n_iter=10)
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])
    assert path[0]["added"] in (0, 1) and len(path) == 10
    # the loss of the chosen mix is the minimum over a fine grid of mixes of a and b
    best = min(log_loss(y, t * a + (1 - t) * b) for t in np.linspace(0, 1, 101))
    assert log_loss(y, soft_vote(np.stack([a, b, junk]), w)) == pytest.approx(best, abs=1e-9)


def test_greedy_scores_an_image_only_by_candidates_that_left_it_out():
    y = np.array([0, 0, 1, 1])
    good = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    bad = 1 - good
    proba = np.stack([bad, good])
    # `bad` is the only candidate on images 0 and 1 but is "available" nowhere there:
    # masked out, it cannot hurt; with the mask it is never worth adding
    available = np.array([[False, False, True, True], [True, True, True, True]])
    w, _ = greedy_selection(proba, y, available, n_iter=5)
    np.testing.assert_allclose(w, [0.0, 1.0])
    # without the mask the data are the same; a candidate masked everywhere is never scored
    only = np.array([[False] * 4, [True] * 4])
    w2, _ = greedy_selection(proba, y, only, n_iter=5)
    np.testing.assert_allclose(w2, [0.0, 1.0])
    # images nobody may score are dropped: no candidates at all -> uniform weights, empty path
    w3, path3 = greedy_selection(proba, y, np.zeros((2, 4), dtype=bool))
    np.testing.assert_allclose(w3, [0.5, 0.5]) and path3 == []


def test_bagged_greedy_is_seeded_and_spreads_weight_over_a_redundant_pool():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    base = _noisy(y, 3, 2.0, rng)
    pool = np.stack([base, base.copy(), _noisy(y, 3, 0.5, rng), _noisy(y, 3, 1.5, rng)])
    w0, _ = greedy_selection(pool, y, n_iter=20)
    assert w0[1] == 0.0  # without bags the exact copy is never preferred to the original (ties -> earlier)
    wa, _ = greedy_selection(pool, y, n_iter=20, bags=10, seed=3)
    wb, _ = greedy_selection(pool, y, n_iter=20, bags=10, seed=3)
    np.testing.assert_array_equal(wa, wb)
    assert wa.sum() == pytest.approx(1.0) and wa[1] > 0  # bags without the original pick the copy


def test_greedy_strategy_is_fitted_saved_and_exported_as_one_weighted_mean():
    rng = np.random.default_rng(1)
    y_tr, y_val = rng.integers(0, 3, 200), rng.integers(0, 3, 80)
    members = [2.0, 0.3, 1.2]
    oob = [_noisy(y_tr, 3, s, rng) for s in members]
    idx = [np.arange(200)] * 3
    val = np.stack([_noisy(y_val, 3, s, rng) for s in members])
    data = FitData.from_oob_lists(val, y_val, idx, oob, y_tr)
    comb = fit_combiner(
        CombinerConfig(strategy="greedy", sections={"greedy": GreedySettings(iterations=15)}),
        ["a", "b", "c"],
        ["x", "y", "z"],
        data,
    )
    g = comb.get("greedy")
    assert g.source_ == "oob" and sum(g.weights_) == pytest.approx(1.0)
    assert g.weights_[0] == max(g.weights_)  # the strongest member weighs most
    assert comb.get("greedy").uses(3).tolist() == [w > 0 for w in g.weights_]
    import torch

    head = g.graph_head()  # export's vote: the same weighted mean, as a torch module
    np.testing.assert_allclose(
        head(torch.tensor(val, dtype=torch.float32)).numpy(), soft_vote(val, g.weights_), atol=1e-6
    )
    np.testing.assert_allclose(comb.apply(val, "greedy")[1], soft_vote(val, g.weights_))
    doc, arrays = comb.state()
    again = Combiner.from_state(json.loads(json.dumps(doc)), arrays)
    np.testing.assert_allclose(again.apply(val, "greedy")[1], comb.apply(val, "greedy")[1])
    summary = comb.summary()
    assert summary["greedy_path"][0]["added"] in ("a", "b", "c")
    assert any(n.startswith("Greedy selection on oob (log_loss): weights a ") for n in summary["notes"])


def _fit_data(strengths_val, strengths_oob, n_val=300, n_oob=600, seed=0):
    rng = np.random.default_rng(seed)
    y_val, y_tr = rng.integers(0, 3, n_val), rng.integers(0, 3, n_oob)
    val = np.stack([_noisy(y_val, 3, s, rng) for s in strengths_val])
    oob = [_noisy(y_tr, 3, s, rng) for s in strengths_oob]
    return FitData.from_oob_lists(val, y_val, [np.arange(n_oob)] * len(oob), oob, y_tr)


def test_auto_picks_the_simpler_strategy_in_a_near_tie():
    # members of nearly equal strength: learned weights beat equal ones by less than one
    # standard error, so soft (nothing fitted) is chosen (stacking is left out here: it
    # recalibrates these under-confident members and wins clearly, see the next test)
    data = _fit_data([1.6, 1.5, 1.4], [1.6, 1.5, 1.4])
    comb = fit_combiner(
        CombinerConfig(strategy="auto"),
        ["a", "b", "c"],
        ["x", "y", "z"],
        data,
        only=("hard", "soft", "weighted", "greedy"),
    )
    choice = comb.choice
    assert choice["best"] != "soft" and choice["table"]["soft"]["tie"] and comb.strategy == "soft"
    assert "simpler" in choice["reason"]
    assert choice["n_val"] == 300 and choice["n_oob"] == 600
    assert "hard" not in choice["table"]  # log loss ranks only strategies with probabilities


def test_auto_picks_a_clear_calibration_winner():
    data = _fit_data([1.5, 1.5, 1.5], [1.5, 1.5, 1.5])
    comb = fit_combiner(CombinerConfig(strategy="auto"), ["a", "b", "c"], ["x", "y", "z"], data)
    t = comb.choice["table"]
    assert comb.strategy == "stacking" and not t["soft"]["tie"]
    assert t["soft"]["diff_to_best"] > t["soft"]["se_of_diff"] > 0


def test_auto_picks_a_clear_winner_even_when_it_is_complex():
    # members of clearly different strength: equal weights (soft) lose clearly to learned weights
    data = _fit_data([1.8, 1.5, 1.2], [1.8, 1.5, 1.2])
    comb = fit_combiner(
        CombinerConfig(strategy="auto"), ["a", "b", "c"], ["x", "y", "z"], data, only=("soft", "weighted", "greedy")
    )
    t = comb.choice["table"]
    assert not t["soft"]["tie"] and t["soft"]["diff_to_best"] > 2 * t["soft"]["se_of_diff"]
    assert comb.strategy in ("weighted", "greedy")
    assert t[comb.strategy]["tie"]


def test_auto_cross_fits_oob_strategies_and_is_reproducible():
    data = _fit_data([1.0, 1.2, 0.8], [1.0, 1.2, 0.8], seed=4)
    fitted = fit_combiner(CombinerConfig(strategy="soft"), ["a", "b", "c"], ["x", "y", "z"], data).strategies
    a = choose_strategy(fitted, data, 3, AutoConfig(bootstrap=50))
    b = choose_strategy(fitted, data, 3, AutoConfig(bootstrap=50))
    assert a == b
    # the OOB part of stacking's score is held out: lower than its in-sample OOB fit would give
    from ensemble.combining.auto import _held_out

    held, y, n_val, n_oob = _held_out({"stacking": fitted["stacking"]}, data, 3, 5, 0)
    in_sample = fitted["stacking"].apply_oob(data.oob_proba, data.oob_available)[2]
    assert log_loss(y[n_val:], held["stacking"][1][n_val:]) > log_loss(data.oob_y, in_sample)


def test_auto_by_macro_f1_may_choose_hard_voting():
    # one member: hard and soft predict the same classes, an exact tie on macro-F1
    data = _fit_data([1.5], [1.5], seed=2)
    comb = fit_combiner(
        CombinerConfig(strategy="auto", auto=AutoConfig(metric="macro_f1", bootstrap=50)),
        ["a"],
        ["x", "y", "z"],
        data,
        only=("hard", "soft"),
    )
    t = comb.choice["table"]
    assert comb.choice["metric"] == "macro_f1" and t["hard"]["tie"] and t["soft"]["tie"]
    assert comb.strategy == "hard"  # a tie of two with nothing fitted: the earlier registered


def test_greedy_survives_bags_of_members_without_oob_images_and_nan():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 60)
    pool = np.stack([_noisy(y, 3, 1.0, rng) for _ in range(4)])
    available = np.ones((4, 60), dtype=bool)
    available[2:] = False  # two members with ratio 1 and no replacement: no OOB image
    w, _ = greedy_selection(pool, y, available, n_iter=5, bags=10, seed=0)
    assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0) and w[2] == w[3] == 0
    pool[0, :5] = np.nan
    w, _ = greedy_selection(pool, y, available, n_iter=5)
    assert np.isfinite(w).all() and w[1] == 1.0  # the member with NaN probabilities never wins


def test_auto_with_too_few_oob_images_uses_val_alone():
    data = _fit_data([1.5, 1.0, 0.5], [1.5, 1.0, 0.5], n_oob=1)
    comb = fit_combiner(CombinerConfig(strategy="auto"), ["a", "b", "c"], ["x", "y", "z"], data)
    assert comb.choice["n_oob"] == 0 and comb.choice["n_val"] == 300


def test_leave_one_out_gains_show_which_member_helps():
    from ensemble.metrics import leave_one_out

    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 400)
    good, noise = _noisy(y, 3, 2.0, rng), _noisy(y, 3, 0.0, rng)
    got = {c["member"]: c for c in leave_one_out(np.stack([good, _noisy(y, 3, 2.0, rng), noise]), y, "abc")}
    assert got["c"]["log_loss_gain"] < 0 < got["a"]["log_loss_gain"]  # the noise member hurts, a good one helps


def test_the_report_relates_contributions_to_diversity(trained):
    _, run = trained
    doc = json.loads((run / "report/metrics.json").read_text())
    assert {c["member"] for c in doc["contributions"]["val"]} == {"a", "b", "c"}
    md = (run / "report/report.md").read_text()
    assert "### What each member adds" in md and "## Diversity" in md
    assert md.index("## Diversity") < md.index("### What each member adds")
    html = (run / "report/index.html").read_text()
    assert "<h3>What each member adds</h3>" in html and "How the default strategy was chosen" not in html  # soft
    assert "Greedy selection on oob" in md


def test_auto_and_greedy_reach_the_report_and_predict_skips_unweighted_members(
    trained, tiny_data, tmp_path, monkeypatch
):
    import synth

    from ensemble.cli import main
    from ensemble.estimator import BaggedEnsemble
    from ensemble.inference import InferenceOptions, predict_rows
    from ensemble.runfolder import load_run

    _, run = trained
    copy = synth.copy_run(run, tmp_path / "run")
    assert main(["fit-combiner", str(copy), "--set", "combiner.strategy=auto"]) == 0
    doc = json.loads((copy / "report/metrics.json").read_text())
    assert doc["combiner"]["choice"]["chosen"] == doc["strategy"]
    assert "## How the default strategy was chosen" in (copy / "report/report.md").read_text()
    assert "How the default strategy was chosen" in (copy / "report/index.html").read_text()
    # a greedy combiner that gives member b and c no weight: predict runs member a only
    ens = load_run(copy)
    ens.combiner_.get("greedy").weights_ = [1.0, 0.0, 0.0]
    ran = []
    real = BaggedEnsemble._runtime
    monkeypatch.setattr(BaggedEnsemble, "_runtime", lambda self, j, *a: ran.append(j) or real(self, j, *a))
    paths = [str(p) for p in sorted((tiny_data / "test/circle").iterdir())[:3]]
    rows = predict_rows(ens, paths, "greedy", InferenceOptions(runtime="torch"))
    assert set(ran) == {0}
    assert all(r["votes"]["b"] == "" and r["votes"]["c"] == "" and r["votes"]["a"] for r in rows)


def test_auto_says_why_when_an_equally_simple_strategy_wins_the_tie():
    # soft is best on macro-F1, hard lies within a wide tie band; both fit nothing, so the
    # registry order decides, and the reason must not call hard "simpler"
    data = _fit_data([1.5, 1.4, 1.3], [1.5, 1.4, 1.3])
    comb = fit_combiner(
        CombinerConfig(strategy="auto", auto=AutoConfig(metric="macro_f1", bootstrap=100, se=10.0)),
        ["a", "b", "c"],
        ["x", "y", "z"],
        data,
        only=("hard", "soft"),
    )
    assert comb.choice["best"] == "soft" and comb.strategy == "hard"
    assert "simpler" not in comb.choice["reason"]
    assert comb.choice["reason"].endswith("as simple (0 fitted values each) and first in registry order")


def test_greedy_over_one_candidate_adds_it_once():
    """A run of one member (a distilled student): the path is that member once, not 25 times."""
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), size=(1, 40))
    y = rng.integers(0, 3, 40)
    weights, path = greedy_selection(proba, y, n_iter=25)
    assert weights.tolist() == [1.0] and [p["added"] for p in path] == [0]
    two = np.concatenate([proba, proba[:, ::-1]])  # a second candidate: the path runs as before
    assert len(greedy_selection(two, y, n_iter=25)[1]) == 25
