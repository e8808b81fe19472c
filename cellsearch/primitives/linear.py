"""The base of updates whose state follows a linear recurrence with input-only coefficients.

    h_t = a_t ⊙ h_{t−1} + b_t,   (a_t, b_t) = coefficients(x_t)     (no h_{t−1} inside a_t or b_t)

Such an update (minGRU, minLSTM, RG-LRU) writes its math once, in :meth:`LinearUpdate.coefficients`,
row-wise over any number of rows; :meth:`LinearUpdate.step` is that recurrence for one step (the
reference loop runs it, the derived path and the export trace it), and the parallel scan
(:mod:`cellsearch.fast.scan`, declared in ``kernels``) evaluates the same ``coefficients`` for every
time step at once and solves the recurrence without a sequential loop over T. The gates never see h:
these updates require the ``none`` recurrence (capability ``no_recurrence``), which owns no recurrent
matrix, and provide ``input_only`` (the ``none`` recurrence pairs only with them).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import StepContext
from .update import Update

__all__ = ["LinearUpdate"]

State = tuple[Tensor, ...]


class LinearUpdate(Update):
    """h' = a(x)⊙h + b(x)

    Base class: subclasses implement :meth:`coefficients`. One state tensor (h); the output is h.
    """

    kernels: ClassVar[tuple[str, ...]] = ("cellsearch.fast.scan:linear",)
    requires = frozenset({"no_recurrence"})

    def coefficients(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, h: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        """(a, b), each [rows, n], from the input projections ``xp`` ([rows, G·n]) and the short input.

        ``h`` is passed on only to ``ctx.cand`` (a deep transition with a shortcut reads h, and then the
        recurrence is no longer linear: the scan does not serve such a cell, the step still does); the
        scan calls this with ``h = None`` for cells without a deep transition."""
        raise NotImplementedError

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        (h,) = state
        a, b = self.coefficients(ctx, xp, xs, h)
        h = torch.addcmul(b, a, h)
        return h, (h,)
