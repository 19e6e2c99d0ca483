"""Commands are registered pieces (issue #42, item 1): `effens --help`, dispatch and the
output rule come from the registry, so a command added from outside the package (a plugin
or a new module) is listed, parsed and run with nothing else edited."""

import pytest

from ensemble.cli import build_parser, main
from ensemble.commands import COMMANDS, command, load_commands


@pytest.fixture
def hello():
    ran = []

    def arguments(p):
        p.add_argument("source")  # an input, declared below
        p.add_argument("--out", required=True)

    def run(args):
        ran.append((args.source, args.out))
        return 0

    load_commands()
    cmd = command("hello", "say hello to a file", arguments, run, backend="training", output="file", inputs=("source",))
    yield cmd, ran
    COMMANDS.remove("hello")


def test_a_registered_command_is_listed_parsed_and_run(hello, tmp_path, capsys):
    cmd, ran = hello
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "say hello to a file" in capsys.readouterr().out
    assert main(["hello", "world", "--out", str(tmp_path / "x.txt")]) == 0
    assert ran == [("world", str(tmp_path / "x.txt"))]


def test_the_output_rule_applies_to_every_registered_command(hello, tmp_path, caplog):
    cmd, ran = hello
    (tmp_path / "in.txt").write_text("x")
    assert main(["hello", str(tmp_path / "in.txt"), "--out", str(tmp_path / "in.txt")]) == 2
    assert ran == [] and "in.txt" in caplog.text


def test_a_taken_command_name_is_refused():
    from members.registry import RegistryError

    load_commands()
    with pytest.raises(RegistryError, match="a command named 'train' is already registered"):
        command("train", "x", lambda p: None, lambda a: 0, backend="training")


def test_every_command_has_verbosity_flags_and_its_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == [c.name for c in load_commands()]
    for name, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert {"-v", "-q", "--help"} <= flags, name
