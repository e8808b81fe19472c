"""The small public surface: build cells and networks by name or spec, count parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from . import registry
from .cards import CellCard
from .cells import ComposedCell
from .depth import StackedRNN
from .spec import CELL_ROLES, CellSpec, DepthSpec, ModelSpec, SpecError

__all__ = ["get_cell", "create_cell", "create_rnn", "count_parameters", "parameter_groups", "resolve", "make_task"]


def get_cell(name: str) -> CellCard:
    """The card of a registered cell (``.spec``, ``.citation``, ``.equations``, ``.reported``)."""
    return registry.get_cell_card(name)


def resolve(name_or_spec: str | CellSpec | ModelSpec | Mapping[str, Any],
            **overrides: Any) -> tuple[CellSpec, DepthSpec]:
    """A cell name, CellSpec, ModelSpec or mapping → (CellSpec, base DepthSpec).

    ``overrides`` may change CellSpec fields (``gate="ur"``, ``options={...}``).
    """
    depth = DepthSpec()
    if isinstance(name_or_spec, str):
        card = get_cell(name_or_spec)
        spec, depth = card.spec, card.depth
    elif isinstance(name_or_spec, ModelSpec):
        spec, depth = name_or_spec.cell, name_or_spec.depth
    elif isinstance(name_or_spec, CellSpec):
        spec = name_or_spec
    elif isinstance(name_or_spec, Mapping):
        spec = CellSpec.from_dict(name_or_spec)
    else:
        raise TypeError(f"expected a cell name, CellSpec or ModelSpec, got {type(name_or_spec).__name__}")
    unknown = set(overrides) - {*CELL_ROLES, "options"}
    if unknown:
        raise SpecError(f"cell.{sorted(unknown)[0]}", sorted(unknown)[0], f"one of {[*CELL_ROLES, 'options']}")
    return (spec.replace(**overrides) if overrides else spec), depth


def create_cell(name_or_spec: str | CellSpec, input_size: int, hidden_size: int,
                transition: str | None = None, **options: Any) -> ComposedCell:
    """One step of a cell: ``forward(x_t [B, d], state) -> (h_t [B, n], state)``.

    ``options`` override CellSpec fields (``gate="ur"``, ``init="ugi"``, ``options={...}``);
    ``transition`` (none | deep | deep_shortcut) defaults to the card's.
    """
    spec, depth = resolve(name_or_spec, **options)
    depth = depth if transition is None else depth.replace(transition=transition)
    return ComposedCell(spec, input_size, hidden_size, depth.transition, depth.transition_layers)


def create_rnn(name_or_spec: str | CellSpec | ModelSpec, input_size: int, hidden_size: int,
               num_layers: int | None = None, depth: DepthSpec | Mapping[str, Any] | None = None,
               **options: Any) -> StackedRNN:
    """A whole network, batch first: ``forward(x [B, T, d], state=None) -> (out [B, T, n], state)``.

    The depth configuration starts from the cell card's (DT cells carry one), is updated by ``depth``
    (a DepthSpec replaces it, a mapping changes fields), then by ``num_layers`` (default: 1, or the
    depth's). ``options`` override CellSpec fields.
    """
    spec, base = resolve(name_or_spec, **options)
    if isinstance(depth, DepthSpec):
        base = depth
    elif isinstance(depth, Mapping):
        base = base.replace(**dict(depth))
    elif depth is not None:
        raise TypeError(f"depth must be a DepthSpec or a mapping, got {type(depth).__name__}")
    if num_layers is not None:
        base = base.replace(layers=num_layers)
    return StackedRNN(spec, input_size, hidden_size, base)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (free) parameters; skew-symmetric parametrizations store only their free entries."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_groups(module: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups honouring each primitive's ``lr_scale`` (asRNN's skew at 0.1×)."""
    scaled: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for sub in module.modules():
        scale = getattr(sub, "lr_scale", None)
        if scale is None or scale == 1.0:
            continue
        for p in sub.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                scaled.setdefault(float(scale), []).append(p)
    rest = [p for p in module.parameters() if id(p) not in seen]
    groups = [{"params": rest, "lr": lr, "lr_scale": 1.0}]
    groups += [{"params": ps, "lr": lr * s, "lr_scale": s} for s, ps in sorted(scaled.items())]
    return [g for g in groups if g["params"]]


def make_task(name: str | Mapping[str, Any], **options: Any) -> Any:
    """A registered task with its options, validated: ``cs.make_task("adding", seq_len=50)``.

    The task (a :class:`~cellsearch.tasks.Task`) knows its sizes (``input_size``, ``output_size``), loss,
    metric and memoryless baseline, and gives deterministic loaders (``task.make_loaders(batch_size, seed)``).
    ``name`` may also be the study file's mapping (``{"name": "adding", "seq_len": 50}``). Unknown names
    and bad options raise one-line errors naming what is allowed.
    """
    from .tasks import make_task as _make

    cfg = dict(name) if isinstance(name, Mapping) else {"name": name}
    return _make({**cfg, **options})
