"""ensemble/runfolder.py: the run lock seen by every reader, and what --restart refuses (#41)."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import synth
import yaml

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
    argv = {
        "predict": ["predict", str(run), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv")],
        "evaluate": ["evaluate", str(run), str(tiny_data / "test"), "--out", str(out)],
        "explain": ["explain", str(run), str(tiny_data / "test"), "--out", str(out)],
        "export": ["export", str(run), "--format", "onnx", "--out", str(out)],
        "audit": ["audit", str(run), "--out", str(out), "--no-features"],
        "serve": ["serve", str(run), "--port", "1"],
    }[command]
    writer = subprocess.Popen(
        [sys.executable, "-c", REWRITER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
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


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
def test_train_into_the_folder_of_ones_own_config_is_refused_and_the_config_kept(tiny_data, tmp_path, fails):
    exp = tmp_path / "exp1"
    exp.mkdir()
    text = "# my notes\n" + yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1))
    (exp / "config.yaml").write_text(text)
    code = main(["train", str(exp / "config.yaml"), "--out", str(exp)])
    fails(code, "config.yaml: not written by effens train")
    assert (exp / "config.yaml").read_text() == text


def test_restart_removes_only_effens_files_and_refuses_when_others_are_there(trained, tmp_path, fails):
    cfg, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    (run / "report/q3.md").write_text("quarterly notes")
    (run / "members/alice.txt").write_text("alice's")
    code = main(["train", str(cfg), "--out", str(run), "--restart", "--set", "members.0.train.lr=0.002"])
    fails(code, "not written by effens")
    assert (run / "report/q3.md").is_file() and (run / "members/alice.txt").is_file()
    assert (run / "members/a/model.safetensors").is_file()  # nothing removed
    (run / "report/q3.md").unlink()
    (run / "members/alice.txt").unlink()
    assert main(["train", str(cfg), "--out", str(run), "--restart", "--set", "members.0.train.epochs=1", "-q"]) == 0


def test_restart_with_a_bad_key_fails_before_discarding_anything(trained, tmp_path, caplog, fails):
    cfg, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    code = main(["train", str(cfg), "--out", str(run), "--restart", "--set", "data.train=data/trian"])
    fails(code, "trian")
    assert "discarding" not in caplog.text
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == before


def test_evaluate_never_overwrites_a_training_report(trained, tiny_data, tmp_path, fails):
    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    metrics = (run / "report/metrics.json").read_text()
    code = main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(run / "report")])
    fails(code, "is inside the effens run folder")
    assert (run / "report/metrics.json").read_text() == metrics
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    fails(
        main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(mine)]),
        "notes.md: not written by effens evaluate",
    )


@pytest.mark.parametrize(
    "edit, culprit",
    [
        ("classes", "classes.json"),
        ("inputs", "members/a/member.json"),
        ("reorder", "config.yaml"),
        ("remove", "config.yaml"),
    ],
)
def test_edited_run_files_are_refused_naming_them(trained, tmp_path, edit, culprit, fails):
    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
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
    fails(code, culprit, "do not match")


def test_a_second_train_into_the_same_folder_refuses_and_a_dead_lock_is_taken_over(trained, tmp_path, fails):
    cfg, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".effens.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        code = main(["train", str(cfg), "--out", str(run)])
        fails(code, "in use by another effens", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 0  # its process is gone: taken over
    assert not (run / ".effens.lock").exists()


def test_a_run_from_before_run_json_is_refused_until_fit_combiner_records_it(
    trained, tiny_data, tmp_path, caplog, fails
):
    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    (run / "run.json").unlink()
    (run / "report/.effens-files.json").unlink()
    (run / "report/notes.md").write_text("mine")
    out = tmp_path / "p.csv"
    fails(main(["predict", str(run), str(tiny_data / "val"), "--out", str(out)]), "no run.json", "fit-combiner")
    assert main(["fit-combiner", str(run), "-q"]) == 0
    assert (run / "run.json").is_file() and (run / "report/notes.md").read_text() == "mine"
    assert main(["predict", str(run), str(tiny_data / "val"), "--out", str(out)]) == 0
    caplog.clear()
    code = main(["train", str(run / "config.yaml"), "--out", str(run), "--restart", "--set", "members.0.train.lr=0.01"])
    fails(code, "notes.md: not written by effens")  # adopted reports keep foreign files foreign


def test_predict_never_writes_over_its_own_manifest(trained, tiny_data, tmp_path, fails):
    _, run = trained
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n" + "\n".join(str(p) for p in sorted((tiny_data / "test/circle").iterdir())[:2]) + "\n")
    before = manifest.read_bytes()
    for out in (manifest, tmp_path / "." / "manifest.csv", tmp_path / "sub" / ".." / "manifest.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        fails(main(["predict", str(run), str(manifest), "--out", str(out)]), "is also an input of this command")
    link = tmp_path / "link.csv"
    link.symlink_to(manifest)
    fails(main(["predict", str(run), str(manifest), "--out", str(link)]), "is also an input")
    assert manifest.read_bytes() == before


def test_no_command_writes_inside_a_run_folder(trained, tiny_data, tmp_path, fails):
    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    before = synth.digest(run)
    img = str(tiny_data / "test/circle")
    cases = [
        ["predict", str(run), img, "--out", str(run / "classes.json")],
        ["predict", str(run), img, "--out", str(run / "report" / "preds.csv")],
        ["evaluate", str(run), str(tiny_data / "test"), "--out", str(run / "eval")],
        ["explain", str(run), img, "--out", str(run / "members")],
        ["export", str(run), "--format", "onnx", "--out", str(run / "export")],
    ]
    for argv in cases:
        fails(main(argv), "is inside the effens run folder")
    assert synth.digest(run) == before
    assert main(["predict", str(run), img, "--out", str(tmp_path / "ok.csv")]) == 0  # the run still works


def test_folder_outputs_never_land_inside_an_input_folder(trained, tiny_data, tmp_path, fails):
    _, run = trained
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "test", data)
    fails(main(["evaluate", str(run), str(data), "--out", str(data / "ev")]), "is inside the input folder")
    assert not (data / "ev").exists()
    # nor inside the folders the run (or the config) reads, whatever the command's own input
    for argv in (
        ["evaluate", str(run), str(data)],
        ["explain", str(run), str(data)],
        ["train", str(run / "config.yaml")],
        ["tune", str(run / "config.yaml")],
    ):
        fails(main([*argv, "--out", str(tiny_data / "val" / "new")]), "is inside the input folder")
        assert not (tiny_data / "val" / "new").exists()


def test_a_tune_folder_given_to_predict_says_what_to_do(tiny_data, tmp_path, fails):
    tune = tmp_path / "t"
    tune.mkdir()
    (tune / ".effens-files.json").write_text(json.dumps({"kind": "tune", "files": []}))
    fails(
        main(["predict", str(tune), str(tiny_data / "test/circle"), "--out", str(tmp_path / "p.csv")]),
        "is a tune folder, not a run",
        "best.yaml",
    )


def test_restart_after_an_openvino_predict_discards_its_compiled_cache_too(trained, tiny_data, tmp_path):
    pytest.importorskip("openvino", reason="the compiled-model cache is OpenVINO's")
    cfg, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    assert (
        main(
            [
                "predict",
                str(run),
                str(tiny_data / "test"),
                "--out",
                str(tmp_path / "p.csv"),
                "--runtime",
                "openvino",
                "-q",
            ]
        )
        == 0
    )
    assert list((run / "cache" / "compiled").rglob("*.blob"))  # effens made these folders; OpenVINO the files
    assert main(["train", str(cfg), "--out", str(run), "--restart", "--set", "members.0.train.epochs=1", "-q"]) == 0
    assert not (run / "cache" / "compiled").exists()
