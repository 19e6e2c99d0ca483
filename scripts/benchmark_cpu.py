"""CPU speed, side by side in one process: effens' runtimes and precisions vs plain loops.

    python scripts/benchmark_cpu.py --run RUN --images ../shared/data/vds/val \
        --train-config configs/vds.yaml --data ../shared/data/vds --out runs/cpu-bench.json

(a) End-to-end prediction (file paths -> ensemble probabilities, decoding included) of
    every member of RUN over --images: effens with each runtime x precision against the
    plain loop (timm model + torchvision-style dataset + DataLoader, per member, fp32),
    plus each path's prediction agreement with effens' torch fp32 path.
(b) Training images/s of the first member of --train-config: effens (precision auto,
    i.e. what `effens train` picks on this CPU, and fp32) vs the plain loop, same model,
    resolution, batch and augmentation (scripts/benchmark_vds.py's `throughput`).
(c) Achieved GFLOP/s of each member's forward pass (FLOPs counted by torch) per runtime
    and precision, next to this machine's matmul peak measured here (torch.mm, fp32 and
    bf16).

Compilation (ONNX export, OpenVINO compile) happens once per run and process and is
timed separately; the best of --repeats passes counts. The CPU model and its bf16
flags are recorded with the figures.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import report_json  # noqa: E402
from benchmark_predict import plain_proba  # noqa: E402

from ensemble.data import find_images  # noqa: E402
from ensemble.estimator import BaggedEnsemble
from ensemble.images import decode_all  # noqa: E402
from ensemble.inference import decode_size  # noqa: E402
from ensemble.runfolder import load_run  # noqa: E402
from members.precision import cpu_features, cpu_has_native_bf16  # noqa: E402
from members.runtimes import RUNTIMES, is_installed, runtime_proba  # noqa: E402

log = logging.getLogger("benchmark_cpu")


def paths_to_proba(ens: BaggedEnsemble, paths: list[str], batch: int, runtime: str, precision: str) -> np.ndarray:
    arrays, _ = decode_all(paths, decode_size(ens), on_bad="skip")
    return ens.member_proba(arrays, batch_size=batch, device="cpu", runtime=runtime, precision=precision).mean(axis=0)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matrix product in ``dtype`` (best of ``repeats``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def forward_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one image through ``model`` (torch's counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def model_only_img_s(ens: BaggedEnsemble, index: int, runtime: str, precision: str, batch: int, repeats: int) -> float:
    """Images/s of one member's network alone on a prepared batch (no decoding)."""
    fm = ens.members_[index]
    rt = ens._runtime(index, runtime, precision, torch.device("cpu"))
    x = torch.randint(0, 255, (batch, 3, fm.inputs.image_size, fm.inputs.image_size), dtype=torch.uint8)
    runtime_proba(rt, x, batch)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime_proba(rt, x, batch)
        best = min(best, time.perf_counter() - t0)
    return batch / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a trained run folder (e.g. of configs/vds.yaml)")
    p.add_argument("--images", default="../shared/data/vds/val")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-config", default="configs/vds.yaml")
    p.add_argument("--data", default="../shared/data/vds")
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--skip", action="append", default=[], choices=["a", "b", "c"])
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res: dict = {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "cpu": cpu_features(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    ens = load_run(args.run)
    res["members"] = {
        fm.name: {"model": fm.meta["architecture"], "image_size": fm.inputs.image_size} for fm in ens.members_
    }
    precisions = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    paths_ = [(rt, pr) for rt in RUNTIMES if is_installed(rt) for pr in precisions if pr in RUNTIMES[rt].precisions]

    if "a" not in args.skip:
        paths = find_images(args.images)
        res["a"] = {"images": len(paths), "batch_size": args.batch_size, "effens": {}}
        compile_s = {}
        for rt, pr in paths_:  # compile once per process (not timed as throughput)
            t0 = time.perf_counter()
            paths_to_proba(ens, paths[:4], args.batch_size, rt, pr)
            compile_s[f"{rt} {pr}"] = time.perf_counter() - t0
        plain_proba(ens, paths[:8], args.batch_size, 0)
        timings: dict[str, float] = {}
        preds: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for rt, pr in paths_:
                t0 = time.perf_counter()
                proba = paths_to_proba(ens, paths, args.batch_size, rt, pr)
                key = f"{rt} {pr}"
                timings[key] = min(timings.get(key, float("inf")), time.perf_counter() - t0)
                preds[key] = proba.argmax(1)
            for workers in (0, 2):
                t0 = time.perf_counter()
                proba = plain_proba(ens, paths, args.batch_size, workers)
                key = f"plain workers={workers}"
                timings[key] = min(timings.get(key, float("inf")), time.perf_counter() - t0)
                preds[key] = proba.argmax(1)
            log.info("(a) pass done: %s", {k: round(len(paths) / v, 1) for k, v in timings.items()})
        ref = preds["torch fp32"]
        for key, t in timings.items():
            group = "plain" if key.startswith("plain") else "effens"
            res["a"].setdefault(group, {})[key] = {
                "img_s": len(paths) / t,
                "agreement_with_torch_fp32": float(np.mean(preds[key] == ref)),
                **({"compile_s": compile_s[key]} if key in compile_s else {}),
            }
        best = max(res["a"]["effens"], key=lambda k: res["a"]["effens"][k]["img_s"])
        plain_best = max(v["img_s"] for v in res["a"]["plain"].values())
        res["a"]["best_effens"] = best
        res["a"]["ratio_best_vs_plain"] = res["a"]["effens"][best]["img_s"] / plain_best
        log.info("(a) best %s: %.2fx the plain loop", best, res["a"]["ratio_best_vs_plain"])

    if "c" not in args.skip:
        peaks = {"fp32": matmul_peak(torch.float32)}
        if "bf16" in precisions:
            peaks["bf16"] = matmul_peak(torch.bfloat16)
        res["c"] = {"matmul_peak_gflop_s": peaks, "members": {}}
        for j, fm in enumerate(ens.members_):
            flops = forward_flops(copy.deepcopy(fm.model).float(), fm.inputs.image_size)
            row = {"gflop_per_image": flops / 1e9}
            for rt, pr in paths_:
                ips = model_only_img_s(ens, j, rt, pr, args.batch_size, args.repeats)
                row[f"{rt} {pr}"] = {
                    "img_s": ips,
                    "gflop_s": ips * flops / 1e9,
                    "share_of_peak": ips * flops / 1e9 / peaks[pr],
                }
            res["c"]["members"][fm.name] = row
            log.info("(c) %s: %s", fm.name, {k: round(v["gflop_s"], 1) for k, v in row.items() if isinstance(v, dict)})

    if "b" not in args.skip:
        from benchmark_vds import throughput

        from ensemble.config import load_config

        data = Path(args.data).resolve()
        cfg = load_config(args.train_config, [f"data.train={data / 'train'}", f"data.val={data / 'val'}"])
        classes = sorted(q.name for q in (data / "train").iterdir() if q.is_dir())
        spec = cfg.members[0]
        res["b"] = {}
        for pr in dict.fromkeys([spec.precision or cfg.precision, "fp32"]):
            res["b"][pr] = throughput(spec, data / "train", args.train_images, classes, pr)
            log.info(
                "(b) %s: effens %.1f img/s (%s), plain %.1f img/s -> %.2fx",
                pr,
                res["b"][pr]["effens_img_s"],
                res["b"][pr]["effens_precision"],
                res["b"][pr]["plain_img_s"],
                res["b"][pr]["ratio"],
            )
    report_json(res, args.out)


if __name__ == "__main__":
    main()
