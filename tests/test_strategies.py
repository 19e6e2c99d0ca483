"""The strategy registry: a new strategy is one class, and every door accepts it."""

import json

import numpy as np
import pytest
import synth

from ensemble.cli import main
from ensemble.combining.strategies import STRATEGIES, Combiner, FitData, Strategy, fit_combiner, register
from ensemble.config import CombinerConfig, ConfigError, config_from_dict

P = np.array(
    [  # 3 members, 2 samples, 2 classes
        [[0.9, 0.1], [0.2, 0.8]],
        [[0.6, 0.4], [0.3, 0.7]],
        [[0.1, 0.9], [0.6, 0.4]],
    ]
)


@pytest.fixture
def median_strategy():
    """A toy strategy defined here, in the test module only."""

    @register
    class MedianVote(Strategy):
        name = "median"

        def apply(self, proba):
            p = np.median(proba, axis=0)
            p = p / p.sum(axis=1, keepdims=True)
            return p.argmax(axis=1), p

    yield MedianVote
    STRATEGIES.remove("median")


def test_a_toy_strategy_is_fitted_applied_and_saved(median_strategy):
    data = FitData.from_oob_lists(
        P,
        np.array([0, 1]),
        [np.array([0]), np.array([1]), np.array([], dtype=np.int64)],
        [P[0, :1], P[1, 1:], np.zeros((0, 2))],
        np.array([0, 1]),
    )
    comb = fit_combiner(CombinerConfig(strategy="median"), ["a", "b", "c"], ["x", "y"], data)
    assert "median" in comb.available()
    pred, proba = comb.apply(P)
    np.testing.assert_allclose(proba, [[0.6, 0.4], [0.3, 0.7]])
    assert pred.tolist() == [0, 1]
    covered, pred, proba = comb.get("median").apply_oob(data.oob_proba, data.oob_available)
    assert covered.tolist() == [0, 1]
    np.testing.assert_allclose(proba, [P[0, 0], P[1, 1]])  # only the member that left it out
    doc, arrays = comb.state()
    again = Combiner.from_state(json.loads(json.dumps(doc)), arrays)
    np.testing.assert_allclose(again.apply(P)[1], comb.apply(P)[1])


def test_config_accepts_a_registered_strategy_and_names_the_choices(median_strategy, tmp_path):
    raw = synth.tiny_config(tmp_path, combiner={"strategy": "median"})
    assert config_from_dict(raw).combiner.strategy == "median"
    raw["combiner"]["strategy"] = "mean"
    with pytest.raises(
        ConfigError,
        match=r"`combiner.strategy` must be one of auto, hard, soft, weighted, "
        r"stacking, greedy, median; got 'mean'",
    ):
        config_from_dict(raw)


@pytest.mark.parametrize("name", ["soft", "stacking", "path", "prediction", "error"])
def test_member_named_like_a_strategy_or_output_column_is_refused(tmp_path, name):
    raw = synth.tiny_config(tmp_path)
    raw["members"][1]["name"] = name
    with pytest.raises(ConfigError, match=rf"`members.1.name` must differ .*got '{name}'"):
        config_from_dict(raw)


def test_member_named_like_a_class_is_refused_before_training(tiny_data, tmp_path, caplog):
    import yaml

    raw = synth.tiny_config(tiny_data)
    raw["members"][0]["name"] = "circle"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "`members.0.name` 'circle' is also a class name" in caplog.text
    assert not (tmp_path / "run").exists()


def test_a_toy_strategy_runs_through_fit_combiner_and_evaluate(median_strategy, trained, tiny_data, tmp_path):
    import shutil

    _, run = trained
    data = tiny_data
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["fit-combiner", str(copy), "--set", "combiner.strategy=median"]) == 0
    doc = json.loads((copy / "report/metrics.json").read_text())
    assert doc["strategy"] == "median" and "median" in doc["strategies"]
    assert doc["strategies"]["median"]["oob"]["n"] > 0
    assert main(["evaluate", str(copy), str(data / "test"), "--strategy", "median", "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert ev["strategy"] == "median" and ev["ensemble"]["eval"]["n"] == 18
