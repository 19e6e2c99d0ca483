"""ensemble/files.py: only regular files are opened, wherever a user names a path (#41, item 7)."""

import os
import subprocess
import sys

import pytest
import synth
import yaml

from ensemble.cli import main


def _pipe_cases(tmp_path):
    """(argv, what the refusal names) for each place a command opens a user-named file, at a FIFO."""
    cfg = synth.tiny_config(tmp_path / "data")
    plugin_cfg = tmp_path / "plugged.yaml"
    plugin_cfg.write_text(yaml.safe_dump({**cfg, "plugins": [str(tmp_path / "plug.py")]}))
    return {
        "train CONFIG": (
            ["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")],
            f"{tmp_path / 'cfg.yaml'}: is a named pipe (FIFO)",
            "cfg.yaml",
        ),
        "tune CONFIG": (
            ["tune", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "tune")],
            f"{tmp_path / 'cfg.yaml'}: is a named pipe (FIFO)",
            "cfg.yaml",
        ),
        "predict --out": (
            ["predict", str(tmp_path / "run"), str(tmp_path / "data"), "--out", str(tmp_path / "p.csv")],
            f"--out {tmp_path / 'p.csv'}: is a named pipe (FIFO)",
            "p.csv",
        ),
        "serve --api-key-file": (
            ["serve", str(tmp_path / "run"), "--api-key-file", str(tmp_path / "key")],
            f"--api-key-file {tmp_path / 'key'}: is a named pipe (FIFO)",
            "key",
        ),
        "plugins": (
            ["train", str(plugin_cfg), "--out", str(tmp_path / "run")],
            f"`plugins`: {tmp_path / 'plug.py'}: is a named pipe (FIFO)",
            "plug.py",
        ),
    }


@pytest.mark.parametrize("where", ["train CONFIG", "tune CONFIG", "predict --out", "serve --api-key-file", "plugins"])
def test_a_pipe_where_a_file_is_expected_is_one_line_and_never_opened(tmp_path, where):
    """A FIFO given as a config, an output file, a key file or a plugin is refused at once,
    one line naming the flag or key and the path, exit 2; reading it would block forever,
    writing over it would replace it. Nothing is created."""
    argv, says, fifo = _pipe_cases(tmp_path)[where]
    os.mkfifo(tmp_path / fifo)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ensemble", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"effens {where} at a FIFO hung")
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and says in err[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert os.path.exists(tmp_path / fifo) and not os.path.isfile(tmp_path / fifo)


def test_a_pipe_inside_an_output_folder_is_foreign(tmp_path, capsys, caplog):
    """An output folder holding a FIFO where effens would write a file (audit's index.html)
    is refused like any file effens did not write, naming it; the FIFO stays (it used to be
    replaced silently)."""
    from ensemble.cli import main

    synth.make_folder(tmp_path / "data", 4)
    out = tmp_path / "audit"
    out.mkdir()
    os.mkfifo(out / "index.html")
    caplog.clear()
    assert main(["audit", str(tmp_path / "data"), "--out", str(out), "--no-features", "-q"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f"{out / 'index.html'}: not written by effens audit" in errors[0], errors
    assert sorted(p.name for p in out.iterdir()) == ["index.html"] and not (out / "index.html").is_file()


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
@pytest.mark.parametrize("command", ["train", "tune", "evaluate", "explain", "export", "audit"])
def test_every_command_refuses_a_foreign_output_folder_by_one_rule(command, trained, tiny_data, tmp_path, fails):
    cfg, run = trained
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "notes.md").write_text("mine")
    img = str(next((tiny_data / "test").rglob("*.png")))
    argv = {
        "train": ["train", str(cfg)],
        "tune": ["tune", str(cfg), "--yes"],
        "evaluate": ["evaluate", str(run), str(tiny_data / "test")],
        "explain": ["explain", str(run), img],
        "export": ["export", str(run), "--format", "onnx"],
        "audit": ["audit", str(run)],
    }[command]
    fails(main([*argv, "--out", str(out)]), f"notes.md: not written by effens {command}; choose a new or empty --out")
    assert (out / "sub" / "notes.md").read_text() == "mine" and sorted(out.rglob("*")) == [
        out / "sub",
        out / "sub" / "notes.md",
    ]


def test_artifacts_honour_the_umask(tmp_path):
    from ensemble.files import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
