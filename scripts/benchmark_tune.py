"""Tuning cost: `effens tune` (16 candidates, cached features) against 16 full trainings.

    python scripts/benchmark_tune.py --config configs/vds-tune.yaml --out runs/vds-tune-bench

Runs `effens tune CONFIG` and one `effens train CONFIG` (the cost of one candidate done
the plain way), then writes OUT/results.json with both times and
tune_s / (candidates x train_s).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ensemble.training import train_run
from ensemble.tuning import table_text, tune_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/vds-tune.yaml")
    p.add_argument("--out", default="runs/vds-tune-bench")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    out = Path(args.out)
    t0 = time.perf_counter()
    summary = tune_run(args.config, str(out / "tune"), args.overrides)
    tune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_run(args.config, str(out / "train"), overrides=args.overrides)
    train_s = time.perf_counter() - t0
    n = summary["candidates"]
    res = {
        "candidates": n,
        "tune_s": tune_s,
        "one_train_s": train_s,
        "ratio_vs_n_trainings": tune_s / (n * train_s),
        "best": summary["best"],
    }
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    names = [k[:-6] for k in summary["best"] if k.endswith("_ratio")]
    print(table_text(summary["rows"], names, top=n))
    print(json.dumps({k: v for k, v in res.items() if k != "best"}, indent=2))


if __name__ == "__main__":
    main()
