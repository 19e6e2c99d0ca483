"""Never lose finished work: epoch checkpoints, SIGKILL + resume, NaN stops, atomic writes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import synth
import torch
import yaml
from safetensors.torch import load_file

from ensemble import files as run_mod
from ensemble.cli import main
from ensemble.runfolder import MemberCheckpoint as CheckpointStore
from ensemble.runfolder import load_run


def one_member_config(tiny_data, tmp_path, epochs=3, **train):
    cfg = synth.tiny_config(tiny_data, epochs=epochs)
    cfg["members"] = cfg["members"][:1]
    cfg["members"][0]["train"].update({"augment": "rand-m9-mstd0.5", **train})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Killed(BaseException):  # like KeyboardInterrupt: not swallowed as a job failure
    pass


def test_resume_at_epoch_boundary_gives_identical_weights(tiny_data, tmp_path, monkeypatch, caplog):
    cfg = one_member_config(tiny_data, tmp_path, epochs=3)
    assert main(["train", str(cfg), "--out", str(tmp_path / "straight"), "-q"]) == 0

    real_save = CheckpointStore.save

    def save_then_die(self, tensors, doc):
        real_save(self, tensors, doc)
        if doc["epoch"] == 2:
            raise Killed("simulated kill right after epoch 2's checkpoint")

    monkeypatch.setattr(CheckpointStore, "save", save_then_die)
    with pytest.raises(Killed):
        main(["train", str(cfg), "--out", str(tmp_path / "resumed"), "-q"])
    assert json.loads((tmp_path / "resumed/members/a/checkpoint.json").read_text())["epoch"] == 2
    assert not (tmp_path / "resumed/members/a/member.json").exists()
    monkeypatch.setattr(CheckpointStore, "save", real_save)
    caplog.set_level("INFO")
    assert main(["train", str(cfg), "--out", str(tmp_path / "resumed")]) == 0
    assert "resuming after epoch 2/3" in caplog.text
    a = load_file(str(tmp_path / "straight/members/a/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/members/a/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist_a = json.loads((tmp_path / "straight/members/a/member.json").read_text())["history"]
    hist_b = json.loads((tmp_path / "resumed/members/a/member.json").read_text())["history"]
    assert [h["val_macro_f1"] for h in hist_a] == [h["val_macro_f1"] for h in hist_b]
    assert not (tmp_path / "resumed/members/a/checkpoint.json").exists()  # cleared once finished


def test_checkpoint_of_other_settings_is_ignored(tiny_data, tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, "fingerprint-1")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"fingerprint": "other"}))
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    assert store.load() is None


def _spawn(cfg, out):
    return subprocess.Popen(
        [sys.executable, "-m", "ensemble", "train", str(cfg), "--out", str(out), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {path} appeared: {proc.stdout.read().decode()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.005)


@pytest.mark.parametrize("moment", ["between_members", "inside_member"])
def test_sigkill_then_resume(tiny_data, tmp_path, moment):
    cfg = synth.tiny_config(tiny_data, epochs=2)
    # inside: a longer member b, a window of 7 epochs to kill it in after its first checkpoint
    b_epochs = 8 if moment == "inside_member" else 2
    cfg["members"][1]["train"]["epochs"] = b_epochs
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = _spawn(path, out)
    target = out / "members/a/member.json" if moment == "between_members" else out / "members/b/checkpoint.json"
    _wait_for(target, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    a_meta = json.loads((out / "members/a/member.json").read_text())
    a_hash = a_meta["files"]["model.safetensors"]
    assert not (out / "members/b/member.json").exists() or moment == "between_members"
    epoch_at_kill = None
    if moment == "inside_member":
        epoch_at_kill = json.loads((out / "members/b/checkpoint.json").read_text())["epoch"]
        assert 1 <= epoch_at_kill < b_epochs

    r = subprocess.run(
        [sys.executable, "-m", "ensemble", "train", str(path), "--out", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "member a already finished" in r.stderr
    if moment == "inside_member":
        assert f"resuming after epoch {epoch_at_kill}/{b_epochs}" in r.stderr
    # member a untouched, and the whole run verifies against its recorded hashes
    assert json.loads((out / "members/a/member.json").read_text())["files"]["model.safetensors"] == a_hash
    ens = load_run(str(out))
    assert [fm.name for fm in ens.members_] == ["a", "b", "c"]
    assert len(json.loads((out / "members/b/member.json").read_text())["history"]) == b_epochs


def test_nan_loss_stops_the_member_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch, caplog):
    cfg = one_member_config(tiny_data, tmp_path, epochs=3)
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("nan") if calls["n"] > 5 else loss  # epoch 1 has 4 steps

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    assert "member a: loss became nan at epoch 2" in caplog.text
    ckpt = CheckpointStore(out / "members/a", "unused")
    doc = json.loads(ckpt.json_path.read_text())
    assert doc["epoch"] == 1
    assert run_mod.sha256_file(ckpt.tensors_path) == doc["sha256"]  # intact
    assert not (out / "members/a/member.json").exists()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    run_mod.atomic_write_json(target, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(run_mod.os, "replace", broken_replace)
    with pytest.raises(OSError):
        run_mod.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_tampered_combiner_or_predictions_are_refused(trained, tmp_path):
    import shutil

    _, run = trained
    for rel in ("combiner/stacking_coef.npy", "predictions/val_proba.npy"):
        copy = tmp_path / rel.replace("/", "_")
        shutil.copytree(run, copy)
        arr = np.load(copy / rel)
        np.save(copy / rel, arr * 2)
        with pytest.raises(run_mod.RunError, match=rel + ": contents do not match"):
            load_run(str(copy))
