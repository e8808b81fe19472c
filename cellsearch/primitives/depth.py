"""Depth primitives (Pascanu et al., "How to Construct Deep RNNs", 2014; PRIMITIVES.md §6).

The depth primitives, registered under role ``depth``: each one reads its fields of a
:class:`~cellsearch.spec.DepthSpec`, says where it acts (its ``stage``) and which module it adds there
(a :class:`Part`: a torch-only module class and its arguments). :func:`arrange` runs the stages, written
once; :class:`cellsearch.depth.StackedRNN` (one floor up: it composes cells) builds the parts of every
registered depth primitive, and the standalone export writes the parts' classes and ``arrange`` into the
generated module. A plugin's depth primitive takes part the same way.

| name | stage | field(s) | equations |
|---|---|---|---|
| stacked | join | layers, dropout | h^(ℓ)_t = cell_ℓ(h^(ℓ−1)_t, h^(ℓ)_{t−1}), h^(0) = x; dropout between layers |
| deep_transition | cell | transition, transition_layers | z_j = φ(W_j z_{j−1} + b_j); pre=W_L z_{L−1} + b_L [+W_s h] |
| deep_output | output | output_layers | y_t = φ(V_L … φ(V_1 h_t)) before the task's readout |
| deep_input | input | input_layers | x_t → φ(W_L … φ(W_1 x_t)) |
| residual | join | residual | h^(ℓ)_t += h^(ℓ−1)_t between equal-width layers |

φ = tanh. Stages: ``input`` (on the sequence before the first layer, to the hidden width), ``cell`` (inside
every cell's candidate path: a module with ``candidate(pre, h, act)``), ``join`` (on each layer's output
sequence, given the layer's input, its index and whether it is the top layer), ``output`` (after the top
layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import get_primitive, list_primitives, register_primitive
from ..spec import DepthSpec, SpecError
from .base import Primitive

__all__ = ["Transition", "DeepMLP", "Residual", "LayerDropout", "DepthPrimitive", "Part", "STAGES",
           "arrange", "depth_parts"]

#: where a depth primitive acts, in the order :func:`arrange` runs them
STAGES: tuple[str, ...] = ("input", "cell", "join", "output")


@dataclass(frozen=True)
class Part:
    """A module a depth primitive adds: ``attribute`` (its name in the model, hence in the weights' names),
    its class (torch only, so the export can write its source) and its constructor arguments."""

    attribute: str
    cls: type[nn.Module]
    args: tuple[Any, ...] = ()

    def build(self) -> nn.Module:
        return self.cls(*self.args)

    def call_source(self) -> str:
        """The constructor call, as the exported module writes it."""
        return f"{self.cls.__name__}({', '.join(repr(a) for a in self.args)})"


class DepthPrimitive(Primitive):
    """Base of depth primitives: one way to add depth, read from a :class:`~cellsearch.spec.DepthSpec`.

    Subclasses set ``stage`` (one of :data:`STAGES`) and ``order`` (among primitives of the same stage,
    lower first) and override :meth:`part`."""

    role = "depth"
    stage: ClassVar[str] = "join"
    order: ClassVar[int] = 0

    @classmethod
    def options_key(cls) -> str:
        return f"depth.extra.{cls.name}"

    def part(self, depth: DepthSpec, input_size: int, width: int) -> Part | None:
        """The module this primitive adds for ``depth`` (None: it does not apply). ``input_size``: the
        width of what the stage receives (the data for ``input``, the hidden width elsewhere); ``width``:
        the hidden width."""
        return None


@register_primitive
class Stacked(DepthPrimitive):
    """h^(ℓ)_t = cell_ℓ(h^(ℓ−1)_t, h^(ℓ)_{t−1})

    Stacked RNN (sRNN): layer ℓ reads layer ℓ−1's output at the same step; h^(0) = x; the output comes
    from the top layer. ``depth.layers`` layers, dropout between them (``depth.dropout``; its part).
    """

    name = "stacked"
    stage = "join"
    order = 100  # after residual: dropout acts on the layer's output as the next layer reads it

    def part(self, depth: DepthSpec, input_size: int, width: int) -> Part | None:
        return Part("dropout", LayerDropout, (depth.dropout,)) if depth.dropout > 0 and depth.layers > 1 else None


@register_primitive
class DeepTransition(DepthPrimitive):
    """pre = W_L φ(… φ(W_1 h + U x + b_1) …) + b_L [+ W_s h]

    Deep transition DT (``depth.transition: deep``) and DT(S) (``deep_shortcut``): the cell's candidate
    path gets L − 1 = ``depth.transition_layers`` extra nonlinear layers per step:
    z_1 = φ(a) with a the candidate block's pre-activation (W_1 h_{t−1} + U x_t + b_1 for a vanilla cell);
    z_j = φ(W_j z_{j−1} + b_j); the candidate is act(W_L z_{L−1} + b_L [+ W_s h_{t−1}]), act being the
    cell's own candidate nonlinearity. The shortcut W_s h_{t−1} gives back a one-nonlinearity path.
    """

    name = "deep_transition"
    stage = "cell"

    def part(self, depth: DepthSpec, input_size: int, width: int) -> Part | None:
        if depth.transition == "none":
            return None
        return Part("transition", Transition, (width, depth.transition_layers, depth.transition == "deep_shortcut"))


@register_primitive
class DeepOutput(DepthPrimitive):
    """y_t = φ(V_L … φ(V_1 h_t))

    Deep output DO: an MLP (``depth.output_layers`` layers of width n, φ = tanh) between the top state
    and the task's readout.
    """

    name = "deep_output"
    stage = "output"

    def part(self, depth: DepthSpec, input_size: int, width: int) -> Part | None:
        return Part("output_mlp", DeepMLP, (input_size, width, depth.output_layers)) if depth.output_layers else None


@register_primitive
class DeepInput(DepthPrimitive):
    """x̂_t = φ(W_L … φ(W_1 x_t))

    Deep input: an MLP (``depth.input_layers`` layers of width n, φ = tanh) from x_t into the first cell.
    """

    name = "deep_input"
    stage = "input"

    def part(self, depth: DepthSpec, input_size: int, width: int) -> Part | None:
        return Part("input_mlp", DeepMLP, (input_size, width, depth.input_layers)) if depth.input_layers else None


@register_primitive
class ResidualStacking(DepthPrimitive):
    """h^(ℓ)_t ← h^(ℓ)_t + h^(ℓ−1)_t

    Residual stacking (an extension to Pascanu et al.): between layers of equal width the layer's input
    is added to its output sequence (not to the recurrent state).
    """

    name = "residual"
    stage = "join"
    order = 0

    def part(self, depth: DepthSpec, input_size: int, width: int) -> Part | None:
        return Part("residual", Residual) if depth.residual else None


def depth_parts(depth: DepthSpec, input_size: int, width: int, stage: str) -> list[Part]:
    """The parts the depth primitives add at ``stage`` for ``depth``, in the stage's order: the built-in ones
    (switched on by the spec's fields) and those ``depth.extra`` names (a plugin's). ``input_size``: what
    the stage receives (see :meth:`DepthPrimitive.part`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown depth stage {stage!r}; expected one of {list(STAGES)}")
    fielded = _check_extra(depth)
    names = [n for n in list_primitives("depth") if n in fielded or n in depth.extra]  # a plugin's: when named
    prims = [get_primitive("depth", name) for name in names]
    prims = sorted((p for p in prims if p.stage == stage), key=lambda p: (p.order, p.name))
    parts = [part for p in prims
             if (part := p(**depth.options_for(p.name)).part(depth, input_size, width)) is not None]
    seen = [p.attribute for p in parts]
    if len(set(seen)) != len(seen):
        raise ValueError(f"depth primitives at stage {stage!r} add modules of the same name: {seen}")
    return parts


def _check_extra(depth: DepthSpec) -> set[str]:
    """``depth.extra`` names registered depth primitives that no field of the spec switches on; returns the
    names of those the fields switch on."""
    fielded = {f.metadata["primitive"] for f in fields(DepthSpec) if "primitive" in f.metadata}
    allowed = [n for n in list_primitives("depth") if n not in fielded]
    for name in depth.extra:
        if name not in allowed:
            raise SpecError(f"depth.extra.{name}", name,
                            f"a registered depth primitive that no depth field switches on: {allowed or 'none'}")
    return fielded


# -- the modules the parts build: torch only (the export writes their source) -------------------------
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
    """``layers`` × (Linear → tanh), the first from ``in_size`` to ``width``.

    float32 on the CPU, for at least ``DNN_MIN`` multiply-adds a layer, each layer is one oneDNN linear
    with the tanh fused into it (``torch.ops.mkldnn._linear_pointwise``; MKL's sgemm behind ``nn.Linear``
    takes a slow path on AMD CPUs) and a backward of three oneDNN products (:class:`DeepMLP.TanhLinear`);
    the same values as the modules in sequence, to float rounding. Torch only: the export writes this
    class as it is."""

    #: smaller products stay on nn.Linear (oneDNN's cost per call dominates)
    DNN_MIN = 1 << 21

    def __init__(self, in_size: int, width: int, layers: int) -> None:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(in_size if i == 0 else width, width), nn.Tanh()]
        super().__init__(*mods)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if self.on_dnn(x):
                return self.dnn_forward(x)
        for module in self:
            x = module(x)
        return x

    @torch.jit.unused
    def on_dnn(self, x: Tensor) -> bool:
        """Whether the layers run on oneDNN (see the class docstring); never while traced or compiled."""
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling() \
                or getattr(torch.compiler, "is_exporting", lambda: False)():
            return False
        mods = list(self)
        linears = mods[0::2]
        if not all(type(m) is nn.Linear for m in linears) or not all(type(m) is nn.Tanh for m in mods[1::2]):
            return False
        return DeepMLP.dnn(x, linears)

    @torch.jit.unused
    def dnn_forward(self, x: Tensor) -> Tensor:
        for m in list(self)[0::2]:
            x = DeepMLP.TanhLinear.apply(x, m.weight, m.bias)
        return x

    @staticmethod
    def dnn(x: Tensor, linears: list[nn.Module]) -> bool:
        """Whether oneDNN runs these layers on ``x`` (float32 on the CPU, large enough, not autocast)."""
        op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
        rows = x.numel() // max(1, x.shape[-1])
        return (op is not None and torch.backends.mkldnn.is_available() and x.device.type == "cpu"
                and x.dtype == torch.float32 and all(m.weight.dtype == torch.float32 for m in linears)
                and not torch.is_autocast_enabled("cpu")
                and all(rows * m.weight.shape[0] * m.weight.shape[1] >= DeepMLP.DNN_MIN for m in linears))

    class TanhLinear(torch.autograd.Function):
        """tanh(x wᵀ + b) on oneDNN (x [..., in]), and its gradients: ∂z = ∂y (1 − y²), ∂x = ∂z w,
        ∂w = ∂zᵀ x, ∂b = Σ ∂z (not itself differentiable twice)."""

        @staticmethod
        def forward(ctx, x, w, b):  # type: ignore[no-untyped-def,override]
            lin = torch.ops.mkldnn._linear_pointwise
            x2 = x.reshape(-1, x.shape[-1]).contiguous()
            y = lin(x2, w.contiguous(), b.contiguous(), "tanh", [], "")
            ctx.save_for_backward(x2, w, y)
            return y.view(*x.shape[:-1], w.shape[0])

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, dy):  # type: ignore[no-untyped-def,override]
            lin = torch.ops.mkldnn._linear_pointwise
            x2, w, y = ctx.saved_tensors
            dz = torch.ops.aten.tanh_backward(dy.reshape(y.shape), y)
            dx = dw = db = None
            if ctx.needs_input_grad[0]:
                dx = lin(dz, w.t().contiguous(), None, "none", [], "").view(*dy.shape[:-1], w.shape[1])
            if ctx.needs_input_grad[1]:
                dw = lin(dz.t(), x2.t(), None, "none", [], "")
            if ctx.needs_input_grad[2]:
                db = dz.sum(0)
            return dx, dw, db


class Residual(nn.Module):
    """A join: the layer's input added to its output sequence where the widths agree."""

    def forward(self, out: Tensor, inp: Tensor, layer: int, top: bool) -> Tensor:
        return out + inp if out.shape == inp.shape else out


class LayerDropout(nn.Dropout):
    """A join: dropout on a layer's output sequence, except the top layer's (an ``nn.Dropout``, so code
    that finds a model's dropout modules finds it)."""

    def forward(self, out: Tensor, inp: Tensor, layer: int, top: bool) -> Tensor:  # type: ignore[override]
        return out if top else F.dropout(out, self.p, self.training)


def arrange(seq: Tensor, state: Any, layers: Sequence[Any], before: Sequence[Any] = (),
            joins: Sequence[Any] = (), after: Sequence[Any] = ()) -> tuple[Tensor, tuple[Any, ...]]:
    """The depth arrangement of a stack, written once: the ``before`` modules on the time-major
    sequence → the layers in order (each ``layer(seq, state_i) -> (out, final_i)``), every layer's output
    passed through the ``joins`` (``join(out, inp, i, top)``: the layer's input, its index, whether it is
    the top one) → the ``after`` modules. Returns the top sequence and every layer's final state.

    :class:`cellsearch.depth.StackedRNN` runs it, and the standalone export writes this very function
    into the generated module (so it uses torch only and names nothing from cellsearch)."""
    for module in before:
        seq = module(seq)
    finals = []
    top = len(layers) - 1
    for i, layer in enumerate(layers):
        out, final = layer(seq, state[i] if state is not None else None)
        for join in joins:
            out = join(out, seq, i, i == top)
        finals.append(final)
        seq = out
    for module in after:
        seq = module(seq)
    return seq, tuple(finals)
