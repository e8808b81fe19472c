"""minGRU (Feng et al. 2024): a GRU whose gate and candidate see only the input."""

from __future__ import annotations

from torch import Tensor

from ..registry import register_primitive
from .base import Block, StepContext
from .linear import LinearUpdate

__all__ = ["MinGRU"]


@register_primitive
class MinGRU(LinearUpdate):
    """h' = (1 − z)⊙h + z⊙sat(W_h x + b_h),  z = gate(W_z x + b_z)

    minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?", arXiv:2410.01201,
    2024, §3.1) [paper]: the GRU with (1) the update gate computed from the input only,
    z_t = σ(Linear_z(x_t)), (2) no reset gate and (3) no tanh on the candidate, h̃_t = Linear_h(x_t):

        h_t = (1 − z_t)⊙h_{t−1} + z_t⊙h̃_t

    a linear recurrence in h with input-only coefficients a_t = 1 − z_t, b_t = z_t⊙h̃_t, so a parallel
    scan solves it over the whole sequence (:mod:`cellsearch.fast.scan`).

    The candidate goes through the saturation slot, h̃_t = sat(W_h x_t + b_h), which expresses the paper's
    two forms: ``saturation: identity`` is the plain form of §3.1; ``saturation: g`` is the log-space
    form of the paper's appendix [paper], h̃_t = g(Linear_h(x_t)) with g(v) = v + ½ (v ≥ 0), σ(v) (v < 0),
    which keeps h̃ (and, from a non-negative h_0, h) positive so that the scan can run on logarithms
    (Heinsen 2023). The published card uses ``g`` (the form the paper trains with, and the one
    mingru-pytorch implements). Difference from the paper's listing: it passes h_0 through g too; here
    the state is h itself (zeros at the start), so a state carries over unchanged between calls.

    The gate goes through the gate primitive (UR, refined or hard-sigmoid gates apply; UGI and chrono
    set the bias of z in keep polarity: z writes). Blocks [z, h]. With ``recurrence: none``
    (the paper's minGRU, U = 0) params 2n(d + 1) (one bias per block; the paper's O(2·d_h·d_x)); with
    another recurrence the gate also sees h (z = gate(W_z x + U_z h + b_z), + n² params per gate block)
    and the scan does not apply.
    """

    name = "mingru"
    gates = ("z",)
    cand_blocks = (Block("h", "cand", recurrent=False),)
    keep = "z"
    keep_polarity = -1
    #: the compiled scan with this update's gate math fused, then the generic scan (PRIMITIVES.md, issue 14)
    kernels = ("cellsearch.fast.scan:mingru", "cellsearch.fast.scan:linear")
    provides = frozenset({"keep_gate", "single_state", "input_only"})
    refined_default = ("z",)

    def coefficients(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, h: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        kn = ctx.k * ctx.n
        (z,) = ctx.gates(self.gate_input(ctx, xp, h), xs)
        cand = ctx.cand(xp[:, kn:], h, ctx.sat)  # type: ignore[arg-type]
        return 1.0 - z, z * cand
