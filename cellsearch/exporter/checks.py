"""Checks run on a written export: import it, compare it with the model, and try torch.export (dynamic
batch and time), TorchScript and torch.fx; what ran and what came out is returned for the card."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ExportError

__all__ = ["CHECK_SHAPES", "check_export"]

CHECK_SHAPES = ((3, 7), (5, 33), (1, 1))  # (batch, time) the export is checked at; exported at (4, 20)


def check_export(py: Path, model: Any) -> dict[str, Any]:
    """Import the written module and check it against ``model`` (a SequenceModel): eager outputs at
    :data:`CHECK_SHAPES`, ``torch.export.export`` with dynamic batch and time (outputs at the same
    shapes), ``torch.jit.script`` and ``torch.fx.symbolic_trace``. Returns what ran and what came out;
    an eager mismatch is an :class:`ExportError` (the module would be wrong)."""
    import torch

    module, exported = _import_module(py), None
    try:
        exported = module.load()
        inputs = [torch.randn(b, t, model.spec.input_size) for b, t in CHECK_SHAPES]
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            want = [model(x.to(device))[0].cpu() for x in inputs]
            eager = max(float((exported(x)[0] - w).abs().max()) for x, w in zip(inputs, want))
        model.train(was_training)
        if not eager < 1e-5:
            raise ExportError(f"export: the generated module differs from the model by {eager:.3g}")
        shapes = [list(s) for s in CHECK_SHAPES]
        return {"eager": {"shapes": shapes, "max_abs_diff": eager},
                "torch.export": _check_torch_export(exported, inputs, want, model.spec.input_size),
                "torch.jit.script": _attempt(lambda: torch.jit.script(exported)),
                "torch.fx.symbolic_trace": _attempt(lambda: torch.fx.symbolic_trace(exported))}
    finally:
        import sys

        sys.modules.pop(module.__name__, None)


def _check_torch_export(exported: Any, inputs: list[Any], want: list[Any], d: int) -> dict[str, Any]:
    import torch
    from torch.export import Dim

    try:
        program = torch.export.export(exported, (torch.randn(4, 20, d),),
                                      dynamic_shapes=({0: Dim("batch"), 1: Dim("time")},))
        with torch.no_grad():
            diff = max(float((program.module()(x)[0] - w).abs().max()) for x, w in zip(inputs, want))
    except Exception as exc:  # reported in the card, not fatal: the eager module is still right
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": diff < 1e-5, "dynamic": ["batch", "time"], "max_abs_diff": diff}


def _attempt(fn: Any) -> dict[str, Any]:
    try:
        fn()
    except Exception as exc:
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": True}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


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
