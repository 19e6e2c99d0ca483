import textwrap

import pytest
import synth
import yaml

from ensemble.cli import main
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


@pytest.mark.parametrize(
    "edit, needle",
    [
        (("members.0.bagging.ratio", 1.5), "`members.0.bagging.ratio` must be in (0, 1]; got 1.5"),
        (("members.0.bagging.ratio", 0), "`members.0.bagging.ratio` must be in (0, 1]; got 0"),
        (("members.1.train.epochs", "three"), "`members.1.train.epochs` must be an integer; got 'three'"),
        (
            ("combiner.strategy", "median"),
            "`combiner.strategy` must be one of auto, hard, soft, weighted, stacking, greedy; got 'median'",
        ),
        (("members.0.model", "efficientnet_b99"), "`members.0.model` is not a timm model name"),
        (("members.0.train.lerning_rate", 0.1), "unknown key `members.0.train.lerning_rate`"),
        (("members.0.train.freeze", "half"), "`members.0.train.freeze` must be `none`, `backbone`"),
        (("data.val_fraction", 1.0), "`data.val_fraction` must be in (0, 1)"),
        (("combiner.weights", [1.0]), "`combiner.weights` must have one weight per member (2); got 1"),
        (("combiner.weights", [-1.0, 2.0]), "`combiner.weights` must be non-negative"),
    ],
)
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
    cfg = load_config(
        path,
        ["members.0.train.epochs=1", "combiner.strategy=soft", "members.1.bagging.replace=false", "data.test=/x/test"],
    )
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

    raw = apply_overrides(
        {"data": {"train": "x"}, "members": [{"name": "a", "model": "test_efficientnet"}]}, [(key, "runs/a\x00b")]
    )
    with pytest.raises(ConfigError, match=f"`{key}` must not contain a NUL character"):
        config_from_dict(raw)


@pytest.mark.parametrize(
    "uri, want",
    [
        ("file:./mlruns", "file://{cwd}/mlruns"),
        ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
        ("mlruns", "{cwd}/mlruns"),
        ("file:///srv/mlruns", "file:///srv/mlruns"),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("databricks", "databricks"),
    ],
)
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
    argv = [
        "train",
        str(cfg),
        "--out",
        str(run),
        "--set",
        "members.0.train.warmup_epochs=-.5e-0",
        "--set",
        "members.0.train.lr=1e-3",
        "-q",
    ]
    assert main(argv) == 2 and "`members.0.train.warmup_epochs` must be in [0, 10000]; got -0.5" in caplog.text
    argv[5] = "members.0.train.warmup_epochs=1E-1"
    assert main(argv) == 0
    saved = load_config(run / "config.yaml")
    assert saved.members[0].name == "1e5" and saved.combiner.auto.se == 0.5
    assert (saved.members[0].train.lr, saved.members[0].train.weight_decay, saved.members[0].train.warmup_epochs) == (
        1e-3,
        5e-2,
        1e-1,
    )
    caplog.clear()
    assert main(argv[:-1]) == 0 and "resuming the run" in caplog.text  # the saved config reads back the same


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
BAD_CONFIGS = [  # (override or edit, culprit in the message)
    (["members.0.bagging.ratio=.nan"], "`members.0.bagging.ratio` must be a finite number; got nan"),
    (["combiner.weights=[.nan, 1, 1]"], "`combiner.weights.0` must be a finite number"),
    (["seed=-1"], "`seed` must be in [0, 4294967295]; got -1"),
    (["members.0.train.epochs=1000000000"], "`members.0.train.epochs` must be in [1, 10000]"),
    (["members.1.train.freeze=99"], "`members.1.train.freeze`: freeze=99 but the model has only"),
    (["device=cuda:abc"], "`device` must be auto, cpu, cuda or cuda:N; got 'cuda:abc'"),
    (["members.2.weights=/nowhere/w.safetensors"], "`members.2.weights`: member c: weights file not found"),
    (["members.0.name=a" + "x" * 300], "`members.0.name` must be usable as a folder name"),
    (['members.0.name="a\\0b"'], "`members.0.name` must be usable as a folder name"),
    (["data.val=null", "data.val_fraction=0.01"], "`data.val_fraction` 0.01"),
]


@pytest.mark.parametrize("overrides, culprit", BAD_CONFIGS)
def test_bad_config_values_are_one_line_before_any_work(tiny_data, tmp_path, overrides, culprit, fails):
    cfg = synth.config_file(tmp_path, tiny_data)
    args = ["train", str(cfg), "--out", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    fails(main(args), culprit)
    assert not (tmp_path / "run/members").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_any_work(tiny_data, tmp_path, fails):
    cfg = synth.config_file(tmp_path, tiny_data)
    code = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cuda"])
    fails(code, "`device`", "no CUDA device")
    assert not (tmp_path / "run").exists()


def test_yaml_merge_keys_work_and_alias_bombs_are_refused(tiny_data, tmp_path, capsys, caplog):
    from ensemble.config import ConfigError, load_config

    cfg = synth.tiny_config(tiny_data)
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != "members"})
    text += "members:\n  - &m {name: a, model: test_efficientnet, image_size: 32}\n  - {<<: *m, name: b}\n"
    (tmp_path / "merge.yaml").write_text(text)
    assert [m.name for m in load_config(tmp_path / "merge.yaml").members] == ["a", "b"]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        bomb += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        load_config(tmp_path / "bomb.yaml")


def _leaf_keys():
    """Every key path of the schema, lists of sections at index 0 (members.0.train.lr, ...)."""
    import dataclasses
    import typing

    from ensemble.config import Config, SplitSource

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
            if dataclasses.is_dataclass(inner) and inner is not SplitSource:
                yield from walk(inner, f"{prefix}{f.name}." + ("0." if inner is not tp else ""))
            else:
                yield prefix + f.name

    return sorted(walk(Config, ""))


def test_schema_fuzz_any_value_validates_or_names_its_key(tmp_path):
    import math

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from ensemble.config import ConfigError, apply_overrides, config_from_dict
    from ensemble.schema import to_dict

    base = synth.tiny_config(tmp_path)
    keys = _leaf_keys()
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
    )
    special = st.sampled_from(
        [
            float("nan"),
            float("inf"),
            -float("inf"),
            -1,
            0,
            2**63,
            10**9,
            "",
            "\0",
            [float("nan"), 1.0],
            [[0.0, float("nan")]],
        ]
    )
    values = st.one_of(
        special,
        st.recursive(
            scalars,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
            max_leaves=8,
        ),
    )

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(key=st.sampled_from(keys), value=values)
    def check(key, value):
        raw = apply_overrides(base, [(key, value)])
        try:
            cfg = config_from_dict(raw, source="fuzz.yaml")
        except ConfigError as exc:
            text = str(exc)
            assert text.startswith("fuzz.yaml: ") and "\n" not in text and len(text) < 600
            top = key.split(".")[0]
            assert top in text or "members" in text or "tune" in text, (key, text)
            return
        # what validates holds only finite numbers (NaN passes every range check, so it must not get here)
        stack = [to_dict(cfg)]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, float):
                assert math.isfinite(item), (key, value)

    check()


def test_an_unknown_key_with_a_line_break_is_still_one_line(tmp_path):
    """Found by the fuzz above (hypothesis, 2026-11-30): the key was echoed as it was."""
    from ensemble.config import ConfigError, config_from_dict

    raw = synth.tiny_config(tmp_path)
    raw["data"]["train"] = {"\n": 1}
    with pytest.raises(ConfigError) as exc:
        config_from_dict(raw, source="fuzz.yaml")
    assert "\n" not in str(exc.value) and "unknown key `data.train.'\\n'`" in str(exc.value)


@pytest.mark.parametrize(
    "costs,needle",
    [
        ([[0, 0], [0, 0]], "is all zeros"),
        ([[5, 1], [1, 0]], "row 0: the correct answer"),
        ([[0, 1], [1, 2]], "row 1: the correct answer"),
    ],
)
def test_cost_matrices_where_a_mistake_is_cheaper_are_refused(tmp_path, costs, needle):
    from ensemble.config import ConfigError, config_from_dict

    raw = synth.tiny_config(tmp_path)
    raw["decision"] = {"costs": costs}
    with pytest.raises(ConfigError, match=rf"`decision.costs` {needle}"):
        config_from_dict(raw)
    raw["decision"] = {"costs": [[0, 0, 10], [0, 0, 10], [5, 5, 0]]}  # a free confusion of two benign classes
    assert config_from_dict(raw).decision.costs[0] == [0, 0, 10]


def test_per_member_tune_ratios_are_accepted_through_yaml(tiny_data, tmp_path):
    from ensemble.config import load_config

    text = (
        yaml.safe_dump(synth.tiny_config(tiny_data)) + "tune:\n  ratios:\n    - [0.5, 0.8]\n    - [0.6]\n    - [1.0]\n"
    )
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert load_config(path).tune.ratios == [[0.5, 0.8], [0.6], [1.0]]
    path.write_text(text.replace("[0.6]", "[0.6, x]"))
    from ensemble.config import ConfigError

    with pytest.raises(ConfigError, match=r"`tune.ratios.1.1` must be a number"):
        load_config(path)


def test_set_typos_are_blamed_on_set_not_the_file(tiny_data, tmp_path, fails):
    path = synth.config_file(tmp_path, tiny_data)
    fails(
        main(["train", str(path), "--out", str(tmp_path / "r"), "--set", "combiner.stratgy=soft"]),
        "--set combiner.stratgy=soft: unknown key `combiner.stratgy`",
    )


def test_config_rough_edges_have_one_line_each(tmp_path):
    from ensemble.config import ConfigError, config_from_dict

    def refused(raw, needle):
        with pytest.raises(ConfigError, match=needle):
            config_from_dict(raw)

    raw = synth.tiny_config(tmp_path)
    raw["data"]["train"] = {"csv": "x.csv", "path_column": "f", "label_column": "f"}
    refused(raw, r"path_column` and `data.train.label_column` must name different columns")
    raw = synth.tiny_config(tmp_path)
    raw["members"][0]["train"]["min_image_size"] = 64
    refused(raw, r"`members.0.train.min_image_size` \(64\) must not exceed `members.0.image_size` \(32\)")
    raw = synth.tiny_config(tmp_path, tune={"method": "halving", "min_epochs": 5})
    refused(raw, r"`tune.min_epochs` \(5\) must not exceed `members.0.train.epochs` \(2\)")


def test_a_cost_matrix_with_a_cheaper_mistake_is_refused_by_train(tiny_data, tmp_path, fails):
    path = synth.config_file(tmp_path, tiny_data, epochs=1, decision={"costs": [[0, 1, 1], [1, 0, 1], [0, 1, 2]]})
    fails(
        main(["train", str(path), "--out", str(tmp_path / "run")]),
        "`decision.costs` row 2: the correct answer (column 2, cost 2) must not cost more than a mistake",
    )
    assert not (tmp_path / "run").exists()
