"""JANET (van der Westhuizen & Lasenby 2018): the forget-gate-only LSTM."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import register_primitive
from ..spec import SpecError
from .base import Block, StepContext
from .update import Update

__all__ = ["JANET"]


@register_primitive
class JANET(Update):
    """h' = sat(σ(s)⊙h + (1 − σ(s − β))⊙tanh(a_u)),  s = W_f x + U_f h + b_f

    JANET (van der Westhuizen & Lasenby, "The unreasonable effectiveness of the forget gate",
    arXiv:1804.04849, 2018) [paper]: an LSTM with only the forget gate; the input gate is tied to the
    forget gate with a shift β, and there is no output gate:

        s_t = W_f x_t + U_f h_{t−1} + b_f
        c̃_t = tanh(W_c x_t + U_c h_{t−1} + b_c)
        c_t = σ(s_t)⊙c_{t−1} + (1 − σ(s_t − β))⊙c̃_t,    h_t = c_t

    with β = 1 (option ``beta``) and chrono initialization of b_f (``init: chrono``; the card sets
    t_max to the sequence length). The state is h; the saturation slot squashes it:
    ``saturation: identity`` is the paper's h = c. The forget gate goes through the gate primitive (UR
    and refined gates apply to it); the write coefficient uses the raw pre-activation s.
    Blocks [f, u]: params 2n(d + n + 1) (one bias per block).
    """

    name = "janet"
    gates = ("f",)
    cand_blocks = (Block("u", "cand"),)
    keep = "f"
    provides = frozenset({"keep_gate", "single_state"})
    refined_default = ("f",)
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
        (f,) = ctx.gates(a[:, :kn], xs)       # a gate primitive may add blocks after f (UR's r)
        write = 1.0 - torch.sigmoid(a[:, : ctx.n] - float(self.options["beta"]))  # f's block leads
        u = ctx.cand(a[:, kn:], h, torch.tanh)
        h = ctx.sat(torch.addcmul(write * u, f, h))
        return h, (h,)
