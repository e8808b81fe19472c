"""The fused time loops with one C call per step and direction for the pointwise work.

Same loops as :mod:`cellsearch.fast.kernels` (GEMMs in torch, buffers from the pool, weight gradients
after the reverse loop), but everything between two GEMMs of a step is one call into the compiled
library of :mod:`cellsearch.fast.csrc`, which works on whole batch rows and stores true gradients
(no scale conventions: forward and backward scales are all 1). Used for float32 and float64 on the CPU
when the library is available; the torch-op kernels cover everything else.

With oneDNN, the recurrent GEMM's result of a step is passed to the C call, which adds it to the
input projection while applying the activations (one pass over the row instead of two).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import torch
from torch import Tensor

from .csrc import Args
from .fused import Kernel, Mat, Workspace, matmul
from .gates import GateOps
from .kernels import _recurrent_grad

__all__ = ["CKernel", "CLSTMKernel", "CGRUKernel", "CMGUKernel", "CSTARKernel", "DTYPES"]

#: a step's pointwise call splits its batch rows over torch's threads from this many elements of the
#: pre-activation rows (B · blocks · n) on (below it a parallel region costs more than it saves)
PARALLEL_MIN = 1 << 14

#: dtypes the C library is built for, and the suffix of their functions
DTYPES = {torch.float32: "_f", torch.float64: "_d"}


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _contig(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class CKernel(Kernel):
    """Base of the C-backed families: builds the ``Args`` struct of a call and picks the functions."""

    family = ""

    def __init__(self, lib: Any, n: int, gate: GateOps, sat: str, rec_blocks: int) -> None:
        blocks = gate.k + 1
        super().__init__(n, blocks, rec_blocks, [1.0] * blocks, [1.0] * blocks)
        self.lib, self.gate, self.tanh = lib, gate, sat == "tanh"

    def fn(self, name: str, dtype: torch.dtype) -> Any:
        return getattr(self.lib, f"{self.family}_{name}{DTYPES[dtype]}")

    def args(self, ws: Workspace) -> Args:
        """The struct for this call; tensors it points to are kept on ``ws``."""
        g, n = self.gate, self.n
        a = Args()
        a.T, a.B, a.n, a.rs = ws.T, ws.B, n, self.blocks * n
        a.k, a.ng = g.k, len(g.names)
        for j, p in enumerate(g.pos):
            a.pos[j] = p
        a.ur = g.keep if g.kind == "ur" else -1
        a.ur_r = g.pos[g.keep] + 1 if g.kind == "ur" else -1
        a.ur_pol = g.polarity
        a.ref_mode = 0 if g.kind != "refined" else (1 if g.mul else 2)
        a.ref_mask = sum(1 << j for j in g.refined)
        a.tanh_sat = int(self.tanh)
        a.cand = g.k
        ws.xs_c, ws.h0_c = _contig(ws.xs), ws.h0.contiguous()
        a.nthreads = torch.get_num_threads() if ws.B * a.rs >= PARALLEL_MIN else 1
        a.scr_stride = 2 * len(g.names) * n + n
        ws.scratch = ws.h0.new_empty(a.nthreads * a.scr_stride)
        a.G, a.Y, a.XS, a.h0, a.scratch = (_ptr(ws.G), _ptr(ws.Y), _ptr(ws.xs_c), _ptr(ws.h0_c),
                                           _ptr(ws.scratch))
        return a

    def start_backward(self, ws: Workspace, dY: Tensor) -> tuple[Args, Tensor]:
        """Allocate dA (and dxs), point the struct at them; returns (struct, dh buffer)."""
        a = ws.cargs
        ws.dA = ws.take((ws.T, ws.B, self.blocks * self.n))
        ws.dxs = torch.empty_like(ws.xs_c) if ws.xs_c is not None else None
        a.dA, a.dXS = _ptr(ws.dA), _ptr(ws.dxs)
        return a, dY.new_empty(ws.B, self.n)


def _step_input(rec: Mat, row: Tensor, h: Tensor) -> Tensor | None:
    """The recurrent product of a step for the C call to add, or None after adding it into ``row``."""
    if rec.dnn:
        hp = rec.mm(h)
        return hp if hp.is_contiguous() else hp.contiguous()
    rec.add_to(row, h)
    return None


def _call(fn: Any, ref: Any, t: int, hp: Tensor | None) -> None:
    if hp is None:
        fn(ref, t, None, 0)
    else:
        fn(ref, t, hp.data_ptr(), hp.stride(0))


def _mm(mat: Mat, x: Tensor) -> Tensor:
    y = mat.mm(x)
    return y if y.is_contiguous() else y.contiguous()


class CLSTMKernel(CKernel):
    """LSTM and LSTM with tied input gate (see :class:`cellsearch.fast.kernels.LSTMKernel`)."""

    family = "lstm"
    n_states = 2

    def __init__(self, lib: Any, n: int, gate: GateOps, tied: bool, sat: str) -> None:
        super().__init__(lib, n, gate, sat, gate.k + 1)
        self.tied = tied

    def forward(self, ws: Workspace) -> None:
        T, B, n = ws.T, ws.B, self.n
        ws.C = ws.take((T, B, n))
        ws.TC = ws.take((T, B, n)) if self.tanh else None
        a = ws.cargs = self.args(ws)
        ws.c0_c = ws.c0.contiguous()
        a.tied, a.C, a.TC, a.c0 = int(self.tied), _ptr(ws.C), _ptr(ws.TC), _ptr(ws.c0_c)
        fwd, ref = self.fn("fwd", ws.dtype), ctypes.byref(a)
        rec, Gs, Ys, h = Mat(ws.w_hh_f, B), ws.G.unbind(0), ws.Y.unbind(0), ws.h0
        for t in range(T):
            _call(fwd, ref, t, _step_input(rec, Gs[t], h))
            h = Ys[t]
        ws.c_final = ws.C[T - 1].clone()

    def backward(self, ws: Workspace, dY: Tensor, dc_final: Tensor | None) -> None:
        T, B = ws.T, ws.B
        a, dh = self.start_backward(ws, dY)
        dc = dc_final.contiguous().clone() if dc_final is not None else dY.new_zeros(B, self.n)
        a.dc = _ptr(dc)
        bwd, ref = self.fn("bwd", ws.dtype), ctypes.byref(a)
        back, dAs, dYs = Mat(ws.w_hh.t(), B), ws.dA.unbind(0), dY.unbind(0)
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back.addmm(dYs[t], dAs[t + 1], out=dh)
            bwd(ref, t, dh.data_ptr())
        ws.dh0 = back.mm(dAs[0])
        ws.dc0 = dc
        ws.dw_hh = _recurrent_grad(ws.dA, ws.Y, ws.h0, None)
        ws.dextras = ()


class CGRUKernel(CKernel):
    """GRU in PyTorch's form (see :class:`cellsearch.fast.kernels.GRUKernel`)."""

    family = "gru"

    def __init__(self, lib: Any, n: int, gate: GateOps, sat: str) -> None:
        super().__init__(lib, n, gate, sat, gate.k + 1)

    def forward(self, ws: Workspace) -> None:
        T, B, n = ws.T, ws.B, self.n
        ws.Q = ws.take((T, B, n))
        a = ws.cargs = self.args(ws)
        ws.bhn_c = ws.extras[0].contiguous()
        a.Q, a.bhn = _ptr(ws.Q), _ptr(ws.bhn_c)
        fwd, ref = self.fn("fwd", ws.dtype), ctypes.byref(a)
        rec, Ys, h = Mat(ws.w_hh_f, B), ws.Y.unbind(0), ws.h0
        for t in range(T):
            _call(fwd, ref, t, _mm(rec, h))
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B = ws.T, ws.B
        a, dh = self.start_backward(ws, dY)
        dHP = ws.take((T, B, self.blocks * self.n))
        dhd = dY.new_zeros(B, self.n)
        a.dHP, a.dhd = _ptr(dHP), _ptr(dhd)
        bwd, ref = self.fn("bwd", ws.dtype), ctypes.byref(a)
        back, dHPs, dYs = Mat(ws.w_hh.t(), B), dHP.unbind(0), dY.unbind(0)
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back.addmm(dYs[t], dHPs[t + 1], out=dh)
            bwd(ref, t, dh.data_ptr())
        ws.dh0 = back.mm(dHPs[0]).add_(dhd)
        ws.dc0 = None
        ws.dextras = (dHP[:, :, self.gate.k * self.n:].sum((0, 1)),)
        ws.dw_hh = _recurrent_grad(dHP, ws.Y, ws.h0, None)


class CMGUKernel(CKernel):
    """MGU (see :class:`cellsearch.fast.kernels.MGUKernel`): two C calls per step and direction."""

    family = "mgu"

    def __init__(self, lib: Any, n: int, gate: GateOps, sat: str) -> None:
        super().__init__(lib, n, gate, sat, gate.k + 1)

    def forward(self, ws: Workspace) -> None:
        T, B, n = ws.T, ws.B, self.n
        kn = self.gate.k * n
        ws.FH = ws.take((T, B, n))
        a = ws.cargs = self.args(ws)
        a.FH = _ptr(ws.FH)
        fwd1, fwd2, ref = self.fn("fwd1", ws.dtype), self.fn("fwd2", ws.dtype), ctypes.byref(a)
        rec_g, rec_c = Mat(ws.w_hh_f[:kn], B), Mat(ws.w_hh_f[kn:], B)
        Gs, Ys, FHs, h = ws.G.unbind(0), ws.Y.unbind(0), ws.FH.unbind(0), ws.h0
        for t in range(T):
            _call(fwd1, ref, t, _step_input(rec_g, Gs[t][:, :kn], h))
            _call(fwd2, ref, t, _step_input(rec_c, Gs[t][:, kn:], FHs[t]))
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B, n = ws.T, ws.B, self.n
        kn = self.gate.k * n
        a, dh = self.start_backward(ws, dY)
        dht, dhd = dY.new_empty(B, n), dY.new_zeros(B, n)
        a.dc, a.dhd = _ptr(dht), _ptr(dhd)
        bwd1, bwd2, ref = self.fn("bwd1", ws.dtype), self.fn("bwd2", ws.dtype), ctypes.byref(a)
        w_b = ws.w_hh
        back_g, back_c = Mat(w_b[:kn].t(), B), Mat(w_b[kn:].t(), B)
        dAs, dYs = ws.dA.unbind(0), dY.unbind(0)
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back_g.addmm(dYs[t], dAs[t + 1][:, :kn], out=dh)
            bwd1(ref, t, dh.data_ptr())
            dfh = _mm(back_c, dAs[t][:, kn:])
            bwd2(ref, t, dfh.data_ptr())
        ws.dh0 = back_g.mm(dAs[0][:, :kn]).add_(dhd)
        ws.dc0 = ws.dextras = ()
        dw = torch.empty_like(ws.w_hh)
        dw[:kn] = _recurrent_grad(ws.dA[:, :, :kn], ws.Y, ws.h0, None)
        dw[kn:] = matmul(ws.FH.view(T * B, n).t(), ws.dA[:, :, kn:].reshape(T * B, n)).t()
        ws.dw_hh = dw


class CSTARKernel(CKernel):
    """STAR (see :class:`cellsearch.fast.kernels.STARKernel`); z is squashed inside the step call."""

    family = "star"

    def __init__(self, lib: Any, n: int, gate: GateOps, sat: str, beta: float | None = None) -> None:
        super().__init__(lib, n, gate, sat, gate.k)
        if beta is not None and gate.kind != "sigmoid":
            raise ValueError("STAR's beta needs the plain sigmoid gate")
        self.beta = beta

    def forward(self, ws: Workspace) -> None:
        T, B = ws.T, ws.B
        kn = self.gate.k * self.n
        a = ws.cargs = self.args(ws)
        if self.beta is not None:
            a.beta_on, a.beta_c = 1, math.exp(float(self.beta))
        fwd, ref = self.fn("fwd", ws.dtype), ctypes.byref(a)
        rec, Gs, Ys, h = Mat(ws.w_hh_f, B), ws.G.unbind(0), ws.Y.unbind(0), ws.h0
        for t in range(T):
            _call(fwd, ref, t, _step_input(rec, Gs[t][:, :kn], h))
            h = Ys[t]

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        T, B, n = ws.T, ws.B, self.n
        kn = self.gate.k * n
        a, dh = self.start_backward(ws, dY)
        dhd = dY.new_zeros(B, n)
        a.dhd = _ptr(dhd)
        bwd, ref = self.fn("bwd", ws.dtype), ctypes.byref(a)
        back, dAs, dYs = Mat(ws.w_hh.t(), B), ws.dA.unbind(0), dY.unbind(0)
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dYs[t])
            else:
                back.addmm(dYs[t], dAs[t + 1][:, :kn], out=dh)
            bwd(ref, t, dh.data_ptr())
        ws.dh0 = back.mm(dAs[0][:, :kn]).add_(dhd)
        ws.dc0 = ws.dextras = ()
        ws.dw_hh = _recurrent_grad(ws.dA[:, :, :kn], ws.Y, ws.h0, None)

