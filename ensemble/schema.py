"""The config schema's building blocks, kept under this name for plugins: a strategy's
``settings_schema`` is a dataclass of :func:`field` entries with checks such as
:func:`interval` (docs/guides/extend.md). They live in :mod:`members.schema`, the one base
that ``members/`` (its training settings, :mod:`members.settings`) and ``ensemble/`` (the
rest of the config) share."""

from members.schema import (
    Check,
    ConfigError,
    build,
    convert,
    field,
    interval,
    redact,
    section_schemas,
    sections_field,
    to_dict,
)

__all__ = [
    "Check",
    "ConfigError",
    "build",
    "convert",
    "field",
    "interval",
    "redact",
    "section_schemas",
    "sections_field",
    "to_dict",
]
