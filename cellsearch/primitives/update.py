"""Update primitives: the cell skeletons (PRIMITIVES.md §1 and §2).

An update declares its gate blocks (squashed by the gate primitive), its candidate blocks, which gate
keeps old state (``keep``; ``keep_polarity`` is +1 when the gate value multiplies h_{t−1} and −1 when
it multiplies the candidate), the number of state tensors, and :meth:`Update.step`, one time step from
the precomputed input projection ``xp`` (= W x_t + b for every block, hoisted out of the time loop).

Inside ``step`` the context ``ctx`` (:class:`~cellsearch.primitives.base.StepContext`, the typed
contract) gives: ``ctx.n`` (hidden size), ``ctx.k`` (number of gate blocks including blocks a gate
primitive adds), ``ctx.w_hh_t`` (the recurrent matrices, transposed, for the recurrent blocks in layout
order), ``ctx.gates(a_g, xs)`` (gate pre-activations → gate values, in the order of ``gates``),
``ctx.cand(pre, h, act)`` (the candidate path: ``act(pre)``, or the deep transition of Pascanu et al.
when the depth spec asks for one), ``ctx.sat`` (the saturation primitive) and ``ctx.params`` (extra
parameters the update asked for). ``step`` is the one definition of the update's math: the reference
loop runs it, and the fast path and the export are derived from it by tracing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import register_primitive
from ..spec import SpecError
from .base import Block, Primitive, StepContext

__all__ = ["Update", "Vanilla", "LSTM", "LSTMTied", "GRU", "MGU", "STAR"]

State = tuple[Tensor, ...]


class Update(Primitive):
    """Base class of update primitives (cell skeletons)."""

    role = "update"
    #: gate block names, in layout order
    gates: ClassVar[tuple[str, ...]] = ()
    #: candidate blocks (after the gate blocks in the layout)
    cand_blocks: ClassVar[tuple[Block, ...]] = ()
    #: the gate that keeps old state (target of UGI, chrono, UR), or None
    keep: ClassVar[str | None] = None
    #: +1: the keep gate's value multiplies h_{t−1} (LSTM f, GRU z); −1: it multiplies the candidate
    keep_polarity: ClassVar[int] = 1
    #: the input gate (chrono sets b_i = −b_f), or None
    input_gate: ClassVar[str | None] = None
    n_states: ClassVar[int] = 1
    #: gates the refined short connection applies to by default (Cheng et al.)
    refined_default: ClassVar[tuple[str, ...]] = ()

    def extra_parameters(self, n: int) -> dict[str, tuple[int, ...]]:
        """Shapes of parameters beyond the block weights (e.g. GRU's b_hn)."""
        return {}

    def recurrent_blocks(self, blocks: list[Block]) -> int:
        """How many leading blocks of the layout carry a recurrent matrix."""
        return sum(b.recurrent for b in blocks)

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError


def _caps(*extra: str) -> frozenset[str]:
    return frozenset(extra)


@register_primitive
class Vanilla(Update):
    """h' = sat(W x + U h + b)

    Elman RNN (PRIMITIVES.md §1): one block, a = W x_t + U h_{t−1} + b, h_t = sat(a) with the
    saturation primitive (tanh by default; asRNN's adaptive saturation plugs in here).
    Params n(d + n + 1).
    """

    name = "vanilla"
    kernels = ("cellsearch.fast.hand:vanilla",)
    cand_blocks = (Block("h", "cand"),)
    #: ``elman``: the step is h' = sat(W x + U h + b) (asRNN's fused kernel needs exactly that)
    provides = _caps("single_state", "elman")

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        (h,) = state
        a = torch.addmm(xp, h, ctx.w_hh_t)
        h = ctx.cand(a, h, ctx.sat)
        return h, (h,)


@register_primitive
class LSTM(Update):
    """c' = f⊙c + i⊙u, h' = o⊙sat(c')

    LSTM (PRIMITIVES.md §1): i, f, o = gate(a_i), gate(a_f), gate(a_o); u = tanh(a_u);
    c_t = f⊙c_{t−1} + i⊙u; h_t = o⊙sat(c_t) (sat = tanh by default). Blocks in layout order
    [i, f, o, u]; one bias per block. Params 4n(d + n + 1).
    """

    name = "lstm"
    kernels = ("cellsearch.fast.hand:lstm",)
    gates = ("i", "f", "o")
    cand_blocks = (Block("u", "cand"),)
    keep = "f"
    input_gate = "i"
    n_states = 2
    provides = _caps("keep_gate", "input_gate")
    refined_default = ("i", "o")

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        h, c = state
        a = torch.addmm(xp, h, ctx.w_hh_t)
        kn = ctx.k * ctx.n
        i, f, o = ctx.gates(a[:, :kn], xs)
        u = ctx.cand(a[:, kn:], h, torch.tanh)
        c = torch.addcmul(f * c, i, u)
        h = o * ctx.sat(c)
        return h, (h, c)


@register_primitive
class LSTMTied(Update):
    """c' = f⊙c + (1 − f)⊙u, h' = o⊙sat(c')

    LSTM with the input gate tied to 1 − f (the "gated update" form used throughout Gu et al. 2020,
    PRIMITIVES.md §3): f, o = gate(a_f), gate(a_o); u = tanh(a_u); c_t = f⊙c_{t−1} + (1 − f)⊙u;
    h_t = o⊙sat(c_t). Blocks [f, o, u]: 3n(d + n + 1) params; with the UR gate's r block 4n(d + n + 1).
    """

    name = "lstm_tied"
    kernels = ("cellsearch.fast.hand:lstm_tied",)
    gates = ("f", "o")
    cand_blocks = (Block("u", "cand"),)
    keep = "f"
    n_states = 2
    provides = _caps("keep_gate")
    refined_default = ("o",)

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        h, c = state
        a = torch.addmm(xp, h, ctx.w_hh_t)
        kn = ctx.k * ctx.n
        f, o = ctx.gates(a[:, :kn], xs)
        u = ctx.cand(a[:, kn:], h, torch.tanh)
        c = torch.lerp(u, c, f)  # u + f⊙(c − u) = f⊙c + (1 − f)⊙u
        h = o * ctx.sat(c)
        return h, (h, c)


@register_primitive
class GRU(Update):
    """h' = z⊙h + (1 − z)⊙sat(W_h x + b_h + r⊙(U_h h + b_hn))

    GRU in PyTorch's form (PRIMITIVES.md §1): r, z = gate(a_r), gate(a_z);
    ĥ = sat(W_h x_t + b_h + r⊙(U_h h_{t−1} + b_hn)); h_t = z⊙h_{t−1} + (1 − z)⊙ĥ.
    We keep PyTorch's extra candidate bias b_hn (it sits inside r⊙(·) and is not redundant), so the
    parameter count is 3n(d + n + 1) + n and weights copy exactly from torch.nn.GRU.
    """

    name = "gru"
    kernels = ("cellsearch.fast.hand:gru",)
    gates = ("r", "z")
    cand_blocks = (Block("h", "cand"),)
    keep = "z"
    provides = _caps("keep_gate", "single_state")
    refined_default = ("z", "r")

    def extra_parameters(self, n: int) -> dict[str, tuple[int, ...]]:
        return {"bias_hn": (n,)}

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        (h,) = state
        kn = ctx.k * ctx.n
        hp = h @ ctx.w_hh_t
        r, z = ctx.gates(xp[:, :kn] + hp[:, :kn], xs)
        pre = torch.addcmul(xp[:, kn:], r, hp[:, kn:] + ctx.params["bias_hn"])
        cand = ctx.cand(pre, h, ctx.sat)
        h = torch.lerp(cand, h, z)  # z⊙h + (1 − z)⊙ĥ
        return h, (h,)


@register_primitive
class MGU(Update):
    """h' = (1 − f)⊙h + f⊙sat(W_h x + U_h(f⊙h) + b_h)

    Minimal gated unit (Zhou et al. 2016; PRIMITIVES.md §1): f = gate(a_f);
    ĥ = sat(W_h x_t + U_h (f⊙h_{t−1}) + b_h); h_t = (1 − f)⊙h_{t−1} + f⊙ĥ.
    f writes (keep polarity −1). Two recurrent products per step (the second needs f). 2n(d + n + 1).
    """

    name = "mgu"
    kernels = ("cellsearch.fast.hand:mgu",)
    gates = ("f",)
    cand_blocks = (Block("h", "cand"),)
    keep = "f"
    keep_polarity = -1
    provides = _caps("keep_gate", "single_state")
    refined_default = ("f",)

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        (h,) = state
        kn = ctx.k * ctx.n
        w_t = ctx.w_hh_t
        (f,) = ctx.gates(torch.addmm(xp[:, :kn], h, w_t[:, :kn]), xs)
        pre = torch.addmm(xp[:, kn:], f * h, w_t[:, kn:])
        cand = ctx.cand(pre, h, ctx.sat)
        h = torch.lerp(h, cand, f)
        return h, (h,)


@register_primitive
class STAR(Update):
    """h' = sat((1 − k)⊙h + k⊙tanh(W_z x + b_z)),  k = σ(W_k x + U_k h + b_k)

    STAR update (Turkoglu et al., "Gating Revisited"; PRIMITIVES.md §2), paper form [paper]:
    z = tanh(W_z x_t + b_z) (from the input only); k = gate(W_k x_t + U_k h_{t−1} + b_k);
    h_t = sat((1 − k)⊙h_{t−1} + k⊙z), where sat is the saturation slot: the outer tanh is part of
    STAR, and ``saturation: identity`` gives the form without it (as in convSTAR) [code].
    Params n(2d + n + 2). k writes (keep polarity −1).

    Option ``beta`` (default None = paper form) [code]: the authors' code uses coefficients σ(s) on h
    and σ(β − s) on z with s = −a_k, i.e. h_t = sat(σ(−a_k)⊙h + σ(a_k + β)⊙z); β = 0 is the paper form.
    Only with the plain sigmoid gate (declared: with ``beta`` set it requires ``sigmoid_gate``).
    """

    name = "star"
    kernels = ("cellsearch.fast.hand:star",)
    gates = ("k",)
    cand_blocks = (Block("z", "cand", recurrent=False),)
    keep = "k"
    keep_polarity = -1
    provides = _caps("keep_gate", "single_state")
    refined_default = ("k",)
    defaults: ClassVar[dict[str, Any]] = {"beta": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        beta = self.options["beta"]
        if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float))):
            raise SpecError("cell.options.update.beta", beta, "null (paper form) or a number (code variant, 1.0)")

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        """The code variant's coefficients σ(−a_k), σ(a_k + β) replace the gate: only the plain sigmoid."""
        return frozenset() if self.options["beta"] is None else frozenset({"sigmoid_gate"})

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: State) -> tuple[Tensor, State]:
        (h,) = state
        kn = ctx.k * ctx.n
        a_k = torch.addmm(xp[:, :kn], h, ctx.w_hh_t)
        z = ctx.cand(xp[:, kn:], h, torch.tanh)
        beta = self.options["beta"]
        if beta is None:
            (k,) = ctx.gates(a_k, xs)
            h = ctx.sat(torch.lerp(h, z, k))
        else:
            h = ctx.sat(torch.sigmoid(-a_k) * h + torch.sigmoid(a_k + float(beta)) * z)
        return h, (h,)
