"""effens command line: ``effens train CONFIG --out RUN [--set KEY=VALUE ...]``."""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .strategies import graph_strategies, strategy_names

# mirrors of members.precision.PRECISIONS and ensemble.export.FORMATS, spelled out so
# that parsing loads no torch (tests/test_runtimes.py keeps them equal); strategies come
# from their registry (ensemble.strategies, numpy only)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FORMATS = ("onnx", "openvino", "mlflow")

log = logging.getLogger("effens")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("effens", "ensemble", "members"):
        logging.getLogger(name).setLevel(level)


class _HelpFormatter(argparse.HelpFormatter):
    """Fills ``{views}`` in a help text from the view registry, only when help is shown
    (the registry needs PIL, which parsing alone should not import)."""

    def _expand_help(self, action) -> str:
        text = super()._expand_help(action)
        if "{views}" in text:
            from members.views import view_names

            text = text.replace("{views}", ", ".join(("flip", *view_names(member=False))))
        return text


def _choices(names) -> str:
    """argparse's ``{a,b}`` spelling for options checked later against the run's registries
    (a run's plugins register their names when the run is loaded, after parsing)."""
    return "{" + ",".join(names) + "}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1-65535; got {value}")
    return value


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (give view names, or --tta alone for the mirror)")
    return text


def _fraction(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from members.runtimes import RUNTIMES  # numpy only: no torch

    p = argparse.ArgumentParser(prog="effens", description="Bagged ensembles of EfficientNet classifiers.",
                                formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"effens {__version__}")
    sub = p.add_subparsers(dest="command", required=True,
                           parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_HelpFormatter))

    t = sub.add_parser("train", help="train an ensemble from a YAML config")
    t.add_argument("config", help="YAML config file")
    t.add_argument("--out", required=True, help="run folder (created; reused to resume)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. members.0.train.epochs=1 (repeatable)")
    t.add_argument("--device", help="override `device` (auto, cpu, cuda, cuda:N)")
    t.add_argument("--restart", action="store_true",
                   help="start over in a run folder whose saved config differs")
    t.add_argument("--precision", choices=PRECISIONS, help="override `precision` (training and inference)")
    pr = sub.add_parser("predict", help="predict images, folders or CSV manifests with a trained run")
    pr.add_argument("run", help="run folder made by `effens train`")
    pr.add_argument("inputs", nargs="+", help="image files, folders (recursive) or CSV manifests")
    pr.add_argument("--strategy", metavar=_choices(strategy_names()), type=_name,
                    help="default: the run's combiner.strategy (or a strategy of the run's plugins)")
    pr.add_argument("--out", required=True, help="output .csv or .json")

    sv = sub.add_parser("serve", help="serve a run over HTTP: a JSON API and an upload page")
    sv.add_argument("run", help="run folder made by `effens train`")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=_port, default=8000)
    sv.add_argument("--strategy", metavar=_choices(strategy_names()), type=_name,
                    help="default: the run's combiner.strategy")
    sv.add_argument("--max-batch", type=_positive_int, default=16, metavar="N",
                    help="merge concurrent requests' images into batches of up to N")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, metavar="M",
                    help="wait at most M ms for more images before running a batch")
    sv.add_argument("--max-files", type=_positive_int, default=16, help="images per request")
    sv.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit")
    sv.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    sv.add_argument("--max-header-kb", type=float, default=16.0, metavar="KB",
                    help="request line and headers together; more: 431 (or 400 while still arriving)")
    sv.add_argument("--keep-alive", type=float, default=5.0, metavar="S",
                    help="close a connection that has not sent a whole request head within S seconds "
                         "of opening or of its last answer")
    sv.add_argument("--max-connections", type=_positive_int, default=128, metavar="N",
                    help="open connections; a request beyond them is answered 503")
    sv.add_argument("--api-key-file", help="require this key (X-API-Key or Authorization: Bearer)")
    sv.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment (pip install 'ray[serve]')")
    sv.add_argument("--replicas", type=_positive_int, default=2, help="with --ray: copies of the app")
    for q in (pr, sv):
        q.add_argument("--coverage", type=_fraction, metavar="C",
                       help="add a prediction_set holding the true class for at least a share C "
                            "of images like the calibration images (split conformal), e.g. 0.9")
        q.add_argument("--coverage-by-class", action="store_true", default=None,
                       help="prediction sets with that coverage within every class")
        q.add_argument("--review-rate", type=_fraction, metavar="R",
                       help="add a decision: the share R of least confident images (on the "
                            "calibration images) is marked review")
        q.add_argument("--target-accuracy", type=_fraction, metavar="A",
                       help="add a decision: review the least confident images so that the rest "
                            "reach accuracy A on the calibration images")

    ev = sub.add_parser("evaluate", help="report every member and strategy on labelled data")
    ev.add_argument("run", help="run folder made by `effens train`")
    ev.add_argument("data", help="a folder of class folders or a CSV manifest (path, label)")
    ev.add_argument("--strategy", metavar=_choices(strategy_names() + ("all",)), type=_name, default="all")
    ev.add_argument("--out", required=True, help="report folder (also caches member probabilities)")

    for q in (pr, ev, sv):
        q.add_argument("--batch-size", type=_positive_int, help="images per inference step")
        q.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's)")
        q.add_argument("--tta", nargs="?", const="flip", metavar="VIEWS", type=_non_empty,
                       help="test-time augmentation: alone, average with the mirror image; or comma-"
                            "separated views to average over, e.g. crop,letterbox,flip (views: {views})")
        q.add_argument("--runtime", metavar="{" + ",".join(("auto", *RUNTIMES)) + "}",
                       help="inference runtime (default: the run's `runtime`; auto = the installed one "
                            "with the highest priority for the device: OpenVINO on CPU, else torch)")
        q.add_argument("--precision", choices=PRECISIONS,
                       help="inference precision (default: the run's; bf16 only where allowed)")
        q.add_argument("--adapt-bn", action="store_true",
                       help="re-estimate each member's BatchNorm statistics on the images given (a copy; "
                            "the run's files never change): a label-free correction for photos from "
                            "another source")

    xp = sub.add_parser("explain", help="Grad-CAM overlays: where each member looks in some images")
    xp.add_argument("run", help="run folder made by `effens train`")
    xp.add_argument("images", nargs="+", help="image files, folders (recursive) or CSV manifests")
    xp.add_argument("--out", required=True, help="output folder (overlays and explain.json)")
    xp.add_argument("--strategy", metavar=_choices(strategy_names()), type=_name,
                    help="explain this strategy's prediction (default: the run's)")

    ex = sub.add_parser("export", help="export the members and the ensemble as ONNX or OpenVINO IR, or the run as an MLflow model")
    ex.add_argument("run", help="run folder made by `effens train`")
    ex.add_argument("--format", required=True, choices=FORMATS)
    ex.add_argument("--out", required=True, help="output folder (new or empty, or an earlier export)")
    ex.add_argument("--strategy", metavar=_choices(graph_strategies()), type=_name,
                    help="vote inside ensemble.onnx (default: the run's, soft for hard voting)")

    au = sub.add_parser("audit", help="probably mislabelled photos, duplicates and leaks, odd images: of a run's "
                                      "data, a config's splits, or a folder")
    au.add_argument("run", metavar="SOURCE",
                    help="a run folder made by `effens train` (its data, OOB votes and predictions), a YAML "
                         "config (its splits), or a folder of class folders / a CSV manifest (a folder holding "
                         "train, val and test folders: those splits)")
    au.add_argument("--out", required=True, help="output folder (index.html, CSVs, audit.json; reused)")
    au.add_argument("--method", choices=("prune_by_noise_rate", "confident"), default="prune_by_noise_rate",
                    help="which images confident learning flags (default: as many per class pair as its "
                         "estimated noise rate)")
    au.add_argument("--max-distance", type=int, default=4, metavar="BITS",
                    help="near-duplicates: perceptual hashes at most this many bits apart (of 64)")
    au.add_argument("--write-exclude", metavar="FILE",
                    help="also write a `data.exclude` list: flagged training images whose given label has "
                         "out-of-sample probability below --threshold, and training twins of exact or near copies in "
                         "val/test; auditing a run trained with `data.exclude`, the images it left out that its "
                         "ensemble still flags stay listed (a second pass: the others come back)")
    au.add_argument("--threshold", type=float, default=None, help="for --write-exclude (default 0.1)")
    au.add_argument("--min-cosine", type=float, default=0.75, metavar="C",
                    help="similar images: nearest neighbours whose pretrained features (centred on the set's "
                         "mean) are at least this cosine-similar (catches crops; default 0.75)")
    au.add_argument("--feature-views", metavar="VIEWS", type=_name, default=None,
                    help="comma-separated member views (crop, squash, letterbox or a plugin's) the feature pass sees "
                         "each photo through, whatever the members train with: similar pairs under any of them, "
                         "label scores under the first (default crop,squash,letterbox)")
    au.add_argument("--no-features", "--no-cross-fit", dest="no_features", action="store_true",
                    help="skip the feature pass (pretrained features: label scores for images no member left out, "
                         "or for all without a run, and similar-image pairs)")

    fc = sub.add_parser("fit-combiner", help="refit weights, stacking and calibration of a run")
    fc.add_argument("run", help="run folder made by `effens train`")
    fc.add_argument("--set", dest="overrides", action="append", default=[], metavar="combiner.KEY=VALUE",
                    help="change a combiner setting first, e.g. combiner.stacking.source=oob")

    tu = sub.add_parser("tune", help="search the members' bagging ratios")
    tu.add_argument("config", help="YAML config file (its `tune:` block)")
    tu.add_argument("--out", required=True, help="output folder (reused to resume)")
    tu.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. tune.method=halving (repeatable)")
    tu.add_argument("--yes", action="store_true",
                    help="try more than 1,000 candidates (refused otherwise, with the count and a time estimate)")

    for q in (t, tu, ev):
        q.add_argument("--tracking", action="append", default=[], type=_tracking, metavar="SINK[=WHERE]",
                       help="log to an experiment tracker (repeatable): mlflow=URI (e.g. sqlite:///mlflow.db; "
                            "`mlflow` alone: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db here), tensorboard=DIR, "
                            "or none; "
                            "given, it replaces the config's `tracking:` (evaluate: the run's)")
    for q in (t, tu):
        q.add_argument("--parallel", choices=("sequential", "loky", "ray", "dask"),
                       help="override parallel.backend")
        q.add_argument("--n-jobs", type=_positive_int, help="override parallel.n_jobs")

    for q in (t, pr, ev, fc, tu, ex, xp, sv, au):
        q.add_argument("-v", "--verbose", action="count", default=0)
        q.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; a reported error is one line naming its culprit and exit code 2
    (the traceback only with ``-v``); Ctrl-C is one line and exit code 130, SIGTERM the same with 143."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and not _installed_plugins():  # never for --help / --version
        return 2
    args = build_parser().parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    previous = _on_sigterm()
    try:
        return _dispatch(args)
    except KeyboardInterrupt as exc:
        log.error("%s; finished work is kept: run the same command again to resume",
                  "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted")
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        if not _reported(exc):
            raise
        log.error("%s", _one_line(exc))
        if args.verbose:
            log.error("traceback (-v):", exc_info=exc)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _installed_plugins() -> bool:
    """Import the installed ``effens.plugins`` entry points before a command's arguments are
    parsed (their names reach its ``--help``); one that fails is one line naming it."""
    from .plugins import PluginError, load_entry_points

    try:
        load_entry_points()
    except PluginError as exc:
        _setup_logging(0)
        log.error("%s", _one_line(exc))
        return False
    return True


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: locks released, finished work kept, one line."""


def _on_sigterm():
    """Turn SIGTERM into :class:`Terminated` (main thread only); returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _guard_output(args) -> None:
    """One rule for every command's ``--out``: never over an input, never inside a run folder
    (but ``train``'s own), never a folder inside an input folder."""
    from .runfolder import check_output_path

    out = getattr(args, "out", None)
    if out is None:
        return
    inputs = [*(getattr(args, "inputs", None) or []), *(getattr(args, "images", None) or [])]
    inputs += [v for v in (getattr(args, k, None) for k in ("config", "run", "data")) if isinstance(v, str)]
    inputs += _config_data_inputs(args)
    check_output_path(out, inputs, run_root=args.command == "train", folder=args.command != "predict")


def _config_data_inputs(args) -> list[str]:
    """The data folders and lists that the config (or the run's saved config) of a command
    writing a folder reads: a folder made inside one would be read as a class next time.
    Best effort: a config that does not load is the command's own one-line error just after."""
    if args.command not in ("train", "tune", "evaluate", "explain"):
        return []  # predict writes one file and starts fast; audit checks its own
    src = getattr(args, "config", None) or getattr(args, "run", None)
    path = Path(src) / "config.yaml" if isinstance(src, str) and Path(src).is_dir() else Path(src or "")
    if not path.is_file():
        return []
    from .config import data_inputs, load_config

    try:
        return data_inputs(load_config(str(path), getattr(args, "overrides", None) or None))
    except Exception:  # noqa: BLE001 - reported by the command itself
        return []


def _dispatch(args) -> int:
    _guard_output(args)
    commands = {"train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate,
                "fit-combiner": cmd_fit_combiner, "tune": cmd_tune, "export": cmd_export, "explain": cmd_explain,
                "serve": cmd_serve, "audit": cmd_audit}
    return commands[args.command](args)


#: (module, class) of every error that is the user's input or environment, not a bug
_REPORTED = (("ensemble.config", "ConfigError"), ("ensemble.data", "DataError"),
             ("ensemble.images", "BadImageError"), ("ensemble.files", "RunError"),
             ("ensemble.parallel", "ParallelError"), ("ensemble.decisions", "DecisionError"),
             ("members.trainer", "TrainingError"), ("members.weights", "WeightsError"),
             ("members.precision", "PrecisionError"), ("members.runtimes", "RuntimeUnavailable"),
             ("members.export", "ExportError"), ("members.inputs", "DeviceError"),
             ("members.registry", "RegistryError"), ("ensemble.plugins", "PluginError"))


def _reported(exc: BaseException) -> bool:
    """Errors that are the user's input or environment (reported in one line), not bugs.

    Only modules already loaded are looked at (an error of a class can only come from a
    module that was imported), so answering loads no torch."""
    known = tuple(getattr(sys.modules[mod], name) for mod, name in _REPORTED if mod in sys.modules)
    return isinstance(exc, (OSError, *known))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not type(exc).__module__.startswith(("ensemble", "members")):
        where = exc.filename or ""
        return f"{where}: {exc.strerror or exc}" if where else f"{type(exc).__name__}: {exc}"
    return " ".join(str(exc).split())


def _tracking(spec: str) -> list[str]:
    """``--tracking`` -> config overrides of ``tracking.*`` (values quoted: a URI or folder
    name is taken as written, never read as YAML)."""
    import json

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
    from .schema import redact

    raise argparse.ArgumentTypeError(f"must be mlflow[=URI], tensorboard=DIR or none; got {redact(spec)!r}")


def tracking_overrides(specs: list[list[str]]) -> list[str]:
    """``--tracking`` given: it replaces the config's (or the run's) ``tracking:`` whole."""
    return ["tracking.mlflow=null", "tracking.tensorboard=null", *(o for spec in specs for o in spec)] \
        if specs else []


def _command_overrides(args) -> list[str]:
    out = tracking_overrides(getattr(args, "tracking", []))
    if args.parallel:
        out.append(f"parallel.backend={args.parallel}")
    if args.n_jobs:
        out.append(f"parallel.n_jobs={args.n_jobs}")
    return out


def cmd_train(args) -> int:
    from .runfolder import RunFolder
    from .training import train_run

    overrides = list(args.overrides) + _command_overrides(args)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.precision:
        overrides.append(f"precision={args.precision}")
    t0 = time.perf_counter()
    doc = train_run(args.config, args.out, overrides=overrides, restart=args.restart)
    from .report import format_table, summary_rows

    sys.stdout.write("\n" + format_table(summary_rows(doc)) + "\n")
    sys.stdout.write(f"\nreport: {RunFolder(args.out).report_dir / 'report.md'}  "
                     f"({time.perf_counter() - t0:.0f} s)\n")
    return 0


def _inference_options(args):
    from .prediction import InferenceOptions

    return InferenceOptions(args.batch_size, args.device, args.tta, args.runtime, args.precision, args.adapt_bn)


def cmd_predict(args) -> int:
    from .inference import run_predict

    summary = run_predict(args.run, args.inputs, args.out, args.strategy, _inference_options(args),
                          {"coverage": args.coverage, "by_class": args.coverage_by_class,
                           "review_rate": args.review_rate, "target_accuracy": args.target_accuracy})
    inf = summary["inference"]
    sys.stdout.write(f"predicted {summary['n'] - summary['n_errors']} of {summary['n']} images "
                     f"({summary['strategy']}; {inf['runtime']} {'/'.join(sorted(set(inf['precision'])))}"
                     + ("; BatchNorm adapted to these images" if inf.get("adapt_bn") else "") + "); "
                     f"{summary['n_errors']} could not be read (see the error column)"
                     + (f"; {summary['n_review']} marked review" if summary["n_review"] else "")
                     + f" -> {args.out}\n")
    return 0


def cmd_evaluate(args) -> int:
    from .inference import run_evaluate

    doc = run_evaluate(args.run, args.data, args.out, args.strategy, _inference_options(args),
                       tracking=tracking_overrides(args.tracking))
    sys.stdout.write("\n" + doc["_table"] + "\n")
    n_skip = len(doc["skipped_images"].get("eval", []))
    sys.stdout.write(f"\nreport: {Path(args.out) / 'report.md'}" +
                     (f"  ({n_skip} unreadable images skipped, listed there)" if n_skip else "") + "\n")
    return 0


def cmd_fit_combiner(args) -> int:
    from .report import format_table, summary_rows
    from .training import refit_run_combiner

    doc = refit_run_combiner(args.run, args.overrides)
    sys.stdout.write("\n" + format_table(summary_rows(doc)) + "\n")
    return 0


def cmd_tune(args) -> int:
    from .tuning import table_text, tune_run

    overrides = list(args.overrides) + _command_overrides(args)
    summary = tune_run(args.config, args.out, overrides, yes=args.yes)
    names = [k[:-6] for k in summary["best"] if k.endswith("_ratio")]
    sys.stdout.write("\n" + table_text(summary["rows"], names) + "\n")
    sys.stdout.write(f"\nbest: {summary['best']['candidate']} ({summary['best']['ensemble_score']:.4f}) "
                     f"-> {Path(args.out) / 'best.yaml'}  ({summary['seconds']:.0f} s)\n")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    manifest = export_run(args.run, args.format, args.out, args.strategy)
    what = "default strategy" if args.format == "mlflow" else "ensemble graph"
    sys.stdout.write(f"exported {len(manifest['files'])} files ({args.format}; {what}: "
                     f"{manifest['strategy']}) -> {args.out}\n")
    return 0


def cmd_audit(args) -> int:
    from .audit import FEATURE_VIEWS, run_audit
    from .data import DataError
    from .shortcuts import summary_line

    if args.threshold is not None and not args.write_exclude:  # before any work: it would change nothing
        raise DataError("--threshold sets which images --write-exclude lists; give --write-exclude FILE too")
    threshold = 0.1 if args.threshold is None else args.threshold
    doc = run_audit(args.run, args.out, args.method, args.max_distance, args.write_exclude, threshold,
                    not args.no_features, args.min_cosine,
                    tuple(v.strip() for v in args.feature_views.split(",")) if args.feature_views else FEATURE_VIEWS)
    d = doc["duplicates"]
    sys.stdout.write(f"{doc['n_label_issues']} probably mislabelled, {d['exact']} exact, {d['near']} near and "
                     f"{d['similar']} similar duplicate pairs ({d['leakage']} across splits"
                     + (f", {d['same_file']} of them the same file in two splits" if d.get("same_file") else "")
                     + f"), {doc['n_odd']} odd images; shortcuts: {summary_line(doc['shortcuts'])} -> "
                     f"{Path(args.out) / 'index.html'}"
                     + (f"; of the {doc['left_out']['images']} the run left out, {doc['left_out']['still_flagged']} "
                        f"still look mislabelled" if "left_out" in doc else "")
                     + (f"; {doc['n_excluded_written']} images listed in {args.write_exclude}" if args.write_exclude
                        else "") + "\n")
    return 0


def cmd_serve(args) -> int:
    from .files import RunError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RunError(f"`effens serve` needs FastAPI and uvicorn ({exc.name} is not installed): "
                                      f"pip install 'effens[serve]'") from None
    from .serve import ServeLimits, ServeSettings, read_api_key, serve, serve_on_ray

    if args.adapt_bn:
        raise RunError("--adapt-bn re-estimates statistics on all images at once; a server sees "
                                      "them one request at a time, so `serve` does not take it")
    for flag, value in (("--max-wait-ms", args.max_wait_ms), ("--max-body-mb", args.max_body_mb),
                        ("--timeout", args.timeout), ("--max-header-kb", args.max_header_kb),
                        ("--keep-alive", args.keep_alive)):
        if not (value >= 0 and value < float("inf")) or (flag != "--max-wait-ms" and value <= 0):
            raise RunError(f"`{flag}` must be a positive number; got {value}")
    settings = ServeSettings(
        args.strategy, _inference_options(args),
        {"coverage": args.coverage, "by_class": args.coverage_by_class, "review_rate": args.review_rate,
         "target_accuracy": args.target_accuracy}, args.max_batch, args.max_wait_ms,
        ServeLimits(args.max_body_mb, args.max_files, timeout_s=args.timeout, max_header_kb=args.max_header_kb,
                    keep_alive_s=args.keep_alive, max_connections=args.max_connections),
        read_api_key(args.api_key_file) if args.api_key_file else None)
    if args.ray:
        try:
            from ray import serve as _  # noqa: F401
        except ImportError as exc:
            raise RunError(f"--ray needs Ray Serve ({exc.name} is not installed): pip install 'ray[serve]'") from None
        from .runfolder import load_run

        load_run(args.run)  # a bad run is one line here, not a failed replica
        serve_on_ray(args.run, args.host, args.port, settings, args.replicas)
    else:
        serve(args.run, args.host, args.port, settings)
    return 0


def cmd_explain(args) -> int:
    from .explain import run_explain

    doc = run_explain(args.run, args.images, args.out, args.strategy)
    sys.stdout.write(f"explained {len(doc['images'])} image(s) ({doc['strategy']}; "
                     f"{len(doc['unreadable'])} unreadable) -> {args.out}\n")
    return 0
