"""The Python face: scikit-learn conventions, one schema with the YAML, fitting apart from storage."""

import json
import shutil

import numpy as np
import pytest
import synth
from PIL import Image
from sklearn.base import clone

from ensemble.cli import main
from ensemble.config import ConfigError, config_from_dict, load_config
from ensemble.data import load_folder
from ensemble.estimator import BaggedEnsemble
from ensemble.training import estimator_from_config


def _params(cfg):
    return dict(
        members=cfg.members,
        combiner=cfg.combiner,
        seed=cfg.seed,
        device=cfg.device,
        parallel=cfg.parallel,
        precision=cfg.precision,
        runtime=cfg.runtime,
        plugins=cfg.plugins,
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("members.0.bagging.ratio", 1.5, "`members.0.bagging.ratio` must be in (0, 1]; got 1.5"),
        ("members.1.train.epochs", 0, "`members.1.train.epochs` must be in [1, 10000]; got 0"),
        ("members.0.model", "effnet_b99", "`members.0.model` is not a timm model name"),
        ("members.2.name", "soft", "`members.2.name` must differ from the strategy names"),
        ("combiner.strategy", "median", "`combiner.strategy` must be one of auto, hard, soft, weighted, stacking"),
    ],
)
def test_constructor_arguments_are_checked_in_fit_like_the_yaml(tmp_path, key, value, message):
    raw = synth.tiny_config(tmp_path)
    member_dicts = [dict(m) for m in raw["members"]]
    combiner = dict(raw["combiner"])
    parts = key.split(".")
    if parts[0] == "members":
        node = member_dicts[int(parts[1])]
        for p in parts[2:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    else:
        combiner[parts[1]] = value
    ens = BaggedEnsemble(members=member_dicts, combiner=combiner, device="cpu")
    assert ens.members is member_dicts  # stored as given, nothing checked yet
    with pytest.raises(ConfigError) as from_python:
        ens.fit([np.zeros((8, 8, 3), np.uint8)], ["x"], X_val=[np.zeros((8, 8, 3), np.uint8)], y_val=["x"])
    yaml_raw = dict(raw, members=member_dicts, combiner=combiner)
    with pytest.raises(ConfigError) as from_yaml:
        config_from_dict(yaml_raw, source="x.yaml")
    assert message in str(from_python.value)
    assert str(from_python.value) == str(from_yaml.value).replace("x.yaml: ", "BaggedEnsemble: ")


def test_get_set_params_and_clone(tmp_path):
    cfg = config_from_dict(synth.tiny_config(tmp_path))
    ens = BaggedEnsemble(**_params(cfg))
    assert ens.get_params(deep=False) == _params(cfg)
    assert ens.set_params(seed=7) is ens and ens.seed == 7
    twin = clone(ens)
    assert twin is not ens and twin.get_params() == ens.get_params()
    assert twin.members is not ens.members  # deep-copied, as sklearn does
    with pytest.raises(ValueError, match="Invalid parameter"):
        ens.set_params(ratio=0.5)
    with pytest.raises(RuntimeError, match="not fitted"):
        twin.predict_proba([np.zeros((8, 8, 3), np.uint8)])


def test_a_checked_config_is_not_checked_again_until_a_parameter_changes(tmp_path, monkeypatch):
    import ensemble.config as config

    checks, real = [], config.config_from_dict
    monkeypatch.setattr(config, "config_from_dict", lambda raw, *a, **k: checks.append(1) or real(raw, *a, **k))
    cfg = real(synth.tiny_config(tmp_path))
    ens = BaggedEnsemble.from_config(cfg)
    assert ens.validated_config() is cfg and estimator_from_config(cfg).validated_config() is cfg and not checks
    ens.set_params(seed=7)  # changed: checked again, once
    assert ens.validated_config().seed == 7 and ens.validated_config().seed == 7 and len(checks) == 1
    ens.members[0].bagging.ratio = 1.5  # edited in place: checked again, and refused
    with pytest.raises(ConfigError, match="`members.0.bagging.ratio` must be in"):
        ens.validated_config()
    raw = BaggedEnsemble(members=[dict(m) for m in synth.tiny_config(tmp_path)["members"]])
    assert raw.validated_config() is raw.validated_config() and len(checks) == 3  # a dict: checked once in fit


def test_fit_in_memory_equals_the_trained_run(trained, tiny_data):
    """The estimator alone (no run folder) fits the ensemble `effens train` saved, to the bit."""
    from ensemble.data import cache_size
    from ensemble.images import decode_all
    from ensemble.runfolder import load_run

    cfg_path, run = trained
    cfg = load_config(cfg_path)
    train, val = load_folder(tiny_data / "train"), load_folder(tiny_data / "val")
    size = cache_size(cfg)
    X, _ = decode_all(train.paths, size)
    X_val, _ = decode_all(val.paths, size)
    ens = estimator_from_config(cfg).fit(X, train.labels, X_val=X_val, y_val=val.labels)
    saved = load_run(run)
    assert ens.classes_ == saved.classes_
    np.testing.assert_array_equal(ens.val_proba_, saved.val_proba_)
    for a, b in zip(ens.oob_proba_, saved.oob_proba_):
        np.testing.assert_array_equal(a, b)
    assert isinstance(ens.oob_score_, float)
    assert ens.oob_score_ == saved.oob_score_ == ens.oob_report_["strategies"][cfg.combiner.strategy]["macro_f1"]
    metrics = json.loads((run / "report/metrics.json").read_text())
    assert ens.oob_score_ == metrics["ensemble"]["oob"]["macro_f1"]
    np.testing.assert_array_equal(
        ens.predict_proba(X_val[:5], strategy="stacking"), saved.predict_proba(X_val[:5], strategy="stacking")
    )


def test_fit_from_paths_and_string_labels(tiny_data):
    cfg = config_from_dict(synth.tiny_config(tiny_data, epochs=1))
    train, val = load_folder(tiny_data / "train"), load_folder(tiny_data / "val")
    ens = BaggedEnsemble(**_params(cfg)).fit(train.paths, train.labels, X_val=val.paths, y_val=val.labels)
    assert ens.classes_ == sorted(set(train.labels))
    assert ens.predict(val.paths[:3]).shape == (3,)
    with pytest.raises(ConfigError, match="`y_val` holds labels not in classes: zebra"):
        BaggedEnsemble(**_params(cfg)).fit(train.paths, train.labels, X_val=val.paths[:1], y_val=["zebra"])


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
def test_pixels_replaced_in_place_retrain_the_members(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cfg = synth.config_file(tmp_path, data, epochs=1, n_members=1)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 0
    victim = next((data / "train/circle").iterdir())
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(victim)  # same name, other pixels
    caplog.clear()
    caplog.set_level("INFO")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert "already finished" not in caplog.text


def test_adapt_bn_on_one_image_warns(trained, tiny_data, tmp_path, caplog):
    _, run = trained
    img = str(sorted((tiny_data / "test/circle").iterdir())[0])
    assert main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--adapt-bn"]) == 0
    assert "--adapt-bn needs at least 2 images" in caplog.text
    two = sorted(str(p) for p in (tiny_data / "test/circle").iterdir())[:3]
    assert main(["predict", str(run), *two, "--out", str(tmp_path / "p.csv"), "--adapt-bn"]) == 0
    assert "re-estimates BatchNorm statistics on the 3 image(s) given" in caplog.text
