"""cellsearch: search recurrent-network cells composed from gating primitives.

``import cellsearch`` is light: torch is imported when a model is built, Ray only when a Ray study runs.

    import cellsearch as cs
    cs.list_cells("*lstm*"); cs.get_cell("ur_lstm"); cs.create_rnn("ur_lstm", 8, 64)
    task = cs.make_task("adding", seq_len=50)                     # a registered task with its options
    result = cs.run_study("studies/quickstart.yaml")              # as `cellsearch run`
    result = cs.load_study("studies/quickstart.yaml")             # a study already run: .study .leaderboard()
    model = cs.load_trial_model(result)                           # the best trial's trained model, eval mode
    cs.export(result, "best/")                                    # standalone .py + safetensors

A task plugin subclasses :class:`Task` (or :class:`ClassificationTask` / :class:`SyntheticTask`), declares its
options with :class:`Option` and returns :class:`Loaders` of :class:`ArrayLoader` / :class:`GeneratedLoader`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
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

__all__ = [
    "CellSpec", "DepthSpec", "ModelSpec", "SpecError", "CellCard",
    "list_cells", "list_primitives", "list_tasks", "plugin_errors",
    "register_cell", "register_primitive", "register_task",
    "get_cell", "create_cell", "create_rnn", "count_parameters", "parameter_groups",
    "run_study", "export", "load_study", "load_trial_model", "make_task",
    "Task", "ClassificationTask", "SyntheticTask", "Option", "Loaders", "ArrayLoader", "GeneratedLoader",
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
    "load_study": ("cellsearch.search.results", "load_study"),
    "load_trial_model": ("cellsearch.search.results", "load_trial_model"),
    "make_task": ("cellsearch.api", "make_task"),
    # what a task plugin subclasses and returns (see cellsearch.tasks.base for the contract)
    "Task": ("cellsearch.tasks", "Task"),
    "ClassificationTask": ("cellsearch.tasks", "ClassificationTask"),
    "SyntheticTask": ("cellsearch.tasks", "SyntheticTask"),
    "Option": ("cellsearch.tasks", "Option"),
    "Loaders": ("cellsearch.tasks", "Loaders"),
    "ArrayLoader": ("cellsearch.tasks", "ArrayLoader"),
    "GeneratedLoader": ("cellsearch.tasks", "GeneratedLoader"),
}

if TYPE_CHECKING:
    from .api import count_parameters, create_cell, create_rnn, get_cell, make_task, parameter_groups
    from .cards import CellCard
    from .search.results import load_study, load_trial_model
    from .tasks import ArrayLoader, ClassificationTask, GeneratedLoader, Loaders, Option, SyntheticTask, Task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cellsearch' has no attribute {name!r}")
