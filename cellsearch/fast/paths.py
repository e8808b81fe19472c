"""Which execution path a composed cell takes: native kernel, fused or derived sequence function, or the
reference loop.

The plan is decided once per cell (from its primitives' classes, never from names alone) and cached
beside the cell; :func:`cellsearch.fast.explain` prints it. Paths:

- ``native``: the spec is exactly LSTM (update lstm, gate sigmoid, saturation tanh, no deep transition;
  any init, any recurrence) or exactly GRU → :mod:`cellsearch.fast.native` (torch's kernels: oneDNN on
  the CPU, cuDNN on CUDA). Exactly-GRU runs fused on the CPU instead when the C kernels are built,
  because torch's CPU GRU is slower (see :data:`NATIVE`).
- ``fused``: one whole-sequence autograd function (:mod:`cellsearch.fast.fused`) for updates lstm,
  lstm_tied, gru, mgu, star with gates sigmoid / ur / refined and saturation tanh / identity (pointwise
  work in the compiled C kernels of :mod:`cellsearch.fast.ckernels` for float32/float64 on the CPU,
  otherwise in torch ops, :mod:`cellsearch.fast.kernels`); vanilla with tanh / identity, with a deep
  transition (any number of layers, with or without shortcut), or with adaptive saturation (torch ops).
  Any recurrence: its matrix is formed once per sequence outside the function.
- ``derived``: everything else (adaptive saturation on a gated update, deep transition on a gated
  update, STAR's ``beta`` option, third-party primitives): a whole-sequence function derived from the
  cell's own step (:mod:`cellsearch.fast.derived`; Inductor-compiled pointwise work on the CPU).
  ``cellsearch.fast.force_derived()`` (or ``CELLSEARCH_FAST_DERIVED=force``) puts every cell on it;
  ``CELLSEARCH_FAST_DERIVED=0`` turns it off.
- ``reference``: a step that cannot be derived (e.g. control flow that depends on tensor values): the
  plain step loop, :meth:`ComposedCell._reference_sequence
  <cellsearch.cells.ComposedCell._reference_sequence>`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..primitives import gate as gates
from ..primitives import saturation as sats
from ..primitives import update as updates
from .fused import Kernel, run_fused
from .gates import GateOps

__all__ = ["Plan", "build_plan", "NATIVE", "use_c", "settled"]

State = tuple[Tensor, ...]
Runner = Callable[[Any, Tensor, State], tuple[Tensor, State]]


@dataclass(frozen=True)
class Plan:
    """``path`` (native | fused | derived | reference), a one-line ``reason`` and the runner (None:
    reference)."""

    path: str
    reason: str
    run: Runner | None = None


def _reference(reason: str) -> Plan:
    return Plan("reference", reason)


def _gate_ops(cell: Any) -> GateOps | None:
    g, u, n = cell.gate, cell.update, cell.hidden_size
    if type(g) is gates.SigmoidGate:
        return GateOps("sigmoid", tuple(u.gates), n)
    if type(g) is gates.URGate:
        return GateOps("ur", tuple(u.gates), n, keep=u.keep, polarity=u.keep_polarity)
    if type(g) is gates.RefinedGate:
        return GateOps("refined", tuple(u.gates), n, refined=tuple(g.refined), mode=g.options["mode"])
    return None


def _saturation(cell: Any) -> str | None:
    s = type(cell.saturation)
    return "tanh" if s is sats.TanhSaturation else "identity" if s is sats.IdentitySaturation else None


def _kernel(cell: Any, gate: GateOps, sat: str) -> Kernel | str:
    """The torch-op kernel of the cell's update family (or why there is none)."""
    from . import kernels

    u, n = cell.update, cell.hidden_size
    kind = type(u)
    if kind in (updates.LSTM, updates.LSTMTied):
        return kernels.LSTMKernel(n, gate, kind is updates.LSTMTied, sat)
    if kind is updates.GRU:
        return kernels.GRUKernel(n, gate, sat)
    if kind is updates.MGU:
        return kernels.MGUKernel(n, gate, sat)
    if kind is updates.STAR:
        return kernels.STARKernel(n, gate, sat)
    if kind is updates.Vanilla:
        return kernels.VanillaKernel(n, sat)
    return f"update {u.name!r} has no fused kernel"


def _c_kernel(cell: Any, gate: GateOps, sat: str) -> Kernel | None:
    """The C-backed kernel of the family, when the compiled library is available (else None)."""
    from . import ckernels, csrc

    kind = type(cell.update)
    if kind is updates.Vanilla or not use_c():
        return None
    lib = csrc.library()
    if lib is None:
        return None
    n = cell.hidden_size
    if kind in (updates.LSTM, updates.LSTMTied):
        return ckernels.CLSTMKernel(lib, n, gate, kind is updates.LSTMTied, sat)
    if kind is updates.GRU:
        return ckernels.CGRUKernel(lib, n, gate, sat)
    if kind is updates.MGU:
        return ckernels.CMGUKernel(lib, n, gate, sat)
    if kind is updates.STAR:
        return ckernels.CSTARKernel(lib, n, gate, sat)
    return None


_USE_C = True


def use_c(flag: bool | None = None) -> bool:
    """Whether new plans use the compiled pointwise kernels (set with ``flag``; tests compare both)."""
    global _USE_C
    if flag is not None:
        _USE_C = bool(flag)
    return _USE_C


def _fused_runner(kernel: Kernel, c_kernel: Kernel | None) -> Runner:
    from .ckernels import DTYPES

    def run(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
        k = c_kernel if c_kernel is not None and x.device.type == "cpu" and x.dtype in DTYPES else kernel
        return run_fused(k, x, cell.weight_ih, cell.bias, cell.recurrence.matrix(), state,
                         cell.short_input(x), *k.extras(cell))

    return run


#: Exactly-LSTM / exactly-GRU specs: "always" torch's native kernel, or "cuda" (native on CUDA; on the
#: CPU the fused C kernels when available). Measured on a 2-core AMD EPYC, torch 2.13 (docs/bench):
#: torch's CPU GRU has no oneDNN kernel and runs at 0.66–0.76× nn.LSTM, the fused GRU is faster.
NATIVE = {"lstm": "always", "gru": "cuda"}


def _exact_runner(c_kernel: Kernel, native_run: Runner) -> Runner:
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
    if hand.path != "reference" or derived == "off":
        return hand
    why = hand.reason.replace(" (reference loop)", "")
    return _derived_plan(cell, f"no hand-written path: {why}")


def _derived_plan(cell: Any, why: str) -> Plan:
    """The derived path. Forced (tests, bench): the step is traced now, and a step that cannot be
    derived plans the reference loop. Otherwise the step is traced when the path first runs (a cell
    that never runs a large enough sequence pays nothing); if it cannot be derived then,
    :func:`cellsearch.fast.plan` turns the plan into the reference loop with the reason."""
    from .derived import DerivationError, Derived

    forced = why == "forced"
    runner = Derived(forced=forced)
    if forced:
        try:
            runner.probe(cell)
        except DerivationError as exc:
            return _reference(f"{why}; the step could not be derived: {exc} (reference loop)")
    return Plan("derived", f"whole-sequence function derived from the step ({runner.describe()}); {why}",
                runner)


def settled(p: Plan) -> Plan:
    """``p``, or the reference plan (with the reason) when its derived runner found that the step cannot
    be derived."""
    failure = getattr(p.run, "failure", None) if p.path == "derived" else None
    if failure is None:
        return p
    return _reference(f"{p.reason.split('; ', 1)[-1]}; the step could not be derived: {failure} "
                      "(reference loop)")


def _hand_plan(cell: Any) -> Plan:
    """The hand-written paths (native, fused) or the reference loop."""
    from . import native

    u, g = cell.update, cell.gate
    sat = _saturation(cell)
    if cell.transition is not None:
        if type(u) is updates.Vanilla and sat is not None:
            from .kernels import TransitionKernel

            tr = cell.transition
            kernel = TransitionKernel(cell.hidden_size, len(tr.layers), tr.shortcut is not None, sat)
            return Plan("fused", f"fused vanilla/deep transition/{sat} sequence function (torch ops)",
                        _fused_runner(kernel, None))
        return _reference("deep transition: no fused path (reference loop)")
    if type(cell.saturation) is sats.AdaptiveSaturation and type(u) is updates.Vanilla:
        from .kernels import AdaptiveKernel

        return Plan("fused", "fused vanilla/adaptive sequence function (torch ops)",
                    _fused_runner(AdaptiveKernel(cell.hidden_size), None))
    if sat is None:
        return _reference(f"saturation {cell.saturation.name!r}: no fused path (reference loop)")
    exact = type(g) is gates.SigmoidGate and sat == "tanh" and type(u) in (updates.LSTM, updates.GRU)
    if exact and NATIVE[u.name] == "always":
        run = native.lstm_sequence if type(u) is updates.LSTM else native.gru_sequence
        return Plan("native", f"exactly {u.name.upper()}: torch.{u.name}", run)
    if type(u) is updates.STAR and u.options.get("beta") is not None:
        return _reference("update 'star' with option beta: no fused path (reference loop)")
    gate = _gate_ops(cell)
    if gate is None:
        return _reference(f"gate {g.name!r}: no fused path (reference loop)")
    kernel = _kernel(cell, gate, sat)
    if isinstance(kernel, str):
        return _reference(kernel + " (reference loop)")
    c_kernel = _c_kernel(cell, gate, sat)
    if exact:           # native kernels except where the fused C kernels are measured faster (CPU)
        run = native.lstm_sequence if type(u) is updates.LSTM else native.gru_sequence
        if c_kernel is None:
            return Plan("native", f"exactly {u.name.upper()}: torch.{u.name}", run)
        return Plan("fused", f"exactly {u.name.upper()}: fused sequence function (C pointwise kernels) on "
                    f"the CPU in float32/float64, torch.{u.name} elsewhere", _exact_runner(c_kernel, run))
    how = "C pointwise kernels" if c_kernel is not None else "torch ops"
    return Plan("fused", f"fused {u.name}/{g.name}/{sat} sequence function ({how})",
                _fused_runner(kernel, c_kernel))
