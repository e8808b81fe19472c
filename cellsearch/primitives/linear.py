"""The base of updates whose state follows a linear recurrence, with input-only coefficients when the
recurrence is ``none``.

    h_t = a_t ⊙ h_{t−1} + b_t,   (a_t, b_t) = coefficients(x_t, h_{t−1})

The gate pre-activations are W x_t + U h_{t−1} + b as in every cell; the recurrence primitive decides U.
With ``recurrence: none`` (U = 0: minGRU, minLSTM and RG-LRU as published) a_t and b_t depend on x_t
only, and the parallel scan (:mod:`cellsearch.fast.scan`, declared in ``kernels``) evaluates
``coefficients`` for every time step at once (``h = None``) and solves the recurrence without a loop
over T. With another recurrence (``free``: the gates see h) the cell is still a valid point of the
space (e.g. minGRU with a recurrent update gate); it runs on the derived path.

Such an update writes its math once, in :meth:`LinearUpdate.coefficients`, row-wise over any number of
rows; :meth:`LinearUpdate.step` is that recurrence for one step (the reference loop runs it, the
derived path and the export trace it).
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

    @staticmethod
    def gate_input(ctx: StepContext, xp: Tensor, h: Tensor | None) -> Tensor:
        """The gate blocks' pre-activations W x + b (+ U h when ``h`` is given and the recurrence has a
        matrix: with ``recurrence: none`` U = 0 and the product is skipped, so the step loop, the derived
        path and the export carry no product with the zero matrix)."""
        pre = xp[:, : ctx.k * ctx.n]
        return pre if h is None or not ctx.recurrent else torch.addmm(pre, h, ctx.w_hh_t.to(h))

    def coefficients(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, h: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        """(a, b), each [rows, n], from the input projections ``xp`` ([rows, G·n]) and the short input.

        ``h`` enters only through :meth:`gate_input` (U h) and ``ctx.cand`` (a deep transition with a
        shortcut reads it). The scan calls this with ``h = None``, only for cells where neither reads
        it (``recurrence: none``, no deep transition)."""
        raise NotImplementedError

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        (h,) = state
        a, b = self.coefficients(ctx, xp, xs, h)
        h = torch.addcmul(b, a, h)
        return h, (h,)
