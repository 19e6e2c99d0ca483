"""Is this a timm model name? Answered from a per-timm-version list of names cached in the
user's cache folder, so checking a config (or loading a run) does not import timm and
torch, which take seconds (issue #23). Only a name found in the list is answered from it;
any other name is checked by timm itself (models registered at run time included).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def user_cache_dir() -> Path:
    """``$EFFENS_CACHE``, else ``$XDG_CACHE_HOME/effens``, else ``~/.cache/effens``."""
    if os.environ.get("EFFENS_CACHE"):
        return Path(os.environ["EFFENS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "effens"


def _cache_file() -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return user_cache_dir() / f"timm-{version('timm')}-models.json"
    except PackageNotFoundError:  # pragma: no cover - effens needs timm installed
        return None


def _cached_names() -> frozenset:
    path = _cache_file()
    try:
        return frozenset(json.loads(path.read_text(encoding="utf-8"))) if path else frozenset()
    except (OSError, ValueError, TypeError):
        return frozenset()


def _save_names(names: list[str]) -> None:
    path = _cache_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(sorted(names), fh)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home: checks just stay slower
        log.debug("could not cache timm's model names in %s: %s", path, exc)


def model_name_problem(value) -> str | None:
    """None for a timm model name (``arch`` or ``arch.tag``), else what is wrong with it."""
    if isinstance(value, str) and value.split(".", 1)[0] in _cached_names():
        return None
    import timm

    if not timm.is_model(value):
        close = timm.list_models(f"*{value}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        return f"is not a timm model name{hint}"
    _save_names(timm.list_models())
    return None
