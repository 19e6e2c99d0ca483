"""What keeping freed buffers (members/allocator.py) does to a training step and an inference batch.

    python scripts/benchmark_allocator.py --rounds 3 --out allocator.json

Each measurement runs in its own process, once with the C allocator as glibc leaves it
(``EFFENS_MALLOC=system``) and once as effens sets it, the two interleaved over
``--rounds`` rounds (their order alternating). A training step: Lite0 at 224 px, batch 32, fp32, channels_last,
stem + 2 blocks frozen as in configs/vds.yaml, fixed random batches. An inference batch:
Lite2 at 240 px, batch 64 (the eval batch size), torch runtime, fp32. Reported per
setting: the median step time over the rounds (each round's median of ``--steps`` steps
after two warm-up steps), minor page faults and peak RSS of the process. The CPU model
and flags go with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(kind: str, steps: int) -> dict:
    """One process's measurement (the allocator is set before the first big buffer)."""
    import resource

    import torch

    from ensemble.config import MemberConfig, TrainConfig
    from members.allocator import keep_freed_memory
    from members.models import create_member
    from members.precision import describe_cpu
    from members.runtimes import TorchRuntime
    from members.trainer import param_groups

    state = keep_freed_memory()
    torch.manual_seed(0)
    times = []
    if kind == "train":
        spec = MemberConfig(
            name="m", model="tf_efficientnet_lite0", image_size=224, weights="none", train=TrainConfig(freeze=2)
        )
        member = create_member(spec, 3)
        model = member.model.to(memory_format=torch.channels_last).train()
        for m in member.frozen:
            m.eval()
        opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.01), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 3, (32,))
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    else:
        spec = MemberConfig(name="m", model="tf_efficientnet_lite2", image_size=240, weights="none")
        member = create_member(spec, 3)
        from members.precision import resolve_precision

        rt = TorchRuntime(member.model, member.inputs, None, torch.device("cpu"), resolve_precision("fp32", "cpu"))
        x = torch.randint(0, 255, (64, 3, 240, 240), dtype=torch.uint8).numpy()
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            rt.run(x)
            times.append(time.perf_counter() - t0)
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "allocator": state,
        "step_s": statistics.median(times[2:]),
        "minor_faults": use.ru_minflt,
        "peak_rss_mb": use.ru_maxrss / 1024,
        "cpu": describe_cpu(),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out")
    p.add_argument("--child", choices=("train", "infer"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    rows: dict = {}
    for r in range(args.rounds):
        for kind in ("train", "infer"):
            for setting in ("system", "effens") if r % 2 == 0 else ("effens", "system"):
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                env.pop("EFFENS_MALLOC", None)
                if setting == "system":
                    env["EFFENS_MALLOC"] = "system"
                out = subprocess.run(
                    [sys.executable, __file__, "--child", kind, "--steps", str(args.steps)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                res = json.loads(out.stdout.strip().splitlines()[-1])
                rows.setdefault(kind, {}).setdefault(setting, []).append(res)
                print(
                    f"round {r + 1} {kind} {setting}: {res['step_s']:.3f} s, {res['minor_faults']} minor faults, "
                    f"{res['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    summary = {}
    for kind, by in rows.items():
        med = {s: statistics.median(x["step_s"] for x in v) for s, v in by.items()}
        summary[kind] = {
            s: {
                "step_s": round(med[s], 4),
                "minor_faults": int(statistics.median(x["minor_faults"] for x in v)),
                "peak_rss_mb": round(max(x["peak_rss_mb"] for x in v)),
            }
            for s, v in by.items()
        }
        summary[kind]["speedup"] = round(med["system"] / med["effens"], 3)
    doc = {
        "summary": summary,
        "cpu": rows["train"]["system"][0]["cpu"],
        "rounds": args.rounds,
        "steps": args.steps,
        "runs": rows,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
