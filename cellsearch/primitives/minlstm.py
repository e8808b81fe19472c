"""minLSTM (Feng et al. 2024): an LSTM whose gates see only the input, normalized to sum to one."""

from __future__ import annotations

from torch import Tensor

from ..registry import register_primitive
from .base import Block, StepContext
from .linear import LinearUpdate

__all__ = ["MinLSTM"]


@register_primitive
class MinLSTM(LinearUpdate):
    """h' = f'⊙h + i'⊙sat(W_h x + b_h),  f' = f/(f + i), i' = i/(f + i)

    minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?", arXiv:2410.01201,
    2024, §3.2) [paper]: the LSTM with (1) forget and input gates from the input only,
    f_t = σ(Linear_f(x_t)), i_t = σ(Linear_i(x_t)), (2) no tanh on the candidate, h̃_t = Linear_h(x_t),
    (3) no output gate and no separate cell state (h_t is the cell state), and (4) the two gates
    normalized so that the state's scale does not depend on time:

        f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t),   h_t = f'_t⊙h_{t−1} + i'_t⊙h̃_t

    a linear recurrence with input-only coefficients (parallel scan: :mod:`cellsearch.fast.scan`).
    As in :class:`~cellsearch.primitives.mingru.MinGRU`, the candidate goes through the saturation slot:
    ``identity`` is §3.2's plain form, ``g`` the appendix's log-space form (h̃ = g(Linear_h(x)) > 0);
    the card uses ``g``, and the state is h itself (the paper's listing passes h_0 through g).
    The gates go through the gate primitive, which must keep them in (0, 1): the normalization divides
    by f + i, which a gate that can reach 0 or go negative (the refined gate's σ(a)⊙x̃) makes 0/0, so
    minLSTM requires the plain sigmoid gate (declared: ``requires = {sigmoid_gate}``; chrono sets
    b_i = −b_f).
    Blocks [f, i, h]. With ``recurrence: none`` (the paper's minLSTM) params 3n(d + 1); with
    another recurrence the gates also see h (+ n² params per gate block) and the scan does not apply.
    """

    name = "minlstm"
    gates = ("f", "i")
    cand_blocks = (Block("h", "cand", recurrent=False),)
    keep = "f"
    input_gate = "i"
    #: the compiled scan with this update's gate math fused, then the generic scan (PRIMITIVES.md, issue 14)
    kernels = ("cellsearch.fast.scan:minlstm", "cellsearch.fast.scan:linear")
    provides = frozenset({"keep_gate", "input_gate", "single_state", "input_only"})
    requires = frozenset({"sigmoid_gate"})

    def coefficients(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, h: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        kn = ctx.k * ctx.n
        f, i = ctx.gates(self.gate_input(ctx, xp, h), xs)
        cand = ctx.cand(xp[:, kn:], h, ctx.sat)  # type: ignore[arg-type]
        total = f + i
        return f / total, i / total * cand
