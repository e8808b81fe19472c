"""A custom update primitive: JANET, the forget-gate-only LSTM (van der Westhuizen & Lasenby 2018).

Registered as ``template_janet``: cellsearch has a built-in ``janet`` update since its modern cells
(names are unique per role, so a plugin must not reuse a built-in name); this file is kept as the worked
example of writing an update against the public contract.

An update is the cell's skeleton: it declares its gate blocks and candidate blocks, which gate keeps old
state, and :meth:`step`, one time step written in plain torch ops from the precomputed input projection.
That one definition is all cellsearch needs: the reference loop, the derived fast path and the
standalone export are all made from ``step``, so nothing else has to be written for them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from cellsearch.primitives.base import Block, StepContext
from cellsearch.primitives.update import Update
from cellsearch.spec import SpecError


class JANET(Update):
    """h' = sat(σ(a_f)⊙h + (1 − σ(a_f − β))⊙tanh(a_u))

    JANET ("The unreasonable effectiveness of the forget gate", van der Westhuizen & Lasenby 2018):
    s = a_f = W_f x_t + U_f h_{t−1} + b_f; c_t = σ(s)⊙c_{t−1} + (1 − σ(s − β))⊙tanh(W_u x_t + U_u h_{t−1}
    + b_u); h_t = c_t. The state is h, and the saturation slot squashes it: ``saturation: identity`` is
    the paper's h = c; any other saturation (e.g. this plugin's softsign) bounds it. The forget gate goes
    through the gate primitive (so UR or refined gates apply to it); the write coefficient uses the raw
    pre-activation. Option ``beta`` (default 1, the paper's value). Blocks [f, u]: 2n(d + n + 1) params.
    The paper pairs it with chrono initialization of b_f (``init: chrono``).
    """

    name = "template_janet"
    gates = ("f",)
    cand_blocks = (Block("u", "cand"),)
    keep = "f"
    provides = frozenset({"keep_gate", "single_state"})
    defaults: ClassVar[dict[str, Any]] = {"beta": 1.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if isinstance(self.options["beta"], bool):
            raise SpecError("cell.options.update.beta", self.options["beta"], "a number (the paper uses 1)")

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: tuple[Tensor, ...]
             ) -> tuple[Tensor, tuple[Tensor, ...]]:
        (h,) = state
        a = torch.addmm(xp, h, ctx.w_hh_t)
        kn = ctx.k * ctx.n
        (f,) = ctx.gates(a[:, :kn], xs)  # a gate primitive may add blocks after f (UR's r): k ≥ 1
        write = 1.0 - torch.sigmoid(a[:, : ctx.n] - float(self.options["beta"]))  # f's block leads
        u = ctx.cand(a[:, kn:], h, torch.tanh)
        h = ctx.sat(f * h + write * u)
        return h, (h,)
