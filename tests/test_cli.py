"""ensemble/cli.py: exit codes and one line per mistake at the command line (flags, outputs, signals)."""

import signal
import subprocess
import sys
import time

import pytest
import synth

from ensemble.cli import main


def test_cli_edges(trained, tiny_data, tmp_path, capsys, caplog, monkeypatch, fails):
    _, run = trained
    val = str(tiny_data / "val")
    (tmp_path / "preds").mkdir()
    cases = [
        (["predict", str(run), val, "--out", str(tmp_path / "preds")], "is a folder"),
        (["predict", str(run), val, "--out", str(tmp_path / "x.txt")], "must end in .csv or .json"),
        (["predict", str(run), val, "--out", str(tmp_path / "p.csv"), "--device", "tpu"], "got 'tpu'"),
        (["evaluate", str(run), val, "--out", str(run / "config.yaml")], "is inside the effens run folder"),
        (["evaluate", str(run), val, "--out", str(tmp_path / "cfg.yaml")], "exists and is not a folder"),
        (
            ["train", str(synth.config_file(tmp_path, tiny_data)), "--out", str(run / "classes.json")],
            "is inside the effens run folder",
        ),
    ]
    if not __import__("torch").cuda.is_available():
        cases.append(
            (["predict", str(run), val, "--out", str(tmp_path / "p.csv"), "--device", "cuda"], "no CUDA device")
        )
    garbled = synth.copy_run(run, tmp_path / "garbled")
    (garbled / "config.yaml").write_text("members: [: oops\n")
    cases.append(
        (
            ["train", str(synth.config_file(tmp_path, tiny_data)), "--out", str(garbled)],
            "holds a run with a different config",
        )
    )
    for args, culprit in cases:
        caplog.clear()
        fails(main(args), culprit)
    for bad in ("-4", "0"):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", str(run), val, "--out", str(tmp_path / "p.csv"), "--batch-size", bad])
        assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    unreadable = tmp_path / "unreadable/circle"
    unreadable.mkdir(parents=True)
    synth.write_file(unreadable / "x.png", b"nope")
    caplog.clear()
    fails(
        main(["evaluate", str(run), str(tmp_path / "unreadable"), "--out", str(tmp_path / "ev")]),
        "none of its 1 images could be read",
    )


def test_read_only_output_and_ctrl_c(trained, tiny_data, tmp_path, capsys, caplog, monkeypatch, fails):
    from ensemble import files, training

    _, run = trained

    def read_only(src, dst):
        raise OSError(30, "Read-only file system", str(dst))

    monkeypatch.setattr(files.os, "replace", read_only)
    fails(
        main(["predict", str(run), str(tiny_data / "val"), "--out", str(tmp_path / "p.csv")]),
        "p.csv: Read-only file system",
    )
    monkeypatch.undo()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_run", interrupted)
    code = main(["train", str(synth.config_file(tmp_path, tiny_data)), "--out", str(tmp_path / "run")])
    text = caplog.text + capsys.readouterr().err
    assert code == 130 and "run the same command again to resume" in text and "Traceback" not in text


def test_cli_flag_rough_edges(trained, tiny_data, tmp_path, capsys, fails):
    _, run = trained
    img = str(tiny_data / "test/circle")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--tta="])
    assert exc.value.code == 2 and "must not be empty" in capsys.readouterr().err
    fails(
        main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--coverage-by-class"]),
        "--coverage-by-class needs --coverage",
    )


def test_sigterm_during_train_is_one_line_and_releases_the_lock(tiny_data, tmp_path):
    path = synth.config_file(tmp_path, tiny_data, epochs=30)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ensemble", "train", str(path), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "members").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM); finished work is kept" in err and "Traceback" not in err
    assert not (out / ".effens.lock").exists()
