"""Built-in primitives, one module per role; importing this package registers them."""

from __future__ import annotations

from . import (  # noqa: F401  (registration side effects; one module per role, one file per modern primitive)
    bias,
    depth,
    gate,
    init,
    init_lru,
    janet,
    mingru,
    minlstm,
    recurrence,
    recurrence_diagonal,
    recurrence_heads,
    recurrence_none,
    rg_lru,
    saturation,
    saturation_g,
    saturation_relu,
    slstm,
    update,
)
from .base import Block, Primitive

__all__ = ["Block", "Primitive"]
