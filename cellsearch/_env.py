"""One environment variable set for the duration of a block (used by the bench, Inductor's cache and
the Ray driver); torch-free, at the bottom of the house."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["env_var"]


@contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block; the previous value (or its absence) after it.
    Only ``name`` is touched, so other variables set meanwhile (by other threads) are kept."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
