"""effens command line: ``effens train CONFIG --out RUN [--set KEY=VALUE ...]``."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import __version__

log = logging.getLogger("effens")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("effens", "ensemble", "members"):
        logging.getLogger(name).setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effens", description="Bagged ensembles of EfficientNet classifiers.")
    p.add_argument("--version", action="version", version=f"effens {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an ensemble from a YAML config")
    t.add_argument("config", help="YAML config file")
    t.add_argument("--out", required=True, help="run folder (created; reused to resume)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. members.0.train.epochs=1 (repeatable)")
    t.add_argument("--device", help="override `device` (auto, cpu, cuda, cuda:N)")
    t.add_argument("--restart", action="store_true",
                   help="start over in a run folder whose saved config differs")
    for q in (t,):
        q.add_argument("-v", "--verbose", action="count", default=0)
        q.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    from .config import ConfigError
    from .data import DataError
    from .images import BadImageError
    from .run import RunError

    try:
        if args.command == "train":
            return cmd_train(args)
    except (ConfigError, DataError, BadImageError, RunError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # known failures from members
        from members.trainer import TrainingError
        from members.weights import WeightsError

        if isinstance(exc, (TrainingError, WeightsError)):
            log.error("%s", exc)
            return 2
        raise
    return 1


def cmd_train(args) -> int:
    from .training import train_run

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    t0 = time.perf_counter()
    doc = train_run(args.config, args.out, overrides=overrides, restart=args.restart)
    from .report import format_table, summary_rows

    sys.stdout.write("\n" + format_table(summary_rows(doc)) + "\n")
    sys.stdout.write(f"\nreport: {Path(args.out) / 'report' / 'report.md'}  "
                     f"({time.perf_counter() - t0:.0f} s)\n")
    return 0
