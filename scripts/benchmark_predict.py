"""Inference throughput: effens vs the obvious per-model loop.

    python scripts/benchmark_predict.py --run runs/demo --images ../shared/data/vds/val

effens: each image decoded once (JPEG draft mode, threads) and resized per member from
that array; batches through each member under inference_mode with channels_last.
Alternative: for each member, a torchvision ImageFolder-style dataset (PIL decode,
Resize, CenterCrop, ToTensor, Normalize) and a DataLoader, the model under no_grad,
then the probabilities averaged. Both are timed end to end from file paths.
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import time

import numpy as np
import torch
from bench_common import report_json

from ensemble.data import find_images
from ensemble.estimator import BaggedEnsemble
from ensemble.images import decode_all
from ensemble.inference import decode_size
from ensemble.runfolder import load_run


def effens_proba(ens: BaggedEnsemble, paths: list[str], batch: int) -> np.ndarray:
    arrays, _ = decode_all(paths, decode_size(ens), on_bad="skip")
    return ens.member_proba(arrays, batch_size=batch, device="cpu").mean(axis=0)


def plain_proba(ens: BaggedEnsemble, paths: list[str], batch: int, workers: int) -> np.ndarray:
    from bench_common import FileDataset
    from torchvision import transforms as T

    out = []
    for fm in ens.members_:
        inp = fm.inputs
        tf = T.Compose(
            [
                T.Resize(inp.resize_size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(inp.image_size),
                T.ToTensor(),
                T.Normalize(inp.mean, inp.std),
            ]
        )
        loader = torch.utils.data.DataLoader(FileDataset(paths, tf), batch_size=batch, num_workers=workers)
        # its own copy in the default memory format: effens converts its models in place
        model = copy.deepcopy(fm.model).to(memory_format=torch.contiguous_format).eval()
        probs = []
        with torch.no_grad():
            for x in loader:
                probs.append(model(x).softmax(1))
        out.append(torch.cat(probs).numpy())
    return np.mean(out, axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--images", default="../shared/data/vds/val")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ens = load_run(args.run)
    paths = find_images(args.images)
    effens_proba(ens, paths[:32], args.batch_size)  # warm-up (allocator, lazy imports)
    plain_proba(ens, paths[:32], args.batch_size, 0)
    res: dict = {
        "images": len(paths),
        "members": [fm.meta["architecture"] for fm in ens.members_],
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    timings: dict[str, list[float]] = {"effens": [], "plain_workers0": [], "plain_workers2": []}
    for _ in range(args.repeats):
        for name, fn in (
            ("effens", lambda: effens_proba(ens, paths, args.batch_size)),
            ("plain_workers0", lambda: plain_proba(ens, paths, args.batch_size, 0)),
            ("plain_workers2", lambda: plain_proba(ens, paths, args.batch_size, 2)),
        ):
            t0 = time.perf_counter()
            proba = fn()
            timings[name].append(time.perf_counter() - t0)
            res.setdefault("pred_" + name, proba.argmax(1))
    for name, ts in timings.items():
        res[f"{name}_img_s"] = len(paths) / min(ts)
    res["agreement_plain_vs_effens"] = float(np.mean(res.pop("pred_effens") == res.pop("pred_plain_workers0")))
    res.pop("pred_plain_workers2")
    res["speedup_vs_workers0"] = res["effens_img_s"] / res["plain_workers0_img_s"]
    res["speedup_vs_workers2"] = res["effens_img_s"] / res["plain_workers2_img_s"]
    report_json(res, args.out)


if __name__ == "__main__":
    main()
