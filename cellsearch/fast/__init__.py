"""Fast execution of composed cells over whole sequences.

:meth:`ComposedCell.forward_sequence <cellsearch.cells.ComposedCell.forward_sequence>` asks
:func:`sequence` first; when the cell has a fast path and fast paths are enabled it runs there,
otherwise the reference step loop runs. The math is the same (tests/test_fast.py checks outputs and all
gradients against the reference loop); only the speed differs. See :mod:`cellsearch.fast.paths` for
which cells take which path, and :func:`explain` for one cell.

Switch: ``cellsearch.fast.enabled(False)`` (a context manager, per thread / context),
``cellsearch.fast.set_enabled(False)`` (process default), or the environment variable
``CELLSEARCH_FAST=0``.

The derived path (:mod:`cellsearch.fast.derived`, generated from the cell's own step) serves every cell
without a hand-written path, and on the CPU it is preferred to a hand-written fused kernel wherever its
time loop runs in C (:mod:`cellsearch.fast.pwloop`; measured faster or equal, docs/bench), the hand kernel
taking the calls it does not. ``with cellsearch.fast.force_derived():`` (or ``CELLSEARCH_FAST_DERIVED=
force``) puts every cell on it, for tests and the bench; ``force_derived(None)`` / ``=0`` never uses it;
``with cellsearch.fast.hand_first():`` (or ``=hand``) puts hand-written kernels first (their tests).

Limits of the fused and derived paths: its backward is not itself differentiable (double backward raises); it runs
float32 and float64 (other dtypes take the reference loop, exact LSTM/GRU still go native). Under
autocast a cell runs on its fast path in its parameters' dtype with autocast off (the recurrent state in
float32). Fast paths are bypassed while ``torch.compile`` / ``torch.jit`` trace a model, under
``torch.func`` transforms and forward-mode AD: those see the reference loop.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from .paths import Plan, build_plan, settled

__all__ = ["enabled", "set_enabled", "is_enabled", "plan", "explain", "sequence", "Plan", "force_derived",
           "derived_mode", "hand_first"]

State = tuple[Tensor, ...]

_DEFAULT = os.environ.get("CELLSEARCH_FAST", "1").strip().lower() not in ("0", "false", "no", "off")
# plans live beside the cells, not on them, so that a cell still pickles and deep-copies as before
_PLANS: weakref.WeakKeyDictionary[Any, dict[str, Plan]] = weakref.WeakKeyDictionary()
_OVERRIDE: ContextVar[bool | None] = ContextVar("cellsearch_fast", default=None)
_DERIVED_ENV = os.environ.get("CELLSEARCH_FAST_DERIVED", "auto").strip().lower()
_DERIVED_DEFAULT = ("force" if _DERIVED_ENV == "force" else "hand" if _DERIVED_ENV == "hand" else
                    "off" if _DERIVED_ENV in ("0", "false", "no", "off") else "auto")
_DERIVED: ContextVar[str | None] = ContextVar("cellsearch_fast_derived", default=None)


def is_enabled() -> bool:
    """Whether fast paths are used in this context."""
    value = _OVERRIDE.get()
    return _DEFAULT if value is None else value


def set_enabled(flag: bool) -> None:
    """Set the process-wide default (a surrounding :func:`enabled` block still wins)."""
    global _DEFAULT
    _DEFAULT = bool(flag)


@contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """``with cellsearch.fast.enabled(False): ...`` runs the reference loop inside the block."""
    token = _OVERRIDE.set(bool(flag))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def derived_mode() -> str:
    """``auto`` (the derived path where its time loop runs in C or no hand-written path exists),
    ``hand`` (hand-written paths first), ``force`` or ``off``."""
    value = _DERIVED.get()
    return _DERIVED_DEFAULT if value is None else value


@contextmanager
def force_derived(flag: bool | None = True) -> Iterator[None]:
    """``with cellsearch.fast.force_derived():`` every cell whose step can be derived takes the derived
    path inside the block (``False``: the default choice; ``None``: never the derived path)."""
    token = _DERIVED.set("force" if flag else "auto" if flag is False else "off")
    try:
        yield
    finally:
        _DERIVED.reset(token)


@contextmanager
def hand_first() -> Iterator[None]:
    """``with cellsearch.fast.hand_first():`` a cell with a hand-written kernel takes it inside the block
    (the derived path only where there is none): the hand kernels' own tests."""
    token = _DERIVED.set("hand")
    try:
        yield
    finally:
        _DERIVED.reset(token)


def plan(cell: Any) -> Plan:
    """The execution plan of ``cell`` under the current :func:`derived_mode` (decided once per mode,
    cached beside the cell)."""
    mode = derived_mode()
    plans = _PLANS.get(cell)
    if plans is None:
        plans = {}
        _PLANS[cell] = plans
    cached = plans.get(mode)
    if cached is None:
        cached = build_plan(cell, mode)
        plans[mode] = cached
    elif cached.path == "derived":
        settled_plan = settled(cached)
        if settled_plan is not cached:
            plans[mode] = cached = settled_plan
    return cached


def explain(cell: Any) -> str:
    """One line: the path ``cell`` takes and why; for a network (``cellsearch.create_rnn``'s, whose cells
    are its ``layers``) one such line per layer."""
    layers = getattr(cell, "layers", None)
    if layers is not None and getattr(cell, "update", None) is None:
        return "\n".join(f"layer {i}: {explain(layer)}" for i, layer in enumerate(layers))
    p = plan(cell)
    return f"{p.path}: {p.reason}"


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (a CPU or CUDA device type string)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))  # type: ignore[call-arg]
    except TypeError:  # pragma: no cover - older torch
        return bool(torch.is_autocast_enabled()) if device_type == "cuda" else False


def _transformed(x: Tensor) -> bool:
    """Tracing, compiling, functorch transforms or forward-mode AD: the reference handles those."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return True
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return True
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def sequence(cell: Any, x: Tensor, state: State | None) -> tuple[Tensor, State] | None:
    """Run ``cell`` over x [T, B, d] on its fast path, or return None (the caller runs the reference)."""
    if not is_enabled() or x.dim() != 3 or x.shape[0] == 0 or not x.is_floating_point():
        return None
    p = plan(cell)
    if p.run is None or _transformed(x):
        return None
    if autocast_enabled(x.device.type):
        return _without_autocast(p.run, cell, x, state)
    if p.path in ("fused", "derived") and x.dtype not in (torch.float32, torch.float64):
        return None                       # the fused and derived paths are tested in float32 and float64
    if state is None:
        state = cell.initial_state(x.shape[1], x)
    return p.run(cell, x, tuple(state))


def _without_autocast(run: Any, cell: Any, x: Tensor, state: State | None) -> tuple[Tensor, State] | None:
    """Under autocast (``train.precision: bf16 | fp16``) the whole cell runs in its parameters' dtype
    (float32 by default) with autocast off, on its fast path: a bf16/fp16 recurrent state loses its memory
    to rounding over long sequences (the reference loop keeps the state in that dtype too). Outputs and
    state come back in the parameters' dtype; the layers around the cell run under autocast."""
    dt = cell.weight_ih.dtype
    if dt not in (torch.float32, torch.float64):
        return None
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(dt)
        state = cell.initial_state(x.shape[1], x) if state is None else tuple(s.to(dt) for s in state)
        return run(cell, x, tuple(state))
