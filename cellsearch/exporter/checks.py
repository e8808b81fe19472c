"""Checks run on a written export: import it, compare it with the model, and try torch.export (dynamic
batch and time), torch.jit.trace and script, and torch.fx; what ran and what came out is returned for the card."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .errors import ExportError

__all__ = ["CHECK_SHAPES", "EXPORT_SHAPE", "check_export"]

CHECK_SHAPES = ((3, 7), (5, 33), (1, 1))  # (batch, time) the export is checked at
EXPORT_SHAPE = (4, 20)  # (batch, time) of the example torch.export sees
TRACE_SHAPE = (4, 8)  # (batch, time) torch.jit.trace records (its loop unrolled: kept short)
TOLERANCE = 1e-5  # on max |Δ| / max(1, max |y|)


def check_export(py: Path, model: Any) -> dict[str, Any]:
    """Import the written module and check it against ``model`` (a SequenceModel): eager outputs at
    :data:`CHECK_SHAPES`; ``torch.export.export`` with dynamic batch and time (exported at
    :data:`EXPORT_SHAPE`, outputs at the same shapes); ``torch.jit.trace`` (at the traced length and at
    another); ``torch.jit.script``; ``torch.fx.symbolic_trace`` (outputs compared). Returns what ran and
    what came out; an eager mismatch is an :class:`ExportError` (the module would be wrong)."""
    import torch

    module = _import_module(py)
    try:
        exported = module.load()
        d = model.spec.input_size
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn(b, t, d, generator=gen) for b, t in CHECK_SHAPES]
        eager = _max_diff(exported, inputs, _reference(model, inputs))
        if not eager < TOLERANCE:
            raise ExportError(f"export: the generated module differs from the model by {eager:.3g}")
        example = torch.randn(*EXPORT_SHAPE, d, generator=gen)
        return {"eager": {"shapes": [list(s) for s in CHECK_SHAPES], "max_abs_diff": eager},
                "torch.export": _check_torch_export(exported, example, inputs),
                "torch.jit.trace": _check_jit_trace(exported, d),
                "torch.jit.script": _attempt(lambda: torch.jit.script(exported)),
                "torch.fx.symbolic_trace": _check_fx(exported, inputs)}
    finally:
        import sys

        sys.modules.pop(module.__name__, None)


def _reference(model: Any, inputs: list[Any]) -> list[Any]:
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            return [model(x.to(device))[0].cpu() for x in inputs]
    finally:
        model.train(was_training)


def _max_diff(fn: Any, inputs: list[Any], want: list[Any]) -> float:
    """max |Δ| over the inputs, each in units of max(1, max |y|): float rounding grows with the outputs
    (a model whose outputs reach 1e5 differs from its export by more than 1e-5 while equal to rounding)."""
    import torch

    with torch.no_grad():
        return max(float((fn(x)[0] - w).abs().max()) / max(1.0, float(w.abs().max())) for x, w in zip(inputs, want))


def _check_torch_export(exported: Any, example: Any, inputs: list[Any]) -> dict[str, Any]:
    """torch.export with batch and time dynamic; the program's outputs against the eager module's."""
    import torch
    from torch.export import Dim

    try:
        program = torch.export.export(exported, (example,), dynamic_shapes=({0: Dim("batch"), 1: Dim("time")},))
        diff = _max_diff(program.module(), inputs, [exported(x)[0] for x in inputs])
    except Exception as exc:  # reported in the card, not fatal: the eager module is still right
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": diff < TOLERANCE, "dynamic": ["batch", "time"], "exported_at": list(EXPORT_SHAPE),
            "shapes": [list(s) for s in CHECK_SHAPES], "max_abs_diff": diff}


def _check_jit_trace(exported: Any, d: int) -> dict[str, Any]:
    """torch.jit.trace at :data:`TRACE_SHAPE`, run at another batch with the traced length and at
    another length: the trace records the time loop unrolled, so only the traced length can hold."""
    import torch

    same, other = (3, TRACE_SHAPE[1]), (3, TRACE_SHAPE[1] - 3)
    try:
        # the tracer warns about the module's input checks (Python booleans of shapes): what it means,
        # that the trace holds at its own length only, is what this check measures and the card says
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            traced = torch.jit.trace(exported, (torch.randn(*TRACE_SHAPE, d),), check_trace=False)
    except Exception as exc:
        return {"ok": False, "error": _first_line(exc)}
    for w in caught:                          # anything but the tracer's own warnings still reaches the user
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    out: dict[str, Any] = {"traced_at": list(TRACE_SHAPE),
                           "tracer_warnings": sum(issubclass(w.category, torch.jit.TracerWarning) for w in caught)}
    for key, (b, t) in (("same_length", same), ("other_length", other)):
        x = torch.randn(b, t, d)
        try:
            diff = _max_diff(traced, [x], [exported(x)[0]])
            out[key] = {"shape": [b, t], "ok": diff < TOLERANCE, "max_abs_diff": diff}
        except Exception as exc:
            out[key] = {"shape": [b, t], "ok": False, "error": _first_line(exc)}
    out["ok"] = out["same_length"]["ok"]
    return out


def _check_fx(exported: Any, inputs: list[Any]) -> dict[str, Any]:
    """torch.fx.symbolic_trace with ``state=None`` fixed (the zero initial state); outputs compared."""
    import torch

    try:
        gm = torch.fx.symbolic_trace(exported, concrete_args={"state": None})
        diff = _max_diff(gm, inputs, [exported(x)[0] for x in inputs])
    except Exception as exc:
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": diff < TOLERANCE, "concrete_args": {"state": None}, "shapes": [list(s) for s in CHECK_SHAPES],
            "max_abs_diff": diff}


def _attempt(fn: Any) -> dict[str, Any]:
    try:
        fn()
    except Exception as exc:
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": True}


def _first_line(exc: BaseException) -> str:
    """The error in one line; for TorchScript's interpreter, its last line (the first is boilerplate)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("The following operation failed in the TorchScript"):
        return lines[-1].strip()[:200]
    text = lines[0][:200] if lines else ""
    if "Expression of type dots" in text:
        text += " (TorchScript has no variable-length tuple type: the state is typed tuple[Tensor, ...])"
    return f"{type(exc).__name__}: {text}"


def _import_module(py: Path) -> Any:
    """Import a written module under a private name (torch.export's tracer needs it in sys.modules)."""
    import importlib.util
    import sys

    name = f"_cellsearch_export_check_{os.getpid()}_{py.stem}"
    spec = importlib.util.spec_from_file_location(name, py)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
