"""The README's config reference table, from the schema: print it, or `--write` it into README.md."""
from __future__ import annotations

import dataclasses
import typing

from ensemble import config as C


def _type(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is C.SplitSource:
        return "folder, CSV path or {csv, path_column, label_column}"
    if origin is typing.Literal:
        return " \\| ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return " or ".join(_type(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type(typing.get_args(tp)[0])}"
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def rows(cls, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if dataclasses.is_dataclass(inner) and inner is not C.SplitSource:
            yield from rows(inner, key + (".N." if inner is not tp else "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default}`" if f.default is not None else "null"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{f.default_factory()}`"
        else:
            default = "required"
        choices = f.metadata.get("choices")
        kind = " \\| ".join(choices()) if choices else _type(tp)
        yield f"| `{key}` | {kind} | {default} | {f.metadata.get('doc', '')} |"


def table() -> str:
    return "\n".join(["| key | type | default | meaning |", "|---|---|---|---|", *rows(C.Config)])


def write_readme(path: str = "README.md") -> None:
    """Replace the table between the config-reference markers in the README."""
    import re

    text = open(path, encoding="utf-8").read()
    new, n = re.subn(r"(<!-- config-reference:[^\n]*-->\n).*?(\n<!-- /config-reference -->)",
                     lambda m: m.group(1) + table() + m.group(2), text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{path}: the config-reference markers were not found; nothing written")
    open(path, "w", encoding="utf-8").write(new)


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        write_readme()
    else:
        print(table())
