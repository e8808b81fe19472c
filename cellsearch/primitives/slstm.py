"""sLSTM (Beck et al. 2024, xLSTM): exponential gating with a normalizer and a stabilizer state."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_primitive
from ..spec import SpecError
from .base import Block, StepContext
from .update import Update

__all__ = ["SLSTM"]


@register_primitive
class SLSTM(Update):
    """c' = f'⊙c + i'⊙tanh(a_z), n' = f'⊙n + i', h' = o⊙sat(c'/n'),  i' = exp(ĩ − m'), f' = exp(log f + m − m')

    sLSTM (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter & Hochreiter, "xLSTM:
    Extended Long Short-Term Memory", NeurIPS 2024, arXiv:2405.04517, §2.2) [paper]; every block
    a_b = W_b x_t + R_b h_{t−1} + b_b:

        z_t = tanh(z̃_t);  o_t = σ(õ_t);  i_t = exp(ĩ_t);  f_t = σ(f̃_t) or exp(f̃_t)
        c_t = f_t⊙c_{t−1} + i_t⊙z_t,   n_t = f_t⊙n_{t−1} + i_t,   h_t = o_t⊙(c_t / n_t)

    computed stabilized (the paper's eqs. 15–17): m_t = max(log f_t + m_{t−1}, ĩ_t),
    i'_t = exp(ĩ_t − m_t), f'_t = exp(log f_t + m_{t−1} − m_t), and c, n updated with i', f'; c/n (so h)
    is unchanged by the stabilizer. Four state tensors (h, c, n, m), zeros at the start.

    Options: ``forget`` (``sigmoid``, default, as the authors' reference cell [code, xlstm
    ``slstm/src/vanilla``: log f = logsigmoid(f̃)]; or ``exp``, the paper's alternative).
    Choices to say with any comparison: one head (a full R, i.e. ``recurrence: free``) where xLSTM's
    sLSTM blocks use 4 heads (block-diagonal R: ``recurrence: heads`` with ``heads: 4``); the
    authors' code sets m_1 = ĩ_1 when n = 0 (a branch on tensor values), here m_0 = 0 always, which
    changes m but not c/n or h. The output o⊙(c/n) goes
    through the saturation slot, o⊙sat(c/n): ``identity`` is the paper's form. The output gate goes
    through the gate primitive; i, f and z are raw blocks. Blocks [o, i, f, z]: params 4n(d + n + 1).
    """

    name = "slstm"
    gates = ("o",)
    cand_blocks = (Block("i", "cand"), Block("f", "cand"), Block("z", "cand"))
    n_states = 4
    provides = frozenset({"exponential_gate"})
    refined_default = ("o",)
    defaults: ClassVar[dict[str, Any]] = {"forget": "sigmoid"}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["forget"] not in ("sigmoid", "exp"):
            raise SpecError("cell.options.update.forget", self.options["forget"], "one of ['exp', 'sigmoid']")

    def step(self, ctx: StepContext, xp: Tensor, xs: Tensor | None, state: tuple[Tensor, ...]
             ) -> tuple[Tensor, tuple[Tensor, ...]]:
        h, c, n, m = state
        a = torch.addmm(xp, h, ctx.w_hh_t)
        kn, w = ctx.k * ctx.n, ctx.n
        (o,) = ctx.gates(a[:, :kn], xs)
        i_raw, f_raw = a[:, kn:kn + w], a[:, kn + w:kn + 2 * w]
        z = ctx.cand(a[:, kn + 2 * w:], h, torch.tanh)
        log_f = F.logsigmoid(f_raw) if self.options["forget"] == "sigmoid" else f_raw
        m_new = torch.maximum(log_f + m, i_raw)
        i_gate = torch.exp(i_raw - m_new)
        f_gate = torch.exp(log_f + m - m_new)
        c = torch.addcmul(f_gate * c, i_gate, z)
        n = torch.addcmul(i_gate, f_gate, n)
        h = o * ctx.sat(c / n)
        return h, (h, c, n, m_new)
