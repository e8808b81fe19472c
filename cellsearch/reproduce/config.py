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

A variant mapping takes ``label`` (default: the cell name, with ``×L`` when several depths are run),
``cell``, ``layers``, ``spec`` (primitives replacing the card's, e.g. ``{init: orthogonal, bias: chrono}``), ``options``
(per-role primitive options merged into the card's), ``depth`` (DepthSpec fields), ``train`` and ``model``
(merged over the experiment's). Every key is checked; a mistake raises
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..config.reader import Reader
from ..errors import StudyError
from .runner import Job

__all__ = ["ConfigError", "Variant", "Experiment", "ReproConfig", "parse_config"]

_TOP = ("name", "seeds", "first_seed", "experiments")
_EXPERIMENT = ("name", "title", "task", "model", "train", "solved_below", "layers", "cells")
_VARIANT = ("label", "cell", "layers", "spec", "options", "depth", "train", "model")
_MODEL = ("hidden_size", "param_budget")


class ConfigError(StudyError):
    """A mistake in a reproduction config (printed as one line by the CLI): ``ConfigError(message)``, or
    raised by the study files' :class:`~cellsearch.config.reader.Reader` naming the key."""


#: the reproduction configs are read by the study files' one validation system
_READ = Reader("config", error=ConfigError)


def _key(where: str) -> str:
    return where[len("config."):] if where.startswith("config.") else ("" if where == "config" else where)


@dataclass(frozen=True)
class Variant:
    """One model of an experiment: a registered cell at a depth, with overrides."""

    label: str
    cell: str
    layers: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    depth: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """One task with its variants, model sizing and training recipe."""

    name: str
    task: Mapping[str, Any]
    variants: tuple[Variant, ...]
    model: Mapping[str, Any]
    train: Mapping[str, Any]
    title: str = ""
    solved_below: float | None = None

    def jobs(self, seeds: Sequence[int]) -> list[Job]:
        """One job per (variant, seed), variants outermost."""
        return [Job(self.name, v.label, v.cell, dict(self.task), {**self.model, **v.model},
                    {**self.train, **v.train}, seed, v.layers, dict(v.options), dict(v.depth), dict(v.spec))
                for v in self.variants for seed in seeds]


@dataclass(frozen=True)
class ReproConfig:
    """A validated reproduction config; ``raw`` keeps the mapping (and a reproduction's extra keys)."""

    name: str
    seeds: tuple[int, ...]
    experiments: tuple[Experiment, ...]
    raw: Mapping[str, Any]

    def jobs(self) -> list[Job]:
        """Every job of every experiment."""
        return [job for exp in self.experiments for job in exp.jobs(self.seeds)]


def _mapping(where: str, value: Any, keys: Sequence[str] | None = None) -> dict[str, Any]:
    return _READ.mapping(_key(where), value, keys)


def _int(where: str, value: Any, low: int) -> int:
    return _READ.integer(_key(where), value, low)  # type: ignore[return-value]


def _variant(where: str, raw: Any, layers: int) -> Variant:
    if isinstance(raw, str):
        raw = {"cell": raw}
    data = _mapping(where, raw, _VARIANT)
    if not isinstance(data.get("cell"), str):
        raise ConfigError(f"{where}.cell: expected a registered cell name, got {data.get('cell')!r}")
    _registered(f"{where}.cell", data["cell"], "cell")
    model = _mapping(f"{where}.model", data.get("model", {}), _MODEL)
    return Variant(label=str(data.get("label", data["cell"])), cell=data["cell"],
                   layers=_int(f"{where}.layers", data.get("layers", layers), 1),
                   options={k: _mapping(f"{where}.options.{k}", v)
                            for k, v in _mapping(f"{where}.options", data.get("options", {})).items()},
                   depth=_mapping(f"{where}.depth", data.get("depth", {})),
                   train=_mapping(f"{where}.train", data.get("train", {})), model=model,
                   spec=_spec(f"{where}.spec", data.get("spec", {})))


def _registered(where: str, name: Any, kind: str) -> None:
    """A registered cell / task name, else ConfigError naming the key (with "did you mean")."""
    from .. import registry

    names = registry.list_cells() if kind == "cell" else registry.list_tasks()
    if name not in names:
        raise ConfigError(f"{where}: {name!r} is not a registered {kind}; "
                          f"{registry.did_you_mean(str(name), names)}expected one of {', '.join(names)}")


def _spec(where: str, raw: Any) -> dict[str, str]:
    from ..spec import CELL_ROLES

    data = _mapping(where, raw, CELL_ROLES)
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a primitive name, got {value!r}")
    return data


def _experiment(where: str, raw: Any) -> Experiment:
    data = _mapping(where, raw, _EXPERIMENT)
    for key in ("name", "task", "cells"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: missing")
    depths = data.get("layers")
    cells = data["cells"]
    if not isinstance(cells, Sequence) or isinstance(cells, str) or not cells:
        raise ConfigError(f"{where}.cells: expected a non-empty list of cells")
    variants: list[Variant] = []
    if depths is None:
        variants = [_variant(f"{where}.cells[{i}]", c, 1) for i, c in enumerate(cells)]
    else:
        if not isinstance(depths, Sequence) or not depths:
            raise ConfigError(f"{where}.layers: expected a non-empty list of depths")
        for i, c in enumerate(cells):
            for d in depths:
                v = _variant(f"{where}.cells[{i}]", c, _int(f"{where}.layers", d, 1))
                variants.append(replace(v, label=f"{v.label} ×{v.layers}"))
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
    return Experiment(name=str(data["name"]), task=task, variants=tuple(variants),
                      model=_mapping(f"{where}.model", data.get("model", {}), _MODEL),
                      train=_mapping(f"{where}.train", data.get("train", {})),
                      title=str(data.get("title", "")), solved_below=None if solved is None else float(solved))


def parse_config(raw: Mapping[str, Any], extra_keys: Sequence[str] = (), seeds: int | None = None) -> ReproConfig:
    """Validate a config mapping; ``extra_keys`` are a reproduction's own top-level keys; ``seeds``
    (when given) overrides the number of seeds."""
    data = _mapping("config", raw, (*_TOP, *extra_keys))
    count = _int("config.seeds", data.get("seeds", 3) if seeds is None else seeds, 1)
    first = _int("config.first_seed", data.get("first_seed", 0), 0)
    experiments = data.get("experiments", [])
    if not isinstance(experiments, Sequence) or isinstance(experiments, str):
        raise ConfigError("config.experiments: expected a list")
    parsed = tuple(_experiment(f"experiments[{i}]", e) for i, e in enumerate(experiments))
    names = [e.name for e in parsed]
    if len(set(names)) != len(names):
        raise ConfigError("config.experiments: experiment names must be distinct")
    return ReproConfig(str(data.get("name", "")), tuple(range(first, first + count)), parsed, data)
