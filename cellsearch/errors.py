"""The errors every layer may raise for the command line to print, kept below every layer.

:class:`UserError` is a mistake in the user's input (one line, exit status 2); :class:`StudyError` such a
mistake in a study or space file, naming the file, the key, the value and what is allowed;
:class:`RunStopped` a run stopped by a failure outside it (one line, exit status 1). They live here, not in
:mod:`cellsearch.cli`, so that the configuration, search and export layers do not import the command line
(issue 11: no back-edges); ``cellsearch.cli`` re-exports them. Torch-free; imports only the standard
library.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["UserError", "StudyError", "RunStopped", "did_you_mean", "short"]


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2."""


class RunStopped(Exception):
    """A run stopped by a failure outside the user's input (disk full, out of memory, data gone): printed
    as one line, exit status 1; what ran so far is kept and running again continues."""


class StudyError(UserError, ValueError):
    """A mistake in a study or space file: one line naming file, key, value and what is allowed."""

    def __init__(self, source: str, key: str = "", value: Any = None, allowed: str = "", hint: str = "") -> None:
        if not (key or allowed):  # one free-form line (as :meth:`plain` without a source)
            self.source, self.key, self.value, self.allowed = "", "", None, ""
            super().__init__(source)
            return
        self.source, self.key, self.value, self.allowed = source, key, value, allowed
        shown = short(value)
        head = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(f"{head}{shown} is not allowed; {hint}expected {allowed}")

    @classmethod
    def plain(cls, source: str, message: str) -> StudyError:
        """A StudyError with a free-form message (malformed YAML, missing files)."""
        err = cls.__new__(cls)
        err.source, err.key, err.value, err.allowed = source, "", None, ""
        Exception.__init__(err, f"{source}: {message}")
        return err


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (values shown in errors never expand)."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest choices, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
