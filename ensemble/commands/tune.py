"""``effens tune CONFIG --out DIR``: search the members' bagging ratios."""

from __future__ import annotations

import sys
from pathlib import Path

from . import command, options


def arguments(p) -> None:
    p.add_argument("config", help="YAML config file (its `tune:` block)")
    p.add_argument("--out", required=True, help="output folder (reused to resume)")
    options.add_overrides(p, "tune.method=halving")
    p.add_argument(
        "--yes",
        action="store_true",
        help="try more than 1,000 candidates (refused otherwise, with the count and a time estimate)",
    )
    options.add_tracking(p)
    options.add_parallel(p)


def run(args) -> int:
    from ..tuning import table_text, tune_run

    summary = tune_run(args.config, args.out, list(args.overrides) + options.run_overrides(args), yes=args.yes)
    names = [k[:-6] for k in summary["best"] if k.endswith("_ratio")]
    sys.stdout.write("\n" + table_text(summary["rows"], names) + "\n")
    sys.stdout.write(
        f"\nbest: {summary['best']['candidate']} ({summary['best']['ensemble_score']:.4f}) "
        f"-> {Path(args.out) / 'best.yaml'}  ({summary['seconds']:.0f} s)\n"
    )
    return 0


command("tune", "search the members' bagging ratios", arguments, run, backend="tuning", reads_data=True, position=70)
