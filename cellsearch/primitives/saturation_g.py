"""The positive activation g of minGRU / minLSTM's log-space form."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import register_primitive
from .saturation import Saturation

__all__ = ["GSaturation", "g"]


def g(v: Tensor) -> Tensor:
    """g(v) = v + ½ for v ≥ 0, σ(v) for v < 0 (continuous, increasing, always > 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


@register_primitive
class GSaturation(Saturation):
    """sat(v) = v + ½ (v ≥ 0),  σ(v) (v < 0)

    The positive activation of Feng et al. 2024 ("Were RNNs All We Needed?", appendix, log-space
    minGRU / minLSTM) [paper]: continuous at 0 (both sides give ½; the slope jumps from ¼ to 1),
    strictly positive, linear for v ≥ 0. Used on the candidate h̃ = g(W_h x + b_h) it keeps
    the state of a minGRU / minLSTM positive from a non-negative start, so the recurrence can be
    solved on logarithms. Provides ``positive`` (the scan's log-space mode needs it).
    """

    name = "g"
    provides = frozenset({"positive"})
    scan_form = "g"  # the compiled scans compute it in their fused passes

    def function(self) -> Callable[[Tensor], Tensor]:
        return g
