"""``effens evaluate RUN DATA --out DIR``: every member and strategy on labelled data."""

from __future__ import annotations

import sys
from pathlib import Path

from . import command, options


def arguments(p) -> None:
    from ..combining.strategies import strategy_names

    p.add_argument("run", help=options.RUN_HELP)
    p.add_argument("data", help="a folder of class folders or a CSV manifest (path, label)")
    options.add_strategy(p, strategy_names() + ("all",), None, default="all")
    p.add_argument("--out", required=True, help="report folder (also caches member probabilities)")
    options.add_inference(p)
    options.add_tracking(p)


def run(args) -> int:
    from ..inference import run_evaluate
    from ..runfolder import REPORT_NAME

    doc = run_evaluate(
        args.run,
        args.data,
        args.out,
        args.strategy,
        options.inference(args),
        tracking=options.tracking_overrides(args.tracking),
    )
    sys.stdout.write("\n" + doc["_table"] + "\n")
    n_skip = len(doc["skipped_images"].get("eval", []))
    sys.stdout.write(
        f"\nreport: {Path(args.out) / REPORT_NAME}"
        + (f"  ({n_skip} unreadable images skipped, listed there)" if n_skip else "")
        + "\n"
    )
    return 0


command(
    "evaluate",
    "report every member and strategy on labelled data",
    arguments,
    run,
    backend="inference",
    reads_data=True,
    position=30,
)
