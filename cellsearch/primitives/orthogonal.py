"""Orthogonal matrices from free skew-symmetric parameters (PRIMITIVES.md §5).

A skew-symmetric S = A − Aᵀ is stored by its strict upper triangle (n(n−1)/2 free numbers, so
:func:`cellsearch.count_parameters` counts exactly the free parameters). Two maps give an orthogonal
matrix: the matrix exponential B = exp(S) (:func:`expm`, differentiable) and the Cayley map
B = (I + S)⁻¹(I − S).

Why :func:`expm` is not simply ``torch.linalg.matrix_exp``: torch's gradient of the exponential
exponentiates the 2n × 2n block matrix [[Sᵀ, G], [0, Sᵀ]], each of its products costing eight n × n
ones (n = 256, 2 threads: 2.8 ms forward, ~23 ms forward + backward; n = 128: 0.54 ms, 4.2–4.8 ms).
:func:`expm` evaluates a truncated Taylor series with scaling and squaring in n × n products that
autograd differentiates (the gradient is the exact gradient of the approximant, whose truncation error
and that of its derivative are below the dtype's unit roundoff), so the backward costs two products per
forward product (n = 128: 1.2 ms forward + backward). With a gradient to record the series is also the
value, within rounding of ``torch.linalg.matrix_exp``'s (float32: a few units in the last place; it used
to return torch's value plus the series' derivative, an extra 0.54 ms a call at n = 128 for equality bit
for bit). Without one (evaluation, inference) only ``torch.linalg.matrix_exp`` runs, so an evaluated
model and its exported module, whose traced graphs hold that op (one op with no value-dependent control
flow: the number of squarings; under ``make_fx``, ``torch.compile``, fake tensors), compute the same
matrix. The derived path runs its traced prologue with this function in that op's place
(:func:`cellsearch.registry.eager_for`), so the reference loop, the fast paths and the derived path
compute the same matrix in training and in evaluation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import eager_for

__all__ = ["skew_size", "skew_matrix", "expm", "orthogonal_from_skew", "henaff_skew_", "cayley_skew_"]

METHODS = ("expm", "cayley")


def skew_size(n: int) -> int:
    """Number of free parameters of an n × n skew-symmetric matrix."""
    return n * (n - 1) // 2


def skew_matrix(v: Tensor, n: int) -> Tensor:
    """S with strict upper triangle ``v`` ([..., n(n−1)/2]) and S = −Sᵀ: [..., n, n]."""
    rows, cols = torch.triu_indices(n, n, offset=1, device=v.device)
    upper = v.new_zeros(*v.shape[:-1], n, n)
    upper[..., rows, cols] = v
    return upper - upper.transpose(-1, -2)


#: itemsize -> (p, q, θ): Taylor degree m = p(q + 1) − 1 evaluated by Paterson–Stockmeyer (p − 1 products
#: for X², …, X^p, q Horner products in X^p), used where ‖X‖₂ ≤ θ, with θ the largest value at which both
#: Σ_{k>m} θ^k/k! (the value's truncation) and Σ_{k>m} kθ^(k−1)/k! (its derivative's) are at most the
#: unit roundoff (2⁻⁵³: m = 15, θ = 0.553; 2⁻²⁴: m = 8, θ = 0.467); θ < 1 also keeps the cancellation
#: in the series of a norm-1 result small. S/2^k is scaled into that ball and the result squared k times.
_TAYLOR = {8: (4, 3, 0.553), 4: (3, 2, 0.467)}


def _traced(s: Tensor) -> bool:
    """Whether ``s`` is being traced or transformed (fake or proxy tensors, make_fx, torch.compile,
    torch.jit, functorch transforms such as vmap): where the number of squarings cannot be read."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    functorch = getattr(torch._C, "_are_functorch_transforms_active", None)
    return (type(s) is not Tensor or get_proxy_mode() is not None or torch.jit.is_tracing()
            or torch.compiler.is_compiling() or (functorch is not None and bool(functorch())))


@eager_for(torch.ops.aten.linalg_matrix_exp.default)
def expm(s: Tensor) -> Tensor:
    """exp(S) for square matrices ``s`` ([..., n, n]; skew-symmetric here): with a gradient to record, a
    scaled and squared Taylor series in n × n products, differentiated by autograd (see the module
    docstring); ``torch.linalg.matrix_exp`` without one (inference, evaluation: the exported module's
    value bit for bit), under tracing and for dtypes other than float32/float64."""
    if _traced(s) or s.dtype not in (torch.float32, torch.float64) or s.numel() == 0 \
            or not (torch.is_grad_enabled() and s.requires_grad):
        return torch.linalg.matrix_exp(s)
    return _series(s)


def _series(s: Tensor) -> Tensor:
    """The scaled and squared Taylor series of exp(S) (``_TAYLOR``), in differentiable n × n products."""
    p, q, theta = _TAYLOR[s.element_size()]
    n = s.shape[-1]
    with torch.no_grad():                                   # ‖S‖₂ ≤ √(‖S‖₁ ‖S‖∞)
        a = s.abs()
        norm = math.sqrt(float(a.sum(-2).amax()) * float(a.sum(-1).amax()))
    k = max(0, math.ceil(math.log2(norm / theta))) if norm > theta else 0
    x = s * (0.5 ** k)
    powers = [x]
    for _ in range(p - 1):
        powers.append(powers[-1] @ x)                       # X, X², …, X^p
    eye = torch.eye(n, dtype=s.dtype, device=s.device)

    def chunk(j: int) -> Tensor:                            # Σ_{i<p} X^i / (jp + i)!, X⁰ = I
        out = eye * (1.0 / math.factorial(j * p))
        for i in range(1, p):
            out = out + powers[i - 1] * (1.0 / math.factorial(j * p + i))
        return out

    out = chunk(q)
    for j in range(q - 1, -1, -1):                         # Horner in X^p over the chunks
        out = torch.matmul(out, powers[-1]) + chunk(j)
    for _ in range(k):
        out = out @ out
    return out


def orthogonal_from_skew(v: Tensor, n: int, method: str = "expm") -> Tensor:
    """exp(S) or the Cayley transform (I + S)⁻¹(I − S) of S = skew_matrix(v, n)."""
    s = skew_matrix(v, n)
    if method == "expm":
        return expm(s)
    if method == "cayley":
        eye = torch.eye(n, dtype=v.dtype, device=v.device).expand_as(s)
        return torch.linalg.solve(eye + s, eye - s)
    raise ValueError(f"unknown orthogonal map {method!r}; expected one of {list(METHODS)}")


def _pair_positions(n: int) -> Tensor:
    """Indices into the strict upper triangle (row-major) of the entries (2i, 2i + 1): row r starts at
    r·n − r(r + 1)/2 and (r, r + 1) is its first entry. Plain integers, so the init traces."""
    return torch.tensor([r * n - r * (r + 1) // 2 for r in range(0, n - 1, 2)], dtype=torch.long)


@torch.no_grad()
def henaff_skew_(v: Tensor, n: int) -> Tensor:
    """Block-diagonal 2 × 2 skew blocks with angles θ ~ U(−π, π) (Henaff et al. 2016): exp(S) rotates."""
    v.zero_()
    pos = _pair_positions(n)
    v[..., pos] = torch.empty(*v.shape[:-1], pos.numel(), dtype=v.dtype).uniform_(-math.pi, math.pi)
    return v


@torch.no_grad()
def cayley_skew_(v: Tensor, n: int) -> Tensor:
    """Block-diagonal 2 × 2 skew blocks s = −√((1 − cos t)/(1 + cos t)), t ~ U[0, π/2] (Helfrich et al.)."""
    v.zero_()
    pos = _pair_positions(n)
    t = torch.empty(*v.shape[:-1], pos.numel(), dtype=v.dtype).uniform_(0.0, math.pi / 2)
    v[..., pos] = -torch.sqrt((1 - torch.cos(t)) / (1 + torch.cos(t)))
    return v
