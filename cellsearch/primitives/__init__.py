"""Built-in primitives, one module per role; importing this package registers them."""

from __future__ import annotations

from . import depth, gate, init, recurrence, saturation, update  # noqa: F401  (registration side effects)
from .base import Block, Primitive

__all__ = ["Block", "Primitive"]
