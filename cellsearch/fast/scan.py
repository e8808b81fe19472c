"""Parallel scan: whole-sequence training for updates whose recurrence is linear in h with input-only
coefficients (minGRU, minLSTM, RG-LRU; PRIMITIVES.md-style math in each primitive's docstring).

Such an update (:class:`~cellsearch.primitives.linear.LinearUpdate`) writes its math once, as
``coefficients(ctx, xp, xs, h) -> (a, b)``; its step is h_t = a_t⊙h_{t−1} + b_t. Because a_t and b_t
do not depend on h, this kernel (declared in the update's ``kernels``) evaluates them for all T steps
at once (one batched call of the same function: every gate and saturation is row-wise) and solves

    h_t = A_t⊙h_0 + Σ_{s≤t} (Π_{s<r≤t} a_r)⊙b_s,      A_t = Π_{r≤t} a_r

without a loop over T. Two forms of the forward solve, both over chunks of C ≈ √T steps (a loop of C
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
  Select it with :func:`use_log` or ``CELLSEARCH_SCAN=log``.

The backward is the same kind of recurrence run in reverse (:class:`LinearScan`): with g_t = ∂L/∂h_t
accumulated from the future, g_t = ∂ℓ/∂h_t + a_{t+1}⊙g_{t+1}; then ∂L/∂b_t = g_t,
∂L/∂a_t = g_t⊙h_{t−1}, ∂L/∂h_0 = a_1⊙g_1 — solved by the chunked scan, so only a and h are kept.
Autograd carries the gradients of a and b back into the gates and the input GEMM. Like the other fast
paths, the backward is not itself differentiable (double backward raises). Works on any device
(torch ops only). Tested against the sequential loop (tests/test_modern.py: |Δ| < 1e-5 in float32 and
float64, T from 1 to 4096).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .paths import Plan

__all__ = ["linear", "linear_scan", "LinearScan", "use_log", "chunk_size", "LOG_CHUNK"]

State = tuple[Tensor, ...]

_LOG = os.environ.get("CELLSEARCH_SCAN", "chunked").strip().lower() == "log"


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
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor, log: bool) -> Tensor:  # type: ignore[override]
        h = _solve(a, b, h0, log)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        a, h, h0 = ctx.saved_tensors
        a_next = torch.cat([a[1:], torch.zeros_like(a[:1])])          # g_t = ∂ℓ/∂h_t + a_{t+1} g_{t+1}
        g = _solve(a_next.flip(0), grad_h.flip(0), torch.zeros_like(h0), False).flip(0)
        h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])
        return g * h_prev, g, a[0] * g[0], None


def linear_scan(a: Tensor, b: Tensor, h0: Tensor, log: bool | None = None) -> Tensor:
    """h_t = a_t⊙h_{t−1} + b_t over the leading axis of ``a``, ``b`` ([T, ...]) from ``h0`` ([...]),
    differentiable in all three. ``log``: the log-space forward (default :func:`use_log`), used only
    when every a and b is positive."""
    log = use_log() if log is None else log
    if log:
        log = bool((a > 0).all()) and bool((b > 0).all())
    return LinearScan.apply(a, b, h0, log)


def _run(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
    (h0,) = state
    steps, batch, n = x.shape[0], x.shape[1], cell.hidden_size
    xp = F.linear(x, cell.weight_ih, cell.bias).reshape(steps * batch, -1)
    xs = cell.short_input(x)
    xs = xs.reshape(steps * batch, -1) if xs is not None else None
    a, b = cell.update.coefficients(cell.context(), xp, xs, None)
    h = linear_scan(a.reshape(steps, batch, n), b.reshape(steps, batch, n), h0)
    return h, (h[-1],)


def linear(cell: Any) -> Plan | str:
    """The parallel scan, for a cell whose update declares ``coefficients`` (h' = a(x)⊙h + b(x)) and whose
    candidate cannot read h (no deep transition)."""
    update = cell.update
    if not callable(getattr(update, "coefficients", None)) or update.n_states != 1:
        return f"update {update.name!r}: no linear recurrence with input-only coefficients"
    if cell.transition is not None:
        return "deep transition: the candidate may read h, no parallel scan"
    if "no_recurrence" not in cell.recurrence.provides:
        return f"recurrence {cell.recurrence.name!r}: the gates see h, no parallel scan"
    form = "log-space or chunked" if use_log() else "chunked"
    return Plan("fused", f"parallel scan of h_t = a_t⊙h_(t−1) + b_t ({form}, O(√T) sequential steps)", _run)
