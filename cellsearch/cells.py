"""Compose a :class:`~cellsearch.spec.CellSpec` into a one-step cell that also runs whole sequences.

Execution is fast by construction:

- the input projections of all blocks for the whole sequence are one matmul before the time loop
  (``xp = x W_ihᵀ + b``, [T, B, G·n]);
- each step does one recurrent matmul for all recurrent blocks together (``h U_allᵀ``);
- the recurrent matrices and the saturation's matrices are formed once per sequence;
- the precomputed projection is iterated with ``unbind(0)``, never ``xp[t]`` (indexing inside the loop
  makes autograd's backward grow with T²).

Layout of the block weights: gate blocks first (the update's gates with any blocks the gate primitive
adds, e.g. UR's r right after the keep gate), then candidate blocks; recurrent blocks lead. One bias per
block (PRIMITIVES.md's convention), plus any extra parameter the update declares (GRU's b_hn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fast as _fast
from . import registry
from .primitives.base import Block
from .primitives.bias import Bias
from .primitives.depth import depth_parts
from .primitives.gate import Gate
from .primitives.init import Init
from .primitives.recurrence import Recurrence
from .primitives.saturation import Saturation
from .primitives.update import Update
from .spec import CELL_ROLES, CellSpec, DepthSpec, SpecError

__all__ = ["ComposedCell", "IncompatibleSpecError", "check_spec", "build_primitives", "StepContext", "for_task"]

State = tuple[Tensor, ...]

_CAPABILITY_WORDS = {
    "keep_gate": "an update with a gate that keeps old state",
    "single_state": "a single-state update (one state tensor)",
    "input_gate": "an update with an input gate",
    "sigmoid_gate": "the plain sigmoid gate (gate: sigmoid)",
    "recurrent_matrix": "a free recurrent matrix (recurrence: free)",
}


class IncompatibleSpecError(SpecError):
    """Two primitives that cannot be combined; the message names both."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.where, self.value, self.allowed = "cell", None, message


def build_primitives(spec: CellSpec) -> dict[str, Any]:
    """Instantiate the primitive of every role with its options, and check they fit together."""
    prims = {}
    for role in CELL_ROLES:
        cls = registry.get_primitive(role, getattr(spec, role))
        try:
            prims[role] = cls(**spec.options_for(role))
        except TypeError as exc:
            raise SpecError(f"cell.options.{role}", spec.options_for(role), str(exc)) from None
    for role, prim in prims.items():
        others = [p for r, p in prims.items() if r != role]
        missing = set(prim.requires) - set().union(*(p.provides for p in others))
        if missing:
            need = "; ".join(_CAPABILITY_WORDS.get(m, m) for m in sorted(missing))
            named = [f"{p.role} {p.name!r}" for p in others if p.role in ("update", "gate")]
            verb = "does" if len(named) == 1 else "do"
            raise IncompatibleSpecError(
                f"{role} {prim.name!r}{_with_options(prim)} needs {need}; {' and '.join(named)} {verb} not "
                f"provide it "
                f"(choose another {role}, or another primitive that provides it)"
            )
    return prims


def for_task(spec: CellSpec, task: Any) -> CellSpec:
    """``spec`` with the options its primitives take from the task filled in where the spec leaves them
    null (a primitive's ``task_options``: chrono's ``t_max`` ← the task's ``seq_len``, else ``bptt``).

    Called where a study or a reproduction completes a spec for its task, so the stored spec says what
    was built. Options the spec gives, and tasks that state none of the attributes, are left alone."""
    options = {role: spec.options_for(role) for role in CELL_ROLES}
    changed = False
    for role in CELL_ROLES:
        cls = registry.get_primitive(role, getattr(spec, role))
        for option, attributes in getattr(cls, "task_options", {}).items():
            if options[role].get(option, cls.defaults.get(option)) is not None:
                continue
            value = next((getattr(task, a) for a in attributes if getattr(task, a, None) is not None), None)
            if value is not None:
                options[role][option], changed = value, True
    return spec.replace(options=options) if changed else spec


def _with_options(prim: Any) -> str:
    opts = {k: v for k, v in prim.options.items() if v != prim.defaults.get(k)}
    return f" with {opts}" if opts else ""


def check_spec(spec: CellSpec, input_size: int = 8, hidden_size: int = 8) -> None:
    """Raise :class:`SpecError` / :class:`IncompatibleSpecError` if ``spec`` cannot be built."""
    prims = build_primitives(spec)
    prims["gate"].bind(prims["update"], input_size, hidden_size)


def _layout(update: Update, gate: Gate) -> list[Block]:
    names = list(update.gates)
    for extra, after in gate.extra_blocks():
        names.insert(names.index(after) + 1, extra)
    blocks = [Block(n, "gate") for n in names] + list(update.cand_blocks)
    recurrent = [b for b in blocks if b.recurrent]
    return recurrent + [b for b in blocks if not b.recurrent]


@dataclass
class StepContext:
    """What one time step needs, prepared once per sequence (see :mod:`cellsearch.primitives.update`)."""

    n: int
    k: int
    w_hh_t: Tensor
    gates: Callable[[Tensor, Tensor | None], tuple[Tensor, ...]]
    cand: Callable[[Tensor, Tensor, Callable[[Tensor], Tensor]], Tensor]
    sat: Callable[[Tensor], Tensor]
    params: dict[str, Tensor]
    recurrent: bool = True


class ComposedCell(nn.Module):
    """One recurrent cell composed from primitives.

    ``forward(x_t [B, d], state)`` does one step and returns ``(h_t [B, n], state)``;
    :meth:`forward_sequence` runs a whole time-major sequence with the input projection hoisted.
    ``transition`` is ``none``, ``deep`` or ``deep_shortcut`` (Pascanu et al. DT / DT(S), applied to the
    candidate path) with ``transition_layers`` extra layers: the part the ``cell``-stage depth primitive
    adds (:func:`cellsearch.primitives.depth.depth_parts`), a module with ``candidate(pre, h, act)``.
    """

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, transition: str = "none",
                 transition_layers: int = 1) -> None:
        super().__init__()
        self.spec, self.input_size, self.hidden_size = spec, input_size, hidden_size
        prims = build_primitives(spec)
        self.update: Update = prims["update"]
        self.gate: Gate = prims["gate"]
        self.init: Init = prims["init"]
        self.bias_init: Bias = prims["bias"]
        self.gate.bind(self.update, input_size, hidden_size)
        self.blocks = _layout(self.update, self.gate)
        self._offsets = {b.name: i for i, b in enumerate(self.blocks)}
        n, g = hidden_size, len(self.blocks)
        self.k = sum(b.kind == "gate" for b in self.blocks)
        self.weight_ih = nn.Parameter(torch.empty(g * n, input_size))
        self.bias = nn.Parameter(torch.empty(g * n))
        self.recurrence: Recurrence = prims["recurrence"]
        self.recurrence.bind(self.update.recurrent_blocks(self.blocks), n)
        self.saturation: Saturation = prims["saturation"]
        self.saturation.bind(n)
        self.extra = nn.ParameterDict({k: nn.Parameter(torch.empty(s))
                                       for k, s in self.update.extra_parameters(n).items()})
        self.short = self.gate.short_input(input_size, hidden_size)
        self.weight_proj = nn.Parameter(torch.empty(n, input_size)) if self.short == "project" else None
        self.transition = _transition(DepthSpec(transition=transition, transition_layers=transition_layers), n)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """PyTorch's RNN initialization everywhere, then the weight init, the gate-bias init, and the gate's
        own rule (UR's b_r = −b_f)."""
        bound = 1.0 / self.hidden_size**0.5
        with torch.no_grad():
            for p in (self.weight_ih, self.bias, self.weight_proj, *self.extra.values()):
                if p is not None:
                    p.uniform_(-bound, bound)
            self.recurrence.reset_parameters()
            self.saturation.reset_parameters()
            if self.transition is not None:
                self.transition.reset_parameters()
            self.init.apply(self)
            self.bias_init.apply(self)
            self.gate.after_init(self)

    def block_slice(self, name: str) -> slice:
        """Rows of ``weight_ih`` / ``bias`` that belong to block ``name``."""
        if name not in self._offsets:
            raise KeyError(f"block {name!r} not in {[b.name for b in self.blocks]}")
        i, n = self._offsets[name], self.hidden_size
        return slice(i * n, (i + 1) * n)

    def block_bias(self, name: str) -> Tensor:
        """A view of block ``name``'s bias (writable under no_grad)."""
        return self.bias.data[self.block_slice(name)]

    # ----------------------------------------------------------------------------------------------
    def context(self) -> StepContext:
        """Prepare the per-sequence constants (recurrent matrices, saturation, transition)."""
        sat = self.saturation.function()
        cand = self.transition.candidate if self.transition is not None else _plain_candidate
        return StepContext(self.hidden_size, self.k, self.recurrence.matrix().t(), self.gate.function(self.k),
                           cand, sat, dict(self.extra.items()),
                           recurrent="no_recurrence" not in self.recurrence.provides)

    def initial_state(self, batch: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch, self.hidden_size) for _ in range(self.update.n_states))

    def short_input(self, x: Tensor) -> Tensor | None:
        """x̃ for the refined gate's short connection: x, P x, or None."""
        if self.short == "identity":
            return x
        if self.short == "project":
            return F.linear(x, self.weight_proj)
        return None

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """One step: x_t [B, d], state → (h_t [B, n], state)."""
        if state is None:
            state = self.initial_state(x.shape[0], x)
        precision, xp, xs, state = self._recurrence_inputs(x, state)
        with precision:
            return self.update.step(self.context(), xp, xs, state)

    def forward_sequence(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """A whole time-major sequence: x [T, B, d] → (out [T, B, n], final state).

        Runs on the cell's fast path when it has one (:mod:`cellsearch.fast`: a whole-sequence function,
        derived from the step or hand-written; torch's native LSTM/GRU kernels for exactly-LSTM/GRU specs
        on CUDA or without the C kernels), otherwise on :meth:`_reference_sequence`. Both give the same
        outputs and gradients; ``with cellsearch.fast.enabled(False):`` forces the reference loop.
        """
        out = _fast.sequence(self, x, state)
        return out if out is not None else self._reference_sequence(x, state)

    def _reference_sequence(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The reference loop: the update's step at every time step (autograd records each step)."""
        if state is None:
            state = self.initial_state(x.shape[1], x)
        precision, xp, xs, state = self._recurrence_inputs(x, state)
        with precision:
            ctx, step = self.context(), self.update.step
            outs = []
            for xp_t, xs_t in zip(xp.unbind(0), _steps(xs)):
                h, state = step(ctx, xp_t, xs_t, state)
                outs.append(h)
            return torch.stack(outs), state

    def _recurrence_inputs(self, x: Tensor, state: State) -> tuple[AbstractContextManager[Any], Tensor,
                                                                   Tensor | None, State]:
        """The input GEMM (hoisted over every step of ``x``) and the short input; the context the
        recurrence runs in, and its inputs.

        Under autocast only the input GEMM runs in the low-precision dtype; the recurrence runs with
        autocast off, in the parameters' dtype (float32 by default), because a bf16/fp16 state loses
        its memory to rounding over long sequences and the step's pointwise ops (``torch.lerp``) need
        one dtype: outputs and final state come back in the parameters' dtype."""
        xp, xs, state = F.linear(x, self.weight_ih, self.bias), self.short_input(x), tuple(state)
        if not _fast.autocast_enabled(x.device.type):
            return nullcontext(), xp, xs, state
        dt = self.weight_ih.dtype
        off = torch.autocast(x.device.type, enabled=False)
        return off, _as(xp, dt), _as(xs, dt), tuple(_as(s, dt) for s in state)

    def extra_repr(self) -> str:
        blocks = ",".join(b.name for b in self.blocks)
        return f"{self.input_size}, {self.hidden_size}, update={self.update.name}, gate={self.gate.name}, " \
               f"init={self.init.name}, bias={self.bias_init.name}, blocks=[{blocks}]"


def _as(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _steps(xs: Tensor | None) -> Iterator[Tensor | None]:
    return iter(xs.unbind(0)) if xs is not None else repeat(None)


def _plain_candidate(pre: Tensor, h: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
    return act(pre)


def _transition(depth: DepthSpec, n: int) -> nn.Module | None:
    """The candidate-path module of the ``cell``-stage depth primitive that applies to ``depth`` (deep
    transition), or None; a cell takes at most one."""
    parts = depth_parts(depth, n, n, "cell")
    if len(parts) > 1:
        raise SpecError("depth", [p.attribute for p in parts], "at most one cell-stage depth primitive per cell")
    return parts[0].build() if parts else None
