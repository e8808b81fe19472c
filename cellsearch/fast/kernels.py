"""The fused time loops of each update family (torch ops, in place or ``out=`` into work buffers).

Conventions shared by every family (see :mod:`cellsearch.fast.fused` for the driver):

- ``G[t]`` holds the step's pre-activations (input projection + recurrent GEMM), then, in place, the
  sigmoid of the gate blocks and, for a tanh block computed as tanh(a) = 1 − 2σ(−2a) (forward scale
  −2), s = σ(−2a); the block's value is u = 1 − 2s.
- ``dA[t]`` receives gradients in the *stored* convention: the true gradient with respect to block
  b's pre-activation is ``bscale[b] ⊙ dA``. A σ block stores ∂L/∂σ ⊙ σ(1 − σ) (bscale 1; UR's r has
  2p); a tanh block kept as s stores ∂L/∂u ⊙ s(1 − s) (bscale 4, since du/da = 4s(1 − s)).
- tanh of a state (LSTM's tanh(c), STAR's outer tanh) is 1 − 2σ(−2v), keeping σ(−2v) for backward.
- every per-step view is made once per call with ``unbind``; Python scalars are avoided in the hot
  loops where a 0-dim constant does (each wrapped scalar costs about a microsecond).

Each family's loops give the reference step's (:mod:`cellsearch.primitives.update`) outputs and
gradients to float rounding; tests/test_fast.py checks them in float32 and float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cgemm import sigmoid_recurrence
from .fused import Kernel, Mat, Workspace, _input_weight_grads, matmul
from .gates import GateOps, block_steps

__all__ = ["LSTMKernel", "GRUKernel", "MGUKernel", "STARKernel", "VanillaKernel", "AdaptiveKernel",
           "TransitionKernel"]

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def _consts(like: Tensor) -> tuple[Tensor, Tensor]:
    """0-dim constants (1, −2) of ``like``'s dtype and device (cheaper than Python scalars in the loops)."""
    return (torch.ones((), dtype=like.dtype, device=like.device),
            torch.full((), -2.0, dtype=like.dtype, device=like.device))


def _prev_steps(seq: tuple[Tensor, ...], first: Tensor) -> list[Tensor]:
    """[first, seq[0], …, seq[T−2]]: the previous state of every step."""
    return [first, *seq[:-1]]


def _back_weight(ws: Workspace, bs: Tensor | None) -> Tensor:
    """The recurrent weight of the backward GEMMs: bscale ⊙ W_hh (rows of the recurrent blocks)."""
    if bs is None:
        return ws.w_hh
    return ws.w_hh * bs[: ws.w_hh.shape[0]].view(-1, 1)


def _recurrent_grad(dA: Tensor, H: Tensor, h0: Tensor, bs: Tensor | None) -> Tensor:
    """bscale ⊙ Σ_t dA[t]ᵀ h_{t−1} (dA [T, B, rows], H the states [T, B, n], h0 the first)."""
    T, B, n = H.shape
    rows = dA.shape[-1]
    if T > 1:
        m = matmul(H[:-1].reshape((T - 1) * B, n).t(), dA[1:].reshape((T - 1) * B, rows))
        m.addmm_(h0.t(), dA[0])                                   # [n, rows]
    else:
        m = torch.mm(h0.t(), dA[0])
    out = m.t()
    return out * bs[:rows].view(-1, 1) if bs is not None else out


class LSTMKernel(Kernel):
    """LSTM (blocks [gates…, u]) and LSTM with tied input gate; sat tanh or identity.

    lstm: c_t = f⊙c_{t−1} + i⊙u, lstm_tied: c_t = u + f⊙(c_{t−1} − u); h_t = o⊙sat(c_t).
    """

    n_states = 2

    def __init__(self, n: int, gate: GateOps, tied: bool, sat: str) -> None:
        k = gate.k
        super().__init__(n, k + 1, k + 1, [1.0] * k + [-2.0], gate.block_scale() + [4.0])
        self.gate, self.tied, self.tanh, self.k = gate, tied, sat == "tanh", k

    def _split(self, gates: tuple[Tensor, ...]) -> tuple[Tensor | None, Tensor, Tensor]:
        if self.tied:
            f, o = gates
            return None, f, o
        i, f, o = gates
        return i, f, o

    def forward(self, ws: Workspace) -> None:
        T, B, n = ws.T, ws.B, self.n
        ws.C = ws.take((T, B, n))
        ws.SC = ws.take((T, B, n)) if self.tanh else None
        ws.gr = gr = self.gate.start(ws.take, ws.G, ws.xs)
        one, m2 = _consts(ws.Y)
        Gs, Ys, Cs = ws.G.unbind(0), ws.Y.unbind(0), ws.C.unbind(0)
        SU = block_steps(ws.G, n, self.k)
        SCs = ws.SC.unbind(0) if ws.SC is not None else None
        rec = Mat(ws.w_hh_f, B)
        u = ws.h0.new_empty(B, n)
        h, c = ws.h0, ws.c0
        for t in range(T):
            rec.add_to(Gs[t], h).sigmoid_()
            i, f, o = self._split(gr.forward(t))
            su, ct = SU[t], Cs[t]
            if i is None:
                torch.addcmul(one, su, m2, out=u)                # u = 1 − 2s
                torch.lerp(u, c, f, out=ct)                      # u + f(c − u)
            else:
                torch.addcmul(i, i, su, value=-2.0, out=ct)      # i⊙u
                ct.addcmul_(f, c)
            if SCs is not None:
                sc = SCs[t]
                torch.mul(ct, m2, out=sc).sigmoid_()
                torch.addcmul(o, o, sc, value=-2.0, out=Ys[t])   # o⊙tanh(c)
            else:
                torch.mul(o, ct, out=Ys[t])
            h, c = Ys[t], ct
        ws.c_final = Cs[T - 1].clone()

    def backward(self, ws: Workspace, dY: Tensor, dc_final: Tensor | None) -> None:
        T, B, n = ws.T, ws.B, self.n
        gr = ws.gr
        ws.dA = ws.take((T, B, self.blocks * n))
        ws.dxs = torch.empty_like(ws.xs) if ws.xs is not None else None
        gr.backward_start(ws.dA, ws.dxs)
        one, m2 = _consts(dY)
        dAs, Gs, dYs = ws.dA.unbind(0), ws.G.unbind(0), dY.unbind(0)
        Cs, SU, dU = ws.C.unbind(0), block_steps(ws.G, n, self.k), block_steps(ws.dA, n, self.k)
        Cp = _prev_steps(Cs, ws.c0)
        SCs = ws.SC.unbind(0) if ws.SC is not None else None
        bs = self.scale("b", dY)
        back = Mat(_back_weight(ws, bs).t(), B)
        dh, tmp = dY.new_empty(B, n), dY.new_empty(B, n)
        dc = dc_final.clone() if dc_final is not None else dY.new_zeros(B, n)
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back.addmm(dYs[t], dAs[t + 1], out=dh)
            i, f, o = self._split(gr.eff[t])
            ti, tf, to = self._split(gr.targets[t])
            su, du, cp = SU[t], dU[t], Cp[t]
            if SCs is not None:
                sc = SCs[t]
                torch.addcmul(dh, dh, sc, value=-2.0, out=to)   # ∂o = dh⊙tanh(c)
                torch.mul(dh, o, out=tmp)
                _sigmoid_backward(tmp, sc, grad_input=tmp)
                dc.add_(tmp, alpha=4.0)                          # dc += dh⊙o⊙(1 − tanh²c)
            else:
                torch.mul(dh, Cs[t], out=to)
                dc.addcmul_(dh, o)
            if i is None:
                torch.addcmul(cp, su, m2, value=-1.0, out=tmp)   # c_{t−1} − u = c + 2s − 1
                tmp.sub_(one)
                torch.mul(dc, tmp, out=tf)
                torch.addcmul(dc, dc, f, value=-1.0, out=du)     # ∂u = dc⊙(1 − f)
            else:
                torch.addcmul(dc, dc, su, value=-2.0, out=ti)    # ∂i = dc⊙u
                torch.mul(dc, cp, out=tf)
                torch.mul(dc, i, out=du)                         # ∂u = dc⊙i
            dc.mul_(f)
            gr.backward(t)
            _sigmoid_backward(dAs[t], Gs[t], grad_input=dAs[t])
        ws.dh0 = back.mm(dAs[0])
        ws.dc0 = dc
        ws.dw_hh = _recurrent_grad(ws.dA, ws.Y, ws.h0, bs)
        ws.dextras = ()


class VanillaKernel(Kernel):
    """Elman RNN: h_t = sat(W x_t + U h_{t−1} + b), sat tanh (as 1 − 2σ(−2a)) or identity."""

    def __init__(self, n: int, sat: str) -> None:
        self.tanh = sat == "tanh"
        super().__init__(n, 1, 1, [-2.0 if self.tanh else 1.0], [4.0 if self.tanh else 1.0])

    def forward(self, ws: Workspace) -> None:
        Gs, Ys = ws.G.unbind(0), ws.Y.unbind(0)
        one, m2 = _consts(ws.Y)
        rec, h = Mat(ws.w_hh_f, ws.B), ws.h0
        for t in range(ws.T):
            if self.tanh:
                a = rec.add_to(Gs[t], h).sigmoid_()
                torch.addcmul(one, a, m2, out=Ys[t])            # 1 − 2σ(−2a)
            else:
                rec.addmm(Gs[t], h, out=Ys[t])
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T = ws.T
        ws.dA = ws.take((T, ws.B, self.n))
        dAs, Gs, dYs = ws.dA.unbind(0), ws.G.unbind(0), dY.unbind(0)
        bs = self.scale("b", dY)
        back = Mat(_back_weight(ws, bs).t(), ws.B)
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dAs[t].copy_(dYs[t])
            else:
                back.addmm(dYs[t], dAs[t + 1], out=dAs[t])
            if self.tanh:
                _sigmoid_backward(dAs[t], Gs[t], grad_input=dAs[t])
        ws.dh0 = back.mm(dAs[0])
        ws.dc0 = ws.dxs = ws.dextras = ()
        ws.dw_hh = _recurrent_grad(ws.dA, ws.Y, ws.h0, bs)


class STARKernel(Kernel):
    """STAR: z = tanh(W_z x + b_z); k = gate(a_k); h_t = sat(h_{t−1} + k⊙(z − h_{t−1})).

    Blocks [k, (r), z]; z has no recurrent term, so it is computed for all steps before the loop and
    its pre-activation gradient after the loop. With sat = tanh (1 − 2σ(−2v)) every stored gradient
    lacks the factor 4 of tanh' = 4σ(1 − σ): bscale 4 for every block, and the direct path
    ∂h_{t−1} += 4·dv'⊙(1 − k) adds it back.
    """

    def __init__(self, n: int, gate: GateOps, sat: str, beta: float | None = None) -> None:
        self.tanh = sat == "tanh"
        f = 4.0 if self.tanh else 1.0
        k = gate.k
        super().__init__(n, k + 1, k, [1.0] * k + [-2.0], [f * s for s in gate.block_scale()] + [f])
        self.gate, self.k, self.factor = gate, k, f
        if beta is not None and gate.kind != "sigmoid":
            raise ValueError("STAR's beta needs the plain sigmoid gate")
        #: the authors' code form (option ``beta``): h = sat((1 − k)⊙h + k_β⊙z), k_β = σ(a_k + β) written
        #: from k = σ(a_k) as k·c / (1 + k·(c − 1)), c = e^β
        self.c = None if beta is None else math.exp(float(beta))

    def _k_beta(self, k: Tensor) -> Tensor:
        c = self.c
        return k * c / (k * (c - 1.0) + 1.0)

    def forward(self, ws: Workspace) -> None:
        T, B, n, k = ws.T, ws.B, self.n, self.k
        z_all = ws.G[:, :, k * n:]
        z_all.sigmoid_().mul_(-2.0).add_(1.0)                   # z = tanh(W_z x + b_z), all steps
        ws.SV = ws.take((T, B, n)) if self.tanh else None
        ws.gr = gr = self.gate.start(ws.take, ws.G, ws.xs)
        one, m2 = _consts(ws.Y)
        GA, Z, Ys = block_steps(ws.G, n, 0, k), block_steps(ws.G, n, k), ws.Y.unbind(0)
        SVs = ws.SV.unbind(0) if ws.SV is not None else None
        rec, h = Mat(ws.w_hh_f, B), ws.h0
        v = ws.h0.new_empty(B, n)
        for t in range(T):
            rec.add_to(GA[t], h).sigmoid_()
            (kt,) = gr.forward(t)
            out = v if SVs is not None else Ys[t]
            if self.c is None:
                torch.lerp(h, Z[t], kt, out=out)
            else:
                torch.addcmul(torch.mul(self._k_beta(kt), Z[t]), h, 1.0 - kt, out=out)
            if SVs is not None:
                sv = SVs[t]
                torch.mul(v, m2, out=sv).sigmoid_()
                torch.addcmul(one, sv, m2, out=Ys[t])           # tanh(v) = 1 − 2σ(−2v)
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B, n, k = ws.T, ws.B, self.n, self.k
        gr = ws.gr
        ws.dA = ws.take((T, B, self.blocks * n))
        ws.dxs = torch.empty_like(ws.xs) if ws.xs is not None else None
        gr.backward_start(ws.dA, ws.dxs)
        GA, Z = block_steps(ws.G, n, 0, k), block_steps(ws.G, n, k)
        dGA, dZ, dYs = block_steps(ws.dA, n, 0, k), block_steps(ws.dA, n, k), dY.unbind(0)
        Hp = _prev_steps(ws.Y.unbind(0), ws.h0)
        SVs = ws.SV.unbind(0) if ws.SV is not None else None
        bs = self.scale("b", dY)
        back = Mat(_back_weight(ws, bs).t(), B)
        dh, dv, tmp, dhd = (dY.new_empty(B, n) for _ in range(4))
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back.addmm(dYs[t], dGA[t + 1], out=dh)
                dh.add_(dhd, alpha=self.factor)
            (kt,), (tk,), hp = gr.eff[t], gr.targets[t], Hp[t]
            if SVs is not None:
                _sigmoid_backward(dh, SVs[t], grad_input=dv)    # dv / 4
            else:
                dv.copy_(dh)
            if self.c is None:
                torch.sub(Z[t], hp, out=tmp)
                torch.mul(dv, tmp, out=tk)                       # ∂k = dv⊙(z − h)
                torch.mul(dv, kt, out=dZ[t])                      # ∂z = dv⊙k
                torch.addcmul(dv, dv, kt, value=-1.0, out=dhd)    # direct: dv⊙(1 − k)
                gr.backward(t)
                _sigmoid_backward(dGA[t], GA[t], grad_input=dGA[t])
            else:                                                 # plain gate: ∂a_k written directly
                kb = self._k_beta(kt)
                torch.mul(dv, kb, out=dZ[t])                      # ∂z = dv⊙k_β
                torch.addcmul(dv, dv, kt, value=-1.0, out=dhd)    # direct: dv⊙(1 − k)
                db = kb * (1.0 - kb) * Z[t] - kt * (1.0 - kt) * hp
                torch.mul(dv, db, out=dGA[t])                     # ∂a = dv⊙(k_β(1−k_β) z − k(1−k) h)
        if ws.dxs is not None and self.factor != 1.0:
            ws.dxs.mul_(self.factor)                              # x̃'s gradient is a true one
        dz_all = ws.dA[:, :, k * n:]
        _tanh_backward(dz_all, ws.G[:, :, k * n:], grad_input=dz_all)   # z's pre-activation
        ws.dh0 = back.mm(dGA[0]).add_(dhd, alpha=self.factor)
        ws.dc0 = ws.dextras = ()
        ws.dw_hh = _recurrent_grad(ws.dA[:, :, : k * n], ws.Y, ws.h0, bs)


class _CandidateKernel(Kernel):
    """A single-state update with k gate blocks and one candidate block, all recurrent (GRU, MGU): the
    candidate's stored gradient is the true one (bscale 1); its forward scale is −2 under tanh."""

    def __init__(self, n: int, gate: GateOps, sat: str) -> None:
        self.tanh = sat == "tanh"
        k = gate.k
        fscale = [1.0] * k + [-2.0 if self.tanh else 1.0]
        super().__init__(n, k + 1, k + 1, fscale, gate.block_scale() + [1.0])
        self.gate, self.k = gate, k


class GRUKernel(_CandidateKernel):
    """GRU (PyTorch form): ĥ = sat(W_h x + b_h + r⊙(U_h h + b_hn)); h_t = ĥ + z⊙(h_{t−1} − ĥ).

    Blocks [r, z, (ρ), h], all recurrent. The candidate's input and recurrent parts get different
    gradients (∂/∂(U_h h) = r⊙∂/∂pre), so the reverse loop keeps ``dHP`` (the recurrent GEMM's
    gradient, gate blocks copied in) beside ``dA``. ĥ replaces s in place, the candidate's σ' is a
    tanh_backward on ĥ, and its stored gradients are the true ones (bscale 1).
    """

    def forward(self, ws: Workspace) -> None:
        T, B, n, k = ws.T, ws.B, self.n, self.k
        kn = k * n
        ws.Q = ws.take((T, B, n))
        ws.gr = gr = self.gate.start(ws.take, ws.G, ws.xs)
        one, m2 = _consts(ws.Y)
        fs = self.scale("f", ws.Y)
        b_hn = ws.extras[0] * fs[kn:] if fs is not None else ws.extras[0]
        GA, CA, Ys, Qs = block_steps(ws.G, n, 0, k), block_steps(ws.G, n, k), ws.Y.unbind(0), ws.Q.unbind(0)
        rec, h = Mat(ws.w_hh_f, B), ws.h0
        for t in range(T):
            hp = rec.mm(h)
            GA[t].add_(hp[:, :kn]).sigmoid_()
            r, z = gr.forward(t)
            q, cand = Qs[t], CA[t]
            torch.add(hp[:, kn:], b_hn, out=q)                   # U_h h + b_hn (scaled)
            cand.addcmul_(r, q)
            if self.tanh:
                cand.sigmoid_()
                torch.addcmul(one, cand, m2, out=cand)           # ĥ = tanh(pre)
            torch.lerp(cand, h, z, out=Ys[t])                     # ĥ + z(h − ĥ)
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B, n, k = ws.T, ws.B, self.n, self.k
        gr = ws.gr
        ws.dA = ws.take((T, B, self.blocks * n))
        dHP = ws.take((T, B, self.blocks * n))
        ws.dxs = torch.empty_like(ws.xs) if ws.xs is not None else None
        gr.backward_start(ws.dA, ws.dxs)
        GA, CA, Qs, dYs = block_steps(ws.G, n, 0, k), block_steps(ws.G, n, k), ws.Q.unbind(0), dY.unbind(0)
        dGA, dCA = block_steps(ws.dA, n, 0, k), block_steps(ws.dA, n, k)
        dHPs, dHPg, dHPc = dHP.unbind(0), block_steps(dHP, n, 0, k), block_steps(dHP, n, k)
        Hp = _prev_steps(ws.Y.unbind(0), ws.h0)
        fs, bs = self.scale("f", dY), self.scale("b", dY)
        q_scale = 1.0 / float(fs[k * n]) if fs is not None else 1.0
        back = Mat(_back_weight(ws, bs).t(), B)
        dh, tmp, dhd = (dY.new_empty(B, n) for _ in range(3))
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back.addmm(dYs[t], dHPs[t + 1], out=dh).add_(dhd)
            (r, z), (tr, tz), hp = gr.eff[t], gr.targets[t], Hp[t]
            cand, dcand = CA[t], dCA[t]
            torch.addcmul(dh, dh, z, value=-1.0, out=tmp)         # ∂ĥ = dh⊙(1 − z)
            if self.tanh:
                _tanh_backward(tmp, cand, grad_input=dcand)        # ∂pre
            else:
                dcand.copy_(tmp)
            torch.sub(hp, cand, out=tmp)
            torch.mul(dh, tmp, out=tz)                             # ∂z = dh⊙(h − ĥ)
            torch.mul(dh, z, out=dhd)                              # direct: dh⊙z
            torch.mul(dcand, r, out=dHPc[t])                       # ∂(U_h h + b_hn) = ∂pre⊙r
            torch.mul(dcand, Qs[t], out=tr)                        # ∂r = ∂pre⊙(U_h h + b_hn)
            if q_scale != 1.0:
                tr.mul_(q_scale)                                   # Q was kept scaled
            gr.backward(t)
            _sigmoid_backward(dGA[t], GA[t], grad_input=dHPg[t])
            dGA[t].copy_(dHPg[t])
        ws.dh0 = back.mm(dHPs[0]).add_(dhd)
        ws.dc0 = None
        ws.dextras = (dHP[:, :, k * n:].sum((0, 1)),)
        ws.dw_hh = _recurrent_grad(dHP, ws.Y, ws.h0, bs)


class MGUKernel(_CandidateKernel):
    """MGU: f = gate(a_f); ĥ = sat(W_h x + U_h(f⊙h) + b_h); h_t = h_{t−1} + f⊙(ĥ − h_{t−1}).

    Blocks [f, (r), h]; two recurrent GEMMs per step in both directions (the second needs f). ĥ
    replaces s in place; the candidate's stored gradient is the true one (bscale 1).
    """

    def forward(self, ws: Workspace) -> None:
        T, B, n, k = ws.T, ws.B, self.n, self.k
        kn = k * n
        ws.FH = ws.take((T, B, n))
        ws.gr = gr = self.gate.start(ws.take, ws.G, ws.xs)
        one, m2 = _consts(ws.Y)
        GA, CA, Ys, FHs = block_steps(ws.G, n, 0, k), block_steps(ws.G, n, k), ws.Y.unbind(0), ws.FH.unbind(0)
        rec_g, rec_c = Mat(ws.w_hh_f[:kn], B), Mat(ws.w_hh_f[kn:], B)
        h = ws.h0
        for t in range(T):
            rec_g.add_to(GA[t], h).sigmoid_()
            (f,) = gr.forward(t)
            torch.mul(f, h, out=FHs[t])
            cand = rec_c.add_to(CA[t], FHs[t])
            if self.tanh:
                cand.sigmoid_()
                torch.addcmul(one, cand, m2, out=cand)            # ĥ = tanh(pre)
            torch.lerp(h, cand, f, out=Ys[t])                      # h + f(ĥ − h)
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B, n, k = ws.T, ws.B, self.n, self.k
        kn = k * n
        gr = ws.gr
        ws.dA = ws.take((T, B, self.blocks * n))
        ws.dxs = torch.empty_like(ws.xs) if ws.xs is not None else None
        gr.backward_start(ws.dA, ws.dxs)
        GA, CA, dYs = block_steps(ws.G, n, 0, k), block_steps(ws.G, n, k), dY.unbind(0)
        dGA, dCA = block_steps(ws.dA, n, 0, k), block_steps(ws.dA, n, k)
        Hp = _prev_steps(ws.Y.unbind(0), ws.h0)
        bs = self.scale("b", dY)
        w_b = _back_weight(ws, bs)
        back_g, back_c = Mat(w_b[:kn].t(), B), Mat(w_b[kn:].t(), B)
        dh, tmp, dhd = (dY.new_empty(B, n) for _ in range(3))
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back_g.addmm(dYs[t], dGA[t + 1], out=dh).add_(dhd)
            (f,), (tf,), hp = gr.eff[t], gr.targets[t], Hp[t]
            cand, dcand = CA[t], dCA[t]
            torch.mul(dh, f, out=tmp)                              # ∂ĥ = dh⊙f
            if self.tanh:
                _tanh_backward(tmp, cand, grad_input=dcand)
            else:
                dcand.copy_(tmp)
            dfh = back_c.mm(dcand)                                 # ∂(f⊙h)
            torch.sub(cand, hp, out=tmp)
            torch.mul(dh, tmp, out=tf)
            tf.addcmul_(dfh, hp)                                   # ∂f = dh⊙(ĥ − h) + ∂(f⊙h)⊙h
            torch.addcmul(dh, dh, f, value=-1.0, out=dhd)
            dhd.addcmul_(dfh, f)                                   # direct: dh⊙(1 − f) + ∂(f⊙h)⊙f
            gr.backward(t)
            _sigmoid_backward(dGA[t], GA[t], grad_input=dGA[t])
        ws.dh0 = back_g.mm(dGA[0]).add_(dhd)
        ws.dc0 = ws.dextras = ()
        dw = torch.empty_like(ws.w_hh)
        dw[:kn] = _recurrent_grad(ws.dA[:, :, :kn], ws.Y, ws.h0, bs)
        dw[kn:] = matmul(ws.FH.view(T * B, n).t(), ws.dA[:, :, kn:].reshape(T * B, n)).t()
        if bs is not None:
            dw[kn:] *= bs[kn:].view(-1, 1)
        ws.dw_hh = dw


class AdaptiveKernel(Kernel):
    """asRNN: a = W x + U h + b; h_t = D⁻¹ U_fᵀ tanh(U_f D a) (adaptive saturation on an Elman RNN).

    In rows, with d the diagonal of D_f: w = (a⊙d) U_fᵀ, y = tanh(w) = 1 − 2σ(−2w), h = y P with
    P = U_f diag(1/d). The step's pre-activation p = −2w = a Mᵀ (M = −2 U_f diag d) is linear in the
    previous y, so the fixed matrices fold into each other (formed once per call):

        p_0 = x_0 (M W)ᵀ + M b + h_0 V,   p_t = x_t (M W)ᵀ + M b + y_{t−1} K  (t ≥ 1),
        s_t = σ(p_t),  y_t = 1 − 2 s_t,  h_t = y_t P,     V = Uᵀ Mᵀ,  K = P V.

    The input projection computes x (M W)ᵀ + M b (+ 1ᵀK, taken back at t = 0) for all steps, so a
    step is one n × n GEMM (s ↦ −2 s K) and a sigmoid in each direction (the old loop had a second GEMM
    to form h_t and the next U h); all h_t = 1ᵀP − 2 s_t P come from one GEMM after the loop, and the
    backward's ∂y_t = ∂h_t Pᵀ from one before it: ∂y_t = (∂h_t Pᵀ) + ∂p_{t+1} Kᵀ, ∂p_t = −2 ∂y_t⊙s_t(1 − s_t).
    After the loop every matrix gradient is a small product of ∂K = Σ_{t≥1} y_{t−1}ᵀ∂p_t,
    ∂P = Σ y_tᵀ ∂h_t (the two T·B reductions), ∂(MW) = Σ ∂pᵀx, ∂(Mb) = Σ ∂p, ∂V = h_0ᵀ∂p_0, chained
    through K = P V, V = Uᵀ Mᵀ, M = −2 U_f diag d and P = U_f diag(1/d) to U, U_f, d, W and b.
    U_f and d are formed once per call by the saturation primitive (their own gradients flow through
    autograd outside this function). ``G`` holds p, then s in place; ``dA`` holds ∂y⊙s(1 − s) = −∂p/2.
    """

    def __init__(self, n: int) -> None:
        super().__init__(n, 1, 1, [1.0], [1.0])

    def extras(self, cell: object) -> tuple[Tensor, ...]:
        sat = cell.saturation  # type: ignore[attr-defined]
        return sat.orthogonal(), sat.scale()

    def input_weights(self, ws: Workspace, w_ih: Tensor, bias: Tensor, fs: Tensor | None) -> tuple[Tensor, Tensor]:
        u, d = ws.extras
        ws.bias = bias
        ws.m = -2.0 * u * d                                # p = a Mᵀ
        ws.p = u / d                                       # h = y P
        ws.v = ws.w_hh.t() @ ws.m.t()                      # h ↦ its term of the next p
        ws.k = ws.p @ ws.v                                 # y ↦ its term of the next p
        ws.m_w = ws.m @ w_ih
        return ws.m_w, ws.m @ bias + ws.k.sum(0)

    def forward(self, ws: Workspace) -> None:
        T, B, n = ws.T, ws.B, self.n
        ws.G[0].add_(torch.mm(ws.h0, ws.v).sub_(ws.k.sum(0)))
        if not sigmoid_recurrence(ws.G, -2.0 * ws.k):   # the loop in C: s_t = σ(p_t − 2 s_{t−1} K)
            Gs = ws.G.unbind(0)                            # T views: only where the loop runs in Python
            step = Mat((-2.0 * ws.k).t(), B)               # s ↦ −2 s K
            for t in range(T):
                Gs[t].sigmoid_()
                if t + 1 < T:
                    step.add_to(Gs[t + 1], Gs[t])
        TB = T * B                                         # h = (1 − 2s) P, all steps in one product
        ws.Y = matmul(ws.G.view(TB, n), -2.0 * ws.p).add_(ws.p.sum(0)).view(T, B, n)  # no per-call Mat reorder

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B, n = ws.T, ws.B, self.n
        TB = T * B
        dy2 = dY.reshape(TB, n).contiguous()
        ws.dA = DW = matmul(dy2, ws.p.t()).view(T, B, n)   # ∂h Pᵀ, all steps in one product
        if not sigmoid_recurrence(DW, (-2.0 * ws.k).t(), ws.G):   # the loop in C
            DWs, Ss = DW.unbind(0), ws.G.unbind(0)
            back = Mat(-2.0 * ws.k, B)                     # ∂s-part ↦ ∂p Kᵀ with ∂p = −2 dA
            for t in range(T - 1, -1, -1):
                if t + 1 < T:
                    back.add_to(DWs[t], DWs[t + 1])
                _sigmoid_backward(DWs[t], Ss[t], grad_input=DWs[t])
        s2, dw2 = ws.G.view(TB, n), DW.view(TB, n)
        if T > 1:                                          # ∂K = Σ_{t≥1} y_{t−1}ᵀ ∂p_t
            ys_dp = DW[1:].sum((0, 1)).expand(n, n) - 2.0 * matmul(s2[:-B].t(), dw2[B:])
            dk = -2.0 * ys_dp
        else:
            dk = torch.zeros_like(ws.k)
        dp = dy2.sum(0).expand(n, n) - 2.0 * matmul(s2.t(), dy2)       # ∂P = Σ y_tᵀ ∂h_t (outputs)
        ws.d_mw, ws.d_mb = (-2.0 * g for g in _input_weight_grads(ws.x2d, dw2, None))
        self._matrix_grads(ws, dp, dk, -2.0 * DW[0])

    def _matrix_grads(self, ws: Workspace, dp: Tensor, dk: Tensor, dp0: Tensor) -> None:
        """Chain ∂P, ∂K, ∂(MW), ∂(Mb) and ∂p_0 to U, h_0, U_f and d (see the class docstring)."""
        u, d = ws.extras
        dv = ws.h0.t() @ dp0 + ws.p.t() @ dk               # V = Uᵀ Mᵀ, K = P V
        dp = dp + dk @ ws.v.t()
        ws.dw_hh = ws.m.t() @ dv.t()
        dm = dv.t() @ ws.w_hh.t() + ws.d_mw @ ws.w_ih.t() + torch.outer(ws.d_mb, ws.bias)
        du = dp / d - 2.0 * dm * d                         # P = U_f diag(1/d), M = −2 U_f diag d
        dd = -(dp * u).sum(0) / (d * d) - 2.0 * (dm * u).sum(0)
        ws.dh0 = dp0 @ ws.v.t()
        ws.dc0 = ws.dxs = None
        ws.dextras = (du, dd)

    def input_grads(self, ws: Workspace, needs: tuple[bool, ...]
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        dx = None
        if needs[1]:
            dx = matmul(ws.dA.view(ws.T * ws.B, self.n), -2.0 * ws.m_w).view(ws.T, ws.B, ws.d)
        return (dx, ws.m.t() @ ws.d_mw if needs[2] else None, ws.m.t() @ ws.d_mb if needs[3] else None)


class TransitionKernel(Kernel):
    """Elman RNN with a deep transition (Pascanu et al. DT / DT(S)) on its candidate path.

    a = W x + U h + b; z_0 = tanh(a); z_j = tanh(W_j z_{j−1} + b_j) for the hidden layers;
    o = W_L z + b_L [+ W_s h]; h_t = sat(o) with sat tanh or identity. Every tanh is 1 − 2σ(−2·) with
    the −2 folded into the matrices and biases; the stored gradients are the true ones (the output's
    lacks the factor 4 of tanh', folded back into its weight gradients and backward GEMM). The layers'
    weights and biases (and W_s) are extra inputs of the function, so they get gradients.
    """

    def __init__(self, n: int, layers: int, shortcut: bool, sat: str) -> None:
        super().__init__(n, 1, 1, [-2.0], [1.0])
        self.layers, self.shortcut, self.tanh = layers, shortcut, sat == "tanh"

    def extras(self, cell: object) -> tuple[Tensor, ...]:
        tr = cell.transition  # type: ignore[attr-defined]
        out: list[Tensor] = []
        for layer in tr.layers:
            out += [layer.weight, layer.bias]
        if tr.shortcut is not None:
            out.append(tr.shortcut.weight)
        return tuple(out)

    def forward(self, ws: Workspace) -> None:
        T, B, n, L = ws.T, ws.B, self.n, self.layers
        one, m2 = _consts(ws.Y)
        so = -2.0 if self.tanh else 1.0                       # scale of the output pre-activation
        ws_, bs_ = ws.extras[0:2 * L:2], ws.extras[1:2 * L:2]
        ws.Z = [ws.take((T, B, n)) for _ in range(L)]         # z_0 … z_{L−1}
        ws.SO = ws.take((T, B, n))                            # σ(−2o) (tanh) or o (identity)
        if self.shortcut:
            rec = Mat(torch.cat([ws.w_hh_f, so * ws.extras[2 * L]]), B)
        else:
            rec = Mat(ws.w_hh_f, B)
        hidden = [Mat(-2.0 * w, B) for w in ws_[:-1]]
        hidden_b = [(-2.0 * b).contiguous() for b in bs_[:-1]]
        last, last_b = Mat(so * ws_[-1], B), (so * bs_[-1]).contiguous()
        Gs, Ys, SOs, h = ws.G.unbind(0), ws.Y.unbind(0), ws.SO.unbind(0), ws.h0
        Zs = [z.unbind(0) for z in ws.Z]
        for t in range(T):
            if self.shortcut:
                hp = rec.mm(h)
                a = Gs[t].add_(hp[:, :n]).sigmoid_()
            else:
                a = rec.add_to(Gs[t], h).sigmoid_()
            z = torch.addcmul(one, a, m2, out=Zs[0][t])        # z_0 = tanh(a)
            for j, (mat, b) in enumerate(zip(hidden, hidden_b)):
                s = mat.mm(z, b).sigmoid_()
                z = torch.addcmul(one, s, m2, out=Zs[j + 1][t])
            o = last.mm(z, last_b)
            if self.shortcut:
                o.add_(hp[:, n:])
            if self.tanh:
                torch.sigmoid(o, out=SOs[t])
                torch.addcmul(one, SOs[t], m2, out=Ys[t])      # h = tanh(o)
            else:
                Ys[t].copy_(o)
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B, n, L = ws.T, ws.B, self.n, self.layers
        fo = 4.0 if self.tanh else 1.0                       # stored ∂o lacks tanh's factor 4
        ws_ = ws.extras[0:2 * L:2]
        ws.dA = ws.take((T, B, n))
        DO = ws.take((T, B, n))
        DP = [ws.take((T, B, n)) for _ in range(L - 1)]     # ∂ of the hidden layers' pre-activations
        if self.shortcut:
            back = Mat(torch.cat([ws.w_hh, fo * ws.extras[2 * L]], 0).t(), B)
            DAO = ws.take((T, B, 2 * n))
            dA_steps, dO_steps = block_steps(DAO, n, 0), block_steps(DAO, n, 1)
            rec_in = DAO.unbind(0)
        else:
            back = Mat(ws.w_hh.t(), B)
            dA_steps, dO_steps, rec_in = ws.dA.unbind(0), DO.unbind(0), ws.dA.unbind(0)
        to_z = Mat((fo * ws_[-1]).t(), B)                     # ∂o' ↦ ∂z_{L−1}
        to_prev = [Mat(w.t(), B) for w in ws_[:-1]]
        Zs, SOs, dYs = [z.unbind(0) for z in ws.Z], ws.SO.unbind(0), dY.unbind(0)
        DPs = [p.unbind(0) for p in DP]
        dh = dY.new_empty(B, n)
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back.addmm(dYs[t], rec_in[t + 1], out=dh)
            if self.tanh:
                _sigmoid_backward(dh, SOs[t], grad_input=dO_steps[t])   # ∂o / 4
            else:
                dO_steps[t].copy_(dh)
            dz = to_z.mm(dO_steps[t])
            for j in range(L - 2, -1, -1):                    # hidden layer j + 1 maps z_j ↦ z_{j+1}
                _tanh_backward(dz, Zs[j + 1][t], grad_input=DPs[j][t])
                dz = to_prev[j].mm(DPs[j][t])
            _tanh_backward(dz, Zs[0][t], grad_input=dA_steps[t])
        if self.shortcut:
            ws.dA.copy_(DAO[:, :, :n])
            DO.copy_(DAO[:, :, n:])
            both = _recurrent_grad(DAO, ws.Y, ws.h0, None)    # [∂U; ∂W_s / fo]: one pass over h_{t−1}
            ws.dw_hh, dw_s = both[:n], both[n:]
        else:
            ws.dw_hh = _recurrent_grad(ws.dA, ws.Y, ws.h0, None)
        ws.dh0 = back.mm(rec_in[0])
        ws.dc0 = ws.dxs = None
        TB = T * B
        do2 = DO.view(TB, n)
        grads: list[Tensor] = []
        for j in range(L - 1):                                # hidden layers: inputs z_j
            dp2 = DP[j].view(TB, n)
            grads += [matmul(dp2.t(), ws.Z[j].view(TB, n)), dp2.sum(0)]
        grads += [fo * matmul(do2.t(), ws.Z[L - 1].view(TB, n)), fo * do2.sum(0)]
        if self.shortcut:
            grads.append(fo * dw_s)
        ws.dextras = tuple(grads)
