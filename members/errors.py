"""The one error family: every error that is the user's input or environment, not a bug.

:class:`EffensError` carries the exit code the command line answers with (2) and, where
known, the culprit (the file, key, member, flag or plugin at fault). The command line
reports any of them as one line; everything else is a bug and keeps its traceback. Each
kind of error subclasses it (and the built-in error it has always been, so ``except
ValueError`` in a user's code still catches a ``ConfigError``); ``tests/test_errors.py``
fails for an ``*Error`` class of effens outside the family. It lives in ``members/``, the
lower floor, so that both packages can use it.
"""

from __future__ import annotations


class EffensError(Exception):
    """A user-facing error: one line, ``exit_code`` 2, ``culprit`` naming what is at fault."""

    exit_code = 2

    def __init__(self, *args: object, culprit: str | None = None) -> None:
        super().__init__(*args)
        self.culprit = culprit
