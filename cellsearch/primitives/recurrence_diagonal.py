"""The ``diagonal`` recurrence: element-wise recurrent weights (IndRNN)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import register_primitive
from ..spec import SpecError
from .recurrence import Recurrence

__all__ = ["DiagonalRecurrence"]


@register_primitive
class DiagonalRecurrence(Recurrence):
    """U = diag(u)

    Element-wise recurrence (IndRNN: Li, Li, Cook, Zhu & Gao, "Independently Recurrent Neural Network
    (IndRNN): Building A Longer and Deeper RNN", CVPR 2018, arXiv:1803.04831, eq. 2) [paper]: every
    recurrent block's matrix is diagonal, U_b = diag(u_b), so that unit j sees only its own past,
    h_t = σ(W x_t + u⊙h_{t−1} + b); n free parameters per block. Each unit's gradient over T steps is
    governed by u_j^T, which is why IndRNN bounds |u_j| by a function of T.

    Options: ``low``, ``high``: init u ~ U[low, high] (default [0, 1]); ``bound`` (default None): when
    set, u is clamped to [−bound, bound] in the forward (the authors clip u after every optimizer step,
    e.g. |u| ≤ 2^(1/T) [code, uncertain]; a forward clamp gives the same values inside the bound and a
    zero gradient beyond it). [uncertain] the init ranges the paper uses per task are not confirmed
    here; U[0, 1] is ours (every unit starts stable and non-negative).

    The matrix is returned dense ([R·n, n], the recurrence contract): a step costs an n × n product where
    u⊙h would cost n, fine at the sizes cellsearch searches; a faster element-wise form needs the step
    context to carry the diagonal.
    """

    name = "diagonal"
    defaults: ClassVar[dict[str, Any]] = {"low": 0.0, "high": 1.0, "bound": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if not float(o["low"]) <= float(o["high"]):
            raise SpecError("cell.options.recurrence.low", o["low"], "a number <= high")
        bound = o["bound"]
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound <= 0):
            raise SpecError("cell.options.recurrence.bound", bound, "null or a number > 0")

    def bind(self, blocks: int, hidden_size: int) -> None:
        super().bind(blocks, hidden_size)
        self.diag = nn.Parameter(torch.empty(blocks, hidden_size))

    def matrix(self) -> Tensor:
        u = self.diag
        bound = self.options["bound"]
        if bound is not None:
            u = u.clamp(-float(bound), float(bound))
        return torch.diag_embed(u).reshape(self.blocks * self.hidden_size, self.hidden_size)

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.diag, float(self.options["low"]), float(self.options["high"]))
