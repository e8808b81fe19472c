"""Parallel scan: whole-sequence training for updates whose recurrence is linear in h with input-only
coefficients (minGRU, minLSTM, RG-LRU; PRIMITIVES.md-style math in each primitive's docstring).

Such an update (:class:`~cellsearch.primitives.linear.LinearUpdate`) writes its math once, as
``coefficients(ctx, xp, xs, h) -> (a, b)``; its step is h_t = a_t⊙h_{t−1} + b_t. Because a_t and b_t
do not depend on h, this kernel (declared in the update's ``kernels``) evaluates them for all T steps
at once (one batched call of the same function: every gate and saturation is row-wise) and solves

    h_t = A_t⊙h_0 + Σ_{s≤t} (Π_{s<r≤t} a_r)⊙b_s,      A_t = Π_{r≤t} a_r

without a loop over T in Python. On the CPU, where the derived path's C time loop runs (large enough
sequences, after the first calls of a shape: :mod:`cellsearch.fast.paths`), it takes these cells instead:
it computes the input projection at every step inside the loop and fuses the coefficients' math, and the
step skips the product with the zero recurrent matrix (``recurrence: none``). Same process, × nn.LSTM,
this scan / the loop: minGRU 128/100 1.87 / 4.45, 256/200 3.74 / 7.04; minLSTM 2.11 / 3.05, 3.20 / 5.09;
RG-LRU (separate runs) 64/100 0.92 / 2.14, 256/200 1.70 / 4.29 (docs/bench/LOOP.md). This scan keeps the
rest. Three forms of the solve:

- ``compiled`` (default on the CPU in float32 / float64, when the C library builds): the recurrence
  itself in one forward pass and one reverse pass over the sequence, vectorised over the units and
  split over threads by rows (:mod:`cellsearch.fast.scan_c`). The scan is memory-bound on a CPU, so
  reading a and b once beats any re-association; it is exactly the sequential loop's arithmetic.
  For minGRU and minLSTM with sigmoid gates and the identity or g candidate (the published cards) the
  gate math is fused into the same passes (:func:`mingru`, :func:`minlstm`, declared in those updates'
  ``kernels`` before :func:`linear`): forward reads the input projection and writes only h, backward
  recomputes the gates and writes only ∂(W x + b); the input GEMM is hoisted over all steps.

The torch-op forms (any device and dtype; on the CPU only when the library is unavailable or
:func:`use_compiled` is off, ``CELLSEARCH_SCAN=chunked``), both over chunks of C ≈ √T steps (a loop of C
steps over all chunks at once, then a loop of T/C steps carrying the state across chunks, then one
vectorised fix-up; O(T) work, O(√T) sequential steps):

- ``chunked`` (default): within a chunk the recurrence itself, run for every chunk at once. Only
  products of the a's and sums, re-associated at chunk boundaries: exactly as stable as the
  sequential loop, for any sign of b.
- ``log``: within a chunk the log-space cumulative sums of Heinsen (2023), as minGRU's paper trains
  (Feng et al. 2024, appendix): log h_t = L_t + logcumsumexp_s(log b_s − L_s), L_t = Σ log a_r. Needs
  a > 0 and b > 0 (minGRU / minLSTM with the positive candidate ``saturation: g``); a call where some a
  or b is not positive runs ``chunked``. Its float32 error grows with |L| inside a chunk (a log of size
  |L| carries an absolute error ≈ |L|·2⁻²⁴), which is why its chunks are short (:data:`LOG_CHUNK`)
  and it is not the default.
  Select it with :func:`use_log` or ``CELLSEARCH_SCAN=log`` (it then replaces the compiled form too).

The backward is the same kind of recurrence run in reverse (:class:`LinearScan`): with g_t = ∂L/∂h_t
accumulated from the future, g_t = ∂ℓ/∂h_t + a_{t+1}⊙g_{t+1}; then ∂L/∂b_t = g_t,
∂L/∂a_t = g_t⊙h_{t−1}, ∂L/∂h_0 = a_1⊙g_1 — one reverse pass in the compiled form, the chunked scan
otherwise, so only a and h are kept.
Autograd carries the gradients of a and b back into the gates and the input GEMM. Like the other fast
paths, the backward is not itself differentiable (double backward raises). Works on any device
(torch ops; the compiled form on the CPU). Tested against the sequential loop (tests/test_modern.py,
tests/test_scan.py: |Δ| < 1e-5 in float32 and float64, T from 1 to 4096, every form).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import scan_c
from .paths import Plan

__all__ = ["linear", "mingru", "minlstm", "linear_scan", "LinearScan", "FusedScan", "use_log", "use_compiled",
           "chunk_size", "LOG_CHUNK"]

State = tuple[Tensor, ...]

_FORM = os.environ.get("CELLSEARCH_SCAN", "compiled").strip().lower()
_LOG = _FORM == "log"
_COMPILED = _FORM not in ("chunked", "log")


def use_compiled(flag: bool | None = None) -> bool:
    """Whether the scan uses the compiled kernels where they apply (set with ``flag``; tests compare)."""
    global _COMPILED
    if flag is not None:
        _COMPILED = bool(flag)
    return _COMPILED


def use_log(flag: bool | None = None) -> bool:
    """Whether the forward solve uses the log-space form where it applies (set with ``flag``)."""
    global _LOG
    if flag is not None:
        _LOG = bool(flag)
    return _LOG


#: the log-space form's chunks are at most this long: its float32 error grows with |Σ log a| inside a
#: chunk (measured with a ~ U[0, 1], T = 999 and 4096: h off by 1.4e-5 at chunks of 64, the gradient of a
#: by 1.3e-5 at 16; below 1e-5 at 8)
LOG_CHUNK = 8


def chunk_size(steps: int, log: bool = False) -> int:
    """C = ⌈√T⌉ (C steps inside the chunks plus T/C across them is smallest there); at most
    :data:`LOG_CHUNK` for the log-space form."""
    c = max(1, math.ceil(math.sqrt(steps)))
    return min(c, LOG_CHUNK) if log else c


def _chunks(t: Tensor, k: int, c: int, fill: float) -> Tensor:
    """[T, ...] → [C, K, ...] (chunk position first, so a step inside all chunks is contiguous), the
    tail padded with ``fill``."""
    pad = k * c - t.shape[0]
    if pad:
        t = torch.cat([t, t.new_full((pad, *t.shape[1:]), fill)])
    return t.reshape(k, c, *t.shape[1:]).transpose(0, 1).contiguous()


def _local_sequential(a4: Tensor, b4: Tensor) -> tuple[Tensor, Tensor]:
    """Inside every chunk at once, from a zero state: the local states and the products of the a's."""
    hl, al = torch.empty_like(b4), torch.empty_like(a4)
    hl[0], al[0] = b4[0], a4[0]
    for j in range(1, a4.shape[0]):
        torch.addcmul(b4[j], a4[j], hl[j - 1], out=hl[j])
        torch.mul(al[j - 1], a4[j], out=al[j])
    return hl, al


def _local_log(a4: Tensor, b4: Tensor) -> tuple[Tensor, Tensor]:
    """The same, on logarithms (Heinsen 2023): L = cumsum log a; h = exp(L + logcumsumexp(log b − L))."""
    big_l = torch.cumsum(torch.log(a4), 0)
    hl = torch.exp(big_l + torch.logcumsumexp(torch.log(b4) - big_l, 0))
    return hl, torch.exp(big_l)


def _solve(a: Tensor, b: Tensor, h0: Tensor, log: bool) -> Tensor:
    """h_t = a_t⊙h_{t−1} + b_t for t = 1..T from h_0 (no autograd): [T, ...]."""
    steps = a.shape[0]
    if steps == 1:
        return torch.addcmul(b, a, h0.unsqueeze(0))
    c = chunk_size(steps, log)
    k = -(-steps // c)
    a4, b4 = _chunks(a, k, c, 1.0), _chunks(b, k, c, 0.0)
    hl, al = _local_log(a4, b4) if log else _local_sequential(a4, b4)
    carry = torch.empty_like(hl[0])            # [K, ...]: the state entering each chunk
    state = h0
    for j in range(k):
        carry[j] = state
        state = torch.addcmul(hl[-1, j], al[-1, j], state)
    out = torch.addcmul(hl, al, carry.unsqueeze(0))
    return out.transpose(0, 1).reshape(k * c, *a.shape[1:])[:steps]


class LinearScan(torch.autograd.Function):
    """h = scan(a, b, h0) with the reverse scan as its backward (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor, log: bool,  # type: ignore[override]
                compiled: bool) -> Tensor:
        h = scan_c.scan_forward(a, b, h0) if compiled else _solve(a, b, h0, log)
        ctx.save_for_backward(a, h, h0)
        ctx.compiled = compiled
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        if ctx.compiled:
            return (*scan_c.scan_backward(a, h, h0, grad_h), None, None)
        a_next = torch.cat([a[1:], torch.zeros_like(a[:1])])          # g_t = ∂ℓ/∂h_t + a_{t+1} g_{t+1}
        g = _solve(a_next.flip(0), grad_h.flip(0), torch.zeros_like(h0), False).flip(0)
        h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])
        return g * h_prev, g, a[0] * g[0], None, None


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, log: bool | None = None,
                compiled: bool | None = None) -> Tensor:
    """h_t = a_t⊙h_{t−1} + b_t over the leading axis of ``a``, ``b`` ([T, ...]) from ``h0`` ([...]),
    differentiable in all three. ``log``: the log-space forward (default :func:`use_log`), used only
    when every a and b is positive. ``compiled``: the C kernels where they serve (CPU, float32/float64;
    default :func:`use_compiled`), unless the log-space form was asked for."""
    log = use_log() if log is None else log
    compiled = (use_compiled() if compiled is None else compiled) and not log and a.dim() >= 1 \
        and scan_c.available(a, b, h0)
    if log:
        log = bool((a > 0).all()) and bool((b > 0).all())
    if compiled:
        shape = a.shape
        rows = (shape[0], 1, max(1, a[0].numel()))
        h = LinearScan.apply(a.reshape(rows), b.reshape(rows), h0.reshape(rows[1:]), False, True)
        return h.reshape(shape)
    return LinearScan.apply(a, b, h0, log, False)


def _run(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
    (h0,) = state
    steps, batch, n = x.shape[0], x.shape[1], cell.hidden_size
    xp = _linear(x.contiguous(), cell.weight_ih, cell.bias).reshape(steps * batch, -1)
    xs = cell.short_input(x)
    xs = xs.reshape(steps * batch, -1) if xs is not None else None
    a, b = cell.update.coefficients(cell.context(), xp, xs, None)
    h = linear_scan(a.reshape(steps, batch, n), b.reshape(steps, batch, n), h0)
    return h, (h[-1],)


def _scannable(cell: Any) -> str | None:
    """Why the cell's recurrence is not a linear one with input-only coefficients (None: it is)."""
    update = cell.update
    if not callable(getattr(update, "coefficients", None)) or update.n_states != 1:
        return f"update {update.name!r}: no linear recurrence with input-only coefficients"
    if cell.transition is not None:
        return "deep transition: the candidate may read h, no parallel scan"
    if "no_recurrence" not in cell.recurrence.provides:
        return f"recurrence {cell.recurrence.name!r}: the gates see h, no parallel scan"
    return None


def _form() -> str:
    if use_log():
        return "log-space or chunked"
    if use_compiled() and scan_c.library() is not None:
        return "compiled: one pass each way on the CPU in float32/float64, chunked elsewhere"
    return "chunked, O(√T) sequential steps"


def linear(cell: Any) -> Plan | str:
    """The parallel scan, for a cell whose update declares ``coefficients`` (h' = a(x)⊙h + b(x)) and whose
    candidate cannot read h (no deep transition). On the CPU the derived path's C loop is preferred
    where it runs (:func:`cellsearch.fast.paths.build_plan`; see :func:`_fused`)."""
    why = _scannable(cell)
    if why is not None:
        return why
    return Plan("fused", f"parallel scan of h_t = a_t⊙h_(t−1) + b_t ({_form()})", _run)


class FusedScan(torch.autograd.Function):
    """h = the minGRU / minLSTM recurrence from the input projection x [T, B, (k + 1)·n], gate math fused
    into the compiled scan (:mod:`cellsearch.fast.scan_c`); backward gives ∂x and ∂h0."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, h0: Tensor, kind: str, sat: str) -> Tensor:  # type: ignore[override]
        h = scan_c.fused_forward(kind, sat, x, h0)
        ctx.save_for_backward(x, h, h0)
        ctx.form = kind, sat
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor, Tensor, None, None]:  # type: ignore[override]
        x, h, h0 = ctx.saved_tensors
        gx, gh0 = scan_c.fused_backward(*ctx.form, x, h, h0, grad_h)
        return gx, gh0, None, None


_ONEDNN: list[bool] = []     # [whether oneDNN's linear runs here], decided on first use


def _onednn(x: Tensor, weight: Tensor) -> bool:
    """oneDNN's fp32 linear (``torch.ops.mkldnn._linear_pointwise``) for the projection: measured 2.1× the
    GEMM torch's ``addmm`` calls (MKL) on this project's AMD CPU at [32000, 256] × [256, 512]
    (docs/bench/MODERN.md). Float32 on the CPU only; probed once (a torch without it uses F.linear)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not _ONEDNN:
        try:
            probe = torch.ones(2, 3)
            ok = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                torch.ops.mkldnn._linear_pointwise(probe, probe[:1], None, "none", [], ""), torch.full((2, 1), 3.0))
        except (AttributeError, RuntimeError):
            ok = False
        _ONEDNN.append(ok)
    return _ONEDNN[0]


class OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b on 2-D x with oneDNN's forward; backward: ∂x = ∂y W (:func:`cellsearch.fast.fused.matmul`),
    ∂W = ∂yᵀ x and ∂b = Σ ∂y in one pass over ∂y (:func:`cellsearch.fast.fused.input_weight_grads`: the C
    product xᵀ·∂y with ∂y's column sums; MKL's ``mm`` of the transposed ∂y took 1.4–1.6 ms at
    [6400, 384]ᵀ·[6400, 32] on this AMD CPU)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        from .fused import input_weight_grads, matmul

        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad      # (∂b is not needed without a bias)
        gx = matmul(grad, weight) if need_x else None
        gw, gb = input_weight_grads(x, grad.contiguous(), None) if need_w or need_b else (None, None)
        return gx, gw if need_w else None, gb if need_b else None


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear on the last axis of a contiguous x, through oneDNN where :func:`_onednn` says so."""
    if not _onednn(x, weight):
        return F.linear(x, weight, bias)
    y = OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


def _projection(cell: Any, x: Tensor) -> Tensor:
    """W x + b for every step at once ([T, B, G·n]); for x that is a batch-first tensor seen time-major
    (how the stack passes it) the GEMM runs on the batch-first storage and the result is seen time-major
    too, so neither x nor the projection is copied."""
    xb = x.transpose(0, 1)
    if xb.is_contiguous():
        return _linear(xb, cell.weight_ih, cell.bias).transpose(0, 1)
    return _linear(x.contiguous(), cell.weight_ih, cell.bias)


def _fused_runner(kind: str, sat: str) -> Any:
    def run(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
        (h0,) = state
        if use_log() or not use_compiled() or not scan_c.available(x, h0, cell.weight_ih):
            return _run(cell, x, state)
        h = FusedScan.apply(_projection(cell, x), h0, kind, sat)
        return h, (h[-1].contiguous(),)

    return run


def _sat_form(cell: Any) -> str | None:
    """The candidate's saturation as the fused scan kernels know it (its declared ``scan_form``:
    ``identity`` or minGRU's ``g``), else None."""
    form = getattr(cell.saturation, "scan_form", None)
    return form if form in ("identity", "g") else None


def _fused(cell: Any, kind: str) -> Plan | str:
    why = _scannable(cell)
    if why is not None:
        return why
    if cell.k != scan_c.KINDS[kind] or (cell.gate.fused_ops() or {}).get("kind") != "sigmoid" \
            or getattr(cell, "short", None) in ("identity", "project"):
        return f"gate {cell.gate.name!r}: the fused {kind} scan runs the plain sigmoid gate only"
    sat = _sat_form(cell)
    if sat is None:
        return f"saturation {cell.saturation.name!r}: the fused {kind} scan runs identity or g only"
    if scan_c.library() is None:
        return f"fused {kind} scan: the C kernels are unavailable ({scan_c.build_error()})"
    return Plan("fused", f"parallel scan of h_t = a_t⊙h_(t−1) + b_t (compiled, {kind} gates/{sat} fused "
                "into one pass each way on the CPU in float32/float64; the generic scan elsewhere)",
                _fused_runner(kind, sat))


def mingru(cell: Any) -> Plan | str:
    """The compiled scan with minGRU's gate math fused (sigmoid z, identity or g candidate)."""
    return _fused(cell, "mingru")


def minlstm(cell: Any) -> Plan | str:
    """The compiled scan with minLSTM's normalized gates fused (sigmoid f, i; identity or g candidate)."""
    return _fused(cell, "minlstm")
