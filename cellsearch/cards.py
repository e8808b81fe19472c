"""Cell cards: a published (or user) cell as a fixed point of the search space, plus its metadata.

A card is what the ``cellsearch.cells`` entry-point group carries. It holds no code, only a
:class:`~cellsearch.spec.CellSpec` (and the depth configuration the cell implies, for the deep-transition
cells), the citation, the equations and the numbers the paper reports. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec import CellSpec, DepthSpec, FrozenDict, ModelSpec

__all__ = ["CellCard"]


@dataclass(frozen=True)
class CellCard:
    """A registered cell: ``spec`` (+ ``depth``) and where it comes from.

    ``formula`` is the one-line summary ``cellsearch list`` prints; ``equations`` the full step;
    ``reported`` maps a benchmark to the paper's number (e.g. ``{"sMNIST acc %": 99.28}``).
    """

    name: str
    spec: CellSpec
    formula: str
    equations: str
    citation: str
    depth: DepthSpec = field(default_factory=DepthSpec)
    reported: Mapping[str, Any] = field(default_factory=FrozenDict)
    notes: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.spec, CellSpec):
            raise TypeError(f"cell card {self.name!r}: spec must be a CellSpec, got {type(self.spec).__name__}")
        if not isinstance(self.depth, DepthSpec):
            raise TypeError(f"cell card {self.name!r}: depth must be a DepthSpec")
        object.__setattr__(self, "reported", FrozenDict(self.reported))

    def model_spec(self, hidden_size: int, num_layers: int | None = None, **sizes: Any) -> ModelSpec:
        """The ModelSpec of this cell at a given hidden size (and number of layers)."""
        depth = self.depth if num_layers is None else self.depth.replace(layers=num_layers)
        return ModelSpec(cell=self.spec, depth=depth, hidden_size=hidden_size, **sizes)
