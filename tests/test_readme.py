from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_in_readme_matches_the_schema():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from config_reference import table

    assert table() in (ROOT / "docs/reference/config.md").read_text(), (
        "the config reference is stale: run `python scripts/config_reference.py --write`"
    )


def test_registry_table_in_readme_lists_every_registered_entry():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from config_reference import registry_table

    from ensemble.combining.strategies import STRATEGIES
    from ensemble.reporting.markdown import MODEL_FIGURES, SECTIONS, SPLIT_FIGURES
    from members.runtimes import RUNTIMES
    from members.views import VIEWS
    from members.weights import SOURCES

    table = registry_table()
    for registry in (STRATEGIES, VIEWS, RUNTIMES, SOURCES, SPLIT_FIGURES, MODEL_FIGURES, SECTIONS):
        for name in registry:
            assert f"| `{name}` |" in table, (registry.kind, name)
    assert "`combiner.greedy.iterations`" in table  # a strategy's own settings, from its schema
    assert table in (ROOT / "docs/reference/registries.md").read_text(), (
        "the registry reference is stale: run `python scripts/config_reference.py --write`"
    )


def test_the_readme_command_table_lists_every_registered_command():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from config_reference import commands_table

    from ensemble.commands import load_commands

    table = commands_table()
    for cmd in load_commands():
        assert f"| `effens {cmd.name} " in table and cmd.help in table
    assert "`effens export RUN --format FORMAT --out OUT [options]`" in table
    for page in ("README.md", "docs/reference/commands.md"):
        assert table in (ROOT / page).read_text(), (
            f"{page}: the command table is stale: run `python scripts/config_reference.py --write`"
        )


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "pip install -e '.[dev]' && python -m pytest -q"
    assert command in readme
    assert command in (ROOT / ".ci/run").read_text()


def test_the_readme_is_a_short_page_that_points_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in ("docs/guides/train.md", "docs/guides/audit.md", "docs/reference/config.md", "docs/benchmarks.md"):
        assert f"]({page})" in readme and (ROOT / page).is_file(), page


def readme_python_block() -> str:
    text = (ROOT / "docs/guides/python.md").read_text()
    section = text
    return section[section.index("```python\n") + 10 : section.index("\n```", section.index("```python\n"))]


def test_readme_python_section_runs_as_written(trained, tmp_path):
    """The README's Python example, run as written from a folder laid out like the repository
    root: its demo data (the first 12 training and 4 validation photos of each class, so the
    two pretrained members fit in seconds) and a finished run at runs/demo."""
    import os
    import shutil
    import subprocess
    import sys

    _, run = trained
    for split, n in (("train", 12), ("val", 4)):
        for folder in sorted((ROOT / "data/demo" / split).iterdir()):
            (tmp_path / "data/demo" / split / folder.name).mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:n]:
                (tmp_path / "data/demo" / split / folder.name / photo.name).symlink_to(photo)
    shutil.copytree(run, tmp_path / "runs/demo")
    code = readme_python_block()
    code += (
        "\nassert isinstance(ens.oob_score_, float) and 0 <= ens.oob_score_ <= 1, ens.oob_score_"
        "\nassert proba.shape == (4, 3) and pred.shape == (4,)"
        "\nassert twin.get_params()['seed'] == 1 and not hasattr(twin, 'members_')"
        "\nassert ens.get_params()['seed'] == 0\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # fit trained in memory: nothing new next to the data and the existing run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "runs"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["demo"]
