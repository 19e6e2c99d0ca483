"""``effens predict RUN INPUT... --out FILE``: predict images with a trained run."""

from __future__ import annotations

import sys

from . import command, options


def arguments(p) -> None:
    from ..combining.strategies import strategy_names

    p.add_argument("run", help=options.RUN_HELP)
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or CSV manifests")
    options.add_strategy(
        p, strategy_names(), "default: the run's combiner.strategy (or a strategy of the run's plugins)"
    )
    p.add_argument("--out", required=True, help="output .csv or .json")
    options.add_decisions(p)
    options.add_inference(p)


def run(args) -> int:
    from ..inference import run_predict

    summary = run_predict(
        args.run, args.inputs, args.out, args.strategy, options.inference(args), options.decisions(args)
    )
    inf = summary["inference"]
    sys.stdout.write(
        f"predicted {summary['n'] - summary['n_errors']} of {summary['n']} images "
        f"({summary['strategy']}; {inf['runtime']} {'/'.join(sorted(set(inf['precision'])))}"
        + ("; BatchNorm adapted to these images" if inf.get("adapt_bn") else "")
        + "); "
        f"{summary['n_errors']} could not be read (see the error column)"
        + (f"; {summary['n_review']} marked review" if summary["n_review"] else "")
        + f" -> {args.out}\n"
    )
    return 0


command(
    "predict",
    "predict images, folders or CSV manifests with a trained run",
    arguments,
    run,
    backend="inference",
    output="file",
    position=20,
)
