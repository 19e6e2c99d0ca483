"""Members sequentially vs concurrently: three tiny members on generated images.

    python scripts/benchmark_parallel.py --out runs/parallel-bench

Trains the same three-member config (timm's test_efficientnet at 64 px on 3 x 60
generated 96 px images, 6 epochs) with `sequential` and with `loky` x 2 jobs, timing
each `effens train`, and writes OUT/results.json. `--config configs/demo.yaml` times
that config instead (three Lite members on the demo photos).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import synth  # noqa: E402

from ensemble.training import train_run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/parallel-bench")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--config", help="time this config instead of the generated tiny one")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    if args.config:
        path = Path(args.config)
    else:
        data = out / "data"
        if not data.exists():
            synth.make_folder(data / "train", 60, seed=1, size=96)
            synth.make_folder(data / "val", 20, seed=2, size=96)
        cfg = synth.tiny_config(data, epochs=6)
        del cfg["data"]["test"]
        for m in cfg["members"]:
            m["image_size"] = 64
        out.mkdir(parents=True, exist_ok=True)
        path = out / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
    res = {}
    for backend, jobs in (("sequential", 1), ("loky", args.jobs)):
        t0 = time.perf_counter()
        train_run(
            str(path),
            str(out / backend),
            overrides=[f"parallel.backend={backend}", f"parallel.n_jobs={jobs}"],
            restart=True,
        )
        res[f"{backend}_x{jobs}_s"] = time.perf_counter() - t0
    res["speedup"] = res["sequential_x1_s"] / res[f"loky_x{args.jobs}_s"]
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
