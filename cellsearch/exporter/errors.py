"""The export's error: a model that cannot be exported, said in one line."""

from __future__ import annotations

from ..errors import UserError

__all__ = ["ExportError"]


class ExportError(UserError):
    """A model that cannot be exported (e.g. a primitive whose step cannot be traced into a graph)."""
