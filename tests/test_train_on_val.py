"""``data.train_on_val``: the final fit on train + val, every held-out figure from OOB (issue #39 item 3)."""

import json

import numpy as np
import pytest
import synth
import yaml

from ensemble.cli import main
from ensemble.combining.strategies import FitData, fit_combiner
from ensemble.data import Dataset, Split, find_images, with_val_in_train


def _config(tiny_data, tmp_path, **members_bagging):
    cfg = synth.tiny_config(tiny_data, epochs=1)
    cfg["members"] = cfg["members"][:2]
    for m in cfg["members"]:
        m["bagging"] = {"ratio": 0.7, "replace": False, "stratify": True, **members_bagging}
    cfg["data"]["train_on_val"] = True
    cfg["combiner"] = {"strategy": "auto", "calibrate": True, "auto": {"bootstrap": 50}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def refit_run(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tov")
    out = root / "run"
    assert main(["train", str(_config(tiny_data, root)), "--out", str(out)]) == 0
    return out


def test_val_is_trained_on_and_never_scored(refit_run, tiny_data):
    doc = json.loads((refit_run / "report" / "metrics.json").read_text())
    n_train, n_val = (len(find_images(tiny_data / s)) for s in ("train", "val"))
    assert len(np.load(refit_run / "predictions" / "train_labels.npy")) == n_train + n_val
    assert len(np.load(refit_run / "predictions" / "val_labels.npy")) == 0
    assert "val" not in doc["ensemble"] and all("val" not in m for m in doc["members"].values())
    assert doc["held_out"]["source"] == "oob"
    assert "Held-out images: `data.train_on_val`" in (refit_run / "report" / "report.md").read_text()
    assert "images are in train (`data.train_on_val`)" in doc["data_summary"]["val"]["source"]


def test_every_held_out_figure_comes_from_oob(refit_run):
    doc = json.loads((refit_run / "report" / "metrics.json").read_text())
    oob = [np.load(refit_run / "members" / m / "oob.npy") for m in ("a", "b")]
    covered = len(np.unique(np.concatenate(oob)))
    assert doc["held_out"]["n_oob_images"] == covered
    comb = doc["combiner"]
    assert comb["weights_source"] == comb["stacking_source"] == comb["greedy_source"] == "oob"
    assert not comb["fitted_on_val"]
    assert comb["choice"]["n_val"] == 0 and comb["choice"]["n_oob"] == covered
    assert doc["decisions"]["calibration"] == "oob" and doc["decisions"]["n_calibration"] == covered
    for name in ("a", "b"):  # each member chose its epoch on its own out-of-bag images
        meta = json.loads((refit_run / "members" / name / "member.json").read_text())
        assert meta["selected_on"] == "oob"
        assert meta["selection"]["val"]["best"]["macro_f1"] == pytest.approx(doc["members"][name]["oob"]["macro_f1"])


def test_predict_works_on_a_refit_run(refit_run, tiny_data, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(refit_run), str(tiny_data / "test"), "--out", str(out), "--coverage", "0.9"]) == 0
    assert len(out.read_text().splitlines()) == 1 + len(find_images(tiny_data / "test"))


def test_refit_needs_out_of_bag_images(tiny_data, tmp_path, caplog):
    code = main(["train", str(_config(tiny_data, tmp_path, ratio=1.0)), "--out", str(tmp_path / "run")])
    err = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(err) == 1 and "Traceback" not in caplog.text
    assert "`data.train_on_val` needs out-of-bag images" in err[0] and "members.0.bagging" in err[0]
    assert not (tmp_path / "run").exists()


def test_with_val_in_train_moves_every_val_image():
    data = Dataset(["a", "b"], Split(["t1", "t2"], ["a", "b"]), Split(["v1"], ["b"]), None)
    got = with_val_in_train(data)
    assert got.train.paths == ["t1", "t2", "v1"] and got.train.labels == ["a", "b", "b"]
    assert len(got.val) == 0 and got.val_in_train == 1


def test_empty_val_fits_strategies_and_temperatures_on_oob():
    from ensemble.config import CombinerConfig

    rng = np.random.default_rng(0)
    n, k = 60, 3
    y = rng.integers(0, k, n)
    proba = rng.dirichlet(np.ones(k), size=(2, n))
    proba[0, np.arange(n), y] += 2.0  # member 0 knows the labels, member 1 guesses
    proba /= proba.sum(axis=2, keepdims=True)
    oob = [np.arange(0, 40), np.arange(20, 60)]
    data = FitData.from_oob_lists(
        np.zeros((2, 0, k)), np.zeros(0, dtype=int), oob, [proba[j, o] for j, o in enumerate(oob)], y
    )
    got = data.source("val")
    assert got[3] == "oob" and got[0].shape == (2, n, k)
    comb = fit_combiner(CombinerConfig(strategy="weighted", calibrate=True), ["m0", "m1"], ["x", "y", "z"], data)
    assert comb.get("weighted").source_ == "oob"
    w = comb.get("weighted").weights_
    assert w[0] > w[1]  # learned from the OOB images: the member that knows the labels weighs more
    assert comb.temperatures[0] < comb.temperatures[1]  # the guessing member is flattened more
    with pytest.raises(ValueError, match="no held-out images"):
        FitData.from_oob_lists(
            np.zeros((2, 0, k)),
            np.zeros(0, dtype=int),
            [np.arange(0), np.arange(0)],
            [np.zeros((0, k)), np.zeros((0, k))],
            y,
        ).source("val")
