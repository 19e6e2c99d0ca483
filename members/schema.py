"""A small declarative schema: dataclasses plus per-field checks.

Each config section is a dataclass; a field may carry ``check=...`` in its metadata,
a callable that returns an error message (``"must be in (0, 1]"``) or ``None``.
:func:`build` turns a plain mapping (parsed YAML) into the dataclass tree, naming the
full key path in every error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from typing import Any, Callable, Literal, Sequence, Union, get_args, get_origin, get_type_hints

from members.errors import EffensError


class ConfigError(EffensError, ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


Check = Callable[[Any], "str | None"]


def field(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    doc: str = "",
    default_factory: Any = dataclasses.MISSING,
    choices: Callable[[], Sequence[str]] | None = None,
) -> Any:
    """A dataclass field with an optional value check and a one-line description.

    ``choices`` names the allowed values when they come from a registry (read when a
    config is checked, so anything registered by then counts).
    """
    meta = {"check": check, "doc": doc, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def sections_field(provider: Callable[[], "dict[str, type]"], doc: str = "") -> Any:
    """A field holding named sub-sections whose schemas come from elsewhere at check time
    (each strategy's settings, from the strategy registry): in YAML each section is a key
    of its own beside the static ones; :func:`to_dict` writes them there, in place."""
    return dataclasses.field(
        default_factory=dict, metadata={"sections": provider, "doc": doc, "check": None, "choices": None}
    )


def section_schemas(cls: type) -> dict[str, tuple[str, type]]:
    """Section key -> (the sections field holding it, its dataclass) for ``cls``."""
    out: dict[str, tuple[str, type]] = {}
    for f in dataclasses.fields(cls):
        provider = f.metadata.get("sections")
        if provider is not None:
            out.update({key: (f.name, schema) for key, schema in provider().items()})
    return out


# ---------------------------------------------------------------- reusable checks
def interval(low: float | None, high: float | None, *, low_open: bool = False, high_open: bool = False) -> Check:
    """Check that a number lies in an interval, e.g. ``interval(0, 1, low_open=True)``."""
    text = "{}{}, {}{}".format(
        "(" if low_open or low is None else "[",
        "-inf" if low is None else _num(low),
        "inf" if high is None else _num(high),
        ")" if high_open or high is None else "]",
    )

    def check(value: Any) -> str | None:
        if value is None:
            return None
        bad_low = low is not None and (value <= low if low_open else value < low)
        bad_high = high is not None and (value >= high if high_open else value > high)
        return f"must be in {text}" if bad_low or bad_high else None

    return check


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# ---------------------------------------------------------------- building
def build(cls: type, raw: Any, path: str = "") -> Any:
    """Validate ``raw`` against dataclass ``cls`` and return an instance."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"`{path or '<root>'}` must be a mapping; got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    sections = section_schemas(cls)
    for key in sections:
        if key in fields:
            raise ConfigError(
                f"`{_join(path, key)}` is both a setting and a registered section; "
                f"the section's owner must take another name"
            )
    known = [n for n, f in fields.items() if "sections" not in f.metadata] + list(sections)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean `{_join(path, close[0])}`?)" if close else ""
            shown = key if isinstance(key, str) and key.isprintable() else repr(key)  # one line, whatever the key
            raise ConfigError(f"unknown key `{_join(path, shown)}`{hint}; known keys here: {', '.join(known)}")
    values = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if "sections" in f.metadata:
            values[name] = {
                key: build(schema, raw.get(key), _join(path, key))
                for key, (owner, schema) in sections.items()
                if owner == name
            }
            continue
        if name in raw:
            value = convert(hints[name], raw[name], key_path)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise ConfigError(f"missing required key `{key_path}`")
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices():
            raise ConfigError(f"`{key_path}` must be one of {', '.join(choices())}; got {_show(value)}")
        check = f.metadata.get("check")
        if check is not None:
            message = check(value)
            if message:
                raise ConfigError(f"`{key_path}` {message}; got {_show(value)}")
        values[name] = value
    obj = cls(**values)
    post = getattr(obj, "validate", None)
    if post is not None:
        post(path)
    return obj


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to type ``tp`` (a subset of typing) or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        lists = [o for o in options if get_origin(o) in (list, typing.List)]
        if lists and isinstance(value, list):
            # every list form is tried; a failure is told in the form whose nesting matches the value's
            nested = bool(value) and isinstance(value[0], list)
            failures: list[tuple[int, int, ConfigError]] = []
            for option in lists:
                try:
                    return convert(option, value, path)
                except ConfigError as exc:
                    item = (get_args(option) or (Any,))[0]
                    matches = (get_origin(item) in (list, typing.List)) == nested
                    failures.append((0 if matches else 1, len(failures), exc))
            raise min(failures, key=lambda f: f[:2])[2]
        forms = [o for o in options if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and len(forms) == 1:  # a mapping can only mean that section: tell its error
            return convert(forms[0], value, path)
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except ConfigError as exc:
                errors.append(exc)
        expected = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"`{path}` must be {expected}; got {_show(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"`{path}` must be one of {', '.join(map(str, choices))}; got {_show(value)}")
    if origin in (list, typing.List):
        (item,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"`{path}` must be a list; got {_show(value)}")
        return [convert(item, v, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        from_value = getattr(tp, "from_value", None)
        if from_value is not None and not isinstance(value, dict):
            return from_value(value, path)
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN passes every range check: refuse it here, for every key
                raise ConfigError(f"`{path}` must be a finite number; got {_show(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"`{path}` must be {_type_name(tp)}; got {_show(value)}")


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            provider = f.metadata.get("sections")
            if provider is None:
                out[f.name] = to_dict(value)
                continue
            schemas = provider()  # every section in place, a default one where none was given
            out.update(
                {
                    key: to_dict(value[key] if key in value else schemas[key]())
                    for key in [*schemas, *(k for k in value if k not in schemas)]
                }
            )
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if get_origin(tp) in (list, typing.List):
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _show(value: Any) -> str:
    """A short, bounded rendering of a value for messages (never a full repr of a big object,
    never the password of a URI)."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} items"
    text = reprlib.repr(redact(value) if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def redact(text: str) -> str:
    """``text`` with the user and password of every URI in it replaced by ``***``, each URI
    parsed (a password holding ``@`` or ``:`` is hidden whole), for logs and parameters."""
    import re

    return "".join(_redact_word(w) for w in re.split(r"(\s+)", text))  # words, by white space


def _redact_word(word: str) -> str:
    from urllib.parse import urlsplit

    at = word.find("://")
    if at < 0:
        return word
    start = at
    while start and (word[start - 1].isalnum() or word[start - 1] in "+.-"):
        start -= 1
    try:
        netloc = urlsplit(word[start:]).netloc
    except ValueError:  # a malformed address: hide all of it rather than half
        return word[:start] + "***"
    if "@" not in netloc:
        return word
    return word[:start] + word[start:].replace(netloc, "***@" + netloc.rpartition("@")[2], 1)
