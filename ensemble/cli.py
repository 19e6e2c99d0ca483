"""effens command line: ``effens COMMAND ...``, one loop over the command registry.

Each command is a registered piece in :mod:`ensemble.commands` (its arguments and its run);
this module only builds the parser from them, applies the one output rule, and turns the
user's errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from members.errors import EffensError

from . import __version__
from .commands import COMMANDS, load_commands
from .commands.options import HelpFormatter

log = logging.getLogger("effens")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("effens", "ensemble", "members"):
        logging.getLogger(name).setLevel(level)


class _CommandParser(argparse.ArgumentParser):
    """A command's sub-parser: the same help layout as ``effens --help``."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    """``effens``'s parser: one sub-parser per registered command, each with -v / -q."""
    p = argparse.ArgumentParser(
        prog="effens", description="Bagged ensembles of EfficientNet classifiers.", formatter_class=HelpFormatter
    )
    p.add_argument("--version", action="version", version=f"effens {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for cmd in load_commands():
        q = sub.add_parser(cmd.name, help=cmd.help)
        cmd.arguments(q)
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
        log.error(
            "%s; finished work is kept: run the same command again to resume",
            "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted",
        )
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        if not _reported(exc):
            raise
        log.error("%s", _one_line(exc))
        if args.verbose:
            log.error("traceback (-v):", exc_info=exc)
        return max(1, int(getattr(exc, "exit_code", 2)))  # an error never exits 0
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


def _guard_output(args, cmd) -> None:
    """One rule for every command's ``--out``: never over an input, never inside a run folder
    (but the run ``train`` writes), never a folder inside an input folder."""
    from .runfolder import check_output_path

    out = getattr(args, "out", None)
    if out is None or cmd.output is None:
        return
    inputs = []
    for name in cmd.inputs:
        value = getattr(args, name, None)
        inputs += [value] if isinstance(value, str) else list(value or [])
    if cmd.reads_data:
        inputs += _config_data_inputs(args)
    check_output_path(out, inputs, run_root=cmd.output == "run", folder=cmd.output != "file")


def _config_data_inputs(args) -> list[str]:
    """The data folders and lists that the config (or the run's saved config) of a command
    writing a folder reads: a folder made inside one would be read as a class next time.
    Best effort: a config that does not load is the command's own one-line error just after."""
    from .runfolder import RunFolder

    src = getattr(args, "config", None) or getattr(args, "run", None)
    path = RunFolder(src).config_path if isinstance(src, str) and Path(src).is_dir() else Path(src or "")
    if not path.is_file():
        return []
    from .config import data_inputs, load_config

    try:
        return data_inputs(load_config(str(path), getattr(args, "overrides", None) or None))
    except Exception:  # noqa: BLE001 - reported by the command itself
        return []


def _dispatch(args) -> int:
    from .config import checked_once

    cmd = COMMANDS.lookup(args.command)
    with checked_once():  # the output guard and the command share one check of a config
        _guard_output(args, cmd)
        return cmd.run(args)


def _reported(exc: BaseException) -> bool:
    """Errors that are the user's input or environment (one line, exit 2), not bugs: the
    error family (:class:`members.errors.EffensError`) and the operating system's."""
    return isinstance(exc, (OSError, EffensError))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not type(exc).__module__.startswith(("ensemble", "members")):
        where = exc.filename or ""
        return f"{where}: {exc.strerror or exc}" if where else f"{type(exc).__name__}: {exc}"
    return " ".join(str(exc).split())
