"""The project's lint rules (pyproject.toml, [tool.ruff]) hold for every file: unused
imports, undefined names, import order and the rest fail the suite, and so do type errors
in ensemble/ and members/ ([tool.mypy]), so `.ci/run` checks them too."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401 - installed by the `dev` extra
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed (pip install -e '.[dev]' installs it)")
        return ["ruff"]
    return [sys.executable, "-m", "ruff"]


def test_ruff_finds_nothing():
    done = subprocess.run(
        [*_ruff(), "check", "--no-cache", "ensemble", "members", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_would_fail_on_an_unused_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    done = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "F401" in done.stdout


def test_the_tree_is_formatted():
    done = subprocess.run(
        [*_ruff(), "format", "--check", "--no-cache", "ensemble", "members", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, "run `ruff format`:\n" + done.stdout[-4000:] + done.stderr[-2000:]


def test_the_format_check_would_fail_on_a_badly_formatted_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = {  'a':1 }\n")
    done = subprocess.run(
        [*_ruff(), "format", "--check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "bad.py" in done.stdout


def _mypy() -> list[str]:
    try:
        import mypy  # noqa: F401 - installed by the `dev` extra
    except ImportError:
        pytest.skip("mypy is not installed (pip install -e '.[dev]' installs it)")
    return [sys.executable, "-m", "mypy"]


def test_mypy_finds_no_type_errors():
    """The type check of pyproject.toml's [tool.mypy] over ensemble/ and members/. Its
    incremental cache (.mypy_cache/) makes every run after the first take seconds."""
    done = subprocess.run([*_mypy()], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_mypy_would_fail_on_a_type_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x: int) -> str:\n    return x\n")
    done = subprocess.run(
        [*_mypy(), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"), str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "[return-value]" in done.stdout, done.stdout + done.stderr
