"""What a study file must satisfy beyond its structure, checked before anything runs.

:mod:`cellsearch.config` reads a study or space file torch-free (keys, types, ranges). This module, on the
search floor, checks what needs the registry or a library, each mistake one
:class:`~cellsearch.errors.StudyError` line naming the file and key:

- the task is registered and its options are valid (the task object is built; no data is read);
- cell, primitive and published names are registered; primitive options are known and construct; a
  grid's variants build;
- every chosen update combines with at least one choice of every other role, and every combination the
  sampler can propose builds (:class:`~cellsearch.search.space.SearchSpace`);
- objective metrics exist for the task, with their natural direction filled in where none was given;
- Optuna's sampler / pruner constructors accept the arguments given.

:func:`load_study`, :func:`study_from_mapping`, :func:`load_space` and :func:`space_from_mapping` are the
config floor's readers followed by these checks: what ``cellsearch run`` and ``validate`` use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import config
from ..config.reader import Reader, first_line
from ..config.space import SpaceConfig
from ..config.study import ModelConfig, ObjectiveConfig, StudyConfig
from ..errors import StudyError, did_you_mean
from ..registry import RegistryError, get_primitive, list_cells, list_primitives
from ..spec import CELL_ROLES, SpecError

__all__ = ["check_study", "check_space", "check_cells", "load_study", "study_from_mapping", "load_space",
           "space_from_mapping", "objective_metrics"]


def load_study(path: str | Path, overrides: Mapping[str, Any] | Iterable[str] = ()) -> StudyConfig:
    """Read, override and fully validate a study file (structure, then :func:`check_study`)."""
    return check_study(config.load_study(path, overrides))


def study_from_mapping(raw: Mapping[str, Any], source: str = "<inline>", base: Path | None = None,
                       overrides: Mapping[str, Any] | Iterable[str] = ()) -> StudyConfig:
    """A fully validated :class:`StudyConfig` from a raw mapping (as read from YAML)."""
    return check_study(config.study_from_mapping(raw, source=source, base=base, overrides=overrides))


def load_space(path: str | Path) -> SpaceConfig:
    """Read and fully validate a space file."""
    return check_space(config.load_space(path))


def space_from_mapping(raw: Any, source: str = "<inline>") -> SpaceConfig:
    """A fully validated :class:`SpaceConfig` from a raw mapping."""
    return check_space(config.space_from_mapping(raw, source=source))


def check_study(cfg: StudyConfig) -> StudyConfig:
    """``cfg`` checked against the registry and Optuna; returned with the objectives' directions filled."""
    r = Reader(cfg.source)
    task = _task(r, cfg)
    if cfg.cells is not None:
        check_cells(r, "cells", cfg.cells, cfg.model.num_layers)
    if cfg.space is not None:
        check_space(cfg.space)
    _optuna_accepts(r, "search.sampler", cfg.search.sampler, cfg.search.sampler_args)
    _optuna_accepts(r, "search.pruner", cfg.search.pruner, cfg.search.pruner_args)
    objective = _objective(r, cfg.objective, task)
    return cfg if objective == cfg.objective else replace(cfg, objective=objective)


def _task(r: Reader, cfg: StudyConfig) -> Any:
    try:
        from ..tasks import make_task

        return make_task(cfg.task.to_dict())
    except RegistryError as exc:
        raise StudyError.plain(r.source, f"task.name: {exc}") from None
    except SpecError as exc:
        where = exc.where if str(exc.where).startswith("task") else f"task.{exc.where}"
        raise StudyError(r.source, where, exc.value, exc.allowed) from None
    except ImportError as exc:
        raise StudyError.plain(r.source, f"task.name: tasks are not available ({exc})") from None


def check_cells(r: Reader, key: str, cells: Sequence[config.Variant], layers: int) -> None:
    """A grid's cells: registered names; a variant's primitives registered and its cell building (its
    spec, options and depth resolved as the grid will, :func:`cellsearch.jobs.variant_spec`)."""
    known = list_cells()
    for i, v in enumerate(cells):
        where = f"{key}[{i}]"
        r.string(where if v.plain else f"{where}.cell", v.cell, known)
        for role, name in v.spec.items():
            r.string(f"{where}.spec.{role}", name, list_primitives(role))
        if v.plain:
            continue
        from ..cells import check_spec
        from ..jobs import variant_spec

        try:
            cell, _ = variant_spec(v.cell, v.layers or layers, v.spec, v.options, v.depth)
            check_spec(cell)
        except SpecError as exc:
            inner = exc.where[len("cell."):] if exc.where.startswith("cell.") else exc.where
            raise StudyError(r.source, f"{where}.{inner}", exc.value, exc.allowed) from None


def _names(r: Reader, key: str, names: Sequence[str], known: Sequence[str]) -> None:
    for i, name in enumerate(names):
        r.string(f"{key}[{i}]", name, known)


def objective_metrics(task: Any) -> dict[str, str]:
    """Objective metrics and their natural directions for ``task``."""
    out = {"val_loss": "minimize"}
    metric = getattr(task, "metric", None)
    if metric:
        out[f"val_{metric}"] = getattr(task, "metric_direction", "minimize")
    for extra in getattr(task, "metrics", ()) or ():
        name = extra if str(extra).startswith("val_") else f"val_{extra}"
        out.setdefault(name, "maximize" if "acc" in name else "minimize")
    out["params"] = "minimize"
    out["speed"] = "maximize"  # forward + backward tokens/s of the trained model (cellsearch.timing)
    return out


def _objective(r: Reader, objective: Sequence[ObjectiveConfig], task: Any) -> tuple[ObjectiveConfig, ...]:
    allowed = objective_metrics(task)
    out = []
    for i, o in enumerate(objective):
        key = f"objective[{i}]" if len(objective) > 1 else "objective"
        r.string(f"{key}.metric", o.metric, list(allowed))
        out.append(ObjectiveConfig(o.metric, o.direction or allowed[o.metric]))
    return tuple(out)


def _optuna_accepts(r: Reader, key: str, name: str, args: Mapping[str, Any]) -> None:
    """Optuna's own constructor check of a sampler's / pruner's arguments, reported as one line."""
    if not args:
        return
    from .samplers import construct

    kind = key.rsplit(".", 1)[1]
    try:
        construct(kind, name, args)
    except (ValueError, TypeError) as exc:
        raise r.fail(key, dict(args), f"arguments Optuna's {name} {kind} accepts ({first_line(exc)})") from None


def check_space(space: SpaceConfig) -> SpaceConfig:
    """``space`` checked against the registry: names, primitive options, combinations that build."""
    r = Reader(space.source)
    for role, param in space.cell.items():
        known = list_primitives(role)
        for name in param.choices:
            r.string(f"cell.{role}", name, known)
    for prim, options in space.options.items():
        _options(r, prim, options)
    if not isinstance(space.published, bool):
        _names(r, "published", space.published, list_cells())
    _check_compatible(r, space)
    return space


def _options(r: Reader, prim: str, options: Mapping[str, config.Param]) -> None:
    roles = [role for role in CELL_ROLES if prim in list_primitives(role)]
    if not roles:
        every = sorted({n for role in CELL_ROLES for n in list_primitives(role)})
        r.string(f"cell.options.{prim}", prim, every)
    cls = get_primitive(roles[0], prim)
    key = f"cell.options.{prim}"
    known = sorted(getattr(cls, "defaults", {})) or ["(no options)"]
    for k, param in options.items():
        if k not in known:
            raise r.fail(f"{key}.{k}", k, f"one of {known}", did_you_mean(k, known) or "unknown key; ")
        for value in param.choices if param.kind == "categorical" else (param.low,):
            try:
                cls(**{k: value})
            except SpecError as exc:
                raise StudyError(r.source, f"{key}.{k}", value, exc.allowed) from None


def _check_compatible(r: Reader, space: SpaceConfig) -> None:
    """Options must build; every chosen update must combine with at least one choice of every other role;
    every combination the sampler can propose must build."""
    from .space import SearchSpace, check_options, compatible_choices

    check_options(space)
    updates = space.cell["update"].choices if "update" in space.cell else ("lstm",)
    for update in updates:
        for role in CELL_ROLES[1:]:
            if role not in space.cell:
                continue
            ok, reasons = compatible_choices(space, update, role)
            if not ok:
                raise r.fail(
                    f"cell.{role}",
                    list(space.cell[role].choices),
                    f"at least one {role} that combines with update {update!r} ({reasons[0]})",
                )
    SearchSpace(space, ModelConfig())
