"""The ``none`` recurrence: no recurrent matrix (the gates and candidate see only the input)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import register_primitive
from .recurrence import Recurrence

__all__ = ["NoRecurrence"]


@register_primitive
class NoRecurrence(Recurrence):
    """U = 0

    No recurrent matrix and no parameter: the blocks of the update see only x_t, and h enters the step
    only through the update's own recurrence (minGRU, minLSTM: h_t = a(x_t)⊙h_{t−1} + b(x_t); RG-LRU).
    This is what makes a cell trainable by a parallel scan (Feng et al. 2024, §3: "removing the hidden
    state dependencies from the gates"); the scan (:mod:`cellsearch.fast.scan`) and the step (the step
    context's ``recurrent`` is False: :meth:`cellsearch.primitives.linear.LinearUpdate.gate_input`) skip
    the product with U, this constant zero ([R·n, n], float32 on the CPU). Provides ``no_recurrence``.
    Pairs only with updates that provide ``input_only`` (those whose state still enters the step when
    U = 0: a vanilla update would keep no memory at all).
    """

    name = "none"
    provides = frozenset({"no_recurrence"})
    requires = frozenset({"input_only"})

    def matrix(self) -> Tensor:
        return torch.zeros(self.blocks * self.hidden_size, self.hidden_size)

    def reset_parameters(self) -> None:
        """No parameters."""
