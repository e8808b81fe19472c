"""The whole recurrent stack: the depth primitives' parts around composed cells (PRIMITIVES.md §6).

The depth primitives (stacked, deep transition, deep output/input, residual, and any a plugin registers)
and the arrangement they take part in are in :mod:`cellsearch.primitives.depth`; this module, one floor
up, builds their parts around the cells. The modules are re-exported here.
"""

from __future__ import annotations

from torch import Tensor, nn

from .cells import ComposedCell
from .primitives.depth import DeepMLP, DepthPrimitive, Part, Transition, arrange, depth_parts
from .spec import CellSpec, DepthSpec

__all__ = ["StackedRNN", "Transition", "DeepMLP", "DepthPrimitive", "stack_parts"]


def stack_parts(depth: DepthSpec, input_size: int, hidden_size: int) -> dict[str, list[Part]]:
    """The parts of a stack around its layers, by stage (``input``, ``join``, ``output``): the input
    stage receives the data's width, the others the hidden width."""
    n = hidden_size
    return {"input": depth_parts(depth, input_size, n, "input"), "join": depth_parts(depth, n, n, "join"),
            "output": depth_parts(depth, n, n, "output")}


class StackedRNN(nn.Module):
    """A whole recurrent network: the input-stage parts (deep input) → ``depth.layers`` composed cells,
    each layer's output through the join-stage parts (residual, dropout between layers) → the
    output-stage parts (deep output). Each part is an attribute named by its primitive (``input_mlp``,
    ``output_mlp``, ...), so the weights keep those names.

    ``forward(x [B, T, d], state=None) -> (out [B, T, n], state)``; ``state`` is a tuple with one state
    tuple per layer (for an LSTM-type layer ``(h, c)``, each [B, n]).
    """

    def __init__(self, cell: CellSpec, input_size: int, hidden_size: int, depth: DepthSpec) -> None:
        super().__init__()
        self.cell_spec, self.depth = cell, depth
        self.input_size, self.hidden_size = input_size, hidden_size
        n = hidden_size
        parts = stack_parts(depth, input_size, n)
        self.stages = {stage: tuple(p.attribute for p in ps) for stage, ps in parts.items()}
        for part in parts["input"]:  # built in model order: the parameters' draws follow it
            self.add_module(part.attribute, part.build())
        first = n if parts["input"] else input_size
        self.layers = nn.ModuleList(ComposedCell(cell, first if i == 0 else n, n, depth.transition,
                                                 depth.transition_layers) for i in range(depth.layers))
        for part in parts["join"] + parts["output"]:
            self.add_module(part.attribute, part.build())

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def stage(self, name: str) -> list[nn.Module]:
        """The modules of stage ``name`` (``input``, ``join``, ``output``), in order."""
        return [getattr(self, attr) for attr in self.stages[name]]

    def forward(self, x: Tensor, state: tuple[tuple[Tensor, ...], ...] | None = None
                ) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:
        if x.dim() != 3:
            raise ValueError(f"expected input [batch, time, features], got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"expected {self.input_size} input features, got {x.shape[-1]}")
        layers = [layer.forward_sequence for layer in self.layers]
        seq, finals = arrange(x.transpose(0, 1), state, layers, self.stage("input"), self.stage("join"),
                              self.stage("output"))
        return seq.transpose(0, 1), finals

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, depth={self.depth}"
