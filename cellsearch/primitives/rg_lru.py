"""RG-LRU (De et al. 2024, Hawk / Griffin): a gated diagonal linear recurrence."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_primitive
from ..spec import SpecError
from .base import Block, StepContext
from .linear import LinearUpdate

__all__ = ["RGLRU"]


@register_primitive
class RGLRU(LinearUpdate):
    """h' = a_t⊙h + √(1 − a_t²)⊙(i⊙sat(W_v x + b_v)),  a_t = σ(Λ)^(c·r)

    Real-Gated Linear Recurrent Unit (De, Smith, Fernando et al., "Griffin: Mixing Gated Linear
    Recurrences with Local Attention for Efficient Language Models", arXiv:2402.19427, 2024, §2.4)
    [paper]:

        r_t = σ(W_a x_t + b_a)          recurrence gate
        i_t = σ(W_x x_t + b_x)          input gate
        a_t = a^(c·r_t),  a = σ(Λ)      computed as log a_t = −c·r_t·softplus(−Λ)
        h_t = a_t⊙h_{t−1} + √(1 − a_t²)⊙(i_t⊙x_t)

    with c = 8 (option ``c``) and a learnable Λ ∈ R^n (extra parameter ``lambda_``), initialised by the
    ``lru`` init primitive so that a^c is uniform in [0.9, 0.999] (the paper's init). a_t and √(1 − a_t²)
    come from one exponential, e = expm1(log a_t): a_t = 1 + e and √(1 − a_t²) = √(−e(e + 2)), accurate
    where a_t → 1 (√(1 − a_t²) → 0; the paper's init puts a_t there), as √(−expm1(2 log a_t)) was, with
    one exponential fewer forward and backward (docs/bench/LOOP.md); a small a_t is exact to 1 ulp of 1
    rather than of itself. Neither gate sees h: a linear recurrence with input-only coefficients
    (parallel scan, :mod:`cellsearch.fast.scan`).

    Adaptations, to say with any comparison: in Griffin the RG-LRU's input x_t is the output of a
    linear projection and a short convolution of width n; here it is a candidate block
    v_t = sat(W_v x_t + b_v) (the projection, no convolution; ``saturation: identity`` is linear, as in
    the paper), so d need not equal n. Griffin's gates are block-diagonal linear maps, here full ones;
    Griffin's √ has a bounded derivative in the authors' code [code, recurrentgemma], here plain.
    Blocks [r, i, v]. With ``recurrence: none`` (the paper's RG-LRU) params 3n(d + 1) + n; with
    another recurrence the gates also see h (+ n² params per gate block) and the scan does not apply.
    """

    name = "rg_lru"
    gates = ("r", "i")
    cand_blocks = (Block("v", "cand", recurrent=False),)
    provides = frozenset({"single_state", "input_only", "decay"})
    refined_default = ("i",)
    defaults: ClassVar[dict[str, Any]] = {"c": 8.0}
    #: the ``decay`` contract read by the ``lru`` init: a = σ(Λ) with Λ this extra parameter, and the
    #: exponent c of a_t = a^(c·r_t)
    decay_parameter = "lambda_"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not float(self.options["c"]) > 0:
            raise SpecError("cell.options.update.c", self.options["c"], "a number > 0 (the paper uses 8)")

    @property
    def decay_exponent(self) -> float:
        return float(self.options["c"])

    def extra_parameters(self, n: int) -> dict[str, tuple[int, ...]]:
        return {self.decay_parameter: (n,)}

    def coefficients(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, h: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        kn = ctx.k * ctx.n
        r, i = ctx.gates(self.gate_input(ctx, xp, h), xs)
        v = ctx.cand(xp[:, kn:], h, ctx.sat)  # type: ignore[arg-type]
        log_a = -self.decay_exponent * r * F.softplus(-ctx.params[self.decay_parameter])
        e = torch.expm1(log_a)
        return e + 1.0, torch.sqrt(-e * (e + 2.0)) * i * v
