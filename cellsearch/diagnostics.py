"""Gradient-flow diagnostics: the layer × time gradient map, gate saturation and a zero-cost pre-screen.

**Gradient map** (the recipe of Turkoglu et al.'s figure 2, PRIMITIVES.md §2). A stacked model shares
its parameters across time, so "the gradient with respect to the parameters at step t" needs a
per-step decomposition. We unroll the model one step at a time with each layer's one-step forward
(:meth:`cellsearch.cells.ComposedCell.forward`) and give every (layer ℓ, step t) its own leaf copy
θ_(ℓ,t) of each trainable parameter θ of layer ℓ (same values, so the forward is unchanged). Autograd then
gives ∂L/∂θ_(ℓ,t), the part of the gradient that flows through step t, and Σ_t ∂L/∂θ_(ℓ,t) = ∂L/∂θ.
The map is

    G[ℓ, t] = (1 / P_ℓ) Σ_{θ ∈ layer ℓ} Σ_entries |∂L/∂θ_(ℓ,t)|

with P_ℓ the number of trainable scalars of layer ℓ (the free parameters :func:`count_parameters`
counts: an orthogonal recurrence contributes its skew entries), averaged over seeds (each seed draws its
own model, inputs x ~ N(0, 1) and readout). Everything runs in float64 by default, so vanishing maps do
not underflow. Dropout is off; deep input / deep output MLPs run as in the model but are not in the map.

**Losses.** S is the set of steps the loss reads: the last step (``loss="last"``) or every step
(``loss="all"``); y_t is the model's output at step t ([B, n]).

- ``objective="linear"`` (default): L = Σ_{t∈S} (1/B) Σ_b ⟨r, y_{b,t}⟩ with a fixed random readout
  r ~ N(0, I/n). ∂L/∂y_t = r/B does not depend on the forward values (a linear cell's map is known in
  closed form; see the tests).
- ``objective="mse"``: L = Σ_{t∈S} (1/B) Σ_b (⟨r, y_{b,t}⟩ − τ_{b,t})² with random targets τ ~ N(0, 1).

**State-gradient map.** E[ℓ, t] = mean |∂L/∂s^(ℓ)_t| over the entries of layer ℓ's state after step t
(h, and c for LSTM-type cells; total derivatives), from the same backward pass: the backpropagated
error itself, without G's factor of the local inputs and states.

**Pre-screen.** :func:`gradient_score` scores E (loss on the last step) by two ratios, first layer over
last layer and first step over last step, and flags a cell whose gradients vanish (a ratio < ``vanish``,
default 1e-3, or a zero map) or explode (a ratio > ``explode``, default 1e3, or a non-finite value) so
that a search can skip it before training. The thresholds are on the whole map (10 layers × 10 steps by
default; a ModelSpec keeps its own depth), not per layer or step.

**Saturation.** :func:`saturation_stats` runs a long sequence and reports, per layer and gate block, the
fraction of σ(a) (a the block's pre-activation W x_t + U h_{t−1} + b) below 0.05 and above 0.95, and the
mean state norm ‖h_t‖₂ per step.

Performance: the diagnostics run thousands of tiny tensor operations; run them with
``torch.set_num_threads(1)`` (the CLI does) — several threads make them many times slower, the more so
on a busy machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from .api import create_rnn
from .depth import StackedRNN
from .spec import CellSpec, ModelSpec

__all__ = [
    "LOSSES",
    "OBJECTIVES",
    "gradient_map",
    "layer_step_gradients",
    "layer_step_state_gradients",
    "state_gradient_map",
    "per_step_gradients",
    "unroll",
    "build",
    "score_map",
    "gradient_score",
    "GradientScore",
    "saturation_stats",
    "SaturationStats",
    "VANISH",
    "EXPLODE",
]

LOSSES = ("last", "all")
OBJECTIVES = ("linear", "mse")
#: default pre-screen thresholds on the first/last ratios (see :func:`gradient_score`)
VANISH, EXPLODE = 1e-3, 1e3
#: gate values below LOW or above HIGH count as saturated
LOW, HIGH = 0.05, 0.95
#: default sizes when a cell name or CellSpec is given
DEFAULT_LAYERS, DEFAULT_HIDDEN = 10, 32

CellLike = str | CellSpec | ModelSpec | Mapping[str, Any] | StackedRNN


# ------------------------------------------------------------------------------------------------------
# building


def build(cell: CellLike, layers: int | None = None, input_size: int | None = None,
          hidden_size: int | None = None, dtype: torch.dtype = torch.float64) -> StackedRNN:
    """The model a diagnostic runs on, in ``dtype`` and eval mode.

    A cell name / CellSpec / mapping is stacked ``layers`` (default 10) times at ``hidden_size``
    (default 32) with ``input_size`` (default: the hidden size), starting from the card's depth
    configuration. A ModelSpec supplies its own defaults (depth.layers, hidden_size, input_size). A
    StackedRNN is copied (never modified); sizes given must match it.
    """
    if isinstance(cell, StackedRNN):
        given = {"layers": (layers, cell.num_layers), "input_size": (input_size, cell.input_size),
                 "hidden_size": (hidden_size, cell.hidden_size)}
        for name, (want, have) in given.items():
            if want is not None and want != have:
                raise ValueError(f"{name}={want} does not match the given model's {have}")
        model = _copy(cell)
    else:
        if isinstance(cell, ModelSpec):
            layers = cell.depth.layers if layers is None else layers
            hidden_size = cell.hidden_size if hidden_size is None else hidden_size
            input_size = cell.input_size if input_size is None else input_size
        layers = DEFAULT_LAYERS if layers is None else layers
        hidden_size = DEFAULT_HIDDEN if hidden_size is None else hidden_size
        input_size = hidden_size if input_size is None else input_size
        for name, value in (("layers", layers), ("input_size", input_size), ("hidden_size", hidden_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        model = create_rnn(cell, input_size, hidden_size, num_layers=layers)
    return model.to(dtype).eval()


def _copy(model: StackedRNN) -> StackedRNN:
    """A copy of ``model``: rebuilt from its specs, then its state and requires_grad flags copied.

    (Not ``copy.deepcopy``: it would copy the immutable specs, which do not support it.)
    """
    out = type(model)(model.cell_spec, model.input_size, model.hidden_size, model.depth)
    out.load_state_dict(model.state_dict())
    for p, q in zip(out.parameters(), model.parameters(), strict=True):
        p.requires_grad_(q.requires_grad)
    return out.to(next(model.parameters()).dtype)


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    out = [seeds] if isinstance(seeds, int) else list(seeds)
    if not out:
        raise ValueError("seeds must name at least one seed")
    return out


def _check(loss: str, objective: str, steps: int, batch: int) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")


# ------------------------------------------------------------------------------------------------------
# the unrolled forward


def unroll(model: StackedRNN, x: Tensor, params: Sequence[Sequence[Mapping[str, Tensor]]] | None = None,
           record: list[list[tuple[Tensor, ...]]] | None = None) -> Tensor:
    """The model's output [B, T, n] computed one step at a time with each layer's one-step forward.

    ``params[ℓ][t]`` (optional) are the parameters layer ℓ uses at step t (a name → tensor mapping
    for :func:`torch.func.functional_call`); by default the layer's own. ``record`` (optional, a list)
    receives one list per layer of the state tuples after each step. Same result as ``model(x)[0]``
    without dropout.
    """
    seq = x.transpose(0, 1)
    for module in model.stage("input"):
        seq = module(seq)
    states: list[tuple[Tensor, ...] | None] = [None] * model.num_layers
    if record is not None:
        record[:] = [[] for _ in range(model.num_layers)]
    outs = []
    for t, inp in enumerate(seq.unbind(0)):
        for i, cell in enumerate(model.layers):
            if params is None:
                out, state = cell(inp, states[i])
            else:
                out, state = functional_call(cell, dict(params[i][t]), (inp, states[i]))
            states[i] = tuple(state)
            if record is not None:
                record[i].append(states[i])
            for join in model.stage("join"):
                out = join(out, inp, i, i == model.num_layers - 1)
            inp = out
        outs.append(inp)
    y = torch.stack(outs)
    for module in model.stage("output"):
        y = module(y)
    return y.transpose(0, 1)


def _loss(y: Tensor, loss: str, objective: str, readout: Tensor, targets: Tensor | None) -> Tensor:
    """Σ_{t∈S} of the per-step loss, each a mean over the batch (see the module docstring)."""
    proj = y @ readout  # [B, T]
    if loss == "last":
        proj = proj[:, -1:]
        targets = None if targets is None else targets[:, -1:]
    if objective == "linear":
        return proj.mean(0).sum()
    assert targets is not None
    return (proj - targets).pow(2).mean(0).sum()


def _backward(model: StackedRNN, x: Tensor, loss: str, objective: str, readout: Tensor | None,
              targets: Tensor | None) -> tuple[list[list[dict[str, Tensor]]], Tensor]:
    """One forward and backward: (∂L/∂θ_(ℓ,t) as ``[ℓ][t][name]``, the state-gradient map [L, T])."""
    batch, steps = x.shape[0], x.shape[1]
    _check(loss, objective, steps, batch)
    n = model.hidden_size
    if readout is None:
        readout = torch.randn(n, dtype=x.dtype) / math.sqrt(n)
    if targets is None and objective == "mse":
        targets = torch.randn(batch, steps, dtype=x.dtype)
    params: list[list[dict[str, Tensor]]] = []
    trainable: list[list[str]] = []
    for cell in model.layers:
        named = dict(cell.named_parameters())
        trainable.append([name for name, p in named.items() if p.requires_grad])
        params.append([{name: p.detach().requires_grad_(True) if p.requires_grad else p
                        for name, p in named.items()} for _ in range(steps)])
    leaves = [params[i][t][name] for i, names in enumerate(trainable) for t in range(steps) for name in names]
    record: list[list[tuple[Tensor, ...]]] = []
    value = _loss(unroll(model, x, params, record), loss, objective, readout, targets)
    states = [s for layer in record for state in layer for s in state]
    grads = iter(torch.autograd.grad(value, leaves + states, allow_unused=True))
    out: list[list[dict[str, Tensor]]] = []
    for i, names in enumerate(trainable):
        rows = []
        for t in range(steps):
            row = {}
            for name in names:
                g = next(grads)
                row[name] = torch.zeros_like(params[i][t][name]) if g is None else g
            rows.append(row)
        out.append(rows)
    state_map = torch.zeros(model.num_layers, steps, dtype=torch.float64)
    for i, layer in enumerate(record):
        for t, state in enumerate(layer):
            total = torch.zeros((), dtype=torch.float64)
            for _ in state:
                g = next(grads)
                if g is not None:
                    total = total + g.abs().sum().double()
            state_map[i, t] = total / sum(s.numel() for s in state)
    return out, state_map


def per_step_gradients(model: StackedRNN, x: Tensor, loss: str = "last", objective: str = "linear",
                       readout: Tensor | None = None, targets: Tensor | None = None
                       ) -> list[list[dict[str, Tensor]]]:
    """∂L/∂θ_(ℓ,t) for every layer ℓ, step t and trainable parameter θ of layer ℓ: ``[ℓ][t][name]``.

    ``x`` is [B, T, d]; ``readout`` (r, [n]) defaults to N(0, I/n) and ``targets`` ([B, T], mse only) to
    N(0, 1), both drawn from the global generator. Σ_t of ``[ℓ][t][name]`` is the ordinary gradient of
    the loss with respect to that parameter. The model's parameters are not modified and get no
    ``.grad``; a parameter step t does not reach gets a zero gradient.
    """
    return _backward(model, x, loss, objective, readout, targets)[0]


def _reduce(grads: list[list[dict[str, Tensor]]], steps: int) -> Tensor:
    out = torch.zeros(len(grads), steps, dtype=torch.float64)
    for i, rows in enumerate(grads):
        for t, row in enumerate(rows):
            count = sum(g.numel() for g in row.values())
            if count:
                out[i, t] = sum(g.abs().sum().double() for g in row.values()) / count
    return out


def layer_step_gradients(model: StackedRNN, x: Tensor, loss: str = "last", objective: str = "linear",
                         readout: Tensor | None = None, targets: Tensor | None = None) -> Tensor:
    """G[ℓ, t] = mean |∂L/∂θ_(ℓ,t)| over layer ℓ's trainable scalars, for one model and one input.

    Arguments as in :func:`per_step_gradients`. Returns a [layers, T] float64 tensor (zeros for a layer
    without trainable parameters).
    """
    return _reduce(per_step_gradients(model, x, loss, objective, readout, targets), x.shape[1])


def layer_step_state_gradients(model: StackedRNN, x: Tensor, loss: str = "last", objective: str = "linear",
                               readout: Tensor | None = None, targets: Tensor | None = None) -> Tensor:
    """E[ℓ, t] = mean |∂L/∂s^(ℓ)_t| over the entries of layer ℓ's state after step t (h, and c for an
    LSTM-type cell; total derivatives through every later path), for one model and one input: [L, T].
    """
    return _backward(model, x, loss, objective, readout, targets)[1]


def _maps(cell: CellLike, layers: int | None, steps: int, input_size: int | None, hidden_size: int | None,
          batch: int, loss: str, seeds: int | Sequence[int], objective: str, dtype: torch.dtype,
          which: int) -> np.ndarray:
    _check(loss, objective, steps, batch)
    maps = []
    for seed in _seeds(seeds):
        torch.manual_seed(seed)
        model = build(cell, layers, input_size, hidden_size, dtype)
        x = torch.randn(batch, steps, model.input_size, dtype=dtype)
        grads, state_map = _backward(model, x, loss, objective, None, None)
        maps.append((_reduce(grads, steps) if which == 0 else state_map).numpy())
    return np.mean(maps, axis=0)


def gradient_map(cell: CellLike, layers: int | None = None, steps: int = 10, input_size: int | None = None,
                 hidden_size: int | None = None, batch: int = 8, loss: str = "last",
                 seeds: int | Sequence[int] = (0, 1, 2), objective: str = "linear",
                 dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Mean gradient magnitude per (layer, time step) of a stacked model: an array [layers, steps].

    G[ℓ, t] = mean over layer ℓ's trainable scalars of |∂L/∂θ_(ℓ,t)|, θ_(ℓ,t) the copy of the parameters
    layer ℓ uses at step t (so Σ_t gives the ordinary gradient), averaged over ``seeds``; per seed a
    fresh model (unless ``cell`` is a StackedRNN), inputs x ~ N(0, 1) of shape [batch, steps, d] and a
    readout r ~ N(0, I/n). ``loss`` ``last`` reads the last step, ``all`` every step; ``objective`` is
    ``linear`` (L = Σ_{t∈S} mean_b ⟨r, y_t⟩) or ``mse`` (to random targets). See the module docstring.
    Row 0 is the first (bottom) layer, column 0 the first step.
    """
    return _maps(cell, layers, steps, input_size, hidden_size, batch, loss, seeds, objective, dtype, 0)


def state_gradient_map(cell: CellLike, layers: int | None = None, steps: int = 10,
                       input_size: int | None = None, hidden_size: int | None = None, batch: int = 8,
                       loss: str = "last", seeds: int | Sequence[int] = (0, 1, 2), objective: str = "linear",
                       dtype: torch.dtype = torch.float64) -> np.ndarray:
    """The backpropagated error per (layer, step): E[ℓ, t] = mean |∂L/∂s^(ℓ)_t| over the entries of layer
    ℓ's state after step t, averaged over seeds; arguments and sampling as in :func:`gradient_map`.

    Unlike G it does not carry the size of the local inputs and states, so it isolates how gradients
    propagate: for a linear cell with U = c·I and the last-step loss, E[0, t] ∝ c^(T−1−t) exactly.
    """
    return _maps(cell, layers, steps, input_size, hidden_size, batch, loss, seeds, objective, dtype, 1)


# ------------------------------------------------------------------------------------------------------
# the zero-cost pre-screen


@dataclass(frozen=True)
class GradientScore:
    """The pre-screen's verdict (see :func:`gradient_score`); ``as_dict()`` for storage."""

    ratio_first_to_last_layer: float
    ratio_first_to_last_step: float
    vanishing: bool
    exploding: bool

    @property
    def ok(self) -> bool:
        """Neither vanishing nor exploding."""
        return not (self.vanishing or self.exploding)

    def as_dict(self) -> dict[str, float | bool]:
        return {"ratio_first_to_last_layer": self.ratio_first_to_last_layer,
                "ratio_first_to_last_step": self.ratio_first_to_last_step,
                "vanishing": self.vanishing, "exploding": self.exploding}


def score_map(grad_map: np.ndarray, vanish: float = VANISH, explode: float = EXPLODE) -> GradientScore:
    """Ratios and flags of a map [layers, steps] taken with the loss on the last step.

    ratio_first_to_last_layer = mean_t M[0, t] / mean_t M[L−1, t] (how much reaches the bottom layer);
    ratio_first_to_last_step = mean_ℓ M[ℓ, 0] / mean_ℓ M[ℓ, T−1] (how much reaches the first step).
    A ratio is 1 for a one-layer model / a one-step map and NaN when both means are 0.
    vanishing: a ratio < ``vanish`` or an all-zero map; exploding: a ratio > ``explode`` or a
    non-finite entry.
    """
    g = np.asarray(grad_map, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"expected a non-empty [layers, steps] map, got shape {g.shape}")
    finite = bool(np.isfinite(g).all())
    with np.errstate(divide="ignore", invalid="ignore"):
        by_layer, by_step = g.mean(axis=1), g.mean(axis=0)
        depth = float(by_layer[0] / by_layer[-1])
        time = float(by_step[0] / by_step[-1])
    ratios = [r for r in (depth, time) if not math.isnan(r)]
    vanishing = finite and (not (g > 0).any() or any(r < vanish for r in ratios))
    exploding = (not finite) or any(r > explode for r in ratios)
    return GradientScore(depth, time, bool(vanishing), bool(exploding))


def gradient_score(cell: CellLike, layers: int | None = None, steps: int = 10,
                   input_size: int | None = None, hidden_size: int | None = None, batch: int = 8,
                   seeds: int | Sequence[int] = (0,), vanish: float = VANISH,
                   explode: float = EXPLODE) -> GradientScore:
    """A cheap "zero-cost" pre-screen: does the untrained cell's gradient vanish or explode?

    Scores the state-gradient map E (:func:`state_gradient_map`; loss on the last step, linear
    objective, one seed by default; a ModelSpec keeps its own layers and sizes) with :func:`score_map`:
    vanishing when the error reaching the first layer or the first step is below ``vanish`` (1e-3)
    times the one at the last layer / last step, exploding when above ``explode`` (1e3) or not finite.
    E rather than the parameter map G, because G also carries the size of the states: for an expanding
    linear cell the last step's ∂L/∂U = δ h_{t−1}ᵀ grows with h as fast as δ does at the first step, so
    G's ratios stay near 1 while E's grow as c^T. A search skips a candidate with ``not score.ok``.
    """
    state_map = state_gradient_map(cell, layers, steps, input_size, hidden_size, batch, "last", seeds)
    return score_map(state_map, vanish, explode)


# ------------------------------------------------------------------------------------------------------
# gate saturation and state-norm growth


@dataclass(frozen=True)
class SaturationStats:
    """Gate saturation and state norms over one long sequence.

    ``gates``: gate block names (the cell's layout order; empty for a cell without gates);
    ``low`` / ``high``: [layers, gates] fractions of σ(a) below 0.05 / above 0.95 (over batch, units and
    steps); ``state_norm``: [layers, steps] mean over the batch of ‖h_t‖₂.
    """

    gates: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    state_norm: np.ndarray

    @property
    def saturated(self) -> np.ndarray:
        """[layers, gates] fraction of gate values outside [0.05, 0.95]."""
        return self.low + self.high

    @property
    def growth(self) -> np.ndarray:
        """[layers] ‖h_T‖ / ‖h_1‖: the state-norm growth over the sequence."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.state_norm[:, -1] / self.state_norm[:, 0]


def _gate_values(cell: Any, inp: Tensor, h: Tensor | None) -> list[Tensor]:
    """σ(W x + U h + b) of each gate block of ``cell`` (h = 0 at the first step)."""
    u = cell.recurrence.matrix()
    values = []
    for block in cell.blocks:
        if block.kind != "gate":
            continue
        rows = cell.block_slice(block.name)
        a = F.linear(inp, cell.weight_ih[rows], cell.bias[rows])
        if h is not None and block.recurrent:
            a = a + h @ u[rows].t()
        values.append(torch.sigmoid(a))
    return values


@torch.no_grad()
def saturation_stats(cell: CellLike, layers: int | None = None, steps: int = 200,
                     input_size: int | None = None, hidden_size: int | None = None, batch: int = 16,
                     seed: int = 0, dtype: torch.dtype = torch.float64) -> SaturationStats:
    """Gate-saturation fractions and the state norm ‖h_t‖ per step over a long sequence (x ~ N(0, 1)).

    Gate values are reported per gate block as σ(a), a = W x_t + U h_{t−1} + b the block's
    pre-activation (for the UR gate its f and r blocks separately; for a refined gate σ(a) before the
    short connection). Sizes default as in :func:`build`.
    """
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    torch.manual_seed(seed)
    model = build(cell, layers, input_size, hidden_size, dtype)
    x = torch.randn(batch, steps, model.input_size, dtype=dtype)
    names = tuple(b.name for b in model.layers[0].blocks if b.kind == "gate")
    num = model.num_layers
    low = torch.zeros(num, len(names), dtype=torch.float64)
    high = torch.zeros_like(low)
    norms = torch.zeros(num, steps, dtype=torch.float64)
    seq = x.transpose(0, 1)
    for module in model.stage("input"):
        seq = module(seq)
    states: list[tuple[Tensor, ...] | None] = [None] * num
    for t, inp in enumerate(seq.unbind(0)):
        for i, layer in enumerate(model.layers):
            prev = states[i]
            for j, g in enumerate(_gate_values(layer, inp, None if prev is None else prev[0])):
                low[i, j] += (g < LOW).double().mean()
                high[i, j] += (g > HIGH).double().mean()
            out, states[i] = layer(inp, prev)
            norms[i, t] = states[i][0].double().norm(dim=-1).mean()
            for join in model.stage("join"):
                out = join(out, inp, i, i == model.num_layers - 1)
            inp = out
    return SaturationStats(names, (low / steps).numpy(), (high / steps).numpy(), norms.numpy())
