"""``effens export RUN --format F --out DIR``: ONNX, OpenVINO IR or an MLflow model."""

from __future__ import annotations

import sys

from . import command, options


def arguments(p) -> None:
    from ..combining.strategies import graph_strategies

    p.add_argument("run", help=options.RUN_HELP)
    p.add_argument("--format", required=True, choices=options.FORMATS)
    p.add_argument("--out", required=True, help="output folder (new or empty, or an earlier export)")
    options.add_strategy(p, graph_strategies(), "vote inside ensemble.onnx (default: the run's, soft for hard voting)")


def run(args) -> int:
    from ..export import export_run

    manifest = export_run(args.run, args.format, args.out, args.strategy)
    what = "default strategy" if args.format == "mlflow" else "ensemble graph"
    sys.stdout.write(
        f"exported {len(manifest['files'])} files ({args.format}; {what}: {manifest['strategy']}) -> {args.out}\n"
    )
    return 0


command(
    "export",
    "export the members and the ensemble as ONNX or OpenVINO IR, or the run as an MLflow model",
    arguments,
    run,
    backend="export",
    position=50,
)
