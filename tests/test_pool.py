"""The candidate pool (issue #21, item 2): snapshots and views of each member as extra
probability sources for greedy selection, cached in the run, and run only when used."""

import json
import shutil

import numpy as np
import pytest
import synth
import yaml

from ensemble.cli import main
from ensemble.combining.pool import member_candidates, pool_candidates
from ensemble.combining.strategies import Combiner, FitData, fit_combiner
from ensemble.combining.votes import soft_vote
from ensemble.config import ConfigError, config_from_dict


def _pool_config(data, **extra) -> dict:
    cfg = synth.tiny_config(data, epochs=3, **extra)
    for m in cfg["members"]:
        m["train"].update(ema=0.9, lp_epochs=1)
    cfg["members"][0]["candidates"] = {"weights": ["last", "ema", "probe"], "views": ["squash"]}
    cfg["members"][1]["candidates"] = {"weights": ["last"]}
    cfg["combiner"] = {"strategy": "greedy"}
    return cfg


@pytest.fixture(scope="module")
def pool_run(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_pool_config(tiny_data)))
    assert main(["train", str(cfg_path), "--out", str(root / "run")]) == 0
    return cfg_path, root / "run"


# ---------------------------------------------------------------- config and names
def _raw(**member):
    m = {"name": "a", "model": "test_efficientnet", **member}
    return {"data": {"train": "x"}, "members": [m]}


@pytest.mark.parametrize(
    "member, key",
    [
        ({"candidates": {"weights": ["ema"]}}, "`members.0.candidates.weights` names `ema` but `members.0.train.ema`"),
        ({"candidates": {"weights": ["swa"]}}, "`members.0.train.swa_epochs` is 0"),
        ({"candidates": {"weights": ["probe"]}}, "`members.0.train.lp_epochs` is 0"),
        ({"candidates": {"weights": ["last", "last"]}}, "`members.0.candidates.weights` must not repeat"),
        ({"candidates": {"weights": ["newest"]}}, "`members.0.candidates.weights.0` must be one of best, last"),
        ({"candidates": {"views": ["fisheye"]}}, "`members.0.candidates.views` must name member views"),
        ({"candidates": {"snapshots": ["last"]}}, "unknown key `members.0.candidates.snapshots`"),
        ({"name": "a@b"}, "`members.0.name` must not contain `@`"),
    ],
)
def test_bad_candidate_settings_name_their_key(member, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("(", r"\(")):
        config_from_dict(_raw(**member), source="cfg.yaml")


def test_candidates_are_every_kept_snapshot_under_every_view_but_the_members_own():
    cfg = config_from_dict(
        _raw(
            view="squash",
            train={"ema": 0.9},
            candidates={"weights": ["last", "ema", "best"], "views": ["crop", "squash"]},
        )
    )
    names = [c.name for c in member_candidates(cfg.members[0])]
    assert names == ["a@best+crop", "a@last", "a@last+crop", "a@ema", "a@ema+crop"]
    assert pool_candidates(config_from_dict(_raw()).members) == []  # the default: no pool


# ---------------------------------------------------------------- the combiner over a pool
def _noisy(y, strength, rng):
    z = rng.normal(size=(len(y), 3))
    z[np.arange(len(y)), y] += strength
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_only_pool_strategies_see_the_candidates():
    from ensemble.config import CombinerConfig

    rng = np.random.default_rng(0)
    y_tr, y_val = rng.integers(0, 3, 300), rng.integers(0, 3, 120)
    strengths = [0.5, 0.4, 0.6, 3.0]  # three weak members and one strong candidate
    idx = [np.arange(300)] * 4
    data = FitData.from_oob_lists(
        np.stack([_noisy(y_val, s, rng) for s in strengths]),
        y_val,
        idx,
        [_noisy(y_tr, s, rng) for s in strengths],
        y_tr,
    )
    comb = fit_combiner(
        CombinerConfig(strategy="auto", calibrate=True),
        ["a", "b", "c"],
        ["x", "y", "z"],
        data,
        candidate_names=["a@last"],
    )
    g = comb.get("greedy")
    assert len(g.weights_) == 4 and g.weights_[3] == max(g.weights_)  # greedy found the strong candidate
    assert comb.names("greedy")[-1] == "a@last" and comb.names("soft") == ["a", "b", "c"]
    assert comb.uses("soft").tolist() == [True, True, True, False]
    # a non-pool strategy combines the members' rows only, whatever else it is given
    cal = comb.calibrate(data.val_proba)
    np.testing.assert_allclose(cal[3], data.val_proba[3])  # candidates are not calibrated
    np.testing.assert_allclose(comb.apply(cal, "soft", calibrated=True)[1], soft_vote(cal[:3]))
    np.testing.assert_allclose(comb.apply(cal, "greedy", calibrated=True)[1], soft_vote(cal, g.weights_))
    assert comb.choice["chosen"] == "greedy"  # a clear winner on held-out log loss
    with pytest.raises(Exception, match="combines 4 members and pool candidates"):
        comb.apply(cal[:3], "greedy")
    again = Combiner.from_state(*comb.state())
    assert again.candidate_names == ["a@last"] and again.get("greedy").pool
    summary = comb.summary()
    assert "a@last" in summary["greedy_weights"] and summary["candidates"] == ["a@last"]


def test_oob_calibration_uses_each_members_own_temperature():
    from ensemble.combining.votes import temperature_scale
    from ensemble.reporting.evaluation import _oob_inputs

    rng = np.random.default_rng(3)
    comb = Combiner("soft", ["x", "y", "z"], ["a", "b"], {}, temperatures=[0.5, 2.0])
    p = [_noisy(rng.integers(0, 3, 10), 1.0, rng) for _ in range(2)]
    calibrated, _, _ = _oob_inputs(comb, 20, [np.arange(10), np.arange(10, 20)], p)
    np.testing.assert_allclose(calibrated[1], temperature_scale(p[1], 2.0))


# ---------------------------------------------------------------- a trained run with a pool
def test_candidates_are_saved_cached_and_scored_beside_their_member(pool_run):
    from ensemble.runfolder import load_run

    _, run = pool_run
    cands = ["a@best+squash", "a@last", "a@last+squash", "a@ema", "a@ema+squash", "a@probe", "a@probe+squash", "b@last"]
    for name in cands:
        meta = json.loads((run / "members" / name / "member.json").read_text())
        assert meta["candidate"]["of"] == name[0] and meta["name"] == name
        assert set(meta["files"]) == {"model.safetensors", "samples.npy", "oob.npy", "oob_proba.npy"}
    assert json.loads((run / "members/a@ema+squash/member.json").read_text())["inputs"]["view"] == "squash"
    comb = json.loads((run / "combiner/combiner.json").read_text())
    assert comb["member_names"] == ["a", "b", "c"] and comb["candidate_names"] == cands
    assert len(comb["strategies"]["greedy"]["weights"]) == 11
    for split in ("val", "test"):
        assert np.load(run / "predictions" / f"{split}_proba.npy").shape[0] == 11
    ens = load_run(run)
    assert [fm.name for fm in ens.candidates_] == cands and len(ens.members_) == 3
    # the cache holds what the pool gives now (a view candidate sees its own view)
    from ensemble.estimator import decode_size
    from ensemble.images import decode_all

    paths = json.loads((run / "predictions/val_paths.json").read_text())
    imgs, _ = decode_all(paths, decode_size(ens))
    again = ens.member_proba(imgs, runtime="torch", pool=True)
    np.testing.assert_allclose(again, ens.val_proba_, atol=1e-5)
    assert not np.allclose(again[6], again[0])  # the EMA is another model than the best epoch
    # the report's table lists the members, the greedy note the pool candidates it weighs
    doc = json.loads((run / "report/metrics.json").read_text())
    assert set(doc["members"]) == {"a", "b", "c"}
    assert any(n.startswith("Greedy selection on oob") for n in doc["combiner"]["notes"])


def test_a_finished_member_is_reused_and_one_missing_a_candidate_is_trained_again(pool_run, tmp_path, caplog):
    import logging

    cfg_path, run = pool_run
    copy = synth.copy_run(run, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in (copy / "members").glob("*/model.safetensors")}
    shutil.rmtree(copy / "members" / "b@last")
    with caplog.at_level(logging.INFO):
        assert main(["train", str(cfg_path), "--out", str(copy)]) == 0
    text = caplog.text
    assert "member a already finished" in text and "member c already finished" in text
    assert "member b finished without all its pool candidates: training it again" in text
    after = {p: p.stat().st_mtime_ns for p in (copy / "members").glob("*/model.safetensors")}
    assert after[copy / "members/a/model.safetensors"] == before[copy / "members/a/model.safetensors"]
    assert (copy / "members/b@last/member.json").is_file()
    np.testing.assert_allclose(
        np.load(copy / "predictions/val_proba.npy"), np.load(run / "predictions/val_proba.npy"), atol=1e-6
    )  # the same weights again (seeded, CPU)


def _use_only(run, tmp_path, weights):
    """A copy of the run whose greedy vote has these pool weights (saved and recorded like a refit)."""
    from ensemble.runfolder import RunFolder, load_run

    copy = synth.copy_run(run, tmp_path / "run")
    ens = load_run(copy)
    ens.combiner_.get("greedy").weights_ = list(weights)
    folder = RunFolder(copy)
    folder.save_combiner(ens.combiner_)
    folder.record()
    return copy, load_run(copy)


def test_predict_runs_only_the_candidates_the_strategy_uses(pool_run, tiny_data, tmp_path, monkeypatch):
    from ensemble.estimator import BaggedEnsemble
    from ensemble.inference import InferenceOptions, predict_rows

    _, run = pool_run
    w = np.zeros(11)
    w[[0, 7]] = 0.5  # member a and candidate a@ema+squash
    copy, ens = _use_only(run, tmp_path, w)
    ran = []
    real = BaggedEnsemble._runtime
    monkeypatch.setattr(BaggedEnsemble, "_runtime", lambda self, j, *a: ran.append(j) or real(self, j, *a))
    paths = [str(p) for p in sorted((tiny_data / "test/circle").iterdir())[:4]]
    rows = predict_rows(ens, paths, "greedy", InferenceOptions(runtime="torch"))
    assert sorted(set(ran)) == [0, 7]
    from ensemble.estimator import decode_size
    from ensemble.images import decode_all

    imgs, _ = decode_all(paths, decode_size(ens))  # as predict decodes them
    full = ens.member_proba(imgs, runtime="torch", pool=True)
    want = soft_vote(full, w)
    got = np.array([[r["proba"][c] for c in ens.classes_] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert rows[0]["votes"]["b"] == "" and rows[0]["votes"]["a"]
    # soft voting in the same run ignores the pool
    rows = predict_rows(ens, paths, "soft", InferenceOptions(runtime="torch"))
    got = np.array([[r["proba"][c] for c in ens.classes_] for r in rows])
    np.testing.assert_allclose(got, soft_vote(full[:3]), atol=1e-6)


def test_export_holds_the_used_pool_candidates_in_one_graph(pool_run, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from ensemble.images import decode_all
    from members.transforms import eval_tensor, normalize

    _, run = pool_run
    w = np.zeros(11)
    w[[1, 4, 10]] = [0.2, 0.5, 0.3]  # member b, candidates a@last and b@last
    copy, ens = _use_only(run, tmp_path, w)
    out = tmp_path / "exp"
    assert main(["export", str(copy), "--format", "onnx", "--out", str(out), "--strategy", "greedy"]) == 0
    doc = json.loads((out / "ensemble.json").read_text())
    assert doc["pool_used"] == ["b", "a@last", "b@last"] and len(doc["weights"]) == 11
    paths = [str(p) for p in sorted((tiny_data_root(run) / "test/square").iterdir())[:3]]
    imgs, _ = decode_all(paths, 64)
    fm = ens.members_[0]
    x = normalize(eval_tensor(imgs, fm.inputs), fm.inputs).contiguous().numpy()
    sess = ort.InferenceSession(str(out / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x})[0]
    want = ens.predict_proba(imgs, "greedy", runtime="torch")
    np.testing.assert_allclose(got, want, atol=1e-4)


def tiny_data_root(run):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    from pathlib import Path

    return Path(cfg["data"]["train"]).parent


def test_fit_combiner_refits_greedy_over_the_cached_pool(pool_run, tmp_path):
    _, run = pool_run
    copy = synth.copy_run(run, tmp_path / "run")
    assert main(["fit-combiner", str(copy), "--set", "combiner.greedy.pool=false"]) == 0
    comb = json.loads((copy / "combiner/combiner.json").read_text())
    assert len(comb["strategies"]["greedy"]["weights"]) == 3 and comb["strategies"]["greedy"]["pool"] is False
    assert main(["fit-combiner", str(copy), "--set", "combiner.greedy.pool=true"]) == 0
    comb = json.loads((copy / "combiner/combiner.json").read_text())
    assert len(comb["strategies"]["greedy"]["weights"]) == 11


def test_the_contribution_table_gives_a_member_its_candidates_greedy_weight():
    from ensemble.reporting.markdown import contribution_rows

    doc = {
        "combiner": {"greedy_weights": {"a": 0.2, "b": 0.1, "a@ema": 0.3, "a@last+crop": 0.25, "b@probe": 0.15}},
        "contributions": {"val": [{"member": m, "macro_f1_gain": 0.0, "log_loss_gain": 0.0} for m in "ab"]},
    }
    rows = contribution_rows(doc)
    assert [r[2] for r in rows[1:]] == ["0.750", "0.250"]


def test_adding_candidates_to_a_finished_run_trains_only_that_member_again(pool_run, tmp_path, caplog):
    import logging

    cfg_path, run = pool_run
    copy = synth.copy_run(run, tmp_path / "run")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["members"][2]["candidates"] = {"weights": ["last"]}
    new_cfg = tmp_path / "more.yaml"
    new_cfg.write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.INFO):
        assert main(["train", str(new_cfg), "--out", str(copy)]) == 0  # no --restart needed
    assert "member a already finished" in caplog.text and "member b already finished" in caplog.text
    assert "member c finished without all its pool candidates" in caplog.text
    assert json.loads((copy / "combiner/combiner.json").read_text())["candidate_names"][-1] == "c@last"
    assert np.load(copy / "predictions/val_proba.npy").shape[0] == 12


def test_an_edited_candidate_record_is_refused(pool_run, tmp_path):
    from ensemble.files import RunError
    from ensemble.runfolder import load_run

    _, run = pool_run
    copy = synth.copy_run(run, tmp_path / "run")
    meta_path = copy / "members/a@ema+squash/member.json"
    meta = json.loads(meta_path.read_text())
    meta["inputs"]["view"] = "crop"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RunError, match="a@ema\\+squash/member.json"):
        load_run(copy)


def test_export_refuses_a_graph_whose_weighted_candidate_needs_another_view(pool_run, tmp_path, caplog):
    _, run = pool_run
    w = np.zeros(11)
    w[[0, 7]] = 0.5  # member a and candidate a@ema+squash (a is trained on crop)
    copy, _ = _use_only(run, tmp_path, w)
    assert main(["export", str(copy), "--format", "onnx", "--out", str(tmp_path / "exp"), "--strategy", "greedy"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "members or pool candidates seen under different views (a: crop, a@ema+squash: squash)" in errors[0]
    assert not (tmp_path / "exp" / "ensemble.onnx").exists()
