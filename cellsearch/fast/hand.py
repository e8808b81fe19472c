"""The hand-written whole-sequence kernels, each declared by the primitive that owns it.

An update (or saturation) lists its kernels in ``kernels`` (``"cellsearch.fast.hand:lstm"``); the
functions here are those entries. Each takes a cell and returns a :class:`~cellsearch.fast.paths.Plan`
or the reason it does not serve the cell. They read what the other primitives of the cell are inside a
fused loop from the primitives themselves (a gate's :meth:`~cellsearch.primitives.gate.Gate.fused_ops`,
a saturation's ``fused``), never from their names or classes, so a plugin gate or saturation that
declares the same fused form runs on these kernels too, and one that does not takes the derived path.

Kernels: the torch-op kernels of :mod:`cellsearch.fast.kernels` (any device and dtype), the compiled C
kernels of :mod:`cellsearch.fast.ckernels` (float32/float64 on the CPU, when the library builds), and
torch's native LSTM/GRU (:mod:`cellsearch.fast.native`) for exactly-LSTM and exactly-GRU cells on CUDA
or where the C kernels are not built (:data:`cellsearch.fast.paths.NATIVE`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import kernels as tk
from .fused import Kernel
from .gates import GateOps
from .paths import NATIVE, Plan, Runner, exact_runner, fused_runner, use_c

__all__ = ["vanilla", "lstm", "lstm_tied", "gru", "mgu", "star", "adaptive"]


def _gate(cell: Any) -> GateOps | str:
    form = cell.gate.fused_ops()
    if form is None:
        return f"gate {cell.gate.name!r} has no fused form"
    return GateOps(names=tuple(cell.update.gates), n=cell.hidden_size, **form)


def _common(cell: Any) -> tuple[GateOps, str] | str:
    """The gate ops and saturation of a gated update's fused loop, or why it has none."""
    if cell.transition is not None:
        return "deep transition: no fused path"
    sat = cell.saturation.fused
    if sat is None:
        return f"saturation {cell.saturation.name!r}: no fused path"
    gate = _gate(cell)
    return gate if isinstance(gate, str) else (gate, sat)


def _c_kernel(make: Callable[[Any], Kernel]) -> Kernel | None:
    """The C-backed kernel (``make(lib)``) when the compiled library is available, else None."""
    from . import csrc

    if not use_c():
        return None
    lib = csrc.library()
    return None if lib is None else make(lib)


def _gated(cell: Any, torch_kernel: Callable[[GateOps, str], Kernel],
           c_kernel: Callable[[Any, GateOps, str], Kernel], native: Runner | None = None) -> Plan | str:
    """The plan of a gated update with a torch-op and a C kernel (and torch's native kernel for the
    exact cell: sigmoid gate, tanh saturation, no deep transition)."""
    common = _common(cell)
    if isinstance(common, str):
        return common
    gate, sat = common
    name = cell.update.name
    exact = native is not None and gate.kind == "sigmoid" and sat == "tanh"
    if exact and NATIVE[name] == "always":
        return Plan("native", f"exactly {name.upper()}: torch.{name}", native)
    kernel = torch_kernel(gate, sat)
    ck = _c_kernel(lambda lib: c_kernel(lib, gate, sat))
    if exact:           # native kernels except where the fused C kernels are measured faster (CPU)
        if ck is None:
            return Plan("native", f"exactly {name.upper()}: torch.{name}", native)
        return Plan("fused", f"exactly {name.upper()}: fused sequence function (C pointwise kernels) on "
                    f"the CPU in float32/float64, torch.{name} elsewhere", exact_runner(ck, native),
                    device_native=True)
    how = "C pointwise kernels" if ck is not None else "torch ops"
    return Plan("fused", f"fused {name}/{cell.gate.name}/{sat} sequence function ({how})",
                fused_runner(kernel, ck))


def _lstm(cell: Any, tied: bool) -> Plan | str:
    from . import ckernels, native

    n = cell.hidden_size
    return _gated(cell, lambda g, s: tk.LSTMKernel(n, g, tied, s),
                  lambda lib, g, s: ckernels.CLSTMKernel(lib, n, g, tied, s),
                  None if tied else native.lstm_sequence)


def lstm(cell: Any) -> Plan | str:
    """LSTM (PRIMITIVES.md §1): the fused LSTM kernels (torch.lstm when exact and the C kernels are not
    built here, or on CUDA: :data:`~cellsearch.fast.paths.NATIVE`)."""
    return _lstm(cell, tied=False)


def lstm_tied(cell: Any) -> Plan | str:
    """LSTM with the input gate tied to 1 − f: the fused LSTM kernels."""
    return _lstm(cell, tied=True)


def gru(cell: Any) -> Plan | str:
    """GRU in PyTorch's form: the fused C kernels (faster than torch's CPU GRU), torch.gru elsewhere."""
    from . import ckernels, native

    n = cell.hidden_size
    return _gated(cell, lambda g, s: tk.GRUKernel(n, g, s), lambda lib, g, s: ckernels.CGRUKernel(lib, n, g, s),
                  native.gru_sequence)


def mgu(cell: Any) -> Plan | str:
    """MGU: the fused MGU kernels."""
    from . import ckernels

    n = cell.hidden_size
    return _gated(cell, lambda g, s: tk.MGUKernel(n, g, s), lambda lib, g, s: ckernels.CMGUKernel(lib, n, g, s))


def star(cell: Any) -> Plan | str:
    """STAR, the paper form or the authors' code form (``beta``, plain sigmoid gate): the fused STAR kernels."""
    from . import ckernels

    beta = cell.update.options.get("beta")      # the update requires the plain sigmoid gate with it
    n = cell.hidden_size
    return _gated(cell, lambda g, s: tk.STARKernel(n, g, s, beta),
                  lambda lib, g, s: ckernels.CSTARKernel(lib, n, g, s, beta))


def vanilla(cell: Any) -> Plan | str:
    """Elman RNN with a tanh / identity saturation, with or without a deep transition (torch ops)."""
    sat = cell.saturation.fused
    if sat is None:
        return f"saturation {cell.saturation.name!r}: no fused path"
    if cell.k:
        return f"gate {cell.gate.name!r} adds gate blocks to the vanilla update: no fused path"
    tr = cell.transition
    if tr is not None:
        kernel: Kernel = tk.TransitionKernel(cell.hidden_size, len(tr.layers), tr.shortcut is not None, sat)
        return Plan("fused", f"fused vanilla/deep transition/{sat} sequence function (torch ops)",
                    fused_runner(kernel, None))
    return Plan("fused", f"fused vanilla/{cell.gate.name}/{sat} sequence function (torch ops)",
                fused_runner(tk.VanillaKernel(cell.hidden_size, sat), None))


def adaptive(cell: Any) -> Plan | str:
    """asRNN's adaptive saturation on the Elman update, no deep transition (torch ops)."""
    if "elman" not in cell.update.provides or cell.k:
        return f"adaptive saturation on update {cell.update.name!r}: fused only on an Elman update"
    if cell.transition is not None:
        return "adaptive saturation with a deep transition: no fused path"
    return Plan("fused", "fused vanilla/adaptive sequence function (torch ops; one n × n product a step "
                "where the step has three, so ahead of the derived path)",
                fused_runner(tk.AdaptiveKernel(cell.hidden_size), None), first=True)
