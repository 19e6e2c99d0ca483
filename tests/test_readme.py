from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_in_readme_matches_the_schema():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from config_reference import table

    assert table() in (ROOT / "README.md").read_text(), \
        "README's config table is stale: paste `python scripts/config_reference.py`"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "pip install -e '.[dev]' && python -m pytest -q"
    assert command in readme
    assert command in (ROOT / ".ci/run").read_text()
