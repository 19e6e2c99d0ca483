"""Does ``torch.compile`` pay for effens' training step on this CPU? (issue #23, item 3)

    python scripts/benchmark_compile.py --model tf_efficientnet_lite0 --size 224 --batch 32 --steps 12

Times the training step (forward, loss, backward, AdamW) of one member on fixed random
batches, side by side in one process: eager vs ``torch.compile`` (inductor), both fp32 and
channels_last, the first ``--freeze`` blocks frozen as in configs/vds.yaml. Reported: the
compile time (the first compiled steps), the steady step time of each, and the number of
steps after which the compiled path has paid back its compile time. The CPU model and
flags go with the figures.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def step_fn(model, opt, loss_fn):
    def step(x, y):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def timed_steps(step, batches, n: int) -> list[float]:
    out = []
    for i in range(n):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        step(x, y)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--freeze", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out")
    args = p.parse_args()
    import timm
    from bench_common import report_json

    from members.models import frozen_modules
    from members.precision import describe_cpu

    torch.manual_seed(0)
    base = timm.create_model(args.model, num_classes=3).to(memory_format=torch.channels_last)
    for m in frozen_modules(base, args.freeze):
        for q in m.parameters():
            q.requires_grad_(False)
    batches = [
        (
            torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 3, (args.batch,)),
        )
        for _ in range(2)
    ]
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    res = {"cpu": describe_cpu(), "torch": torch.__version__, "threads": torch.get_num_threads(), **vars(args)}
    for name in ("eager", "compiled"):
        model = copy.deepcopy(base).train()
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        step = step_fn(model, opt, loss_fn)
        if name == "compiled":
            step = torch.compile(step)
        t0 = time.perf_counter()
        warm = timed_steps(step, batches, 2)
        res[f"{name}_first_two_steps_s"] = round(time.perf_counter() - t0, 2)
        times = timed_steps(step, batches, args.steps)
        res[f"{name}_step_s"] = round(sorted(times)[len(times) // 2], 4)
        print(name, res[f"{name}_first_two_steps_s"], res[f"{name}_step_s"], flush=True)
        del warm
    gain = res["eager_step_s"] - res["compiled_step_s"]
    res["speedup"] = round(res["eager_step_s"] / res["compiled_step_s"], 3)
    extra = res["compiled_first_two_steps_s"] - res["eager_first_two_steps_s"]
    res["break_even_steps"] = round(extra / gain) if gain > 0 else None
    report_json(res, args.out)


if __name__ == "__main__":
    main()
