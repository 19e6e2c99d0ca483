"""The commands of ``effens``, one registered piece each: its arguments and its run.

A command is one module in this folder that calls :func:`command` with a function adding
its arguments to an ``argparse`` parser and a function running it (``args -> exit code``).
``ensemble.cli`` builds ``effens --help`` from this registry, the README's command table
(``scripts/config_reference.py``) and ``tests/test_layout.py`` read it too: adding a
command is one new module plus its test. Command modules stay light (no torch at import:
``effens --help`` imports them all) and never import each other; what two share lives in
:mod:`ensemble.commands.options` or a floor below.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
from typing import Callable, Literal

from members.registry import Registry


@dataclasses.dataclass(frozen=True)
class Command:
    """A command's whole contract.

    ``output``: what its ``--out`` is, for the one output rule (``folder``; ``file``: one
    file; ``run``: a run folder it writes and may resume; None: no ``--out``); ``inputs``:
    the arguments that name what it reads (``--out`` may be none of them, nor inside one).
    ``reads_data``: its ``--out`` must also stay out of the data folders and lists its config
    (or the run's saved config) reads. ``backend``: the module under ``ensemble/`` that does
    the work (backends never import each other). ``position``: its place in ``--help``.
    """

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    backend: str
    output: Literal["folder", "file", "run"] | None = "folder"
    inputs: tuple[str, ...] = ("config", "run", "data", "inputs", "images")
    reads_data: bool = False
    position: int = 100


COMMANDS: Registry[Command] = Registry("command")


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    backend: str,
    **options,
) -> Command:
    """Register a command (see :class:`Command`); returns it."""
    return COMMANDS.add(name, Command(name, help, arguments, run, backend, **options), owner=run.__module__)


_SHARED = {"options"}


def load_commands() -> list[Command]:
    """Every command module in this folder imported (once), the commands in ``--help`` order."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SHARED:
            importlib.import_module(f"{__name__}.{info.name}")
    return sorted(COMMANDS.values(), key=lambda c: (c.position, c.name))
