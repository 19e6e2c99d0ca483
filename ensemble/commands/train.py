"""``effens train CONFIG --out RUN``: train an ensemble from a YAML config."""

from __future__ import annotations

import sys
import time

from . import command, options


def arguments(p) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("--out", required=True, help="run folder (created; reused to resume)")
    options.add_overrides(p)
    p.add_argument("--device", help="override `device` (auto, cpu, cuda, cuda:N)")
    p.add_argument("--restart", action="store_true", help="start over in a run folder whose saved config differs")
    p.add_argument("--precision", choices=options.PRECISIONS, help="override `precision` (training and inference)")
    options.add_tracking(p)
    options.add_parallel(p)


def run(args) -> int:
    from ..reporting.markdown import format_table, summary_rows
    from ..runfolder import RunFolder
    from ..training import train_run

    overrides = list(args.overrides) + options.run_overrides(args)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.precision:
        overrides.append(f"precision={args.precision}")
    t0 = time.perf_counter()
    doc = train_run(args.config, args.out, overrides=overrides, restart=args.restart)
    sys.stdout.write("\n" + format_table(summary_rows(doc)) + "\n")
    sys.stdout.write(f"\nreport: {RunFolder(args.out).report_path}  ({time.perf_counter() - t0:.0f} s)\n")
    return 0


command(
    "train",
    "train an ensemble from a YAML config",
    arguments,
    run,
    backend="training",
    output="run",
    reads_data=True,
    position=10,
)
