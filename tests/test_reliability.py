"""Never lose a user's files, never answer from stale or edited state, one clear line per bad input."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import synth
import yaml
from PIL import Image

from ensemble.cli import main


def _cfg(tmp_path, data, **extra):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(synth.tiny_config(data, **extra)))
    return path


def _copy(run, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    (dst / ".effens.lock").unlink(missing_ok=True)
    return dst


def _quiet_failure(code, capsys, caplog, *needles):
    out = capsys.readouterr()
    text = caplog.text + out.err + out.out
    assert code == 2, text[-2000:]
    assert "Traceback" not in text
    for n in needles:
        assert n in text, (n, text[-2000:])
    return text


# ---------------------------------------------------------------- 1. never delete or overwrite what effens did not write
def test_train_into_the_folder_of_ones_own_config_is_refused_and_the_config_kept(tiny_data, tmp_path, capsys,
                                                                                  caplog):
    exp = tmp_path / "exp1"
    exp.mkdir()
    text = "# my notes\n" + yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1))
    (exp / "config.yaml").write_text(text)
    code = main(["train", str(exp / "config.yaml"), "--out", str(exp)])
    _quiet_failure(code, capsys, caplog, "config.yaml: not written by effens train")
    assert (exp / "config.yaml").read_text() == text


def test_restart_removes_only_effens_files_and_refuses_when_others_are_there(trained, tmp_path, capsys, caplog):
    cfg, run = trained
    run = _copy(run, tmp_path)
    (run / "report/q3.md").write_text("quarterly notes")
    (run / "members/alice.txt").write_text("alice's")
    code = main(["train", str(cfg), "--out", str(run), "--restart", "--set", "members.0.train.lr=0.002"])
    _quiet_failure(code, capsys, caplog, "not written by effens")
    assert (run / "report/q3.md").is_file() and (run / "members/alice.txt").is_file()
    assert (run / "members/a/model.safetensors").is_file()  # nothing removed
    (run / "report/q3.md").unlink()
    (run / "members/alice.txt").unlink()
    assert main(["train", str(cfg), "--out", str(run), "--restart", "--set", "members.0.train.epochs=1",
                 "-q"]) == 0


def test_restart_with_a_bad_key_fails_before_discarding_anything(trained, tmp_path, capsys, caplog):
    cfg, run = trained
    run = _copy(run, tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    code = main(["train", str(cfg), "--out", str(run), "--restart", "--set", "data.train=data/trian"])
    _quiet_failure(code, capsys, caplog, "trian")
    assert "discarding" not in caplog.text
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == before


def test_evaluate_never_overwrites_a_training_report(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    run = _copy(run, tmp_path)
    metrics = (run / "report/metrics.json").read_text()
    code = main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(run / "report")])
    _quiet_failure(code, capsys, caplog, "is inside the effens run folder")
    assert (run / "report/metrics.json").read_text() == metrics
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    _quiet_failure(main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(mine)]), capsys, caplog,
                   "notes.md: not written by effens evaluate")


@pytest.mark.parametrize("command", ["train", "tune", "evaluate", "explain", "export", "audit"])
def test_every_command_refuses_a_foreign_output_folder_by_one_rule(command, trained, tiny_data, tmp_path, capsys,
                                                                 caplog):
    cfg, run = trained
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "notes.md").write_text("mine")
    img = str(next((tiny_data / "test").rglob("*.png")))
    argv = {"train": ["train", str(cfg)], "tune": ["tune", str(cfg), "--yes"],
            "evaluate": ["evaluate", str(run), str(tiny_data / "test")], "explain": ["explain", str(run), img],
            "export": ["export", str(run), "--format", "onnx"], "audit": ["audit", str(run)]}[command]
    _quiet_failure(main([*argv, "--out", str(out)]), capsys, caplog,
                   f"notes.md: not written by effens {command}; choose a new or empty --out")
    assert (out / "sub" / "notes.md").read_text() == "mine" and sorted(out.rglob("*")) == [out / "sub",
                                                                                          out / "sub" / "notes.md"]


# ---------------------------------------------------------------- 2. never answer from stale or edited state
def test_pixels_replaced_in_place_retrain_the_members(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cfg = _cfg(tmp_path, data, epochs=1)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 0
    victim = next((data / "train/circle").iterdir())
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(victim)  # same name, other pixels
    caplog.clear()
    caplog.set_level("INFO")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert "already finished" not in caplog.text


def test_evaluate_after_the_images_changed_recomputes(trained, tiny_data, tmp_path, caplog):
    _, run = trained
    data = tmp_path / "test"
    shutil.copytree(tiny_data / "test", data)
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), str(data), "--out", str(out), "-q"]) == 0
    for p in (data / "circle").iterdir():
        synth.make_image("stripes", np.random.default_rng(0)).save(p)  # circles become stripes
    caplog.clear()
    caplog.set_level("INFO")
    assert main(["evaluate", str(run), str(data), "--out", str(out)]) == 0
    assert "reusing cached member probabilities" not in caplog.text


@pytest.mark.parametrize("edit, culprit", [
    ("classes", "classes.json"),
    ("inputs", "members/a/member.json"),
    ("reorder", "config.yaml"),
    ("remove", "config.yaml"),
])
def test_edited_run_files_are_refused_naming_them(trained, tmp_path, capsys, caplog, edit, culprit):
    _, run = trained
    run = _copy(run, tmp_path)
    if edit == "classes":
        (run / "classes.json").write_text(json.dumps(json.loads((run / "classes.json").read_text())[::-1]))
    elif edit == "inputs":
        meta = json.loads((run / "members/a/member.json").read_text())
        meta["inputs"]["mean"] = [0.0, 0.0, 0.0]
        (run / "members/a/member.json").write_text(json.dumps(meta))
    else:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["members"] = cfg["members"][::-1] if edit == "reorder" else cfg["members"][:2]
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["predict", str(run), str(tmp_path), "--out", str(tmp_path / "p.csv")])
    _quiet_failure(code, capsys, caplog, culprit, "do not match")


def test_a_second_train_into_the_same_folder_refuses_and_a_dead_lock_is_taken_over(trained, tmp_path, capsys,
                                                                                    caplog):
    cfg, run = trained
    run = _copy(run, tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".effens.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        code = main(["train", str(cfg), "--out", str(run)])
        _quiet_failure(code, capsys, caplog, "in use by another effens", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 0  # its process is gone: taken over
    assert not (run / ".effens.lock").exists()


# ---------------------------------------------------------------- 3-6, 8, 9. a table of bad inputs through the CLI
def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


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
def test_bad_config_values_are_one_line_before_any_work(tiny_data, tmp_path, capsys, caplog, overrides, culprit):
    cfg = _cfg(tmp_path, tiny_data)
    args = ["train", str(cfg), "--out", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    _quiet_failure(main(args), capsys, caplog, culprit)
    assert not (tmp_path / "run/members").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_any_work(tiny_data, tmp_path, capsys, caplog):
    cfg = _cfg(tmp_path, tiny_data)
    code = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cuda"])
    _quiet_failure(code, capsys, caplog, "`device`", "no CUDA device")
    assert not (tmp_path / "run").exists()


def test_tiny_and_lopsided_data(tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    tiny = tmp_path / "tiny"
    for cls in synth.CLASSES:
        (tiny / cls).mkdir(parents=True)
        for i in range(2):
            synth.make_image(cls, rng).save(tiny / cls / f"{i}.png")
    cfg = synth.tiny_config(tmp_path, epochs=1)
    cfg["data"] = {"train": str(tiny)}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _quiet_failure(main(["train", str(path), "--out", str(tmp_path / "r1")]), capsys, caplog,
                   "cannot hold out a stratified validation set")
    # val with a single class and no OOB images (ratio 1 without replacement): stacking still fits
    one = tmp_path / "one/circle"
    one.mkdir(parents=True)
    shutil.copy(tiny / "circle/0.png", one / "0.png")
    cfg["data"] = {"train": str(tiny), "val": str(tmp_path / "one")}
    for m in cfg["members"]:
        m["bagging"] = {"ratio": 1.0, "replace": False}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "r2"), "-q",
                 "--set", "combiner.strategy=stacking"]) == 0
    # skipping unreadable images must not silently drop a whole class
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    for p in (broken / "square").iterdir():
        p.write_bytes(b"not a png")
    cfg["data"] = {"train": str(broken), "val": str(tiny), "on_bad_image": "skip"}
    path.write_text(yaml.safe_dump(cfg))
    _quiet_failure(main(["train", str(path), "--out", str(tmp_path / "r3")]), capsys, caplog,
                   "every image of class square was unreadable")


def test_input_files(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    long = tmp_path / "long.png"
    Image.fromarray(np.zeros((1, 100000, 3), np.uint8)).save(long)
    assert long.stat().st_size < 1000
    good = str(sorted((tiny_data / "test/circle").iterdir())[0])
    assert main(["predict", str(run), str(long), good, "--out", str(tmp_path / "p.csv")]) == 0
    row = (tmp_path / "p.csv").read_text().splitlines()[1]
    assert "more elongated than 20:1" in row
    latin = _write(tmp_path / "latin.csv", "path\ncaf\xe9.png\n".encode("latin-1"))
    _quiet_failure(main(["predict", str(run), str(latin), "--out", str(tmp_path / "q.csv")]), capsys, caplog,
                   "latin.csv: line 2: not UTF-8")
    nul = _write(tmp_path / "nul.csv", b"path\na.png\nb\x00.png\n")
    _quiet_failure(main(["predict", str(run), str(nul), "--out", str(tmp_path / "q.csv")]), capsys, caplog,
                   "nul.csv: line 3: a NUL byte")
    nopath = _write(tmp_path / "nopath.csv", b"path,note\n,x\n")
    _quiet_failure(main(["predict", str(run), str(nopath), "--out", str(tmp_path / "q.csv")]), capsys, caplog,
                   "nopath.csv: line 2: no path")


def test_yaml_merge_keys_work_and_alias_bombs_are_refused(tiny_data, tmp_path, capsys, caplog):
    from ensemble.config import ConfigError, load_config

    cfg = synth.tiny_config(tiny_data)
    text = yaml.safe_dump({k: v for k, v in cfg.items() if k != "members"})
    text += ("members:\n  - &m {name: a, model: test_efficientnet, image_size: 32}\n"
             "  - {<<: *m, name: b}\n")
    (tmp_path / "merge.yaml").write_text(text)
    assert [m.name for m in load_config(tmp_path / "merge.yaml").members] == ["a", "b"]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        bomb += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        load_config(tmp_path / "bomb.yaml")


def test_output_columns_cannot_collide(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("error", "ok", "path"):
            (data / split / cls).mkdir(parents=True)
            for i in range(n):
                synth.make_image("circle" if cls == "ok" else "square" if cls == "path" else "stripes",
                                 rng).save(data / split / cls / f"{i}.png")
    cfg = synth.tiny_config(data, epochs=1)
    cfg["data"] = {"train": str(data / "train"), "val": str(data / "val")}
    cfg["members"][0]["name"] = "ok"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 2  # member = class
    cfg["members"][0]["name"] = "m.ok"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert main(["predict", str(tmp_path / "run"), str(data / "val"), "--out", str(tmp_path / "p.csv")]) == 0
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header == ["path", "prediction", "proba:error", "proba:ok", "proba:path", "vote:m.ok", "vote:b",
                      "vote:c", "error"]
    assert main(["predict", str(tmp_path / "run"), str(data / "val"), "--out", str(tmp_path / "p.JSON")]) == 0
    rows = json.loads((tmp_path / "p.JSON").read_text())
    assert set(rows[0]["proba"]) == {"error", "ok", "path"} and set(rows[0]["votes"]) == {"m.ok", "b", "c"}


def test_cli_edges(trained, tiny_data, tmp_path, capsys, caplog, monkeypatch):
    _, run = trained
    val = str(tiny_data / "val")
    (tmp_path / "preds").mkdir()
    cases = [
        (["predict", str(run), val, "--out", str(tmp_path / "preds")], "is a folder"),
        (["predict", str(run), val, "--out", str(tmp_path / "x.txt")], "must end in .csv or .json"),
        (["predict", str(run), val, "--out", str(tmp_path / "p.csv"), "--device", "tpu"], "got 'tpu'"),
        (["evaluate", str(run), val, "--out", str(run / "config.yaml")], "is inside the effens run folder"),
        (["evaluate", str(run), val, "--out", str(tmp_path / "cfg.yaml")], "exists and is not a folder"),
        (["train", str(_cfg(tmp_path, tiny_data)), "--out", str(run / "classes.json")], "is inside the effens run folder"),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append((["predict", str(run), val, "--out", str(tmp_path / "p.csv"), "--device", "cuda"],
                      "no CUDA device"))
    garbled = _copy(run, tmp_path, "garbled")
    (garbled / "config.yaml").write_text("members: [: oops\n")
    cases.append((["train", str(_cfg(tmp_path, tiny_data)), "--out", str(garbled)], "holds a run with a different config"))
    for args, culprit in cases:
        caplog.clear()
        _quiet_failure(main(args), capsys, caplog, culprit)
    for bad in ("-4", "0"):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", str(run), val, "--out", str(tmp_path / "p.csv"), "--batch-size", bad])
        assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    unreadable = tmp_path / "unreadable/circle"
    unreadable.mkdir(parents=True)
    _write(unreadable / "x.png", b"nope")
    caplog.clear()
    _quiet_failure(main(["evaluate", str(run), str(tmp_path / "unreadable"), "--out", str(tmp_path / "ev")]),
                   capsys, caplog, "none of its 1 images could be read")


def test_read_only_output_and_ctrl_c(trained, tiny_data, tmp_path, capsys, caplog, monkeypatch):
    from ensemble import files, training

    _, run = trained

    def read_only(src, dst):
        raise OSError(30, "Read-only file system", str(dst))

    monkeypatch.setattr(files.os, "replace", read_only)
    _quiet_failure(main(["predict", str(run), str(tiny_data / "val"), "--out", str(tmp_path / "p.csv")]),
                   capsys, caplog, "p.csv: Read-only file system")
    monkeypatch.undo()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_run", interrupted)
    code = main(["train", str(_cfg(tmp_path, tiny_data)), "--out", str(tmp_path / "run")])
    text = caplog.text + capsys.readouterr().err
    assert code == 130 and "run the same command again to resume" in text and "Traceback" not in text


# ---------------------------------------------------------------- 9, 10. weights messages, permissions
def test_weights_files(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from members.weights import WeightsError, load_weights

    broken = _write(tmp_path / "broken.safetensors", b"\x10\x00\x00\x00garbage")
    model = timm.create_model("test_efficientnet", num_classes=3)
    with pytest.raises(WeightsError, match="broken.safetensors: not a readable safetensors file"):
        load_weights(model, str(broken))
    src = timm.create_model("test_efficientnet", num_classes=3)
    save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "dp.safetensors"))
    load_weights(model, str(tmp_path / "dp.safetensors"))
    for k, v in src.state_dict().items():
        if not k.startswith("classifier"):
            assert torch.equal(model.state_dict()[k], v), k


def test_artifacts_honour_the_umask(tmp_path):
    from ensemble.files import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- 3. any YAML value: valid or one clear error
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
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
    special = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1, 0, 2**63, 10**9, "", "\0",
                               [float("nan"), 1.0], [[0.0, float("nan")]]])
    values = st.one_of(special, st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                                             st.dictionaries(st.text(max_size=8), inner, max_size=3),
                                             max_leaves=8))

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


def test_a_run_from_before_run_json_is_refused_until_fit_combiner_records_it(trained, tiny_data, tmp_path, capsys,
                                                                           caplog):
    _, run = trained
    run = _copy(run, tmp_path)
    (run / "run.json").unlink()
    (run / "report/.effens-files.json").unlink()
    (run / "report/notes.md").write_text("mine")
    out = tmp_path / "p.csv"
    _quiet_failure(main(["predict", str(run), str(tiny_data / "val"), "--out", str(out)]), capsys, caplog,
                   "no run.json", "fit-combiner")
    assert main(["fit-combiner", str(run), "-q"]) == 0
    assert (run / "run.json").is_file() and (run / "report/notes.md").read_text() == "mine"
    assert main(["predict", str(run), str(tiny_data / "val"), "--out", str(out)]) == 0
    caplog.clear()
    code = main(["train", str(run / "config.yaml"), "--out", str(run), "--restart", "--set", "members.0.train.lr=0.01"])
    _quiet_failure(code, capsys, caplog, "notes.md: not written by effens")  # adopted reports keep foreign files foreign
