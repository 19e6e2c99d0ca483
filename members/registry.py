"""One registry shape for every extension point (strategies, views, runtimes, weights
sources, report figures and sections): a stable order (registration order), a lookup
that names the close spellings, and a refusal of a second entry under a taken name (one
plugin silently replacing another's entry is a bug that shows up as wrong numbers).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A name registered twice, or looked up and not found."""


class Registry(Mapping, Generic[T]):
    """Name -> entry, in registration order; read like a dict, written with :meth:`add`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, entry: T, owner: str | None = None) -> T:
        """Register ``entry`` under ``name``; a taken name is refused, naming who took it."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.kind} needs a non-empty name; got {name!r}")
        if name in self._entries:
            raise RegistryError(f"a {self.kind} named {name!r} is already registered (by "
                                f"{self._owners[name]}); give the new one another name")
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
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RegistryError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self._entries)}")

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._entries)})"
