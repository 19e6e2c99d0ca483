"""``effens distill RUN --out DIR``: one network taught by a trained ensemble (a run of one member)."""

from __future__ import annotations

import sys
import time

from . import command, options


def arguments(p) -> None:
    from ..combining.strategies import strategy_names

    p.add_argument("run", help="the teacher: " + options.RUN_HELP)
    p.add_argument("--out", required=True, help="the student's run folder (created; reused to resume)")
    p.add_argument(
        "--config",
        dest="distill_config",
        metavar="FILE",
        help="a YAML file holding a `distill:` section (default: the run's config's)",
    )
    options.add_overrides(p, example="distill.temperature=4", what="override a `distill.*` key")
    options.add_strategy(p, strategy_names(), "the teacher: this strategy of the run (default: its default)")
    p.add_argument(
        "--unlabelled",
        metavar="DIR|CSV",
        help="photos only the teacher labels: a folder (recursive) or a CSV manifest with a `path` "
        "column; unreadable ones and copies of val/test photos are left out with a count",
    )
    p.add_argument("--device", help="override `device` (auto, cpu, cuda, cuda:N)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over in a student folder made with other settings or another teacher",
    )


def run(args) -> int:
    from ..distill import distill_run
    from ..reporting.markdown import distill_rows, format_table
    from ..runfolder import RunFolder

    t0 = time.perf_counter()
    doc = distill_run(
        args.run,
        args.out,
        args.distill_config,
        args.overrides,
        args.strategy,
        args.unlabelled,
        args.device,
        args.restart,
    )
    sys.stdout.write("\n" + format_table(distill_rows(doc["distill"])) + "\n")
    sys.stdout.write(f"\nreport: {RunFolder(args.out).report_path}  ({time.perf_counter() - t0:.0f} s)\n")
    return 0


command(
    "distill",
    "teach one network the ensemble's answers (a run of one member)",
    arguments,
    run,
    backend="distill",
    output="run",
    inputs=("run", "distill_config", "unlabelled"),
    reads_data=True,
    position=15,
)
