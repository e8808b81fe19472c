"""The two errors every layer may raise for the command line to print, kept below every layer.

:class:`UserError` is a mistake in the user's input (one line, exit status 2); :class:`RunStopped` a run
stopped by a failure outside it (one line, exit status 1). They live here, not in :mod:`cellsearch.cli`,
so that the configuration, search and export layers do not import the command line (issue 11: no
back-edges); ``cellsearch.cli`` re-exports both. Torch-free, imports nothing.
"""

from __future__ import annotations

__all__ = ["UserError", "RunStopped"]


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2."""


class RunStopped(Exception):
    """A run stopped by a failure outside the user's input (disk full, out of memory, data gone): printed
    as one line, exit status 1; what ran so far is kept and running again continues."""
