"""The whole recurrent stack: deep input → composed cells (stacked, residual, dropout) → deep output.

The depth primitives it arranges (and their modules) are in :mod:`cellsearch.primitives.depth`
(PRIMITIVES.md §6); they are re-exported here.
"""

from __future__ import annotations

from torch import Tensor, nn

from .cells import ComposedCell
from .primitives.depth import DeepMLP, DepthPrimitive, Transition, arrange
from .spec import CellSpec, DepthSpec

__all__ = ["StackedRNN", "Transition", "DeepMLP", "DepthPrimitive"]


class StackedRNN(nn.Module):
    """A whole recurrent network: deep input → stacked composed cells (with deep transition,
    residual connections and dropout between layers) → deep output.

    ``forward(x [B, T, d], state=None) -> (out [B, T, n], state)``; ``state`` is a tuple with one state
    tuple per layer (for an LSTM-type layer ``(h, c)``, each [B, n]).
    """

    def __init__(self, cell: CellSpec, input_size: int, hidden_size: int, depth: DepthSpec) -> None:
        super().__init__()
        self.cell_spec, self.depth = cell, depth
        self.input_size, self.hidden_size = input_size, hidden_size
        n = hidden_size
        self.input_mlp = DeepMLP(input_size, n, depth.input_layers) if depth.input_layers else None
        first = n if self.input_mlp is not None else input_size
        self.layers = nn.ModuleList(
            ComposedCell(cell, first if i == 0 else n, n, depth.transition, depth.transition_layers)
            for i in range(depth.layers)
        )
        self.dropout = nn.Dropout(depth.dropout) if depth.dropout > 0 else None
        self.output_mlp = DeepMLP(n, n, depth.output_layers) if depth.output_layers else None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, x: Tensor, state: tuple[tuple[Tensor, ...], ...] | None = None
                ) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:
        if x.dim() != 3:
            raise ValueError(f"expected input [batch, time, features], got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"expected {self.input_size} input features, got {x.shape[-1]}")
        layers = [layer.forward_sequence for layer in self.layers]
        seq, finals = arrange(x.transpose(0, 1), state, layers, self.input_mlp, self.output_mlp, self.dropout,
                              self.depth.residual)
        return seq.transpose(0, 1), finals

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, depth={self.depth}"
