"""One registry shape for every extension point (strategies, views, runtimes, weights
sources, report figures and sections): a stable order (registration order), a lookup
that names the close spellings, and a refusal of a second entry under a taken name (one
plugin silently replacing another's entry is a bug that shows up as wrong numbers).
"""

from __future__ import annotations

import contextlib
import difflib
import weakref
from collections.abc import Mapping
from typing import Generic, Iterator, TypeVar

from .errors import EffensError

T = TypeVar("T")


def close_spelling(name: str, known) -> str | None:
    """The known name closest to a misspelled ``name``, if any is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return close[0] if close else None


class RegistryError(EffensError, ValueError):
    """A name registered twice, or looked up and not found."""


class Registry(Mapping, Generic[T]):
    """Name -> entry, in registration order; read like a dict, written with :meth:`add`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        _ALL.add(self)

    def add(self, name: str, entry: T, owner: str | None = None) -> T:
        """Register ``entry`` under ``name``; a taken name is refused, naming who took it."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.kind} needs a non-empty name; got {name!r}")
        if name in self._entries:
            raise RegistryError(
                f"a {self.kind} named {name!r} is already registered (by "
                f"{self._owners[name]}); give the new one another name"
            )
        self._entries[name] = entry
        self._owners[name] = owner or getattr(entry, "__module__", None) or type(entry).__module__
        return entry

    def remove(self, name: str) -> T:
        """Take an entry out (a test's toy, a plugin being unloaded); returns it."""
        self._owners.pop(name, None)
        return self._entries.pop(name)

    def lookup(self, name: str) -> T:
        """The entry, or a :class:`RegistryError` listing the known names and close spellings."""
        if name in self._entries:
            return self._entries[name]
        close = close_spelling(name, self._entries)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise RegistryError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self._entries)}")

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    __eq__ = object.__eq__  # one registry per extension point: compared by identity
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._entries)})"


#: every registry, for :func:`rollback_on_error`
_ALL: "weakref.WeakSet[Registry]" = weakref.WeakSet()


@contextlib.contextmanager
def rollback_on_error():
    """Undo every registration made inside the block if it raises (a plugin that fails
    half-way leaves nothing behind to collide with its next, fixed, import)."""
    before = {reg: set(reg) for reg in list(_ALL)}
    try:
        yield
    except BaseException:
        for reg in list(_ALL):
            for name in [n for n in reg if n not in before.get(reg, set())]:
                reg.remove(name)
        raise
