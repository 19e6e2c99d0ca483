"""Precision (auto/fp32/bf16/fp16), inference runtimes and ONNX / OpenVINO export."""

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import synth
import torch
import yaml

from ensemble.cli import main
from ensemble.runfolder import load_run
from members import precision as prec
from members import runtimes

DEMO_TEST = Path(__file__).resolve().parents[1] / "data" / "demo" / "test"
needs_ov = pytest.mark.skipif(not runtimes.is_installed("openvino"), reason="openvino is not installed")
needs_ort = pytest.mark.skipif(not runtimes.is_installed("onnxruntime"), reason="onnxruntime is not installed")


def _fake_cpu(monkeypatch, bf16: bool) -> None:
    feats = {"model": "test cpu", "capability": "AVX2", "avx512_bf16": bf16, "amx": False, "avx2": True}
    monkeypatch.setattr(prec, "cpu_features", lambda: feats)


# ---------------------------------------------------------------- precision
@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_never_depends_on_a_timing(monkeypatch, native):
    _fake_cpu(monkeypatch, native)
    monkeypatch.setattr(prec, "speedup", lambda *a, **k: pytest.fail("auto must not time anything"))
    p = prec.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and not p.uses_scaler
    assert ("`precision: bf16` may be faster" in p.reason) == native  # said, not done
    assert prec.resolve_precision("fp32", "cpu").dtype is None
    assert prec.resolve_precision("bf16", "cpu").name == "bf16"  # asked for: honoured


def test_speedup_times_the_probe_in_both_precisions():
    seen = []

    def probe(p):
        seen.append(p.name)
        time.sleep(0.004 if p.name == "fp32" else 0.001)

    assert prec.speedup(probe, repeats=2) > 1.5
    assert seen == ["fp32"] * 3 + ["bf16"] * 3


@pytest.mark.parametrize(
    "trained,native,expected",
    [
        ("bf16", True, "bf16"),
        ("bf16", False, "fp32"),
        ("fp32", True, "fp32"),
        ("fp16", True, "fp32"),
        (None, True, "fp32"),
    ],
)
def test_inference_auto_follows_the_trained_precision(monkeypatch, trained, native, expected):
    _fake_cpu(monkeypatch, native)
    assert prec.inference_precision("auto", trained, "cpu").name == expected
    assert prec.inference_precision("fp32", trained, "cpu").name == "fp32"


def test_a_resumed_member_keeps_the_precision_of_its_checkpoint(tmp_path):
    from ensemble.config import MemberConfig, TrainConfig
    from ensemble.metrics import selection_scores
    from ensemble.runfolder import MemberCheckpoint
    from members.models import create_member
    from members.trainer import TrainData, TrainRun, train_member
    from members.transforms import eval_tensor

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(12)]
    y = np.arange(12) % 3
    spec = MemberConfig(
        name="m",
        model="test_efficientnet",
        image_size=32,
        train=TrainConfig(epochs=2, batch_size=4, augment="none", warmup_epochs=0.0),
    )
    store = MemberCheckpoint(tmp_path, "fp")

    class Stop(Exception):
        pass

    real_save = store.save

    def save_then_stop(tensors, doc):
        real_save(tensors, doc)
        raise Stop

    store.save = save_then_stop
    member = create_member(spec, 3)
    data = TrainData(imgs, y, np.arange(12), eval_tensor(imgs[:3], member.inputs), y[:3])
    score = lambda yy, p: selection_scores(yy, p, 3)  # noqa: E731
    with pytest.raises(Stop):  # killed after epoch 1, trained in bf16
        train_member(
            member, spec.train, data, TrainRun("m", 0, torch.device("cpu"), score, prec.Precision("bf16", "cpu"), store)
        )
    assert json.loads(store.json_path.read_text())["precision"] == "bf16"
    store.save = real_save
    result = train_member(
        create_member(spec, 3),
        spec.train,
        data,
        TrainRun("m", 0, torch.device("cpu"), score, prec.Precision("fp32", "cpu"), store),
    )
    assert result.precision == "bf16" and len(result.history) == 2


def test_fp16_on_cpu_is_refused_and_emulated_bf16_warns_once(monkeypatch, caplog):
    _fake_cpu(monkeypatch, False)
    monkeypatch.setattr(prec, "_warned", set())
    with pytest.raises(prec.PrecisionError, match="fp16.*needs a CUDA device"):
        prec.resolve_precision("fp16", "cpu")
    with caplog.at_level(logging.WARNING, logger="members.precision"):
        assert prec.resolve_precision("bf16", "cpu").name == "bf16"
        prec.resolve_precision("bf16", "cpu")
    warnings = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "test cpu" in warnings[0].getMessage()


@pytest.mark.parametrize("bf16_ok,expected,scaler", [(True, "bf16", False), (False, "fp16", True)])
def test_cuda_auto_precision(monkeypatch, bf16_ok, expected, scaler):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    p = prec.resolve_precision("auto", "cuda")
    assert (p.name, p.uses_scaler) == (expected, scaler)
    if not bf16_ok:
        with pytest.raises(prec.PrecisionError, match="does not support bf16"):
            prec.resolve_precision("bf16", "cuda")


def test_bf16_autocast_really_runs_in_bf16():
    lin = torch.nn.Linear(4, 4)
    with prec.Precision("bf16", "cpu").autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with prec.Precision("fp32", "cpu").autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.float32


@pytest.fixture(scope="module")
def precision_runs(tiny_data, tmp_path_factory):
    """The same one-member config trained with precision fp32 and with bf16."""
    runs = {}
    for name in ("fp32", "bf16"):
        root = tmp_path_factory.mktemp(name)
        cfg = synth.tiny_config(tiny_data, epochs=1, precision=name)
        cfg["members"] = cfg["members"][:1]
        cfg["data"].pop("test")
        (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", str(root / "cfg.yaml"), "--out", str(root / "run"), "-q"]) == 0
        runs[name] = root / "run"
    return runs


def test_bf16_training_keeps_fp32_weights_and_records_precision(precision_runs):
    from safetensors.torch import load_file

    metas = {k: json.loads((r / "members/a/member.json").read_text()) for k, r in precision_runs.items()}
    assert metas["fp32"]["precision"] == "fp32" and metas["bf16"]["precision"] == "bf16"
    from members.allocator import keep_freed_memory  # what this process's trainings did, recorded

    assert metas["fp32"]["allocator"] == metas["bf16"]["allocator"] == keep_freed_memory()
    wa = load_file(str(precision_runs["fp32"] / "members/a/model.safetensors"))
    wb = load_file(str(precision_runs["bf16"] / "members/a/model.safetensors"))
    assert all(t.dtype == torch.float32 for t in wb.values() if t.is_floating_point())
    same = [np.load(r / "members/a/samples.npy") for r in precision_runs.values()]
    np.testing.assert_array_equal(*same)  # same seed and sample: only the precision differs ...
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if wa[k].is_floating_point())  # ... and it acts


def test_precision_change_needs_restart(precision_runs, tmp_path, caplog):
    run = precision_runs["fp32"]
    path = tmp_path / "cfg.yaml"
    path.write_text((run / "config.yaml").read_text())
    with caplog.at_level(logging.ERROR):
        assert main(["train", str(path), "--out", str(run), "--precision", "bf16", "-q"]) == 2
    assert "changed: precision" in caplog.text


# ---------------------------------------------------------------- runtimes
def _demo_images(ens, n: int = 12):
    from ensemble.data import find_images
    from ensemble.images import decode_all
    from ensemble.inference import decode_size

    paths = find_images(DEMO_TEST)[::7][:n]
    arrays, bad = decode_all(paths, decode_size(ens))
    assert not bad and len(arrays) == n
    return arrays


@pytest.mark.parametrize(
    "runtime", [pytest.param("openvino", marks=needs_ov), pytest.param("onnxruntime", marks=needs_ort)]
)
def test_runtimes_match_torch_fp32_on_real_images(trained, runtime):
    _, run = trained
    ens = load_run(str(run))
    imgs = _demo_images(ens)
    ref = ens.member_proba(imgs, runtime="torch", precision="fp32")
    got = ens.member_proba(imgs, runtime=runtime, precision="fp32", batch_size=5)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert (got.argmax(2) == ref.argmax(2)).all()
    assert (run / "cache" / "onnx" / "a.onnx").is_file()


@needs_ov
def test_openvino_bf16_runs_and_stays_close(trained):
    _, run = trained
    ens = load_run(str(run))
    imgs = _demo_images(ens)
    ref = ens.member_proba(imgs, runtime="torch", precision="fp32")
    got = ens.member_proba(imgs, runtime="openvino", precision="bf16")
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.sum(2), 1, atol=1e-3)
    assert np.abs(got - ref).max() < 0.1  # bf16 keeps ~3 significant digits


def test_auto_runtime_and_missing_runtime(monkeypatch):
    assert runtimes.resolve_runtime("auto", "cuda") == "torch"
    expected = "openvino" if runtimes.is_installed("openvino") else "torch"
    assert runtimes.resolve_runtime("auto", "cpu") == expected
    monkeypatch.setattr(runtimes, "is_installed", lambda name: name == "torch")
    assert runtimes.resolve_runtime("auto", "cpu") == "torch"
    with pytest.raises(runtimes.RuntimeUnavailable, match=r"pip install 'effens\[openvino\]'"):
        runtimes.resolve_runtime("openvino", "cpu")
    with pytest.raises(runtimes.RuntimeUnavailable, match="must be auto or one of"):
        runtimes.resolve_runtime("tensorrt", "cpu")


def test_onnxruntime_reports_the_fp32_it_runs():
    p = runtimes.runtime_precision("onnxruntime", prec.Precision("bf16", "cpu"))
    assert p.name == "fp32"
    assert runtimes.runtime_precision("openvino", prec.Precision("bf16", "cpu")).name == "bf16"


@needs_ov
def test_predict_with_openvino_and_evaluate_cache_keyed_by_runtime(trained, tiny_data, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                str(run),
                str(tiny_data / "test"),
                "--out",
                str(out),
                "--runtime",
                "openvino",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert "openvino fp32" in capsys.readouterr().out
    ev = tmp_path / "ev"
    assert main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(ev), "--runtime", "torch"]) == 0
    first = json.loads((ev / "metrics.json").read_text())["inference"]
    assert first["runtime"] == "torch"
    assert (
        main(
            [
                "evaluate",
                str(run),
                str(tiny_data / "test"),
                "--out",
                str(ev),
                "--runtime",
                "openvino",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    second = json.loads((ev / "metrics.json").read_text())["inference"]
    assert second == {"runtime": "openvino", "precision": ["fp32"] * 3, "adapt_bn": False}


@needs_ov
def test_tampered_runtime_cache_is_refused(trained, tmp_path, caplog):
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ens = load_run(str(copy))
    imgs = _demo_images(ens, 2)
    ens.member_proba(imgs, runtime="openvino", precision="fp32")
    onnx_file = copy / "cache/onnx/a.onnx"
    mtime = onnx_file.stat().st_mtime_ns
    load_run(str(copy)).member_proba(imgs, runtime="openvino", precision="fp32")
    assert onnx_file.stat().st_mtime_ns == mtime  # a second process reuses the export
    onnx_file.write_bytes(onnx_file.read_bytes() + b"x")
    with caplog.at_level(logging.ERROR):
        assert (
            main(["predict", str(copy), str(DEMO_TEST), "--out", str(tmp_path / "p.csv"), "--runtime", "openvino"]) == 2
        )
    assert "a.onnx: contents do not match" in caplog.text


def test_bad_runtime_and_precision_flags_exit_2(trained, tmp_path, caplog, capsys):
    _, run = trained
    with caplog.at_level(logging.ERROR):
        assert (
            main(["predict", str(run), str(DEMO_TEST), "--out", str(tmp_path / "p.csv"), "--runtime", "tensorrt"]) == 2
        )
    assert "must be auto or one of torch, openvino, onnxruntime; got 'tensorrt'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert (
            main(
                [
                    "predict",
                    str(run),
                    str(DEMO_TEST),
                    "--out",
                    str(tmp_path / "p.csv"),
                    "--precision",
                    "fp16",
                    "--runtime",
                    "torch",
                ]
            )
            == 2
        )
    assert "fp16` needs a CUDA device" in caplog.text
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- export
def _normalised(ens, imgs, fm) -> np.ndarray:
    from members.transforms import eval_tensor, normalize

    return normalize(eval_tensor(imgs, fm.inputs), fm.inputs).contiguous().numpy()


@needs_ort
@pytest.mark.parametrize("strategy", ["soft", "weighted", "stacking", "greedy"])
def test_export_onnx_matches_torch(trained, tmp_path, strategy):
    import onnxruntime as ort

    _, run = trained
    out = tmp_path / "exp"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--strategy", strategy]) == 0
    ens = load_run(str(run))
    imgs = _demo_images(ens)
    ref = ens.member_proba(imgs, runtime="torch", precision="fp32")
    for j, fm in enumerate(ens.members_):
        meta = json.loads((out / f"{fm.name}.json").read_text())
        assert meta["image_size"] == fm.inputs.image_size and meta["classes"] == ens.classes_
        assert meta["mean"] == list(fm.inputs.mean) and meta["view"] == "crop"
        sess = ort.InferenceSession(str(out / f"{fm.name}.onnx"), providers=["CPUExecutionProvider"])
        x = _normalised(ens, imgs, fm)
        for batch in (x[:1], x):  # the batch axis is dynamic
            got = sess.run(None, {"image": batch})[0]
            np.testing.assert_allclose(got, ref[j, : len(batch)], atol=1e-4)
            assert (got.argmax(1) == ref[j, : len(batch)].argmax(1)).all()
    # all tiny members share one input geometry: the graph sees exactly their inputs
    sess = ort.InferenceSession(str(out / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": _normalised(ens, imgs, ens.members_[0])})[0]
    _, want = ens.combiner_.apply(ref, strategy)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["strategy"] == strategy
    from ensemble.files import sha256_file

    assert all(sha256_file(out / f) == h for f, h in manifest["files"].items())


@needs_ort
def test_ensemble_graph_with_mixed_sizes_and_calibration_matches_its_torch_module(trained):
    import io

    import onnxruntime as ort

    from ensemble.combining.graph_heads import WeightedMean
    from ensemble.export import EnsembleGraph
    from members.export import export_onnx_bytes
    from members.models import InputConfig

    _, run = trained
    ens = load_run(str(run))
    inputs = [
        InputConfig(32, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3),
        InputConfig(24, 0.875, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        InputConfig(32, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3),
    ]
    graph = EnsembleGraph(
        [fm.model.float() for fm in ens.members_], inputs, WeightedMean([0.2, 0.3, 0.5]), [0.7, 1.0, 1.6]
    ).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = graph(x).numpy()
    data = export_onnx_bytes(graph, torch.zeros(2, 3, 32, 32), "graph", ["image"], ["proba"])
    sess = ort.InferenceSession(io.BytesIO(data).getvalue(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"image": x.numpy()})[0], want, atol=1e-4)
    np.testing.assert_allclose(want.sum(1), 1, atol=1e-5)


@needs_ov
def test_export_openvino_ir_runs(trained, tmp_path):
    _, run = trained
    out = tmp_path / "ov"
    assert main(["export", str(run), "--format", "openvino", "--out", str(out)]) == 0
    ens = load_run(str(run))
    imgs = _demo_images(ens, 4)
    ref = ens.member_proba(imgs, runtime="torch", precision="fp32")
    compiled = runtimes._openvino_core().compile_model(str(out / "a.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(_normalised(ens, imgs, ens.members_[0]))[0]
    np.testing.assert_allclose(got, ref[0], atol=1e-4)
    assert {"a.xml", "a.bin", "ensemble.xml", "ensemble.bin", "export.json"} <= {p.name for p in out.iterdir()}


def test_export_never_writes_over_foreign_files(trained, tmp_path, caplog):
    _, run = trained
    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with caplog.at_level(logging.ERROR):
        assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 2
    assert "notes.txt: not written by effens export" in caplog.text
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    again = tmp_path / "again"
    assert main(["export", str(run), "--format", "onnx", "--out", str(again)]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(again)]) == 0  # its own files


def test_export_of_hard_voting_holds_soft_and_explicit_hard_is_refused(trained, caplog):
    from ensemble.export import ExportRefused, graph_strategy

    _, run = trained
    ens = load_run(str(run))
    ens.combiner_.strategy = "hard"
    with caplog.at_level(logging.WARNING):
        assert graph_strategy(ens, None) == "soft"
    assert "no one-graph form" in caplog.text
    with pytest.raises(ExportRefused, match="must be one of soft, weighted, stacking, greedy; got 'hard'"):
        graph_strategy(ens, "hard")


def test_export_failure_names_the_member_and_the_operator():
    from members.export import ExportError, export_onnx_bytes

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.special.airy_ai(x).mean((2, 3))

    with pytest.raises(ExportError, match=r"member odd: ONNX export failed .*'aten::special_airy_ai'"):
        export_onnx_bytes(Odd(), torch.zeros(2, 3, 8, 8), "member odd", ["image"], ["proba"])


def test_cli_choices_mirror_their_modules():
    """The CLI spells these out so that `--help` loads no torch; they must stay equal."""
    from typing import get_args, get_type_hints

    from ensemble import export
    from ensemble.commands import options as cli
    from ensemble.config import Config, MemberConfig

    assert cli.PRECISIONS == prec.PRECISIONS
    assert cli.FORMATS == export.FORMATS
    assert get_args(get_type_hints(Config)["precision"]) == prec.PRECISIONS
    member = [a for a in get_args(get_type_hints(MemberConfig)["precision"]) if a is not type(None)]
    assert len(member) == 1 and get_args(member[0]) == prec.PRECISIONS


def test_step_probe_runs_both_precisions_and_leaves_the_member_alone():
    from ensemble.config import MemberConfig
    from members.models import create_member
    from members.trainer import step_probe

    member = create_member(MemberConfig(name="m", model="test_efficientnet", image_size=32), 3)
    before = {k: v.clone() for k, v in member.model.state_dict().items()}
    probe = step_probe(member, 4, 32, torch.device("cpu"))
    rng_before = torch.get_rng_state()
    for name in ("fp32", "bf16"):
        probe(prec.Precision(name, "cpu"))
    assert torch.equal(rng_before, torch.get_rng_state())  # training's seeded draws are untouched
    after = member.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert all(p.grad is None for p in member.model.parameters())
    assert prec.speedup(probe, repeats=1) > 0


def test_two_trainings_under_a_fast_and_a_slow_probe_give_identical_weights(tiny_data, tmp_path, monkeypatch):
    """`precision: auto` cannot flip with machine load: what a timing would read is irrelevant."""
    import hashlib

    import synth
    import yaml

    from ensemble.cli import main

    _fake_cpu(monkeypatch, True)  # a CPU with native bf16, where the old probe decided
    raw = synth.tiny_config(tiny_data, epochs=1, precision="auto")
    raw["members"] = raw["members"][:1]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    digests, reasons = [], []
    for k, ratio in enumerate((0.2, 5.0)):  # "the machine is loaded" / "bf16 is 5x faster"
        monkeypatch.setattr(prec, "speedup", lambda *a, _r=ratio, **kw: _r)
        out = tmp_path / f"run{k}"
        assert main(["train", str(cfg), "--out", str(out)]) == 0
        digests.append(hashlib.sha256((out / "members/a/model.safetensors").read_bytes()).hexdigest())
        reasons.append(json.loads((out / "members/a/member.json").read_text()).get("precision"))
    assert digests[0] == digests[1]
    assert reasons == ["fp32", "fp32"]
