"""The house rules that keep one way through: members/ never imports ensemble/, and only
ensemble/runfolder.py knows the run folder's file names."""
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
    offenders = {p.name: sorted(m for m in _imports(p) if m.split(".")[0] == "ensemble")
                 for p in (ROOT / "members").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_run_folder_module_names_run_folder_files():
    names = ("member.json", "model.safetensors", "checkpoint.json", "hashes.json", "classes.json",
             "combiner.json", "val_proba.npy", "train_labels.npy", "oob_proba.npy")
    seen = {}
    for path in (ROOT / "ensemble").glob("*.py"):
        if path.name == "runfolder.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        strings = [n.value for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
        hits = sorted({name for name in names for s in strings if name in s})
        if hits:
            seen[path.name] = hits
    assert not seen
