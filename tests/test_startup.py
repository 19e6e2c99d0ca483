"""Start-up (issue #23): predicting with an exported runtime loads neither torch, timm nor
scikit-learn; compiled models and timm's model names are cached; results do not change."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import synth

HEAVY = ("torch", "timm", "sklearn", "torchvision", "members.trainer", "ensemble.training")

needs_openvino = pytest.mark.skipif(
    __import__("importlib").util.find_spec("openvino") is None, reason="OpenVINO is not installed (effens[openvino])"
)


def _in_fresh_process(argv: list[str], env: dict | None = None) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, stderr) of ``effens ARGV`` in a new interpreter."""
    code = textwrap.dedent(f"""
        import json, sys
        from ensemble.cli import main
        try:
            rc = main({argv!r})
        except SystemExit as exc:
            rc = exc.code
        print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules]]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    rc, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    return rc, heavy, done.stderr


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@needs_openvino
def test_predict_on_an_exported_run_imports_no_torch_and_matches(trained, tiny_data, tmp_path):
    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    shutil.rmtree(run / "cache", ignore_errors=True)  # other tests may have exported the shared run
    images = str(tiny_data / "test")
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    # the first call exports each member to ONNX (torch needed) and compiles it
    rc, heavy, err = _in_fresh_process(["predict", str(run), images, "--runtime", "openvino", "--out", str(first)])
    assert rc == 0, err[-2000:]
    assert "torch" in heavy
    blobs = sorted(p for p in (run / "cache" / "compiled").rglob("*") if p.is_file())
    assert blobs, "OpenVINO's compiled-model cache is empty"
    assert len({p.parent for p in blobs}) == 3  # one folder per member export (its SHA-256)
    rc, heavy, err = _in_fresh_process(["predict", str(run), images, "--runtime", "openvino", "--out", str(second)])
    assert rc == 0, err[-2000:]
    assert heavy == [], f"a cached predict imported {heavy}"
    assert _rows(first) == _rows(second)
    # the second process loaded what the first compiled (same threads, same keys): nothing new
    assert sorted(p for p in (run / "cache" / "compiled").rglob("*") if p.is_file()) == blobs


@needs_openvino
def test_lazy_members_are_built_only_for_torch(trained, tiny_data, tmp_path):
    from ensemble.images import decode_all
    from ensemble.runfolder import load_run

    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    shutil.rmtree(run / "cache", ignore_errors=True)
    paths = sorted(str(p) for p in (tiny_data / "test").rglob("*.png"))[:6]
    arrays, _ = decode_all(paths, 40)
    load_run(run).member_proba(arrays, runtime="openvino")  # exports to the run's ONNX cache
    ens = load_run(run)
    assert all(fm._model is None for fm in ens.members_)
    ov = ens.member_proba(arrays, runtime="openvino")
    assert all(fm._model is None for fm in ens.members_), "the OpenVINO path built a torch model"
    pt = ens.member_proba(arrays, runtime="torch")
    assert all(fm._model is not None for fm in ens.members_)
    np.testing.assert_allclose(ov, pt, atol=1e-4)


def test_a_tampered_weights_file_is_refused_when_the_model_is_built(trained, tiny_data, tmp_path):
    from ensemble.files import RunError
    from ensemble.runfolder import load_run

    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    ens = load_run(run)
    weights = run / "members" / "a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match="model.safetensors: contents do not match"):
        ens.members_[0].model


def test_help_and_config_errors_import_no_torch(tmp_path):
    rc, heavy, _ = _in_fresh_process(["--help"])
    assert rc == 0 and heavy == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\nmembers: []\ncolour: red\n")
    rc, heavy, err = _in_fresh_process(
        ["train", str(bad), "--out", str(tmp_path / "run")], env={"EFFENS_CACHE": str(tmp_path / "cache")}
    )
    assert rc == 2 and "colour" in err and "Traceback" not in err
    assert not set(heavy) & {"torch", "timm", "sklearn", "torchvision"}, heavy


def test_timm_model_names_come_from_the_cache_once_checked(tmp_path, monkeypatch):
    import importlib.metadata

    from members import model_names

    monkeypatch.setenv("EFFENS_CACHE", str(tmp_path))
    cache = tmp_path / f"timm-{importlib.metadata.version('timm')}-models.json"
    assert model_names.model_name_problem("test_efficientnet") is None
    assert "test_efficientnet" in json.loads(cache.read_text())
    # a known name is answered from the file: a name planted there passes without timm
    cache.write_text(json.dumps(["planted_net"]))
    assert model_names.model_name_problem("planted_net") is None
    assert model_names.model_name_problem("planted_net.tag") is None
    # anything else is still checked by timm, with its hint
    problem = model_names.model_name_problem("efficientnet_b99")
    assert problem is not None and problem.startswith("is not a timm model name")
    cache.write_text("not json")  # a broken cache only makes the check slower
    assert model_names.model_name_problem("test_efficientnet") is None


def test_resolve_device_answers_cpu_without_torch_where_no_gpu_can_exist(monkeypatch):
    from members import inputs

    monkeypatch.setattr(inputs, "_gpu_nodes_present", lambda: False)
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch would now fail
    assert inputs.resolve_device("auto") == "cpu"
    assert inputs.resolve_device("cpu") == "cpu"
    with pytest.raises(inputs.DeviceError, match="device must be auto, cpu, cuda or cuda:N"):
        inputs.resolve_device("gpu")
