"""The README's generated tables: the config reference (from the schema) and every registered
extension point (from the registries). Print them, or `--write` them into README.md and docs/."""

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
        provider = f.metadata.get("sections")
        if provider is not None:  # one section per registered owner (each strategy's own settings)
            for name, schema in provider().items():
                yield from rows(schema, f"{prefix}{name}.")
            continue
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        optional = (
            [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType"))
            else []
        )
        if len(optional) == 1 and optional[0] is not C.SplitSource:  # an optional section: off unless given
            yield f"| `{key}` | mapping or null | null | {f.metadata.get('doc', '')} |"
            yield from rows(optional[0], key + ".")
            continue
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


def _first_line(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")


def registry_table() -> str:
    """One row per registered strategy, view, runtime, weights source, figure, section, audit
    detector and serve route."""
    from ensemble.auditing.audit import DETECTORS
    from ensemble.combining.strategies import STRATEGIES, Strategy
    from ensemble.reporting.markdown import MODEL_FIGURES, SECTIONS, SPLIT_FIGURES
    from ensemble.serving.app import ROUTES
    from members.runtimes import RUNTIMES
    from members.views import VIEWS
    from members.weights import SOURCES

    out = ["| extension point | name | what it is | declares |", "|---|---|---|---|"]
    for name, cls in STRATEGIES.items():
        own = (
            [f"`combiner.{name}.{f.name}`" for f in dataclasses.fields(cls.settings_schema)]
            if cls.settings_schema
            else []
        )
        declares = ", ".join(
            own
            + [f"fitted on `combiner.{cls.source_key}`"] * bool(cls.source_key)
            + ["export graph"] * (cls.graph_head is not Strategy.graph_head)
        )
        out.append(f"| strategy (`@register`) | `{name}` | {_first_line(cls)} | {declares or '-'} |")
    for name, v in VIEWS.items():
        kind = "TTA only" if v.tta_only else "member or TTA" + ("; own training view" if v.train else "")
        out.append(f"| view (`@view`) | `{name}` | {_first_line(v.look)} | {kind} |")
    for name, r in RUNTIMES.items():
        auto = f"`auto` priority {r.auto}" if r.auto is not None else "never `auto`"
        needs = f"; needs `{r.package}`" if r.package else ""
        out.append(
            f"| runtime (`@register`) | `{name}` | {_first_line(r.cls)} | {auto}; {'/'.join(r.devices)}{needs} |"
        )
    for name, src in SOURCES.items():
        prefix = f"prefix `{src.prefix}`, " if src.prefix else ""
        out.append(
            f"| weights source (`@register_source`) | `{name}` | {_first_line(type(src))} | "
            f"{prefix}priority {src.priority} |"
        )
    for registry, kind in (
        (SPLIT_FIGURES, "figure per split (`@split_figure`)"),
        (MODEL_FIGURES, "figure per member and strategy (`@model_figure`)"),
        (SECTIONS, "report section (`@report_section`)"),
    ):
        for name, fn in registry.items():
            out.append(f"| {kind} | `{name}` | {_first_line(fn)} | report.md and index.html |")
    for name, fn in DETECTORS.items():
        out.append(
            f"| audit detector (`@detector`) | `{name}` | {_first_line(fn)} | audit.json, index.html, "
            f"the summary line |"
        )
    for name, r in ROUTES.items():
        out.append(
            f"| serve route (`@route`) | `{name}` | {_first_line(r.endpoint)} | "
            f"{'needs the API key' if r.keyed else 'open'}; {r.response} |"
        )
    return "\n".join(out)


def _usage(parser) -> str:
    """A command's positional arguments and required options, then ``[options]``."""
    words = []
    for action in parser._actions:  # argparse keeps no public list of its arguments
        if not action.option_strings:
            name = action.metavar or action.dest.upper()
            words.append(f"{name}..." if action.nargs in ("+", "*") else name)
        elif action.required:
            words.append(f"{action.option_strings[-1]} {action.metavar or action.dest.upper()}")
    return " ".join(words + ["[options]"])


def commands_table() -> str:
    """One row per registered command (ensemble/commands/): how it is called, what it does."""
    from ensemble.cli import build_parser
    from ensemble.commands import load_commands

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = ["| command | what it does |", "|---|---|"]
    for cmd in load_commands():
        out.append(f"| `effens {cmd.name} {_usage(sub.choices[cmd.name])}` | {cmd.help} |")
    return "\n".join(out)


#: which generated table goes into which file (between its markers)
TARGETS = {
    "config-reference": ("docs/reference/config.md",),
    "registries": ("docs/reference/registries.md",),
    "commands": ("README.md", "docs/reference/commands.md"),
}


def generated() -> dict[str, str]:
    return {"config-reference": table(), "registries": registry_table(), "commands": commands_table()}


def write_docs(root: str = ".") -> None:
    """Replace each generated table between its markers in the README and the docs."""
    import re
    from pathlib import Path

    bodies = generated()
    for marker, paths in TARGETS.items():
        for rel in paths:
            path = Path(root) / rel
            text = path.read_text(encoding="utf-8")
            text, n = re.subn(
                rf"(<!-- {marker}:[^\n]*-->\n).*?(\n<!-- /{marker} -->)",
                lambda m: m.group(1) + bodies[marker] + m.group(2),
                text,
                flags=re.S,
            )
            if n != 1:
                raise SystemExit(f"{path}: the {marker} markers were not found; nothing written")
            path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        write_docs()
    else:
        print(commands_table(), table(), registry_table(), sep="\n\n")
