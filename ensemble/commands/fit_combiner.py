"""``effens fit-combiner RUN``: refit a run's weights, stacking and calibration."""

from __future__ import annotations

import sys

from . import command, options


def arguments(p) -> None:
    p.add_argument("run", help=options.RUN_HELP)
    options.add_overrides(p, "combiner.stacking.source=oob", "combiner.KEY=VALUE", "change a combiner setting first")


def run(args) -> int:
    from ..reporting.markdown import format_table, summary_rows
    from ..training import refit_run_combiner

    doc = refit_run_combiner(args.run, args.overrides)
    sys.stdout.write("\n" + format_table(summary_rows(doc)) + "\n")
    return 0


command(
    "fit-combiner",
    "refit weights, stacking and calibration of a run",
    arguments,
    run,
    backend="training",
    output=None,
    position=60,
)
