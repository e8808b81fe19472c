"""cellsearch: search recurrent-network cells composed from gating primitives.

``import cellsearch`` is light: torch is imported when a model is built, Ray only when a Ray study runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import (
    list_cells,
    list_primitives,
    list_tasks,
    plugin_errors,
    register_cell,
    register_primitive,
    register_task,
)
from .spec import CellSpec, DepthSpec, ModelSpec, SpecError

__version__ = "0.1.0"

__all__ = [
    "CellSpec", "DepthSpec", "ModelSpec", "SpecError", "CellCard",
    "list_cells", "list_primitives", "list_tasks", "plugin_errors",
    "register_cell", "register_primitive", "register_task",
    "get_cell", "create_cell", "create_rnn", "count_parameters", "parameter_groups",
    "run_study", "export",
]

_LAZY = {
    "CellCard": ("cellsearch.cards", "CellCard"),
    "get_cell": ("cellsearch.api", "get_cell"),
    "create_cell": ("cellsearch.api", "create_cell"),
    "create_rnn": ("cellsearch.api", "create_rnn"),
    "count_parameters": ("cellsearch.api", "count_parameters"),
    "parameter_groups": ("cellsearch.api", "parameter_groups"),
    "run_study": ("cellsearch.search", "run_study"),
    "export": ("cellsearch.exporter", "export"),
}

if TYPE_CHECKING:
    from .api import count_parameters, create_cell, create_rnn, get_cell, parameter_groups
    from .cards import CellCard


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cellsearch' has no attribute {name!r}")
