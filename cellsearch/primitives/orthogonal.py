"""Orthogonal matrices from free skew-symmetric parameters (PRIMITIVES.md §5).

A skew-symmetric S = A − Aᵀ is stored by its strict upper triangle (n(n−1)/2 free numbers, so
:func:`cellsearch.count_parameters` counts exactly the free parameters). Two maps give an orthogonal
matrix: the matrix exponential B = exp(S) (torch.linalg.matrix_exp, differentiable) and the Cayley map
B = (I + S)⁻¹(I − S).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["skew_size", "skew_matrix", "orthogonal_from_skew", "henaff_skew_", "cayley_skew_"]

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


def orthogonal_from_skew(v: Tensor, n: int, method: str = "expm") -> Tensor:
    """exp(S) or the Cayley transform (I + S)⁻¹(I − S) of S = skew_matrix(v, n)."""
    s = skew_matrix(v, n)
    if method == "expm":
        return torch.linalg.matrix_exp(s)
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
