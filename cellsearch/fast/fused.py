"""The whole-sequence ``torch.autograd.Function`` shared by every fused update family.

One call runs a layer over a whole time-major sequence. The driver here does what every family shares:

- the input projection of all blocks for all steps as one GEMM straight into the pre-activation buffer
  ``G`` ([T, B, G·n]), with the family's *forward scale* folded into the weights (a tanh block is
  computed as tanh(a) = 1 − 2σ(−2a), so its rows are scaled by −2 and one sigmoid covers the row);
- after the family's reverse loop, the weight gradients as a few large GEMMs: with ``dA`` the gradients
  the loop stored ([T, B, G·n]) and ``scale`` the family's *backward scale* per block (the true gradient
  with respect to a block's pre-activation is ``scale ⊙ dA``): ∂W_ih = (scale ⊙ dA)ᵀ X,
  ∂b = Σ scale ⊙ dA, ∂x = (scale ⊙ dA) W_ih;
- the work buffers come from :data:`~cellsearch.fast.pool.POOL` and go back at the end of a backward
  pass that does not keep its graph.

The family (a :class:`Kernel`) writes the time loops; see :mod:`cellsearch.fast.kernels`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cgemm import tn
from .pool import POOL

__all__ = ["Kernel", "Workspace", "FusedSequence", "run_fused", "Mat", "matmul", "onednn_available", "pack_weight",
           "project", "projected", "input_weight_grads"]

_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_ONEDNN: bool | None = None
#: products smaller than this many multiply-adds stay on torch.mm (oneDNN's per-call cost dominates)
ONEDNN_MIN = 1 << 21


def onednn_available() -> bool:
    """Whether oneDNN's fp32 linear works here (checked once against ``torch.mm``; ``CELLSEARCH_ONEDNN=0``
    turns it off)."""
    global _ONEDNN
    if _ONEDNN is None:
        _ONEDNN = False
        if os.environ.get("CELLSEARCH_ONEDNN", "1").strip().lower() in ("0", "false", "no", "off"):
            return False
        if _LINEAR is not None and torch.backends.mkldnn.is_available():
            try:
                g = torch.Generator().manual_seed(0)
                w, x = torch.randn(24, 6, generator=g), torch.randn(5, 6, generator=g)
                y = _LINEAR(x, w, None, "none", [], "")
                _ONEDNN = bool(torch.allclose(y, x @ w.t(), atol=1e-5))
            except Exception:
                _ONEDNN = False
    return _ONEDNN


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for the large once-per-sequence products: a transposed ``a`` (the weight gradients' ``hᵀ·dA``)
    by :func:`cellsearch.fast.cgemm.tn` (no copy of the transpose), else oneDNN for float32 on CPU, else
    torch.mm. A transposed ``a`` with more rows than ``b`` has columns is computed as ``(bᵀ·aᵀᵀ)ᵀ`` (a
    transposed view): ``cs_tn`` splits the result's column panels over the threads (∂x̃ᵀ·x with x's d =
    32 columns is one panel, one thread: 0.31 against 0.16 ms at 6 400 × 128), and oneDNN copies its
    transposed operand, the smaller one so (hᵀ·dA against dAᵀ·h: 1.4–1.9× at 128–256 wide)."""
    if a.shape[0] > b.shape[1] and not a.is_contiguous() and a.t().is_contiguous() and b.is_contiguous():
        return matmul(b.t(), a.t()).t()
    big = a.shape[0] * a.shape[1] * b.shape[1] >= ONEDNN_MIN
    if big and a.device.type == "cpu" and a.dim() == 2 and a.stride(0) == 1 and a.shape[1] > 1:
        out = tn(a.t(), b)
        if out is not None:
            return out
    if a.dtype == torch.float32 and a.device.type == "cpu" and big and _plain(a) and _plain(b) \
            and onednn_available():
        return _LINEAR(a, b.t(), None, "none", [], "")  # type: ignore[misc]
    return torch.mm(a, b)


def project(x: Tensor, w: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out = x wᵀ + b for the input projection of all steps (x [T·B, d], out a contiguous [T·B, rows]).

    float32 on the CPU: oneDNN's linear, the weight packed once, over chunks of rows whose results
    (≤ 4 MB) are copied into ``out`` while still in cache. Single thread, T·B = 12800, d = 32, 768 / 1024
    rows: 5.8 / 7.2 ms against 8.5 / 12.3 ms for MKL's addmm (its K = d products are slow on AMD)."""
    rows = out.shape[1]
    if not (_onednn_projection(x, rows) and out.is_contiguous()):
        return torch.addmm(b, x, w.t(), out=out)
    step = max(256, (1 << 20) // rows)
    wp, bc = pack_weight(w, step), b.contiguous()
    for s in range(0, x.shape[0], step):
        out[s:s + step].copy_(_LINEAR(x[s:s + step], wp, bc, "none", [], ""))  # type: ignore[misc]
    return out


def projected(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x wᵀ + b as a new tensor (x [T·B, d]): one oneDNN call for float32 on the CPU (T·B = 12800, d = 32,
    1024 rows, 2 threads: 2.4 ms, against 4.4 ms for :func:`project`'s chunks and their copies into a
    given buffer), else ``torch.addmm``."""
    if _onednn_projection(x, w.shape[0]):
        return _LINEAR(x, pack_weight(w, x.shape[0]), b.contiguous(), "none", [], "")  # type: ignore[misc]
    return torch.addmm(b, x, w.t())


def _onednn_projection(x: Tensor, rows: int) -> bool:
    """Whether the input projection of ``x`` [T·B, d] to ``rows`` runs on oneDNN: float32 on the CPU,
    contiguous, large enough for oneDNN's per-call cost."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous() \
        and x.shape[0] * x.shape[1] * rows >= ONEDNN_MIN and onednn_available()


def _plain(m: Tensor) -> bool:
    """Contiguous or a transposed contiguous matrix (other strides send oneDNN down a slow path)."""
    return m.is_contiguous() or m.t().is_contiguous()


_REORDER = getattr(getattr(torch.ops, "mkldnn", None), "_reorder_linear_weight", None)


def pack_weight(w: Tensor, batch: int) -> Tensor:
    """``w`` [out, in] in oneDNN's blocked layout for products with ``batch`` rows (reordered once instead
    of at every call: 5–40 µs less per per-step product, measured on the project's Zen 5), or ``w``
    contiguous where torch cannot pack it."""
    w = w.contiguous()
    if _REORDER is not None:
        try:
            return _REORDER(w, batch)
        except RuntimeError:
            pass
    return w


class Mat:
    """Products ``x @ wᵀ`` with one fixed weight ``w`` [out, in], used at every step of a loop.

    float32 on the CPU goes through oneDNN's linear, the weight packed once (:func:`pack_weight`), when a
    product has at least :data:`ONEDNN_MIN` multiply-adds (on this project's AMD test machines MKL's sgemm
    runs the larger per-step products ~1.3–2× slower than oneDNN, while oneDNN's fixed cost per call
    loses on small ones); everything else through MKL / cuBLAS (``torch.mm``).
    """

    def __init__(self, w: Tensor, batch: int) -> None:
        out_features, in_features = w.shape
        self.dnn = (w.dtype == torch.float32 and w.device.type == "cpu"
                    and batch * out_features * in_features >= ONEDNN_MIN and onednn_available())
        if self.dnn:
            self.wp = pack_weight(w, batch)
        else:
            self.wt = w.t()

    def mm(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x wᵀ (+ ``bias``, a contiguous [out] vector, added by the same call), a new tensor."""
        if self.dnn:
            return _LINEAR(x, self.wp, bias, "none", [], "")  # type: ignore[misc]
        return torch.mm(x, self.wt) if bias is None else torch.addmm(bias, x, self.wt)

    def add_to(self, acc: Tensor, x: Tensor) -> Tensor:
        """acc += x wᵀ, in place (``acc`` may be a strided view)."""
        if self.dnn:
            return acc.add_(self.mm(x))
        return acc.addmm_(x, self.wt)

    def mm_out(self, x: Tensor, out: Tensor) -> Tensor:
        """out = x wᵀ."""
        if self.dnn:
            return out.copy_(self.mm(x))
        return torch.mm(x, self.wt, out=out)

    def addmm(self, base: Tensor, x: Tensor, out: Tensor) -> Tensor:
        """out = base + x wᵀ."""
        if self.dnn:
            return torch.add(base, self.mm(x), out=out)
        return torch.addmm(base, x, self.wt, out=out)


def _input_weight_grads(x2d: Tensor, dA: Tensor, bs: Tensor | None) -> tuple[Tensor, Tensor]:
    """∂W_ih and ∂b in one pass over dA: xᵀ·dA by :func:`cellsearch.fast.cgemm.tn`, which sums dA's columns
    as it packs them; without the C library, one product [Xᵀ; 1] (contiguous, [d + 1, T·B]) times dA, so
    that the reduction over T·B runs along both operands' rows and db falls out as the last row (single
    thread, T·B = 12800, d = 32, 768 rows: 6.1 ms against 14.7 ms for mm(Xᵀ, dA) plus dA.sum(0))."""
    d = x2d.shape[1]
    db = dA.new_empty(dA.shape[1])
    dw = tn(x2d, dA, db)                          # xᵀ·dA, with dA's column sums on the way
    if dw is not None:
        return _scaled(dw.t(), bs), _scaled(db, bs)
    x1t = torch.cat([x2d.t(), x2d.new_ones(1, x2d.shape[0])])
    m = matmul(x1t, dA)                                            # [d + 1, rows]
    return _scaled(m[:d].t(), bs), _scaled(m[d], bs)


#: ∂W_ih and ∂b of an input projection from its inputs x [T·B, d] and gradients [T·B, rows] (scale: None)
input_weight_grads = _input_weight_grads


def _keep_graph() -> bool:
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except Exception:  # pragma: no cover - older torch: assume the graph is kept (never reuse)
        return True


class Workspace:
    """Everything one call keeps from its forward to its backward pass."""

    def __init__(self, x: Tensor, n: int) -> None:
        self.T, self.B, self.d = x.shape
        self.n = n
        self.dtype, self.device = x.dtype, x.device
        self.leased: list[Tensor] = []
        self.tensors: dict[str, Any] = {}

    def take(self, shape: tuple[int, ...]) -> Tensor:
        """A pooled work buffer (returned to the pool after the backward pass)."""
        buf = POOL.take(shape, self.dtype, self.device)
        self.leased.append(buf)
        return buf

    def release(self) -> None:
        POOL.give(*self.leased)
        self.leased = []
        self.tensors = {}


class Kernel:
    """A fused update family. Subclasses set the block layout and write the two time loops.

    ``fscale`` / ``bscale``: forward and backward scale per block (layout order, length ``blocks``).
    ``rec_blocks``: how many leading blocks have a recurrent matrix. ``n_states``: 1 or 2 (h, c).
    """

    n_states = 1

    def extras(self, cell: Any) -> tuple[Tensor, ...]:
        """Tensors beyond the block weights this family needs from ``cell`` (they get gradients)."""
        return (cell.extra["bias_hn"],) if "bias_hn" in cell.extra else ()

    def __init__(self, n: int, blocks: int, rec_blocks: int, fscale: list[float],
                 bscale: list[float]) -> None:
        self.n, self.blocks, self.rec_blocks = n, blocks, rec_blocks
        self.fscale, self.bscale = fscale, bscale
        self._scales: dict[tuple[torch.dtype, torch.device, str], Tensor] = {}

    def scale(self, which: str, like: Tensor) -> Tensor | None:
        """The per-row scale vector ([blocks·n]) for ``which`` in ``('f', 'b')``, or None if all ones."""
        values = self.fscale if which == "f" else self.bscale
        if all(v == 1.0 for v in values):
            return None
        key = (like.dtype, like.device, which)
        vec = self._scales.get(key)
        if vec is None:
            vec = torch.tensor(values, dtype=like.dtype).repeat_interleave(self.n).to(like.device)
            self._scales[key] = vec
        return vec

    def input_weights(self, ws: Workspace, w_ih: Tensor, bias: Tensor, fs: Tensor | None) -> tuple[Tensor, Tensor]:
        """Weight and bias of the input projection into ``G`` (all steps, one GEMM): by default W_ih and b
        with the forward scale folded in. A family may fold a fixed matrix of its step into them."""
        return _scaled(w_ih, fs), _scaled(bias, fs)

    def input_grads(self, ws: Workspace, needs: tuple[bool, ...]
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(∂x, ∂W_ih, ∂b) from the stored gradients ``ws.dA`` (see the module docstring), as ``needs``
        (the function's ``needs_input_grad``) asks; called after :meth:`backward`."""
        T, B, d, rows = ws.T, ws.B, ws.d, self.blocks * self.n
        bs = self.scale("b", ws.dA)
        dA = ws.dA.reshape(T * B, rows)
        dx = dw_ih = db = None
        if needs[1]:
            dx = matmul(dA, _scaled(ws.w_ih, bs)).view(T, B, d)
        if needs[2] or needs[3]:
            dw_ih, db = _input_weight_grads(ws.x2d, dA, bs)
        return dx, dw_ih, db

    # the family's loops ---------------------------------------------------------------------------
    def forward(self, ws: Workspace) -> None:
        raise NotImplementedError

    def backward(self, ws: Workspace, dY: Tensor, dc: Tensor | None) -> None:
        """Fill ws.dA (stored convention), ws.dh0, ws.dc0, ws.dxs, ws.dextras, ws.dw_hh."""
        raise NotImplementedError


def _scaled(w: Tensor, s: Tensor | None) -> Tensor:
    return w if s is None else w * s.view(-1, *([1] * (w.dim() - 1)))


def _forward(kernel: Kernel, x: Tensor, w_ih: Tensor, bias: Tensor, w_hh: Tensor, h0: Tensor,
             c0: Tensor | None, xs: Tensor | None, extras: tuple[Tensor, ...]) -> Workspace:
    """The forward pass: input projection into the pooled buffer G, then the family's loop."""
    ws = Workspace(x, kernel.n)
    T, B, d = ws.T, ws.B, ws.d
    rows = kernel.blocks * kernel.n
    fs = kernel.scale("f", x)
    ws.x2d = x.reshape(T * B, d)
    ws.w_ih, ws.w_hh, ws.h0, ws.c0, ws.xs, ws.extras = w_ih, w_hh, h0, c0, xs, extras
    ws.w_hh_f = _scaled(w_hh, None if fs is None else fs[: w_hh.shape[0]])
    ws.G = ws.take((T, B, rows))
    project(ws.x2d, *kernel.input_weights(ws, w_ih, bias, fs), ws.G.view(T * B, rows))
    ws.Y = x.new_empty(T, B, kernel.n)
    kernel.forward(ws)
    return ws


class FusedSequence(torch.autograd.Function):
    """Whole-sequence forward and hand-written backward of one layer (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, kernel: Kernel, x: Tensor, w_ih: Tensor, bias: Tensor, w_hh: Tensor,  # type: ignore[override]
                h0: Tensor, c0: Tensor | None, xs: Tensor | None, *extras: Tensor
                ) -> tuple[Tensor, Tensor | None]:
        ws = _forward(kernel, x, w_ih, bias, w_hh, h0, c0, xs, extras)
        ctx.ws, ctx.kernel = ws, kernel
        return ws.Y, ws.c_final if kernel.n_states == 2 else None

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dY: Tensor, dc: Tensor | None) -> tuple[Tensor | None, ...]:
        ws, kernel = ctx.ws, ctx.kernel
        if ws is None:
            raise RuntimeError("cellsearch fused sequence: backward ran twice through a graph that was not "
                               "kept; pass retain_graph=True to the first backward")
        needs = ctx.needs_input_grad
        kernel.backward(ws, dY, dc)
        dx, dw_ih, db = kernel.input_grads(ws, needs)
        extra = list(ws.dextras) + [None] * (len(needs) - 8 - len(ws.dextras))
        grads = (None, dx, dw_ih, db, ws.dw_hh if needs[4] else None, ws.dh0 if needs[5] else None,
                 ws.dc0 if needs[6] else None, ws.dxs if needs[7] else None,
                 *(e if need else None for e, need in zip(extra, needs[8:])))
        if not _keep_graph():
            ws.release()
            ctx.ws = None
        return grads


def run_fused(kernel: Kernel, x: Tensor, w_ih: Tensor, bias: Tensor, w_hh: Tensor,
              state: tuple[Tensor, ...], xs: Tensor | None, *extras: Tensor
              ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Apply :class:`FusedSequence`; returns (out [T, B, n], final state) like the reference loop.

    Without autograd (no_grad, or nothing requires grad) the forward runs alone and its buffers go
    straight back to the pool.
    """
    h0 = state[0]
    c0 = state[1] if kernel.n_states == 2 else None
    inputs = (x, w_ih, bias, w_hh, h0, c0, xs, *extras)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        Y, c_final = FusedSequence.apply(kernel, *inputs)
    else:
        with torch.no_grad():
            ws = _forward(kernel, x, w_ih, bias, w_hh, h0, c0, xs, extras)
        Y, c_final = ws.Y, ws.c_final if kernel.n_states == 2 else None
        ws.release()
    if kernel.n_states == 2:
        return Y, (Y[-1], c_final)
    return Y, (Y[-1],)
