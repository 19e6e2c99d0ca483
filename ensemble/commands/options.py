"""What several commands share on the command line: argument types, option groups and
turning options into config overrides. Parsing loads no torch."""

from __future__ import annotations

import argparse
import json
import math
import os

from members.errors import EffensError

# mirrors of members.precision.PRECISIONS and ensemble.export.FORMATS, spelled out so
# that parsing loads no torch (tests/test_runtimes.py keeps them equal)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FORMATS = ("onnx", "openvino", "mlflow")


class UsageError(EffensError, ValueError):
    """A command-line option with a value (or a combination) its command cannot take."""


class HelpFormatter(argparse.HelpFormatter):
    """Fills ``{views}`` in a help text from the view registry, only when help is shown
    (the registry needs PIL, which parsing alone should not import)."""

    def _expand_help(self, action) -> str:
        text = super()._expand_help(action)
        if "{views}" in text:
            from members.views import view_names

            text = text.replace("{views}", ", ".join(("flip", *view_names(member=False))))
        return text


def choices(names) -> str:
    """argparse's ``{a,b}`` spelling for options checked later against the run's registries
    (a run's plugins register their names when the run is loaded, after parsing)."""
    return "{" + ",".join(names) + "}"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1-65535; got {value}")
    return value


def name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (give view names, or --tta alone for the mirror)")
    return text


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


RUN_HELP = "run folder made by `effens train`"


def add_overrides(
    p: argparse.ArgumentParser,
    example: str = "members.0.train.epochs=1",
    metavar: str = "KEY=VALUE",
    what: str = "override a config key",
) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar=metavar,
        help=f"{what}, e.g. {example} (repeatable)",
    )


def add_strategy(p: argparse.ArgumentParser, names, help: str | None, **kwargs) -> None:
    p.add_argument("--strategy", metavar=choices(names), type=name, help=help, **kwargs)


def add_decisions(p: argparse.ArgumentParser) -> None:
    """``--coverage``, ``--coverage-by-class``, ``--review-rate``, ``--target-accuracy``."""
    p.add_argument(
        "--coverage",
        type=fraction,
        metavar="C",
        help="add a prediction_set holding the true class for at least a share C "
        "of images like the calibration images (split conformal), e.g. 0.9",
    )
    p.add_argument(
        "--coverage-by-class",
        action="store_true",
        default=None,
        help="prediction sets with that coverage within every class",
    )
    p.add_argument(
        "--review-rate",
        type=fraction,
        metavar="R",
        help="add a decision: the share R of least confident images (on the calibration images) is marked review",
    )
    p.add_argument(
        "--target-accuracy",
        type=fraction,
        metavar="A",
        help="add a decision: review the least confident images so that the rest "
        "reach accuracy A on the calibration images",
    )


def decisions(args) -> dict:
    return {
        "coverage": args.coverage,
        "by_class": args.coverage_by_class,
        "review_rate": args.review_rate,
        "target_accuracy": args.target_accuracy,
    }


def add_inference(p: argparse.ArgumentParser) -> None:
    """Batch size, device, TTA, runtime, precision and BatchNorm adaptation."""
    from members.runtimes import RUNTIMES  # numpy only: no torch

    p.add_argument("--batch-size", type=positive_int, help="images per inference step")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's)")
    p.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        metavar="VIEWS",
        type=non_empty,
        help="test-time augmentation: alone, average with the mirror image; or comma-"
        "separated views to average over, e.g. crop,letterbox,flip (views: {views})",
    )
    p.add_argument(
        "--runtime",
        metavar="{" + ",".join(("auto", *RUNTIMES)) + "}",
        help="inference runtime (default: the run's `runtime`; auto = the installed one "
        "with the highest priority for the device: OpenVINO on CPU, else torch)",
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, help="inference precision (default: the run's; bf16 only where allowed)"
    )
    p.add_argument(
        "--adapt-bn",
        action="store_true",
        help="re-estimate each member's BatchNorm statistics on the images given (a copy; "
        "the run's files never change): a label-free correction for photos from "
        "another source",
    )


def inference(args):
    from ..serving.answers import InferenceOptions

    return InferenceOptions(args.batch_size, args.device, args.tta, args.runtime, args.precision, args.adapt_bn)


def add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking",
        action="append",
        default=[],
        type=tracking_spec,
        metavar="SINK[=WHERE]",
        help="log to an experiment tracker (repeatable): mlflow=URI (e.g. sqlite:///mlflow.db; "
        "`mlflow` alone: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db here), tensorboard=DIR, "
        "or none; given, it replaces the config's `tracking:` (evaluate: the run's)",
    )


def add_parallel(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parallel", choices=("sequential", "loky", "ray", "dask"), help="override parallel.backend")
    p.add_argument("--n-jobs", type=positive_int, help="override parallel.n_jobs")


def tracking_spec(spec: str) -> list[str]:
    """``--tracking`` -> config overrides of ``tracking.*`` (values quoted: a URI or folder
    name is taken as written, never read as YAML)."""
    sink, sep, where = spec.partition("=")
    sink = sink.strip().lower()
    if sink == "none" and not sep:
        return []
    if sink == "mlflow" and (not sep or where.strip()):
        # alone: a SQLite store in the current folder (MLflow 3 keeps file: stores for old runs only)
        uri = where.strip() or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"
        return [f"tracking.mlflow.uri={json.dumps(uri)}"]
    if sink == "tensorboard" and where.strip():
        return [f"tracking.tensorboard={json.dumps(where.strip())}"]
    from ..schema import redact

    raise argparse.ArgumentTypeError(f"must be mlflow[=URI], tensorboard=DIR or none; got {redact(spec)!r}")


def tracking_overrides(specs: list[list[str]]) -> list[str]:
    """``--tracking`` given: it replaces the config's (or the run's) ``tracking:`` whole."""
    return ["tracking.mlflow=null", "tracking.tensorboard=null", *(o for spec in specs for o in spec)] if specs else []


def run_overrides(args) -> list[str]:
    """``--tracking``, ``--parallel`` and ``--n-jobs`` as config overrides (train, tune)."""
    out = tracking_overrides(getattr(args, "tracking", []))
    if args.parallel:
        out.append(f"parallel.backend={args.parallel}")
    if args.n_jobs:
        out.append(f"parallel.n_jobs={args.n_jobs}")
    return out
