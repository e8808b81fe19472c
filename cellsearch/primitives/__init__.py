"""Built-in primitives, one module per role; importing this package registers them."""

from __future__ import annotations

from . import depth, gate, init, recurrence, saturation, update  # noqa: F401  (registration side effects)
from . import (  # noqa: F401  (registration side effects: the modern cells' primitives, one file each)
    init_lru,
    janet,
    mingru,
    minlstm,
    recurrence_diagonal,
    recurrence_none,
    rg_lru,
    saturation_g,
    saturation_relu,
    slstm,
)
from .base import Block, Primitive

__all__ = ["Block", "Primitive"]
