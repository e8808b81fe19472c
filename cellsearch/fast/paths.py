"""Which execution path a composed cell takes: a hand-written kernel its primitives own, the derived
sequence function, or the reference loop.

The plan is decided once per cell and cached beside the cell; :func:`cellsearch.fast.explain` prints
it. Nothing here names a primitive: each primitive declares the hand-written kernels it owns in its
``kernels`` attribute (``"module:function"``, see :class:`cellsearch.primitives.base.Primitive`), and
the built-in ones live in :mod:`cellsearch.fast.hand`. Paths:

- ``native``: the spec is exactly LSTM (update lstm, gate sigmoid, saturation tanh, no deep transition;
  any init, any recurrence) or exactly GRU → :mod:`cellsearch.fast.native` (torch's kernels: cuDNN on
  CUDA; oneDNN on the CPU). Both run fused (and so derived, below) on the CPU instead when the C kernels
  are built, because they measure faster there than torch's CPU kernels (see :data:`NATIVE`).
- ``fused``: one whole-sequence autograd function (:mod:`cellsearch.fast.fused`) for updates lstm,
  lstm_tied, gru, mgu, star with gates sigmoid / ur / refined and saturation tanh / identity (pointwise
  work in the compiled C kernels of :mod:`cellsearch.fast.ckernels` for float32/float64 on the CPU,
  otherwise in torch ops, :mod:`cellsearch.fast.kernels`); vanilla with tanh / identity, with a deep
  transition (any number of layers, with or without shortcut), or with adaptive saturation (torch ops).
  Any recurrence: its matrix is formed once per sequence outside the function.
- ``derived``: everything else (adaptive saturation on a gated update, deep transition on a gated
  update, STAR's ``beta`` option, third-party primitives): a whole-sequence function derived from the
  cell's own step (:mod:`cellsearch.fast.derived`; generated C on the CPU, Triton on CUDA). On the CPU
  it is also preferred to a ``fused`` plan (the hand-written stepping kernels and the parallel scans alike)
  wherever its time loop runs in C (:mod:`cellsearch.fast.pwloop`: measured at or above the hand-written
  kernels, docs/bench): the hand-written kernel keeps the calls the
  derived path does not take (small or first calls, other devices), and the whole cell once its step
  graphs turn out not to get a C loop (``fast.explain`` then says so). On CUDA it goes ahead of every
  hand-written kernel but torch's native LSTM / GRU (``Plan.device_native``), its loops replayed as CUDA
  Graphs (:mod:`cellsearch.fast.cudagraph`; measured on an H200, docs/bench/GPU.md); with
  ``CELLSEARCH_CUDA_GRAPHS=0`` the hand kernels run there. ``hand_first()`` keeps the hand kernels first.
  ``cellsearch.fast.force_derived()`` (or ``CELLSEARCH_FAST_DERIVED=force``) puts every cell on it;
  ``CELLSEARCH_FAST_DERIVED=0`` turns it off.
- ``reference``: a step that cannot be derived (e.g. control flow that depends on tensor values): the
  plain step loop, :meth:`ComposedCell._reference_sequence
  <cellsearch.cells.ComposedCell._reference_sequence>`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .fused import Kernel, run_fused

__all__ = ["Plan", "build_plan", "derived_ahead", "NATIVE", "use_c", "settled", "fused_runner", "exact_runner",
           "ROLES"]

State = tuple[Tensor, ...]
Runner = Callable[[Any, Tensor, State], tuple[Tensor, State]]


@dataclass(frozen=True)
class Plan:
    """``path`` (native | fused | derived | reference), a one-line ``reason`` and the runner (None:
    reference). ``first``: a hand-written kernel that does less arithmetic than the cell's step (it
    folds the step's fixed matrices into each other), kept ahead of the derived path on the CPU.
    ``device_native``: a plan that runs torch's native kernel (cuDNN) off the CPU, kept ahead of the
    derived path there (measured on an H200, docs/bench/GPU.md: cuDNN's LSTM and GRU ahead at H = 128,
    T = 100, batch 64, behind the derived path's CUDA Graphs at 256 / 784 / 128)."""

    path: str
    reason: str
    run: Runner | None = None
    first: bool = False
    device_native: bool = False


def _reference(reason: str) -> Plan:
    return Plan("reference", reason)


_USE_C = True


def use_c(flag: bool | None = None) -> bool:
    """Whether new plans use the compiled pointwise kernels; with ``flag``, set it and return the value it
    had (so that ``old = use_c(False) … use_c(old)`` restores it; tests compare both)."""
    global _USE_C
    previous = _USE_C
    if flag is not None:
        _USE_C = bool(flag)
    return previous


def fused_runner(kernel: Kernel, c_kernel: Kernel | None) -> Runner:
    from .ckernels import DTYPES

    def run(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
        k = c_kernel if c_kernel is not None and x.device.type == "cpu" and x.dtype in DTYPES else kernel
        return run_fused(k, x, cell.weight_ih, cell.bias, cell.recurrence.matrix(), state,
                         cell.short_input(x), *k.extras(cell))

    return run


#: Exactly-LSTM / exactly-GRU specs: "always" torch's native kernel, or "cuda" (native on CUDA; on the
#: CPU the fused C kernels when available, and the derived path's C loop where it runs). Measured on a
#: 2-core AMD EPYC Zen 5, torch 2.13 (docs/bench): torch's CPU GRU has no oneDNN kernel and runs at
#: 0.66–0.76× nn.LSTM, the fused GRU is faster; since the C loop's products use fused multiply-adds,
#: exact LSTM on it runs at 1.12–1.45× nn.LSTM (64/100 to 256/200, same process) against torch's own
#: 0.94–1.09×, and on the fused C kernels below the derived path's size (hidden 16–32, T 20–50) equal to
#: or above torch's.
NATIVE = {"lstm": "cuda", "gru": "cuda"}


def exact_runner(c_kernel: Kernel, native_run: Runner) -> Runner:
    from .ckernels import DTYPES

    def run(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
        if x.device.type != "cpu" or x.dtype not in DTYPES:
            return native_run(cell, x, state)
        return run_fused(c_kernel, x, cell.weight_ih, cell.bias, cell.recurrence.matrix(), state,
                         cell.short_input(x), *c_kernel.extras(cell))

    return run


def build_plan(cell: Any, derived: str = "auto") -> Plan:
    """Decide the execution path of a :class:`~cellsearch.cells.ComposedCell`.

    ``derived``: ``auto`` (a hand-written path where one exists, else the derived path, else the
    reference loop), ``force`` (the derived path whenever the step can be derived; for tests and the
    bench) or ``off`` (never the derived path)."""
    if derived == "force":
        return _derived_plan(cell, "forced")
    hand = _hand_plan(cell)
    device = _device(cell)
    if hand.device_native and device.type != "cpu":       # torch's own kernel off the CPU: say so
        return Plan("native", hand.reason, hand.run, device_native=True)
    if hand.path == "fused" and derived == "auto" and derived_ahead(hand, device):
        where = "where its time loop runs in C" if device.type == "cpu" else \
            "on CUDA (its loops replay as CUDA Graphs, cellsearch.fast.cudagraph)"
        return _derived_plan(cell, f"preferred to the hand-written kernel {where}, else fused: {hand.reason}",
                             fallback=hand)
    if hand.path != "reference" or derived == "off":
        return hand
    why = hand.reason.replace(" (reference loop)", "")
    return _derived_plan(cell, f"no hand-written path: {why}")


def _device(cell: Any) -> torch.device:
    p = next(iter(cell.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def derived_ahead(hand: Plan, device: torch.device) -> bool:
    """Whether the derived path goes ahead of the hand-written plan ``hand`` on ``device`` (the plan, and
    each call of a derived plan with ``hand`` as its fallback): on the CPU unless ``hand`` does less
    arithmetic than the step (``Plan.first``; the derived path then still needs its C loop, else the
    hand kernel takes the cell); on CUDA where the derived loops replay as CUDA Graphs, unless ``hand``
    is torch's native kernel there (``Plan.device_native``)."""
    if device.type == "cpu":
        return not hand.first
    from .cudagraph import enabled

    return not hand.device_native and enabled(device)


def _derived_plan(cell: Any, why: str, fallback: Plan | None = None) -> Plan:
    """The derived path. Forced (tests, bench): the step is traced now, and a step that cannot be
    derived plans the reference loop. Otherwise the step is traced when the path first runs (a cell
    that never runs a large enough sequence pays nothing); if it cannot be derived then,
    :func:`cellsearch.fast.plan` turns the plan into the reference loop with the reason."""
    from .derived import DerivationError, Derived

    forced = why == "forced"
    runner = Derived(forced=forced)
    runner.fallback_plan = fallback
    if forced:
        try:
            runner.probe(cell)
        except DerivationError as exc:
            return _reference(f"{why}; the step could not be derived: {exc} (reference loop)")
    p = next(iter(cell.parameters()), None)
    runner.plan_why, runner.plan_device = why, p.device if p is not None else "cpu"
    runner.described = (runner.c_note, runner.loop_note)     # what the plan's line knows (see settled)
    return Plan("derived", _derived_reason(runner), runner)


def _derived_reason(runner: Any) -> str:
    return f"whole-sequence function derived from the step ({runner.describe(runner.plan_device)}); " \
           f"{runner.plan_why}"


def settled(p: Plan) -> Plan:
    """``p``, or the reference plan (with the reason) when its derived runner found that the step cannot
    be derived (or, with a hand-written fallback, that its time loop does not run in C: the hand plan); a
    derived plan's line is rebuilt when its runner has since found why the C generator does not compile
    the step or whether the time loop runs in C (``Derived.c_note``, ``loop_note``: known once traced)."""
    failure = getattr(p.run, "failure", None) if p.path == "derived" else None
    fallback = getattr(p.run, "fallback_plan", None) if p.path == "derived" else None
    if fallback is not None and (failure is not None or getattr(p.run, "hand_only", None)):
        why = failure or p.run.hand_only  # type: ignore[union-attr]
        return Plan(fallback.path, f"{fallback.reason}; the derived path's time loop does not run in C "
                                   f"({why})", fallback.run)
    if failure is None:
        known = (getattr(p.run, "c_note", None), getattr(p.run, "loop_note", None))
        if p.path == "derived" and getattr(p.run, "described", known) != known:   # compiler / loop now known
            p.run.described = known  # type: ignore[union-attr]
            return Plan("derived", _derived_reason(p.run), p.run)
        return p
    return _reference(f"{p.reason.split('; ', 1)[-1]}; the step could not be derived: {failure} "
                      "(reference loop)")


#: the roles whose primitives are asked for a hand-written kernel, in this order
ROLES = ("update", "saturation", "gate", "recurrence", "init")


def _resolve(target: str) -> Callable[[Any], Plan | str]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _hand_plan(cell: Any) -> Plan:
    """The first plan a kernel declared by one of the cell's primitives offers, or the reference loop
    with every kernel's reason (none declared: the derived path serves the cell)."""
    reasons = []
    for role in ROLES:
        prim = getattr(cell, role, None)
        for target in getattr(prim, "kernels", ()):
            try:
                offer = _resolve(target)(cell)
            except (ImportError, AttributeError) as exc:
                offer = f"{role} {prim.name!r}: kernel {target!r} could not be loaded ({exc})"
            if isinstance(offer, Plan):
                return offer
            reasons.append(str(offer))
    if not reasons:
        reasons.append(f"no hand-written kernel declared by update {cell.update.name!r} or the other primitives")
    return _reference("; ".join(dict.fromkeys(reasons)) + " (reference loop)")
