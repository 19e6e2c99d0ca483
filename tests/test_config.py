import textwrap

import pytest
import yaml

from ensemble.config import ConfigError, dump_config, load_config

GOOD = """
seed: 3
data:
  train: {root}/train
  val: {root}/val
members:
  - name: a
    model: test_efficientnet
    bagging: {{ratio: 0.5}}
  - name: b
    model: test_efficientnet
    train: {{epochs: 2, freeze: backbone}}
combiner: {{strategy: hard, weights: [1, 2]}}
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_valid_config_fills_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.format(root=tmp_path)))
    assert cfg.seed == 3
    assert cfg.members[0].bagging.ratio == 0.5 and cfg.members[0].bagging.replace is True
    assert cfg.members[1].train.freeze == "backbone" and cfg.members[1].train.epochs == 2
    assert cfg.members[0].train.epochs == 3  # default
    assert cfg.combiner.weights == [1.0, 2.0]
    assert cfg.data.train.folder == str(tmp_path / "train")


@pytest.mark.parametrize("edit, needle", [
    (("members.0.bagging.ratio", 1.5), "`members.0.bagging.ratio` must be in (0, 1]; got 1.5"),
    (("members.0.bagging.ratio", 0), "`members.0.bagging.ratio` must be in (0, 1]; got 0"),
    (("members.1.train.epochs", "three"), "`members.1.train.epochs` must be an integer; got 'three'"),
    (("combiner.strategy", "median"), "`combiner.strategy` must be one of auto, hard, soft, weighted, stacking, greedy; got 'median'"),
    (("members.0.model", "efficientnet_b99"), "`members.0.model` is not a timm model name"),
    (("members.0.train.lerning_rate", 0.1), "unknown key `members.0.train.lerning_rate`"),
    (("members.0.train.freeze", "half"), "`members.0.train.freeze` must be `none`, `backbone`"),
    (("data.val_fraction", 1.0), "`data.val_fraction` must be in (0, 1)"),
    (("combiner.weights", [1.0]), "`combiner.weights` must have one weight per member (2); got 1"),
    (("combiner.weights", [-1.0, 2.0]), "`combiner.weights` must be non-negative"),
])
def test_errors_name_key_and_file(tmp_path, edit, needle):
    raw = yaml.safe_load(GOOD.format(root=tmp_path))
    node = raw
    *parents, last = edit[0].split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = edit[1]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_misspelled_key_suggests_the_right_one(tmp_path):
    raw = yaml.safe_load(GOOD.format(root=tmp_path))
    raw["members"][0]["bagging"]["ration"] = 0.3
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"did you mean `members.0.bagging.ratio`"):
        load_config(path)


def test_missing_required_keys(tmp_path):
    path = write(tmp_path, "data: {train: x}\nmembers:\n  - name: a\n")
    with pytest.raises(ConfigError, match=r"missing required key `members.0.model`"):
        load_config(path)
    path = write(tmp_path, "members: []\n")
    with pytest.raises(ConfigError, match=r"missing required key `data`"):
        load_config(path)


def test_duplicate_keys_and_python_tags_are_refused(tmp_path):
    dup = write(tmp_path, "seed: 1\nseed: 2\n", "dup.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(dup)
    marker = tmp_path / "pwned"
    evil = write(tmp_path, f"seed: !!python/object/apply:os.system ['touch {marker}']\n", "evil.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)
    assert not marker.exists()


def test_set_overrides_any_key(tmp_path):
    path = write(tmp_path, GOOD.format(root=tmp_path))
    cfg = load_config(path, ["members.0.train.epochs=1", "combiner.strategy=soft",
                             "members.1.bagging.replace=false", "data.test=/x/test"])
    assert cfg.members[0].train.epochs == 1
    assert cfg.combiner.strategy == "soft"
    assert cfg.members[1].bagging.replace is False
    assert cfg.data.test.folder == "/x/test"
    with pytest.raises(ConfigError, match="`members.0.bagging.ratio` must be in"):
        load_config(path, ["members.0.bagging.ratio=2"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(path, ["members.5.name=x"])


def test_csv_split_forms(tmp_path):
    raw = yaml.safe_load(GOOD.format(root=tmp_path))
    raw["data"]["train"] = "manifest.csv"
    raw["data"]["val"] = {"csv": "v.csv", "path_column": "file", "label_column": "y"}
    cfg = load_config(write(tmp_path, yaml.safe_dump(raw)), base_dir=tmp_path)
    assert cfg.data.train.csv == str(tmp_path / "manifest.csv")
    assert cfg.data.val.csv == str(tmp_path / "v.csv") and cfg.data.val.path_column == "file"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.format(root=tmp_path)))
    again = write(tmp_path, dump_config(cfg), "resolved.yaml")
    assert load_config(again) == cfg


@pytest.mark.parametrize("key", ["data.exclude", "data.relabel", "tracking.tensorboard", "tracking.mlflow.uri"])
def test_a_nul_character_in_a_path_key_is_a_config_error_naming_the_key(key):
    from ensemble.config import ConfigError, apply_overrides, config_from_dict

    raw = apply_overrides({"data": {"train": "x"}, "members": [{"name": "a", "model": "test_efficientnet"}]},
                          [(key, "runs/a\x00b")])
    with pytest.raises(ConfigError, match=f"`{key}` must not contain a NUL character"):
        config_from_dict(raw)


@pytest.mark.parametrize("uri, want", [
    ("file:./mlruns", "file://{cwd}/mlruns"),
    ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
    ("mlruns", "{cwd}/mlruns"),
    ("file:///srv/mlruns", "file:///srv/mlruns"),
    ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("databricks", "databricks"),
])
def test_tracking_paths_resolve_against_the_working_folder_like_data_paths(tmp_path, monkeypatch, uri, want):
    """The config saved with a run names the same TensorBoard folder and MLflow store
    whichever folder a later command reads it from."""
    from ensemble.config import config_from_dict

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    raw = yaml.safe_load(GOOD.format(root=tmp_path))
    raw["tracking"] = {"tensorboard": "tb", "mlflow": {"uri": uri}}
    cfg = load_config(write(tmp_path, yaml.safe_dump(raw)))
    assert cfg.tracking.tensorboard == str(work / "tb")
    assert cfg.tracking.mlflow.uri == want.format(cwd=work)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the saved config read again from another folder: unchanged
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again.tracking.tensorboard == str(work / "tb") and again.tracking.mlflow.uri == cfg.tracking.mlflow.uri


def test_numbers_written_with_an_exponent_are_numbers_in_files_and_in_set(tiny_data, tmp_path, caplog):
    """`1e-3`, `1E5`, `.5`, `-.5` are numbers (YAML 1.2) in a config file and in --set, and
    a string that looks like one (a member named `1e5`) is saved quoted: the run resumes."""
    import synth

    from ensemble.cli import main

    raw = synth.tiny_config(tiny_data, epochs=1)
    member = raw["members"][0]
    member["name"] = "1e5"
    member["train"].pop("warmup_epochs")
    raw = {**raw, "members": [member], "combiner": None}
    text = yaml.safe_dump(raw).replace("lr: 0.003", "lr: 3e-3\n    weight_decay: 5E-2").replace("1e5", "'1e5'")
    cfg = write(tmp_path, text.replace("combiner: null", "combiner:\n  strategy: soft\n  auto: {se: .5}"))
    run = tmp_path / "run"
    argv = ["train", str(cfg), "--out", str(run), "--set", "members.0.train.warmup_epochs=-.5e-0",
            "--set", "members.0.train.lr=1e-3", "-q"]
    assert main(argv) == 2 and "`members.0.train.warmup_epochs` must be in [0, 10000]; got -0.5" in caplog.text
    argv[5] = "members.0.train.warmup_epochs=1E-1"
    assert main(argv) == 0
    saved = load_config(run / "config.yaml")
    assert saved.members[0].name == "1e5" and saved.combiner.auto.se == 0.5
    assert (saved.members[0].train.lr, saved.members[0].train.weight_decay,
            saved.members[0].train.warmup_epochs) == (1e-3, 5e-2, 1e-1)
    caplog.clear()
    assert main(argv[:-1]) == 0 and "resuming the run" in caplog.text  # the saved config reads back the same
