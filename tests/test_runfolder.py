"""ensemble/runfolder.py: the run lock seen by every reader, and what --restart refuses (#41)."""
import subprocess
import sys
from pathlib import Path

import pytest
import synth

from ensemble.cli import main

#: a second process doing what `train --restart` does first: take the lock as RunFolder
#: takes it, then rewrite the run's config (its hash in run.json no longer matches)
REWRITER = """
import sys
from ensemble.files import atomic_write_text
from ensemble.runfolder import RunFolder
run = RunFolder(sys.argv[1])
run.lock()
atomic_write_text(run.config_path, run.config_path.read_text() + "# being rewritten\\n")
print("locked", flush=True)
sys.stdin.read()
"""


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain", "export", "audit", "serve"])
def test_every_reader_names_the_process_rewriting_the_run(trained, tiny_data, tmp_path, capsys, caplog, command):
    """While another effens holds the run's lock and rewrites its files, every reader
    refuses with one line naming that process (exit 2), not "contents do not match the
    hash"; it writes nothing, and the run is left as the writer has it."""
    run = synth.copy_run(trained[1], tmp_path / "run")
    out = tmp_path / "out"
    argv = {"predict": ["predict", str(run), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv")],
            "evaluate": ["evaluate", str(run), str(tiny_data / "test"), "--out", str(out)],
            "explain": ["explain", str(run), str(tiny_data / "test"), "--out", str(out)],
            "export": ["export", str(run), "--format", "onnx", "--out", str(out)],
            "audit": ["audit", str(run), "--out", str(out), "--no-features"],
            "serve": ["serve", str(run), "--port", "1"]}[command]
    writer = subprocess.Popen([sys.executable, "-c", REWRITER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        caplog.clear()
        capsys.readouterr()
        code = main([*argv, "-q"])
        text = capsys.readouterr().err + caplog.text
        assert code == 2, text
        assert f"{run}: in use by another effens (pid {writer.pid} on " in text, text
        assert "do not match" not in text and "Traceback" not in text
        assert _snapshot(run) == before
        assert not out.exists() and not (tmp_path / "p.csv").exists()
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)


def test_restart_refuses_foreign_files_at_the_top_of_the_run_folder(trained, tmp_path, capsys, caplog):
    """`--restart` removes only files effens recorded and refuses, before removing anything,
    if anything else is there: at the top of the run folder too (a note, a folder of plots),
    naming every such file in one line, exit 2; nothing is deleted."""
    cfg, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").write_bytes(b"png")
    before = _snapshot(run)
    caplog.clear()
    code = main(["train", str(cfg), "--out", str(run), "--restart", "--set", "members.0.train.lr=0.002", "-q"])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1, caplog.text
    assert f"{run / 'notes.txt'}, plots/loss.png: not written by effens; --restart removes only" in errors[0]
    assert _snapshot(run) == before


def test_a_reader_ignores_the_lock_of_a_process_that_is_gone(trained, tiny_data, tmp_path):
    """A lock left by a killed `train` (its pid ended) does not stop readers, nor is it removed by them."""
    import json
    import socket

    run = synth.copy_run(trained[1], tmp_path / "run")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / ".effens.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert main(["predict", str(run), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv"), "-q"]) == 0
    assert json.loads((run / ".effens.lock").read_text())["pid"] == gone.pid
