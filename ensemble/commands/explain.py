"""``effens explain RUN IMAGE... --out DIR``: Grad-CAM overlays per member."""

from __future__ import annotations

import sys

from . import command, options


def arguments(p) -> None:
    from ..combining.strategies import strategy_names

    p.add_argument("run", help=options.RUN_HELP)
    p.add_argument("images", nargs="+", help="image files, folders (recursive) or CSV manifests")
    p.add_argument("--out", required=True, help="output folder (overlays and explain.json)")
    options.add_strategy(p, strategy_names(), "explain this strategy's prediction (default: the run's)")


def run(args) -> int:
    from ..explain import run_explain

    doc = run_explain(args.run, args.images, args.out, args.strategy)
    sys.stdout.write(
        f"explained {len(doc['images'])} image(s) ({doc['strategy']}; "
        f"{len(doc['unreadable'])} unreadable) -> {args.out}\n"
    )
    return 0


command(
    "explain",
    "Grad-CAM overlays: where each member looks in some images",
    arguments,
    run,
    backend="explain",
    reads_data=True,
    position=80,
)
