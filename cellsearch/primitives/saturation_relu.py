"""The ReLU saturation (IndRNN's activation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import register_primitive
from .saturation import Saturation

__all__ = ["ReLUSaturation"]


@register_primitive
class ReLUSaturation(Saturation):
    """sat(v) = max(v, 0)

    The rectifier, a non-saturating activation (IndRNN, Li et al. 2018, uses it with an element-wise
    recurrence: ``recurrence: diagonal``; with a full recurrent matrix this is the IRNN family of Le et
    al. 2015). Unbounded above: pair it with a recurrence whose gain is controlled.
    """

    name = "relu"

    def function(self) -> Callable[[Tensor], Tensor]:
        return torch.relu
