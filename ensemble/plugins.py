"""User plugins: modules that register their own strategies, views, runtimes, weights
sources, report figures, audit detectors or serve routes, imported before a config is checked.

Two doors: ``plugins: [module or file.py, ...]`` in a config (a module next to the
YAML file is found too, and saved in the run's config as its absolute path), and the
``effens.plugins`` entry-point group of installed packages (loaded once per process,
before a command's arguments are parsed, so their names reach its ``--help``; ``effens
--help`` and ``--version`` load none). A plugin registers through the same decorators as
effens' own pieces (``@register``, ``@view``, ``@register_source``, ``@split_figure``,
``@detector``, ``@route``...); a taken name is refused. Every plugin loads inside
:func:`guarded`: a plugin that fails in any way is one :class:`PluginError` naming it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from members.schema import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "effens.plugins"


class PluginError(ConfigError):
    """A plugin failed to load (it raised, exited or registered something invalid)."""


@contextlib.contextmanager
def guarded(what: str) -> Iterator[None]:
    """The one step every plugin import runs in: whatever the plugin raises, ``SystemExit``
    and other ``BaseException`` included (Ctrl-C excepted), becomes one :class:`PluginError`
    starting with ``what``, and whatever it registered before failing is taken out again."""
    from members.registry import rollback_on_error

    try:
        with rollback_on_error():
            yield
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a plugin's sys.exit() must not end the command
        said = f"it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise PluginError(f"{what}: {' '.join(said.split())}") from None


@functools.lru_cache(maxsize=1)
def load_entry_points() -> tuple[str, ...]:
    """Import every installed ``effens.plugins`` entry point once; returns their names."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        with guarded(f"plugin entry point {ep.name!r} ({ep.value}) failed to load"):
            ep.load()
        loaded.append(ep.name)
        log.debug("plugin entry point %s loaded", ep.name)
    return tuple(loaded)


def load_plugins(modules: Sequence[str], where: str | Path | None = None) -> list[str]:
    """Import ``plugins:`` of a config: module names, or paths to ``.py`` files; a name
    that is not installed is looked for as a file in ``where`` (the config's folder).
    Returns the entries as they resolved (files as absolute paths, so that the run's saved
    config finds them again from anywhere)."""
    resolved = []
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"`plugins` must list module names or .py files; got {name!r}")
        resolved.append(_load_one(name, Path(where) if where is not None else None))
    return resolved


def _load_one(name: str, where: Path | None) -> str:
    """Import one entry; a file (``x.py``, or ``x`` found as ``where/x.py``, which wins over
    an installed module of that name, as a script's folder does in Python) is loaded under
    a private module name, so it never replaces a module of the same name. On failure,
    whatever it registered before failing is taken out again."""
    path = Path(os.path.expanduser(name)) if name.endswith(".py") else None
    if path is None and where is not None and (where / f"{name}.py").is_file():
        path = where / f"{name}.py"
    if path is not None and not path.is_absolute() and where is not None:
        path = where / path
    key = str(path.resolve()) if path is not None else name
    if key in _LOADED:
        return key
    if path is not None:
        from .files import refuse_irregular

        refuse_irregular(path, "`plugins`:")  # a FIFO would block the import
    with guarded(f"`plugins`: cannot import {name!r}"):
        if path is None:
            importlib.import_module(name)
        else:
            _exec_file(path, key)
    _LOADED.add(key)
    log.info("plugin %s loaded", key)
    return key


def _exec_file(path: Path, key: str) -> None:
    """Run a plugin file as a module of a private name (kept in ``sys.modules`` only if it loads)."""
    import hashlib
    import importlib.util

    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    private = f"_effens_plugin_{path.stem}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(private, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[private] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(private, None)
        raise


#: plugins imported in this process (module names and resolved file paths)
_LOADED: set[str] = set()
