"""Recurrence primitives: the parametrization of the recurrent matrices U (PRIMITIVES.md §5).

A recurrence primitive owns the recurrent matrices of the R recurrent blocks of a cell and returns them
stacked, [R·n, n], once per sequence (never per step).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import register_primitive
from ..spec import SpecError
from .base import Primitive
from .orthogonal import METHODS, cayley_skew_, henaff_skew_, orthogonal_from_skew, skew_size

__all__ = ["Recurrence", "FreeRecurrence", "OrthogonalRecurrence"]


class Recurrence(Primitive, nn.Module):
    """Base class of recurrence primitives (an nn.Module owning the recurrent parameters)."""

    role = "recurrence"
    #: learning-rate multiplier of this primitive's parameters (see cellsearch.parameter_groups)
    lr_scale: float = 1.0

    def __init__(self, **options: Any) -> None:
        nn.Module.__init__(self)
        Primitive.__init__(self, **options)

    def bind(self, blocks: int, hidden_size: int) -> None:
        """Create the parameters of ``blocks`` recurrent n × n matrices."""
        self.blocks, self.hidden_size = blocks, hidden_size

    def matrix(self) -> Tensor:
        """The recurrent matrices [U_1; …; U_R] stacked: [R·n, n]."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register_primitive
class FreeRecurrence(Recurrence):
    """U free

    Every recurrent matrix is an unconstrained n × n parameter (the standard parametrization);
    initialised ~ U(−1/√n, 1/√n) like PyTorch's RNNs.
    """

    name = "free"
    #: a plain recurrent matrix ``weight`` that a weight init may set (``init: identity``)
    provides = frozenset({"recurrent_matrix"})

    def bind(self, blocks: int, hidden_size: int) -> None:
        super().bind(blocks, hidden_size)
        self.weight = nn.Parameter(torch.empty(blocks * hidden_size, hidden_size))

    def matrix(self) -> Tensor:
        return self.weight

    def reset_parameters(self) -> None:
        bound = 1.0 / self.hidden_size**0.5
        nn.init.uniform_(self.weight, -bound, bound)


@register_primitive
class OrthogonalRecurrence(Recurrence):
    """U = exp(A − Aᵀ)  (or Cayley (I + S)⁻¹(I − S))

    Orthogonal recurrence (as in asRNN, Nguyen-Duy et al. 2023; PRIMITIVES.md §5): each recurrent matrix
    is B = exp(S) with S = A − Aᵀ skew-symmetric, A's strict upper triangle trainable (n(n−1)/2 free
    parameters per block); ``method: cayley`` uses B = (I + S)⁻¹(I − S) instead. Differentiable through
    torch.linalg.matrix_exp / solve; computed once per sequence.

    Options: ``method`` (expm | cayley); ``skew_init`` (henaff: 2 × 2 rotation blocks with angles
    U(−π, π) [code]; cayley: the scoRNN-style blocks [code]; zero: B = I); ``lr_scale`` (learning-rate
    multiplier of the skew parameters; asRNN trains them 10× slower, lr_scale 0.1).
    """

    name = "orthogonal"
    defaults: ClassVar[dict[str, Any]] = {"method": "expm", "skew_init": "henaff", "lr_scale": 1.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["method"] not in METHODS:
            raise SpecError("cell.options.recurrence.method", self.options["method"], f"one of {list(METHODS)}")
        if self.options["skew_init"] not in ("henaff", "cayley", "zero"):
            raise SpecError("cell.options.recurrence.skew_init", self.options["skew_init"],
                            "one of ['cayley', 'henaff', 'zero']")
        self.lr_scale = float(self.options["lr_scale"])

    def bind(self, blocks: int, hidden_size: int) -> None:
        super().bind(blocks, hidden_size)
        self.skew = nn.Parameter(torch.zeros(blocks, skew_size(hidden_size)))

    def matrix(self) -> Tensor:
        n = self.hidden_size
        return orthogonal_from_skew(self.skew, n, self.options["method"]).reshape(self.blocks * n, n)

    def reset_parameters(self) -> None:
        style = self.options["skew_init"]
        if style == "henaff":
            henaff_skew_(self.skew.data, self.hidden_size)
        elif style == "cayley":
            cayley_skew_(self.skew.data, self.hidden_size)
        else:
            self.skew.data.zero_()
