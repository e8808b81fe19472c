"""A task-ready model: a :class:`~cellsearch.depth.StackedRNN` plus a linear readout.

``readout="last"`` reads the top layer's last step ([B, out]); ``readout="all"`` every step
([B, T, out]). This is what the trainer trains, the searches build from a ModelSpec, and export writes.
"""

from __future__ import annotations

from torch import Tensor, nn

from .depth import StackedRNN
from .spec import ModelSpec, SpecError

__all__ = ["SequenceModel", "build_model", "READOUTS"]

READOUTS = ("last", "all")


class SequenceModel(nn.Module):
    """rnn → (last step | every step) → Linear(n, output_size)."""

    def __init__(self, spec: ModelSpec, readout: str = "last") -> None:
        super().__init__()
        if spec.input_size is None or spec.output_size is None:
            raise SpecError("model.input_size", spec.input_size, "input_size and output_size set (from the task)")
        if readout not in READOUTS:
            raise SpecError("readout", readout, f"one of {list(READOUTS)}")
        self.spec, self.readout = spec, readout
        self.rnn = StackedRNN(spec.cell, spec.input_size, spec.hidden_size, spec.depth)
        self.head = nn.Linear(spec.hidden_size, spec.output_size)

    def forward(self, x: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple]:
        out, state = self.rnn(x, state)
        if self.readout == "last":
            out = out[:, -1]
        return self.head(out), state


def build_model(spec: ModelSpec, readout: str = "last") -> SequenceModel:
    """Build the model a ModelSpec describes (its input/output sizes must be set)."""
    return SequenceModel(spec, readout)
