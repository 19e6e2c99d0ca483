"""One error family (issue #42, item 3): every user-facing error of effens derives from
members.errors.EffensError, which carries its exit code and culprit; the command line maps
the base, not a list of names."""

import importlib
import inspect
import pkgutil

import pytest

import ensemble
import members
from ensemble.cli import main
from ensemble.commands import COMMANDS, command, load_commands
from members.errors import EffensError


def _modules():
    for pkg in (ensemble, members):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


def test_every_error_class_of_effens_is_in_the_family():
    found, outside = [], []
    for module in _modules():
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, Exception):
                continue
            if name.endswith("Error") or name.endswith("Unavailable"):
                found.append(name)
                if not issubclass(cls, EffensError):
                    outside.append(f"{module.__name__}.{name}")
    assert len(found) >= 15 and not outside, outside


@pytest.fixture
def failing():
    load_commands()

    class Odd(EffensError):
        exit_code = 3

    raised = {}

    def run(args):
        raise raised["exc"]

    command("fail", "raise an error", lambda p: None, run, backend="training", output=None)
    yield raised, Odd
    COMMANDS.remove("fail")


def test_the_command_line_maps_the_base_to_one_line_and_its_exit_code(failing, caplog):
    raised, odd = failing
    raised["exc"] = EffensError("a plugin's own error", culprit="--x")
    assert main(["fail"]) == 2
    assert "a plugin's own error" in caplog.text and "Traceback" not in caplog.text
    raised["exc"] = odd("with its own code")
    assert main(["fail"]) == 3
    raised["exc"] = ValueError("a bug")
    with pytest.raises(ValueError):
        main(["fail"])


def test_a_bad_serve_flag_is_a_usage_error_naming_the_flag(tmp_path, caplog):
    assert main(["serve", str(tmp_path), "--max-wait-ms", "nan"]) == 2
    assert "`--max-wait-ms` must be a positive number" in caplog.text
