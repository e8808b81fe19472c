"""Saturation primitives: the squashing of the new state (PRIMITIVES.md §1, §2, §5).

Where it acts: vanilla h' = sat(a); LSTM h' = o⊙sat(c'); GRU / MGU the candidate ĥ = sat(·); STAR the
outer squashing h' = sat((1 − k)⊙h + k⊙z). A saturation primitive returns, once per sequence, the
function applied at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import register_primitive
from ..spec import SpecError
from .base import Primitive
from .orthogonal import METHODS, orthogonal_from_skew, skew_size

__all__ = ["Saturation", "TanhSaturation", "IdentitySaturation", "AdaptiveSaturation"]


class Saturation(Primitive, nn.Module):
    """Base class of saturation primitives (an nn.Module: some own parameters)."""

    role = "saturation"
    lr_scale: float = 1.0
    #: The element-wise function the hand-written fused loops apply for it (``tanh`` or ``identity``),
    #: or None: those loops cannot run it, and a cell with it takes a kernel it owns or the derived path.
    fused: ClassVar[str | None] = None
    #: The candidate function the compiled minGRU / minLSTM scans apply for it (``identity`` or ``g``), or
    #: None: those scans cannot run it (:mod:`cellsearch.fast.scan`).
    scan_form: ClassVar[str | None] = None

    def __init__(self, **options: Any) -> None:
        nn.Module.__init__(self)
        Primitive.__init__(self, **options)

    def bind(self, hidden_size: int) -> None:
        self.hidden_size = hidden_size

    def reset_parameters(self) -> None:
        """Initialise own parameters (none by default)."""

    def function(self) -> Callable[[Tensor], Tensor]:
        raise NotImplementedError


@register_primitive
class TanhSaturation(Saturation):
    """sat(v) = tanh(v)

    The standard squashing.
    """

    name = "tanh"
    fused = "tanh"

    def function(self) -> Callable[[Tensor], Tensor]:
        return torch.tanh


@register_primitive
class IdentitySaturation(Saturation):
    """sat(v) = v

    No squashing (a linear state path; STAR without its outer tanh, as in convSTAR [code]).
    """

    name = "identity"
    fused = "identity"
    scan_form = "identity"

    def function(self) -> Callable[[Tensor], Tensor]:
        return _identity


def _identity(v: Tensor) -> Tensor:
    return v


@register_primitive
class AdaptiveSaturation(Saturation):
    """sat(v) = W_f⁻¹ tanh(W_f v),  W_f = U_f D_f,  applied as D_f⁻¹ U_fᵀ tanh(U_f D_f v)

    Adaptive saturation (asRNN, Nguyen-Duy et al. 2023; PRIMITIVES.md §5): U_f orthogonal (exp of a
    skew-symmetric matrix, or Cayley), D_f = diag(|s| + ε). The inverse is never computed numerically:
    W_f⁻¹ = D_f⁻¹ U_fᵀ. D_f → 0 gives the identity (a linear orthogonal RNN when the recurrence is
    orthogonal); D_f = U_f = I gives tanh. Needs a single-state update.

    Init [code]: U_f = I (zero skew), s ~ U[s_low, s_high]. With s_low = s_high = 0 the gradient of |s|
    is 0 and s never moves, so s_low must be > 0. [uncertain] the published range of s is not confirmed;
    the defaults (0.5, 1.5) are ours. Options: ``method`` (expm | cayley), ``s_low``, ``s_high``, ``eps``.
    Free parameters: n(n−1)/2 + n.
    """

    name = "adaptive"
    requires = frozenset({"single_state"})
    kernels = ("cellsearch.fast.hand:adaptive",)
    defaults: ClassVar[dict[str, Any]] = {"method": "expm", "s_low": 0.5, "s_high": 1.5, "eps": 1e-3}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["method"] not in METHODS:
            raise SpecError("cell.options.saturation.method", o["method"], f"one of {list(METHODS)}")
        if not 0 < o["s_low"] <= o["s_high"]:
            raise SpecError("cell.options.saturation.s_low", o["s_low"], "a number with 0 < s_low <= s_high")

    def bind(self, hidden_size: int) -> None:
        super().bind(hidden_size)
        self.skew = nn.Parameter(torch.zeros(skew_size(hidden_size)))
        self.s = nn.Parameter(torch.empty(hidden_size))

    def reset_parameters(self) -> None:
        self.skew.data.zero_()
        self.s.data.uniform_(float(self.options["s_low"]), float(self.options["s_high"]))

    def orthogonal(self) -> Tensor:
        """U_f."""
        return orthogonal_from_skew(self.skew, self.hidden_size, self.options["method"])

    def scale(self) -> Tensor:
        """The diagonal of D_f: |s| + ε."""
        return self.s.abs() + float(self.options["eps"])

    def function(self) -> Callable[[Tensor], Tensor]:
        u, d = self.orthogonal(), self.scale()

        def sat(v: Tensor) -> Tensor:  # rows: W_f v = (v⊙d) U_fᵀ; W_f⁻¹ y = (y U_f) / d
            return torch.tanh((v * d) @ u.t()) @ u / d

        return sat
