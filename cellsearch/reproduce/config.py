"""Reproduction configs: plain mappings (YAML-able) of experiments, validated into frozen dataclasses.

A config is::

    name: gu2020
    seeds: 3                    # seeds first_seed, first_seed + 1, ...
    first_seed: 0
    experiments:
      - name: adding
        title: "Adding problem, T = 100"          # optional
        task: {name: adding, seq_len: 100}
        model: {hidden_size: 64}                  # or {param_budget: 20000}
        train: {steps: 1000, steps_per_epoch: 100, batch_size: 64, lr: 2.0e-3}
        solved_below: 0.01                        # optional: a run is "solved" once val metric < this
        layers: [1]                               # optional: every variant at every depth
        cells:                                    # a cell name, or a mapping
          - lstm
          - {cell: chrono_lstm, options: {bias: {t_max: 100}}}
          - {label: sRNN, cell: vanilla, layers: 2, train: {lr: 1.0e-3}, model: {param_budget: 9000}}
    # plus keys of a particular reproduction (e.g. ``gradient_maps`` for star)

The cells are a study's cells, read by the same rule (:mod:`cellsearch.config.variants`): a name or a variant
mapping with ``label`` (default: the cell name, with ``×L`` when several depths are run), ``cell``,
``layers``, ``spec`` (primitives replacing the card's, e.g. ``{init: orthogonal, bias: chrono}``), ``options``
(per-role primitive options merged into the card's), ``depth`` (DepthSpec fields), ``train`` (merged over the
experiment's) and ``model`` (replacing the experiment's sizing). Each experiment is a study grid
(``Experiment.grid``, a :class:`~cellsearch.config.study.StudyConfig` named
``<reproduction>-<experiment>``: the variants × the seeds), read by the study reader; its jobs are the grid's
cells × seeds, and ``cellsearch reproduce NAME --study-files DIR`` writes the grids as study files that
``cellsearch run`` trains. Every key is checked; a mistake raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config.reader import Reader
from ..config.study import StudyConfig, study_from_mapping
from ..config.variants import SIZE_KEYS, Variant, read_variant
from ..config.yamlio import plain
from ..errors import StudyError
from .runner import Job

__all__ = ["ConfigError", "Variant", "Experiment", "ReproConfig", "parse_config"]

_TOP = ("name", "seeds", "first_seed", "experiments")
_EXPERIMENT = ("name", "title", "task", "model", "train", "solved_below", "layers", "cells")


class ConfigError(StudyError):
    """A mistake in a reproduction config (printed as one line by the CLI): ``ConfigError(message)``, or
    raised by the study files' :class:`~cellsearch.config.reader.Reader` naming the key."""


#: the reproduction configs are read by the study files' one validation system
_READ = Reader("config", error=ConfigError)


def _key(where: str) -> str:
    return where[len("config."):] if where.startswith("config.") else ("" if where == "config" else where)


@dataclass(frozen=True)
class Experiment:
    """One task with its variants: a study grid (``grid``: task, model sizing, training, the variants as
    its cells, the seeds; what ``cellsearch run`` trains from the study file :meth:`ReproConfig.study_files`
    writes) and what the report needs besides: the title, the threshold of "solved", and the task, model and
    train mappings as the config wrote them."""

    name: str
    grid: StudyConfig
    task: Mapping[str, Any]
    model: Mapping[str, Any]
    train: Mapping[str, Any]
    title: str = ""
    solved_below: float | None = None

    @property
    def variants(self) -> tuple[Variant, ...]:
        """The grid's cells, in order."""
        assert self.grid.cells is not None
        return self.grid.cells

    def jobs(self) -> list[Job]:
        """One job per cell × seed of the grid, variants outermost (each resolved as the study's trial of
        the same cell and seed is: :func:`cellsearch.jobs.variant_spec`)."""
        grid = self.grid
        sizing = ({"param_budget": grid.model.param_budget} if grid.model.param_budget is not None
                  else {"hidden_size": grid.model.hidden_size})
        return [Job(self.name, v.label, v.cell, grid.task.to_dict(), v.sizes(sizing),
                    {**grid.train_dict(), **plain(v.train)}, seed, v.layers or grid.model.num_layers,
                    plain(v.options), plain(v.depth), plain(v.spec))
                for v in self.variants for seed in grid.seeds or ()]


@dataclass(frozen=True)
class ReproConfig:
    """A validated reproduction config; ``raw`` keeps the mapping (and a reproduction's extra keys)."""

    name: str
    seeds: tuple[int, ...]
    experiments: tuple[Experiment, ...]
    raw: Mapping[str, Any]

    def jobs(self) -> list[Job]:
        """Every job of every experiment."""
        return [job for exp in self.experiments for job in exp.jobs()]

    def studies(self) -> list[StudyConfig]:
        """Each experiment's grid as a study (one per experiment, named ``<reproduction>-<experiment>``)."""
        return [exp.grid for exp in self.experiments]


def _mapping(where: str, value: Any, keys: Sequence[str] | None = None) -> dict[str, Any]:
    return _READ.mapping(_key(where), value, keys)


def _int(where: str, value: Any, low: int) -> int:
    return _READ.integer(_key(where), value, low)  # type: ignore[return-value]


def _variant(where: str, raw: Any, layers: int | None) -> Variant:
    """A cell of an experiment, read by the study files' rule (:func:`~cellsearch.config.variants.read_variant`)
    and its cell registered."""
    variant = read_variant(_READ, where, raw, layers)
    _registered(f"{where}.cell", variant.cell, "cell")
    return variant


def _registered(where: str, name: Any, kind: str) -> None:
    """A registered cell / task name, else ConfigError naming the key (with "did you mean")."""
    from .. import registry

    names = registry.list_cells() if kind == "cell" else registry.list_tasks()
    if name not in names:
        raise ConfigError(f"{where}: {name!r} is not a registered {kind}; "
                          f"{registry.did_you_mean(str(name), names)}expected one of {', '.join(names)}")


def _variants(where: str, data: Mapping[str, Any]) -> list[Variant]:
    """The experiment's cells, each at every depth of its ``layers`` list when it has one (labelled ``×L``)."""
    cells, depths = data["cells"], data.get("layers")
    if not isinstance(cells, Sequence) or isinstance(cells, str) or not cells:
        raise ConfigError(f"{where}.cells: expected a non-empty list of cells")
    if depths is None:
        return [_variant(f"{where}.cells[{i}]", c, None) for i, c in enumerate(cells)]
    if not isinstance(depths, Sequence) or not depths:
        raise ConfigError(f"{where}.layers: expected a non-empty list of depths")
    variants = []
    for i, c in enumerate(cells):
        for d in depths:
            v = _variant(f"{where}.cells[{i}]", c, _int(f"{where}.layers", d, 1))
            variants.append(replace(v, label=f"{v.label} ×{v.layers}"))
    return variants


def _grid(where: str, study: str, data: Mapping[str, Any], variants: Sequence[Variant],
          seeds: Sequence[int]) -> StudyConfig:
    """The experiment as a study grid (read by the study reader; its mistakes named under ``where``): no
    pruning, the budget exactly the grid, the test metrics recorded as the reproduction reports them."""
    train = {"test": True, **data.get("train", {})}
    raw = {"name": study, "description": str(data.get("title", "")), "task": data["task"],
           "cells": [v.to_dict() for v in variants], "seeds": list(seeds), "model": data.get("model", {}),
           "train": train, "search": {"sampler": "random", "pruner": "none", "seed": 0,
                                      "n_trials": len(variants) * len(seeds)}}
    return study_from_mapping(raw, source="config", reader=Reader("config", error=ConfigError, prefix=where))


def _experiment(where: str, raw: Any, seeds: Sequence[int], prefix: str) -> Experiment:
    data = _mapping(where, raw, _EXPERIMENT)
    for key in ("name", "task", "cells"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: missing")
    variants = _variants(where, data)
    labels = [v.label for v in variants]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{where}.cells: duplicate variant label {dup[0]!r}; give each a distinct label")
    solved = data.get("solved_below")
    if solved is not None and (isinstance(solved, bool) or not isinstance(solved, (int, float))):
        raise ConfigError(f"{where}.solved_below: expected a number or null, got {solved!r}")
    task = _mapping(f"{where}.task", data["task"])
    if "name" not in task:
        raise ConfigError(f"{where}.task.name: missing")
    _registered(f"{where}.task.name", task["name"], "task")
    model = _mapping(f"{where}.model", data.get("model", {}), SIZE_KEYS)
    train = _mapping(f"{where}.train", data.get("train", {}))
    name = str(data["name"])
    grid = _grid(where, f"{prefix}-{name}" if prefix else name, data, variants, seeds)
    return Experiment(name=name, grid=grid, task=task, model=model, train=train, title=str(data.get("title", "")),
                      solved_below=None if solved is None else float(solved))


def parse_config(raw: Mapping[str, Any], extra_keys: Sequence[str] = (), seeds: int | None = None) -> ReproConfig:
    """Validate a config mapping; ``extra_keys`` are a reproduction's own top-level keys; ``seeds``
    (when given) overrides the number of seeds."""
    data = _mapping("config", raw, (*_TOP, *extra_keys))
    count = _int("config.seeds", data.get("seeds", 3) if seeds is None else seeds, 1)
    first = _int("config.first_seed", data.get("first_seed", 0), 0)
    experiments = data.get("experiments", [])
    if not isinstance(experiments, Sequence) or isinstance(experiments, str):
        raise ConfigError("config.experiments: expected a list")
    name, seed_list = str(data.get("name", "")), tuple(range(first, first + count))
    parsed = tuple(_experiment(f"experiments[{i}]", e, seed_list, name) for i, e in enumerate(experiments))
    names = [e.name for e in parsed]
    if len(set(names)) != len(names):
        raise ConfigError("config.experiments: experiment names must be distinct")
    return ReproConfig(name, seed_list, parsed, data)
