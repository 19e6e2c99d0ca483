"""Reliability, round 3 (issue #22): outputs never destroy inputs or runs, failed commands
change nothing, no hangs or unbounded work, unambiguous outputs, one clear line each."""
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import synth
import yaml
from PIL import Image
from test_reliability import _cfg, _copy
from test_reliability import _quiet_failure as _fails

from ensemble.cli import main


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".effens.lock"}


# ---------------------------------------------------------------- 1-3: data or a run destroyed
def test_predict_never_writes_over_its_own_manifest(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n" + "\n".join(str(p) for p in sorted((tiny_data / "test/circle").iterdir())[:2]) + "\n")
    before = manifest.read_bytes()
    for out in (manifest, tmp_path / "." / "manifest.csv", tmp_path / "sub" / ".." / "manifest.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        _fails(main(["predict", str(run), str(manifest), "--out", str(out)]), capsys, caplog,
               "is also an input of this command")
    link = tmp_path / "link.csv"
    link.symlink_to(manifest)
    _fails(main(["predict", str(run), str(manifest), "--out", str(link)]), capsys, caplog, "is also an input")
    assert manifest.read_bytes() == before


def test_no_command_writes_inside_a_run_folder(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    run = _copy(run, tmp_path)
    before = _digest(run)
    img = str(tiny_data / "test/circle")
    cases = [["predict", str(run), img, "--out", str(run / "classes.json")],
             ["predict", str(run), img, "--out", str(run / "report" / "preds.csv")],
             ["evaluate", str(run), str(tiny_data / "test"), "--out", str(run / "eval")],
             ["explain", str(run), img, "--out", str(run / "members")],
             ["export", str(run), "--format", "onnx", "--out", str(run / "export")]]
    for argv in cases:
        _fails(main(argv), capsys, caplog, "is inside the effens run folder")
    assert _digest(run) == before
    assert main(["predict", str(run), img, "--out", str(tmp_path / "ok.csv")]) == 0  # the run still works


def test_folder_outputs_never_land_inside_an_input_folder(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "test", data)
    _fails(main(["evaluate", str(run), str(data), "--out", str(data / "ev")]), capsys, caplog,
           "is inside the input folder")
    assert not (data / "ev").exists()
    # nor inside the folders the run (or the config) reads, whatever the command's own input
    for argv in (["evaluate", str(run), str(data)], ["explain", str(run), str(data)],
                 ["train", str(run / "config.yaml")], ["tune", str(run / "config.yaml")]):
        _fails(main([*argv, "--out", str(tiny_data / "val" / "new")]), capsys, caplog, "is inside the input folder")
        assert not (tiny_data / "val" / "new").exists()


def test_predict_never_overwrites_a_file_it_did_not_write(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    mine = tmp_path / "budget.csv"
    mine.write_text("month,amount\njan,3\n")
    _fails(main(["predict", str(run), str(tiny_data / "test/circle"), "--out", str(mine)]), capsys, caplog,
           "was not written by `effens predict`")
    assert mine.read_text() == "month,amount\njan,3\n"
    # its own earlier output may be replaced (CSV and JSON)
    for name in ("p.csv", "p.json"):
        out = tmp_path / name
        assert main(["predict", str(run), str(tiny_data / "test/circle"), "--out", str(out)]) == 0
        assert main(["predict", str(run), str(tiny_data / "test/square"), "--out", str(out)]) == 0


def test_explain_refuses_a_folder_with_a_users_files(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    out = tmp_path / "mine"
    out.mkdir()
    (out / "explain.json").write_text('{"mine": true}')
    img = str(sorted((tiny_data / "test/circle").iterdir())[0])
    _fails(main(["explain", str(run), img, "--out", str(out)]), capsys, caplog, "not written by effens explain")
    assert (out / "explain.json").read_text() == '{"mine": true}'
    fresh = tmp_path / "fresh"
    assert main(["explain", str(run), img, "--out", str(fresh)]) == 0
    assert main(["explain", str(run), img, "--out", str(fresh)]) == 0  # its own output: replaced


def test_a_failed_fit_combiner_changes_nothing(trained, tmp_path, capsys, caplog, monkeypatch):
    _, run = trained
    run = _copy(run, tmp_path)
    before = _digest(run)
    import ensemble.training as training

    def broken(*args, **kwargs):
        raise training.DataError("simulated failure while writing the report")

    monkeypatch.setattr(training, "write_run_report", broken)
    code = main(["fit-combiner", str(run), "--set", "combiner.strategy=stacking"])
    _fails(code, capsys, caplog, "simulated failure")
    assert _digest(run) == before  # config.yaml, run.json and the combiner are as they were


def test_fit_combiner_with_a_bad_value_writes_nothing(trained, tmp_path, capsys, caplog):
    _, run = trained
    run = _copy(run, tmp_path)
    before = _digest(run)
    _fails(main(["fit-combiner", str(run), "--set", "combiner.stacking.C=-1"]), capsys, caplog, "combiner.stacking.C")
    assert _digest(run) == before


# ---------------------------------------------------------------- 4-6: hangs and unbounded resources
def test_a_fifo_among_images_is_skipped_not_opened(trained, tiny_data, tmp_path):
    _, run = trained
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_data / "test/circle", folder)
    os.mkfifo(folder / "pipe.jpg")
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "ensemble", "predict", str(run), str(folder), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not regular files" in proc.stderr and "pipe.jpg" in proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and not any("pipe" in r["path"] for r in rows)
    # named directly, it is an error row, not a hang
    proc = subprocess.run([sys.executable, "-m", "ensemble", "predict", str(run), str(folder / "pipe.jpg"),
                           str(sorted(folder.glob("*.png"))[0]), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not a regular file" in out.read_text()


def test_training_refuses_a_decode_cache_that_would_not_fit(tiny_data, tmp_path, capsys, caplog, monkeypatch):
    import ensemble.images as images

    monkeypatch.setattr(images, "available_memory", lambda: 50 * 2**20)  # 50 MB free
    raw = synth.tiny_config(tiny_data, epochs=1)
    for m in raw["members"]:
        m["image_size"] = 4096
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(raw))
    _fails(main(["train", str(path), "--out", str(tmp_path / "run")]), capsys, caplog,
           "px (from `image_size` or `data.cache_size`) needs about", "GB, more than 70% of the 50 MB available")
    assert not (tmp_path / "run").exists()


def test_a_huge_tune_grid_is_refused_with_its_count_and_time(tiny_data, tmp_path, capsys, caplog):
    raw = synth.tiny_config(tiny_data, epochs=1)
    raw["tune"] = {"ratios": [round(0.05 * k, 2) for k in range(1, 21)], "tie_members": False}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    text = _fails(main(["tune", str(path), "--out", str(tmp_path / "t")]), capsys, caplog,
                  "would try 64,000 candidates", "hours", "--yes")
    assert "tune.budget" in text and not (tmp_path / "t").exists()
    from ensemble.config import load_config
    from ensemble.tuning import check_grid_size, enumerate_candidates

    cfg = load_config(path, ["tune.method=random", "tune.budget=5"])
    assert check_grid_size(cfg.tune, 3) == 5
    huge = load_config(path, ["tune.method=random", "tune.budget=7", "tune.ratios=" + str(
        [round(0.001 * k, 3) for k in range(1, 1001)])])
    t0 = time.perf_counter()
    picked = enumerate_candidates(huge.tune, 3)  # 8e9 combinations: drawn, never listed
    assert len(picked) == 7 and time.perf_counter() - t0 < 5


# ---------------------------------------------------------------- 7-12: wrong or ambiguous results
@pytest.mark.parametrize("bad", ["review", "minor|moderate", "line\nbreak"])
def test_ambiguous_class_names_are_refused_at_train_time(tiny_data, tmp_path, capsys, caplog, bad):
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for i, p in enumerate(sorted((tiny_data / "train/circle").iterdir())[:6]):
            w.writerow([str(p), "circle" if i % 2 else bad])
    path = _cfg(tmp_path, tiny_data, epochs=1)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["train"] = str(manifest)
    path.write_text(yaml.safe_dump(raw))
    text = _fails(main(["train", str(path), "--out", str(tmp_path / "run")]), capsys, caplog)
    assert ("control character" in text) if "\n" in bad else ("is not allowed" in text and repr(bad) in text)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("costs,needle", [([[0, 0], [0, 0]], "is all zeros"),
                                          ([[5, 1], [1, 0]], "row 0: the correct answer"),
                                          ([[0, 1], [1, 2]], "row 1: the correct answer")])
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

    text = yaml.safe_dump(synth.tiny_config(tiny_data)) + "tune:\n  ratios:\n    - [0.5, 0.8]\n    - [0.6]\n    - [1.0]\n"
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert load_config(path).tune.ratios == [[0.5, 0.8], [0.6], [1.0]]
    path.write_text(text.replace("[0.6]", "[0.6, x]"))
    from ensemble.config import ConfigError

    with pytest.raises(ConfigError, match=r"`tune.ratios.1.1` must be a number"):
        load_config(path)


def test_one_path_rule_and_one_hidden_rule(tiny_data, tmp_path, capsys, caplog):
    from ensemble.data import load_csv, load_folder

    first = sorted((tiny_data / "train/circle").iterdir())[0]
    manifest = tmp_path / "m.csv"
    twisted = str(first.parent / "." / first.name)
    dotted = str(first.parent.parent / "circle" / ".." / "circle" / first.name)
    manifest.write_text(f"path,label\n{first},circle\n{twisted},circle\n{dotted},circle\n")
    from ensemble.data import DataError

    with pytest.raises(DataError, match=r"row 3: duplicate of row 2.*row 4: duplicate of row 2"):
        load_csv(manifest)
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "train", data)
    hidden = data / "circle" / ".thumbnails"
    hidden.mkdir()
    Image.new("RGB", (8, 8)).save(hidden / "thumb.png")
    split = load_folder(data)
    assert not any(".thumbnails" in p for p in split.paths)
    assert len(split) == 48


def test_a_photo_in_train_and_test_is_warned_about(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    src = sorted((data / "train/circle").iterdir())[0]
    shutil.copy(src, data / "test/circle/copy_of_train.png")
    path = _cfg(tmp_path, data, epochs=1)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "1 image(s) appear in both train and test (same file contents)" in caplog.text
    assert "copy_of_train.png" in caplog.text


# ---------------------------------------------------------------- rough edges: one clear line each
def test_nothing_predictable_is_exit_2_and_says_file_not_found(trained, tmp_path, capsys, caplog):
    _, run = trained
    out = tmp_path / "p.csv"
    _fails(main(["predict", str(run), str(tmp_path / "nope.jpg"), "--out", str(out)]), capsys, caplog,
           "none of the 1 input image(s) could be predicted", "file not found")
    assert not out.exists()
    _fails(main(["explain", str(run), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "x")]), capsys, caplog,
           "none of the 1 input image(s) could be read", "file not found")


def test_an_unwritable_out_is_named_before_inference(trained, tiny_data, tmp_path, capsys, caplog, monkeypatch):
    import ensemble.inference as inference

    _, run = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere, so the folder's permission is simulated; inference must not start
    monkeypatch.setattr(inference.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    monkeypatch.setattr(inference, "load_run", lambda *a, **k: pytest.fail("inference started"))
    _fails(main(["predict", str(run), str(tiny_data / "test/circle"), "--out", str(locked / "p.csv")]), capsys,
           caplog, f"{locked / 'p.csv'}: cannot write in {locked} (permission denied)")


def test_set_typos_are_blamed_on_set_not_the_file(tiny_data, tmp_path, capsys, caplog):
    path = _cfg(tmp_path, tiny_data)
    _fails(main(["train", str(path), "--out", str(tmp_path / "r"), "--set", "combiner.stratgy=soft"]), capsys, caplog,
           "--set combiner.stratgy=soft: unknown key `combiner.stratgy`")


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


def test_cli_flag_rough_edges(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    img = str(tiny_data / "test/circle")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--tta="])
    assert exc.value.code == 2 and "must not be empty" in capsys.readouterr().err
    _fails(main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--coverage-by-class"]), capsys, caplog,
           "--coverage-by-class needs --coverage")


def test_coverage_messages_name_the_class(trained, tiny_data, tmp_path, capsys, caplog):
    _, run = trained
    text = _fails(main(["predict", str(run), str(tiny_data / "test/circle"), "--out", str(tmp_path / "p.csv"),
                        "--coverage", "0.99", "--coverage-by-class"]), capsys, caplog, "calibration images of class")
    assert "class 'circle'" in text or "class 'square'" in text or "class 'stripes'" in text


def test_a_tune_folder_given_to_predict_says_what_to_do(tiny_data, tmp_path, capsys, caplog):
    tune = tmp_path / "t"
    tune.mkdir()
    (tune / ".effens-files.json").write_text(json.dumps({"kind": "tune", "files": []}))
    _fails(main(["predict", str(tune), str(tiny_data / "test/circle"), "--out", str(tmp_path / "p.csv")]),
           capsys, caplog, "is a tune folder, not a run", "best.yaml")


def test_tune_oob_objective_without_oob_images_is_refused(tiny_data, tmp_path, capsys, caplog):
    raw = synth.tiny_config(tiny_data, epochs=1, tune={"ratios": [1.0], "replace": [False], "objective": "oob"})
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    _fails(main(["tune", str(path), "--out", str(tmp_path / "t")]), capsys, caplog,
           "`tune.objective: oob` needs out-of-bag images")


def test_adapt_bn_on_one_image_warns(trained, tiny_data, tmp_path, caplog):
    _, run = trained
    img = str(sorted((tiny_data / "test/circle").iterdir())[0])
    assert main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--adapt-bn"]) == 0
    assert "--adapt-bn needs at least 2 images" in caplog.text
    two = sorted(str(p) for p in (tiny_data / "test/circle").iterdir())[:3]
    assert main(["predict", str(run), *two, "--out", str(tmp_path / "p.csv"), "--adapt-bn"]) == 0
    assert "re-estimates BatchNorm statistics on the 3 image(s) given" in caplog.text


def test_a_class_missing_from_val_and_a_sample_without_a_class_warn(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shutil.rmtree(data / "val/square")
    raw = synth.tiny_config(data, epochs=1)
    raw["members"][0]["bagging"] = {"ratio": 0.05, "replace": False, "stratify": False}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "val has no image of class(es) square" in caplog.text
    assert "bagging sample holds no image of class" in caplog.text


def test_data_train_naming_a_file_says_so(tiny_data, tmp_path, capsys, caplog):
    f = tmp_path / "train.txt"
    f.write_text("x")
    raw = synth.tiny_config(tiny_data)
    raw["data"]["train"] = str(f)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    _fails(main(["train", str(path), "--out", str(tmp_path / "r")]), capsys, caplog, "is a file, not a folder")


def test_a_bad_image_failure_can_be_fixed_without_restart(tiny_data, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train/circle/broken.png").write_bytes(b"not a png")
    path = _cfg(tmp_path, data, epochs=1)
    out = tmp_path / "run"
    _fails(main(["train", str(path), "--out", str(out)]), capsys, caplog, "broken.png")
    assert main(["train", str(path), "--out", str(out), "--set", "data.on_bad_image=skip"]) == 0


def test_sigterm_during_train_is_one_line_and_releases_the_lock(tiny_data, tmp_path):
    path = _cfg(tmp_path, tiny_data, epochs=30)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ensemble", "train", str(path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "members").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM); finished work is kept" in err and "Traceback" not in err
    assert not (out / ".effens.lock").exists()


def test_fit_combiner_after_the_data_moved_keeps_the_thumbnails(tiny_data, tmp_path):
    import re

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    path = _cfg(tmp_path, data, epochs=1)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0

    def thumbs() -> list:
        html = (run / "report/index.html").read_text()
        doc = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1))
        return [t for s in doc["splits"].values() for t in s["thumbs"]]

    before = thumbs()
    assert before and all(before)
    shutil.move(str(data), str(tmp_path / "moved"))
    assert main(["fit-combiner", str(run), "--set", "combiner.strategy=stacking"]) == 0
    after = thumbs()
    assert after == before  # the thumbnails made when the images were there


def test_fit_combiner_asking_for_oob_calibration_without_oob_images_changes_nothing(tiny_data, tmp_path, capsys,
                                                                                      caplog):
    raw = synth.tiny_config(tiny_data, epochs=1)
    for m in raw["members"]:
        m["bagging"] = {"ratio": 1.0, "replace": False, "stratify": True}  # every member sees every image
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0
    before = _digest(run)
    code = main(["fit-combiner", str(run), "--set", "decision.calibration=oob"])
    assert code == 2 and "Traceback" not in caplog.text
    assert _digest(run) == before
    img = str(tiny_data / "test/circle")
    assert main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--coverage", "0.8"]) == 0


def test_a_cost_matrix_with_a_cheaper_mistake_is_refused_by_train(tiny_data, tmp_path, capsys, caplog):
    path = _cfg(tmp_path, tiny_data, epochs=1, decision={"costs": [[0, 1, 1], [1, 0, 1], [0, 1, 2]]})
    _fails(main(["train", str(path), "--out", str(tmp_path / "run")]), capsys, caplog,
           "`decision.costs` row 2: the correct answer (column 2, cost 2) must not cost more than a mistake")
    assert not (tmp_path / "run").exists()


def test_restart_after_an_openvino_predict_discards_its_compiled_cache_too(trained, tiny_data, tmp_path):
    pytest.importorskip("openvino", reason="the compiled-model cache is OpenVINO's")
    cfg, run = trained
    run = _copy(run, tmp_path)
    assert main(["predict", str(run), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv"),
                 "--runtime", "openvino", "-q"]) == 0
    assert list((run / "cache" / "compiled").rglob("*.blob"))  # effens made these folders; OpenVINO the files
    assert main(["train", str(cfg), "--out", str(run), "--restart", "--set", "members.0.train.epochs=1", "-q"]) == 0
    assert not (run / "cache" / "compiled").exists()
