"""The house rules that keep one way through: members/ never imports ensemble/, no import
cycles, only ensemble/runfolder.py knows the run folder's file names, commands on one floor,
registries that refuse a taken name, and no test module importing another."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_members_never_imports_ensemble():
    offenders = {
        p.name: sorted(m for m in _imports(p) if m.split(".")[0] == "ensemble") for p in (ROOT / "members").glob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


#: the run folder's file names (ensemble/runfolder.py's layout); a report folder's are part of it
RUN_FOLDER_NAMES = (
    "config.yaml",
    "classes.json",
    "run.json",
    ".effens.lock",
    "run.lock",
    "member.json",
    "model.safetensors",
    "samples.npy",
    "oob.npy",
    "oob_proba.npy",
    "checkpoint.json",
    "checkpoint.safetensors",
    "hashes.json",
    "combiner.json",
    "val_proba.npy",
    "test_proba.npy",
    "val_labels.npy",
    "train_labels.npy",
    "metrics.json",
    "report.md",
    "card.md",
)


def _name_literals(path: Path, names: tuple[str, ...] = RUN_FOLDER_NAMES) -> set[str]:
    """The names of ``names`` that a string literal in ``path`` holds, but for what users
    read: docstrings and the ``doc=`` / ``help=`` text of config fields and CLI options."""
    tree = ast.parse(path.read_text())
    prose = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    prose |= {
        id(c)
        for n in ast.walk(tree)
        if isinstance(n, ast.keyword) and n.arg in ("doc", "help")
        for c in ast.walk(n.value)
    }
    strings = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in prose
    ]
    return {name for name in names for s in strings if name in s}


def test_only_the_run_folder_module_names_run_folder_files():
    """A run folder's file names are spelled in ensemble/runfolder.py alone (its constants,
    `RunFolder`'s paths, `holds_run`), so a change of layout is one file; members/ knows
    none of them. Help text and docstrings may name them for the reader."""
    seen = {
        str(p.relative_to(ROOT)): sorted(_name_literals(p))
        for pkg in ("ensemble", "members")
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p.name != "runfolder.py"
    }
    assert not {k: v for k, v in seen.items() if v}, seen
    assert _name_literals(ROOT / "ensemble" / "runfolder.py") >= {"config.yaml", "run.json", "metrics.json"}


def test_the_run_folder_name_check_skips_only_prose(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""Reads run.json."""\n'
        'def f(run, p):\n    """The config.yaml."""\n    p.add_argument("--x", help="writes report.md")\n'
        '    return run / "metrics.json", f"{run}/card.md", field(1, doc="see hashes.json")\n'
        'LOCK = ".effens.lock"\n'
    )
    assert _name_literals(probe) == {"metrics.json", "card.md", ".effens.lock"}


def _test_module_imports(path: Path) -> set[str]:
    """Test modules ``path`` imports, in any spelling (``import test_x``, ``from test_x import``,
    ``from tests.test_x import``, ``from .test_x import``, ``from tests import test_x``), at the
    top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.rsplit(".", 1)[-1].startswith("test_"))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.rsplit(".", 1)[-1].startswith("test_"):
                found.add(module)
            elif module in ("", "tests"):
                found.update(a.name for a in node.names if a.name.startswith("test_"))
    return found


def test_no_test_module_imports_another():
    """Tests live in the test module of the module they exercise; what several share is a
    fixture in tests/conftest.py or a builder in tests/synth.py, never another test module
    (importing one runs its module code again and ties the two files' fates together)."""
    offenders = {p.name: sorted(_test_module_imports(p)) for p in sorted((ROOT / "tests").glob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_test_import_check_sees_every_spelling(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import test_a\nfrom test_b import x\nfrom tests.test_c import y\nfrom .test_d import z\n"
        "def f():\n    from tests import test_e\n    import tests.test_f\n    from . import test_g\n"
        "import synth\nfrom conftest import tiny_data\nfrom ensemble import testing_tools\n"
    )
    assert _test_module_imports(probe) == {
        "test_a",
        "test_b",
        "tests.test_c",
        "test_d",
        "test_e",
        "tests.test_f",
        "test_g",
    }


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(root: Path = ROOT, packages: tuple[str, ...] = ("ensemble", "members")) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports, read from the AST: at the top, inside
    functions and classes, in any spelling (absolute, relative, ``from pkg import module``).
    An import of a module's own package (``from . import __version__``) is left out: Python
    imports a package before any module in it, so that edge exists for every module and
    says nothing about order."""
    modules = {_module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(known(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:  # `from pkg import module` imports the module; else the names' module
                    found.add(f"{module}.{a.name}" if f"{module}.{a.name}" in modules else known(module))
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {m for m in found if m and m != name and m not in ancestors}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_ensemble_or_members():
    """Imports flow one way (cli -> commands -> backends -> shared floors -> members), so any
    module can be read, tested and moved from the bottom up. A cycle, even through an import
    inside a function, is named with its modules and what each imports of the others."""
    graph = _import_graph()
    assert {"ensemble.cli", "ensemble.commands.train", "members.trainer", "members.schema"} <= set(graph)
    assert "members.trainer" in graph["ensemble.member_jobs"] and "ensemble.config" in graph["ensemble.runfolder"]
    cycles = {" <-> ".join(c): {m: sorted(graph[m] & set(c)) for m in c} for c in _cycles(graph)}
    assert not cycles, cycles


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("__version__ = '1'\n")
    (tmp_path / "pkg" / "a.py").write_text("from . import __version__\nfrom .b import x\n")
    (tmp_path / "pkg" / "b.py").write_text("x = 1\ndef f():\n    from pkg.sub import c\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "c.py").write_text("def g():\n    from .. import a\n")
    graph = _import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert _cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    (tmp_path / "pkg" / "sub" / "c.py").write_text("def g():\n    from pkg import __version__\n")
    assert _cycles(_import_graph(tmp_path, ("pkg",))) == []


def _commands():
    from ensemble.commands import load_commands

    return load_commands()


def _backends() -> set[str]:
    """The modules behind the commands, read from the command registry: they share helpers
    that live a floor below (data, images, pages, runfolder, report, ...), never each other."""
    return {c.backend for c in _commands()}


def test_no_command_backend_imports_another():
    backends = {f"ensemble.{b}" for b in _backends()}
    assert {
        "ensemble.training",
        "ensemble.inference",
        "ensemble.tuning",
        "ensemble.export",
        "ensemble.explain",
        "ensemble.serving.app",
        "ensemble.auditing.audit",
        "ensemble.distill",
    } <= backends
    graph = _import_graph()
    offenders = {b: sorted(graph[b] & (backends - {b})) for b in backends}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_ensemble_keeps_its_folders():
    """Each folder of ensemble/ holds one stage; the modules left at the top are the river's
    shared floors, the command backends and the Python face."""
    folders = {p.name for p in (ROOT / "ensemble").iterdir() if (p / "__init__.py").exists()}
    assert folders == {"commands", "combining", "reporting", "serving", "auditing"}
    assert len(list((ROOT / "ensemble").glob("*.py"))) <= 26


def test_commands_are_one_module_each_on_one_floor():
    """Every module in ensemble/commands/ registers exactly its commands and imports no other
    command module (what two share is in commands/options.py or a floor below)."""
    folder = ROOT / "ensemble" / "commands"
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "options"}
    owners = {c.run.__module__.rsplit(".", 1)[1] for c in _commands()}
    assert owners == modules
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {
            a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 1 and not n.module
            for a in n.names
        } | {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module
        }
        assert not imported & (modules - {name}), (name, imported & modules)


def test_every_registry_refuses_a_taken_name():
    import pytest

    from ensemble.combining.strategies import STRATEGIES
    from ensemble.reporting.markdown import MODEL_FIGURES, SECTIONS, SPLIT_FIGURES
    from members.registry import RegistryError
    from members.runtimes import RUNTIMES
    from members.views import VIEWS
    from members.weights import SOURCES

    for registry in (STRATEGIES, RUNTIMES, VIEWS, SOURCES, SPLIT_FIGURES, MODEL_FIGURES, SECTIONS):
        name = next(iter(registry))
        before = dict(registry)
        with pytest.raises(RegistryError, match=f"a {registry.kind} named {name!r} is already registered"):
            registry.add(name, object())
        assert dict(registry) == before  # the first entry kept, order unchanged


def test_registry_lookup_names_close_spellings():
    from members.registry import Registry, RegistryError

    reg = Registry("view")
    reg.add("letterbox", 1)
    reg.add("crop", 2)
    assert reg.lookup("crop") == 2 and reg.names() == ("letterbox", "crop")
    try:
        reg.lookup("letterbx")
    except RegistryError as exc:
        assert str(exc) == "unknown view 'letterbx' (did you mean 'letterbox'?); known: letterbox, crop"
    else:
        raise AssertionError("lookup of an unknown name did not raise")


def test_the_layout_guide_names_every_module():
    layout = (ROOT / "docs/guides/extend.md").read_text()
    words = set(layout.replace(",", " ").replace("(", " ").replace(")", " ").split())
    missing = [
        str(p.relative_to(ROOT).with_suffix(""))
        for pkg in ("ensemble", "members")
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if not p.stem.startswith("__") and p.parent.name != "commands" and p.stem not in words
    ]
    assert not missing, f"docs/guides/extend.md's layout does not name {missing}"


def test_a_prefixed_weights_source_wins_over_local_files_whatever_the_import_order():
    from members.weights import SOURCES, WeightsSource, register_source, weights_source

    assert weights_source("some/dir/file.pt").name == "file"  # a path separator: a local file

    @register_source
    class Toy(WeightsSource):  # registered last, after the catch-all local files
        name = "toy"
        prefix = "toy://"

    try:
        assert weights_source("toy://bucket/lite0.safetensors").name == "toy"
        assert weights_source("some/dir/file.pt").name == "file"
        assert weights_source("none").name == "none"
    finally:
        SOURCES.remove("toy")


def test_runtime_auto_takes_the_highest_priority_installed_runtime_for_the_device():
    from members.runtimes import RUNTIMES, Runtime, is_installed, register, resolve_runtime

    before = resolve_runtime("auto", "cpu")
    assert before == ("openvino" if is_installed("openvino") else "torch")

    @register("toy", auto=50, devices=("cpu",))
    class Toy(Runtime):
        pass

    try:
        assert resolve_runtime("auto", "cpu") == "toy"
        assert resolve_runtime("auto", "cuda") == "torch"  # toy runs on cpu only
    finally:
        RUNTIMES.remove("toy")
    assert resolve_runtime("auto", "cpu") == before


def test_a_training_key_is_a_field_in_members_settings_read_by_members():
    """CONTRIBUTING's "a training key" row: the field in members/settings.py and the members/
    code that reads it are the whole change (the config reference is generated from the
    schema, tests/test_readme.py). A field no members/ module reads fails here, and so does a
    training setting declared anywhere else."""
    import dataclasses
    import re

    from ensemble.config import MemberConfig
    from members.settings import TrainConfig

    assert {f.name: f.type for f in dataclasses.fields(MemberConfig)}["train"] in (TrainConfig, "TrainConfig")
    sources = {p: p.read_text() for p in (ROOT / "members").rglob("*.py") if p.name != "settings.py"}
    unread = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if not any(re.search(rf"\.{f.name}\b", text) for text in sources.values())
    ]
    assert not unread, f"training keys no members/ module reads: {unread}"
    declared = [p.name for p in (ROOT / "ensemble").rglob("*.py") if "class TrainConfig" in p.read_text()]
    assert not declared, f"TrainConfig declared outside members/settings.py: {declared}"
