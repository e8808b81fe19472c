"""A custom depth primitive: a learned per-channel gain on each layer's output (LayerScale).

A depth primitive says where it acts (its ``stage``: ``input``, ``cell``, ``join`` or ``output``) and returns
the module it adds there as a ``Part``: an attribute name (its weights are saved under it), a module class
written in torch only (the standalone export writes its source) and the class's arguments. A spec switches
it on by name, with its options: ``depth: {extra: {layer_scale: {gain: 0.1}}}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cellsearch.primitives.depth import DepthPrimitive, Part


class LayerScaleJoin(nn.Module):
    """h^(ℓ)_t ← g^(ℓ) ⊙ h^(ℓ)_t with one learned gain vector g^(ℓ) per layer, started at ``gain``."""

    def __init__(self, width: int, layers: int, gain: float) -> None:
        super().__init__()
        self.gains = nn.Parameter(torch.full((layers, width), float(gain)))

    def forward(self, out: Tensor, inp: Tensor, layer: int, top: bool) -> Tensor:
        return out * self.gains[layer]


class LayerScale(DepthPrimitive):
    """h^(ℓ)_t ← g^(ℓ) ⊙ h^(ℓ)_t

    LayerScale (Touvron et al. 2021, "Going deeper with Image Transformers") on a recurrent stack: each
    layer's output sequence is multiplied by a learned per-channel gain, initialised small (``gain``) so a
    deep stack starts close to its residual path. Acts after the residual connection and before the
    dropout between layers.
    """

    name = "layer_scale"
    stage = "join"
    order = 50  # the built-in residual is 0, the dropout between layers 100
    defaults: dict[str, Any] = {"gain": 0.1}

    def part(self, depth: Any, input_size: int, width: int) -> Part | None:
        return Part("layer_scale", LayerScaleJoin, (width, depth.layers, self.options["gain"]))
