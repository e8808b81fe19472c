"""Depth primitives (Pascanu et al., "How to Construct Deep RNNs", 2014; PRIMITIVES.md §6).

The depth primitives, registered under role ``depth``, and the modules they add (:class:`Transition`
inside a cell's candidate path, :class:`DeepMLP` before or after the stack). The stack itself is
:class:`cellsearch.depth.StackedRNN`, one floor up (it composes cells).

| name | where | equations |
|---|---|---|
| stacked | between cells | h^(ℓ)_t = cell_ℓ(h^(ℓ−1)_t, h^(ℓ)_{t−1}), h^(0) = x |
| deep_transition | candidate path | z_1 = φ(a); z_j = φ(W_j z_{j−1} + b_j); pre = W_L z_{L−1} + b_L [+ W_s h] |
| deep_output | after the top layer | y_t = φ(V_L … φ(V_1 h_t)) before the task's readout |
| deep_input | before the first layer | x_t → φ(W_L … φ(W_1 x_t)) |
| residual | between equal-width layers | h^(ℓ)_t += h^(ℓ−1)_t |

φ = tanh. A :class:`~cellsearch.spec.DepthSpec` says which apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_primitive
from .base import Primitive

__all__ = ["Transition", "DeepMLP", "DepthPrimitive", "arrange"]


class DepthPrimitive(Primitive):
    """Base of depth primitives: a registered description of one way to add depth."""

    role = "depth"


@register_primitive
class Stacked(DepthPrimitive):
    """h^(ℓ)_t = cell_ℓ(h^(ℓ−1)_t, h^(ℓ)_{t−1})

    Stacked RNN (sRNN): layer ℓ reads layer ℓ−1's output at the same step; h^(0) = x; the output comes
    from the top layer. ``depth.layers`` layers, optional dropout between them (``depth.dropout``).
    """

    name = "stacked"


@register_primitive
class DeepTransition(DepthPrimitive):
    """pre = W_L φ(… φ(W_1 h + U x + b_1) …) + b_L [+ W_s h]

    Deep transition DT (and DT(S) with ``shortcut``): the cell's candidate path gets L − 1 =
    ``depth.transition_layers`` extra nonlinear layers per step:
    z_1 = φ(a) with a the candidate block's pre-activation (W_1 h_{t−1} + U x_t + b_1 for a vanilla cell);
    z_j = φ(W_j z_{j−1} + b_j); the candidate is act(W_L z_{L−1} + b_L [+ W_s h_{t−1}]), act being the
    cell's own candidate nonlinearity. The shortcut W_s h_{t−1} gives back a one-nonlinearity path.
    """

    name = "deep_transition"
    defaults: ClassVar[dict[str, Any]] = {"shortcut": False}


@register_primitive
class DeepOutput(DepthPrimitive):
    """y_t = φ(V_L … φ(V_1 h_t))

    Deep output DO: an MLP (``depth.output_layers`` layers of width n, φ = tanh) between the top state
    and the task's readout.
    """

    name = "deep_output"


@register_primitive
class DeepInput(DepthPrimitive):
    """x̂_t = φ(W_L … φ(W_1 x_t))

    Deep input: an MLP (``depth.input_layers`` layers of width n, φ = tanh) from x_t into the first cell.
    """

    name = "deep_input"


@register_primitive
class Residual(DepthPrimitive):
    """h^(ℓ)_t ← h^(ℓ)_t + h^(ℓ−1)_t

    Residual stacking (an extension to Pascanu et al.): between layers of equal width the layer's input
    is added to its output sequence (not to the recurrent state).
    """

    name = "residual"


class Transition(nn.Module):
    """The deep-transition MLP applied to a candidate pre-activation (see :class:`DeepTransition`)."""

    def __init__(self, hidden_size: int, layers: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(layers))
        self.shortcut = nn.Linear(hidden_size, hidden_size, bias=False) if shortcut else None

    def reset_parameters(self) -> None:
        bound = 1.0 / self.hidden_size**0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @torch.no_grad()
    def orthogonal_(self) -> None:
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight)
            layer.bias.zero_()
        if self.shortcut is not None:
            nn.init.orthogonal_(self.shortcut.weight)

    def candidate(self, pre: Tensor, h: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
        z = torch.tanh(pre)
        *hidden, last = self.layers
        for layer in hidden:
            z = torch.tanh(layer(z))
        out = F.linear(z, last.weight, last.bias)
        if self.shortcut is not None:
            out = torch.addmm(out, h, self.shortcut.weight.t())
        return act(out)


class DeepMLP(nn.Sequential):
    """``layers`` × (Linear → tanh), the first from ``in_size`` to ``width``."""

    def __init__(self, in_size: int, width: int, layers: int) -> None:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(in_size if i == 0 else width, width), nn.Tanh()]
        super().__init__(*mods)


def arrange(seq: Tensor, state: Any, layers: Any, input_mlp: Any = None, output_mlp: Any = None,
            dropout: Any = None, residual: bool = False) -> tuple[Tensor, tuple[Any, ...]]:
    """The depth arrangement of a stack, written once: deep input → the layers in order (each
    ``layer(seq, state_i) -> (out, final_i)`` over a time-major sequence; residual where a layer keeps
    the width; dropout between layers, not after the last) → deep output. Returns the top sequence and
    every layer's final state.

    :class:`cellsearch.depth.StackedRNN` runs it, and the standalone export writes this very function
    into the generated module (so it uses torch only and names nothing from cellsearch)."""
    if input_mlp is not None:
        seq = input_mlp(seq)
    finals = []
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        out, final = layer(seq, state[i] if state is not None else None)
        if residual and out.shape == seq.shape:
            out = out + seq
        finals.append(final)
        seq = dropout(out) if dropout is not None and i < last else out
    if output_mlp is not None:
        seq = output_mlp(seq)
    return seq, tuple(finals)
