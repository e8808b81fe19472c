"""Study and space files: typed, frozen configs, validated before anything runs.

A study file (``studies/*.yaml``) says what to search (a space file, an inline space, or a fixed list of
cells), on which task, with which model size, training recipe, objective(s) and search settings::

    name: quickstart
    task: {name: adding, seq_len: 50}
    space: spaces/gating.yaml          # or an inline mapping, or `cells: [lstm, gru, star]`
    model: {hidden_size: 64, num_layers: 1}      # or {param_budget: 20000}
    train: {epochs: 3, batch_size: 64, lr: 1.0e-3}
    objective: {metric: val_loss, direction: minimize}   # or a list: multi-objective
    search: {backend: optuna, sampler: tpe, pruner: median, n_trials: 12, timeout: null, n_jobs: null}
    storage: null                      # default sqlite:///runs/<name>/study.db

Every mistake (unknown key, wrong type, unknown primitive / task / cell, a bad range, malformed YAML, a
YAML tag that would construct an object) raises one :class:`StudyError` whose message names the file,
the key, the value and what is allowed. YAML is read with ``yaml.safe_load`` only. Dotted overrides
(``--set train.epochs=1``) are applied to the raw mapping before validation, values parsed as YAML.

This module imports neither torch nor Optuna at import time; validating a space checks primitive
compatibility through :func:`cellsearch.cells.check_spec`, which does import torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import UserError
from .registry import RegistryError, did_you_mean
from .spec import CELL_ROLES, TRANSITIONS, CellSpec, DepthSpec, FrozenDict, SpecError

__all__ = [
    "StudyError",
    "Param",
    "TaskConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "SearchConfig",
    "SpaceConfig",
    "StudyConfig",
    "load_study",
    "load_space",
    "metric_label",
    "study_from_mapping",
    "apply_overrides",
    "parse_set",
    "SAMPLERS",
    "PRUNERS",
    "SCHEDULERS",
    "BACKENDS",
]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
#: Ray Tune schedulers (``search.scheduler``, backend ray) and the keyword arguments each accepts
SCHEDULERS: dict[str, tuple[str, ...]] = {
    "asha": ("grace_period", "reduction_factor", "max_t", "brackets"),
    "hyperband": ("grace_period", "reduction_factor", "max_t", "brackets"),
    "median": ("grace_period", "min_samples_required"),
    "fifo": (),
}
BACKENDS = ("optuna", "ray")
DIRECTIONS = ("minimize", "maximize")
STUDY_KEYS = (
    "name",
    "description",
    "task",
    "space",
    "cells",
    "seeds",
    "model",
    "train",
    "objective",
    "search",
    "storage",
    "output_dir",
)
SPACE_KEYS = ("cell", "depth", "hidden_size", "train", "published")
MODEL_KEYS = ("hidden_size", "num_layers", "param_budget")
SEARCH_KEYS = (
    "backend",
    "sampler",
    "pruner",
    "n_trials",
    "timeout",
    "n_jobs",
    "seed",
    "enqueue_published",
    "ray_address",
    "resources",
    "scheduler",
    "max_concurrent_trials",
    "storage_path",
    "reuse_actors",
)
DEPTH_INT_FIELDS = {"layers": 1, "transition_layers": 1, "output_layers": 0, "input_layers": 0}
#: the largest value of each depth field and model size a study may ask for (larger ones would hang or
#: exhaust memory building the model, long after the study was created)
DEPTH_MAX = 64
HIDDEN_MAX = 1 << 16
PARAM_BUDGET_MAX = 1 << 30
#: the most seeds a ``seeds: N`` count may ask for (each is a full training per cell)
SEEDS_MAX = 1000
#: a name is a folder name (runs/<name>) and a study name in the storage
NAME_MAX = 100
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TRAIN_NUMERIC = ("lr", "momentum", "weight_decay", "clip", "dropout")
#: what a study is: trials are comparable only while these are unchanged (see StudyConfig.fingerprint)
IDENTITY_KEYS = ("task", "space", "cells", "seeds", "model", "train", "objective")
#: identity keys a study may continue across with ``--force-continue`` (each trial stores its own values)
FORCEABLE_KEYS = ("train", "model")


class StudyError(UserError, ValueError):
    """A mistake in a study or space file: one line naming file, key, value and what is allowed."""

    def __init__(self, source: str, key: str, value: Any, allowed: str, hint: str = "") -> None:
        self.source, self.key, self.value, self.allowed = source, key, value, allowed
        shown = _short(value)
        head = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(f"{head}{shown} is not allowed; {hint}expected {allowed}")

    @classmethod
    def plain(cls, source: str, message: str) -> StudyError:
        """A StudyError with a free-form message (malformed YAML, missing files)."""
        err = cls.__new__(cls)
        err.source, err.key, err.value, err.allowed = source, "", None, ""
        Exception.__init__(err, f"{source}: {message}")
        return err


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------
# Small typed readers: each raises StudyError naming the key.


class _Reader:
    """Reads values out of a raw mapping, raising :class:`StudyError` with ``source`` and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, allowed: str, hint: str = "") -> StudyError:
        return StudyError(self.source, key, value, allowed, hint)

    def mapping(self, key: str, value: Any, allowed_keys: Sequence[str] | None = None) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            allowed = f"a mapping with keys {list(allowed_keys)}" if allowed_keys else "a mapping"
            raise self.fail(key, value, allowed)
        for k in value:
            if not isinstance(k, str):
                raise self.fail(f"{key}.{k}" if key else str(k), k, "string keys")
            if allowed_keys is not None and k not in allowed_keys:
                raise self.fail(
                    f"{key}.{k}" if key else k,
                    k,
                    f"one of {list(allowed_keys)}",
                    did_you_mean(k, allowed_keys) or "unknown key; ",
                )
        return dict(value)

    def integer(self, key: str, value: Any, low: int | None = None, none: bool = False) -> int | None:
        if value is None and none:
            return None
        allowed = f"an integer >= {low}" if low is not None else "an integer"
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise self.fail(key, value, allowed + (" or null" if none else ""))
        return value

    def number(self, key: str, value: Any, low: float | None = None, none: bool = False) -> float | None:
        if value is None and none:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (low is not None and value < low):
            allowed = f"a number >= {low}" if low is not None else "a number"
            raise self.fail(key, value, allowed + (" or null" if none else ""))
        return float(value)

    def string(self, key: str, value: Any, choices: Sequence[str] | None = None, none: bool = False) -> Any:
        if value is None and none:
            return None
        if not isinstance(value, str) or (choices is not None and value not in choices):
            allowed = f"one of {list(choices)}" if choices is not None else "a string"
            hint = did_you_mean(value, choices) if choices is not None and isinstance(value, str) else ""
            raise self.fail(key, value, allowed + (" or null" if none else ""), hint)
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, value, "true or false")
        return value


# ------------------------------------------------------------------------------------------------
# Search-space parameters


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) value of a space.

    ``kind`` is ``categorical`` (``choices``), ``int`` or ``float`` (``low``..``high``, optional ``log``
    and ``step``). A list in YAML is categorical, ``{low, high, log, step}`` a range, a scalar fixed
    (a categorical with one choice, never suggested).
    """

    kind: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def fixed(self) -> bool:
        """True when the parameter has a single possible value."""
        if self.kind == "categorical":
            return len(self.choices) == 1
        return self.low == self.high

    @property
    def values(self) -> tuple[Any, ...]:
        """The choices of a categorical, or (low, high) of a range."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def to_dict(self) -> Any:
        if self.kind == "categorical":
            return list(self.choices) if len(self.choices) != 1 else self.choices[0]
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def _param(r: _Reader, key: str, raw: Any, integer: bool = False) -> Param:
    """Parse a list (categorical), a {low, high, log, step} range or a scalar (fixed)."""
    if isinstance(raw, list):
        if not raw:
            raise r.fail(key, raw, "a non-empty list of choices")
        for v in raw:
            if not (v is None or isinstance(v, (str, int, float, bool))):
                raise r.fail(key, v, "choices that are strings, numbers, booleans or null")
        if len(set(map(repr, raw))) != len(raw):
            raise r.fail(key, raw, "a list without repeated choices")
        return Param("categorical", tuple(raw))
    if isinstance(raw, Mapping):
        return _range(r, key, r.mapping(key, raw, ("low", "high", "log", "step")), integer)
    if raw is None or isinstance(raw, (str, int, float, bool)):
        return Param("categorical", (raw,))
    raise r.fail(key, raw, "a list of choices, a mapping {low, high, log, step} or a single value")


def _range(r: _Reader, key: str, raw: dict[str, Any], integer: bool) -> Param:
    for k in ("low", "high"):
        if k not in raw:
            raise r.fail(f"{key}.{k}", None, "a number (a range needs both low and high)")
        r.number(f"{key}.{k}", raw[k])
    low, high = raw["low"], raw["high"]
    log = r.boolean(f"{key}.log", raw.get("log", False))
    step = r.number(f"{key}.step", raw["step"], none=True) if raw.get("step") is not None else None
    if low > high:
        raise r.fail(key, {"low": low, "high": high}, "a range with low <= high")
    if log and low <= 0:
        raise r.fail(f"{key}.low", low, "a number > 0 when log: true")
    if log and step is not None:
        raise r.fail(f"{key}.step", step, "no step with log: true (Optuna does not allow both)")
    is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
    if integer and not is_int:
        raise r.fail(key, raw, "an integer range (low and high integers)")
    if is_int and (step is None or float(step).is_integer()):
        return Param("int", low=low, high=high, log=log, step=int(step) if step is not None else None)
    return Param("float", low=float(low), high=float(high), log=log, step=step)


# ------------------------------------------------------------------------------------------------
# Config dataclasses


@dataclass(frozen=True)
class TaskConfig:
    """A registered task and its arguments (``{name: adding, seq_len: 50}``)."""

    name: str
    args: Mapping[str, Any] = field(default_factory=FrozenDict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain(v) for k, v in self.args.items()}}


@dataclass(frozen=True)
class ModelConfig:
    """Model size: a fixed ``hidden_size`` or a ``param_budget`` (hidden size chosen per cell)."""

    hidden_size: int | None = 64
    num_layers: int = 1
    param_budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "param_budget": self.param_budget,
        }


@dataclass(frozen=True)
class ObjectiveConfig:
    """One objective: a metric (``val_loss``, ``val_<metric>``, ``params``, ``speed``) and a direction."""

    metric: str
    direction: str

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "direction": self.direction}


@dataclass(frozen=True)
class SearchConfig:
    """How to search: backend, sampler and pruner (each with keyword arguments), budget, parallelism."""

    backend: str = "optuna"
    sampler: str = "tpe"
    sampler_args: Mapping[str, Any] = field(default_factory=FrozenDict)
    pruner: str = "median"
    pruner_args: Mapping[str, Any] = field(default_factory=FrozenDict)
    n_trials: int | None = 20
    timeout: float | None = None
    n_jobs: int | None = None  # trials at once; None: from the cores and model size (cellsearch.resources)
    seed: int | None = None
    enqueue_published: bool = True
    ray_address: str | None = None
    resources: Mapping[str, Any] = field(default_factory=FrozenDict)
    scheduler: str | None = None
    scheduler_args: Mapping[str, Any] = field(default_factory=FrozenDict)
    max_concurrent_trials: int | None = None
    storage_path: str | None = None
    reuse_actors: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        out["sampler"] = {"name": self.sampler, **out.pop("sampler_args")}
        out["pruner"] = {"name": self.pruner, **out.pop("pruner_args")}
        args = out.pop("scheduler_args")
        out["scheduler"] = {"name": self.scheduler, **args} if self.scheduler is not None else None
        return out


@dataclass(frozen=True)
class SpaceConfig:
    """A search space: choices per cell role, primitive options, depth, hidden size, training knobs.

    ``cell`` maps a role to a :class:`Param` of primitive names; ``options`` maps a primitive name to its
    options (fixed values or Params); ``depth`` maps a :class:`~cellsearch.spec.DepthSpec` field to a
    Param; ``train`` a training key to a Param. ``published``: which published cells lying in the space
    are enqueued as the first trials (``True`` = all registered, or a list of names).
    """

    cell: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Mapping[str, Param]] = field(default_factory=lambda: MappingProxyType({}))
    depth: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    hidden_size: Param | None = None
    train: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    published: bool | tuple[str, ...] = True
    source: str = "<inline>"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cell": {k: p.to_dict() for k, p in self.cell.items()}}
        if self.options:
            out["cell"]["options"] = {
                prim: {k: p.to_dict() for k, p in opts.items()} for prim, opts in self.options.items()
            }
        out["depth"] = {k: p.to_dict() for k, p in self.depth.items()}
        out["hidden_size"] = self.hidden_size.to_dict() if self.hidden_size is not None else None
        out["train"] = {k: p.to_dict() for k, p in self.train.items()}
        out["published"] = self.published if isinstance(self.published, bool) else list(self.published)
        return out


@dataclass(frozen=True)
class StudyConfig:
    """A whole study, validated. Build it with :func:`load_study` or :func:`study_from_mapping`."""

    name: str
    task: TaskConfig
    space: SpaceConfig | None = None
    cells: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: Mapping[str, Any] = field(default_factory=FrozenDict)
    objective: tuple[ObjectiveConfig, ...] = (ObjectiveConfig("val_loss", "minimize"),)
    search: SearchConfig = field(default_factory=SearchConfig)
    storage: str | None = None
    output_dir: str | None = None
    description: str = ""
    source: str = "<inline>"

    @property
    def directory(self) -> Path:
        """The study's home: ``output_dir`` or ``runs/<name>`` (relative to the working directory)."""
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    @property
    def storage_url(self) -> str:
        """The Optuna storage URL: ``storage`` or ``sqlite:///<directory>/study.db``."""
        return self.storage or f"sqlite:///{(self.directory / 'study.db').as_posix()}"

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objective]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objective]

    def train_dict(self) -> dict[str, Any]:
        """The study's training settings as a plain dict."""
        return {k: _plain(v) for k, v in self.train.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "task": self.task.to_dict(),
            "space": self.space.to_dict() if self.space is not None else None,
            "cells": list(self.cells) if self.cells is not None else None,
            "seeds": list(self.seeds) if self.seeds is not None else None,
            "model": self.model.to_dict(),
            "train": self.train_dict(),
            "objective": [o.to_dict() for o in self.objective],
            "search": self.search.to_dict(),
            "storage": self.storage,
            "output_dir": self.output_dir,
        }

    def fingerprint(self, legacy: bool = False) -> str:
        """Digest of what makes trials comparable: task, space (or cells and seeds), model, training
        settings, objective (:data:`IDENTITY_KEYS`).

        A study whose fingerprint changed refuses to continue the stored study (never silently mixed; a
        changed training recipe only with ``--force-continue``); search settings may change between runs.
        ``legacy``: the digest without the training settings, as studies created before they counted stored.
        """
        d = self.to_dict()
        keep = {k: d[k] for k in IDENTITY_KEYS if not (legacy and k == "train")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# Reading files


def read_yaml(path: str | Path, source: str | None = None) -> Any:
    """``yaml.safe_load`` a file; every problem becomes one :class:`StudyError` line."""
    source = source or str(path)
    p = Path(path)
    if not p.is_file():
        raise StudyError.plain(source, "no such file" if not p.exists() else "not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError.plain(source, f"cannot be read ({type(exc).__name__}: {exc})") from None
    return parse_yaml(text, source)


MAX_YAML_CHARS = 1 << 20  # a study or space file is small; a larger one is refused before parsing


class _Refused(yaml.YAMLError):
    """A YAML feature refused by :class:`_StrictLoader` (the message is the whole explanation)."""


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` without aliases (``*name`` can expand a few lines into gigabytes: a "billion laughs"
    file) and without duplicate keys (YAML silently keeps the last one)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"{_at(event.start_mark)}YAML alias *{event.anchor} is not allowed (anchors and "
                           "aliases can expand a small file enormously); write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not key_node.start_mark:
                raise _Refused(f"{_at(key_node.start_mark)}duplicate key {str(key)[:40]!r} (first at line "
                               f"{first.line + 1}); YAML would keep only the last value")
        return super().construct_mapping(node, deep=deep)


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def parse_yaml(text: str, source: str, expected: str = "a YAML mapping of study keys") -> Any:
    """Parse YAML text safely: no object-constructing tags, no aliases, no duplicate keys, at most
    :data:`MAX_YAML_CHARS` characters; every problem raises one :class:`StudyError` line."""
    if len(text) > MAX_YAML_CHARS:
        raise StudyError.plain(source, f"is {len(text):,} characters; a study, space or --set value is at most "
                                       f"{MAX_YAML_CHARS:,}")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise StudyError.plain(source, str(exc)) from None
    except yaml.constructor.ConstructorError as exc:
        where = _mark(exc)
        tag = re.search(r"tag '([^']+)'", str(exc))
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "a YAML tag"
        raise StudyError.plain(
            source,
            f"{where}YAML tag {shown!r} is not allowed; expected plain YAML "
            "(mappings, lists, strings, numbers, booleans, null) read with "
            "safe_load",
        ) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError.plain(
            source, f"{_mark(exc)}malformed YAML ({problem}); expected {expected}"
        ) from None


def _mark(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def parse_set(item: str) -> tuple[str, Any]:
    """``"a.b=v"`` → ``("a.b", yaml value of v)``; raises :class:`StudyError` when malformed."""
    if "=" not in item:
        raise StudyError("--set", "", item, "KEY=VALUE with a dotted key, e.g. train.epochs=1")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise StudyError("--set", key or "", item, "KEY=VALUE with a dotted key, e.g. train.epochs=1")
    return key, parse_yaml(
        text, f"--set {key}", "a YAML value, e.g. 1, 1.0e-3, tpe or [lstm, gru]"
    ) if text.strip() else None


def apply_overrides(
    raw: dict[str, Any], overrides: Mapping[str, Any] | Iterable[str], source: str, base: Path
) -> dict[str, Any]:
    """Set dotted keys in a copy of ``raw``; ``space.*`` loads a referenced space file first."""
    items = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_set(s) for s in overrides]
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    for key, value in items:
        parts = key.split(".")
        if parts[0] == "space" and len(parts) > 1 and isinstance(out.get("space"), str):
            out["space"] = _load_space_raw(out["space"], source, base)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise StudyError(
                    "--set",
                    ".".join(parts[: i + 1]),
                    child,
                    "a mapping to set a key inside (this key holds a single value)",
                )
            node = child
        node[parts[-1]] = value
    return out


def builtin_spaces_dir() -> Path | None:
    """The folder of the space files shipped with the package (``cellsearch/spaces``), if present."""
    from importlib import resources

    try:
        folder = Path(str(resources.files("cellsearch") / "spaces"))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - zipped or odd installs
        return None
    return folder if folder.is_dir() else None


def _resolve_path(ref: str, base: Path) -> Path:
    """A space path: absolute, relative to the working directory or to the study file, or a built-in space
    (``spaces/gating.yaml``, ``gating.yaml`` or ``gating`` from anywhere, when no such file is nearer)."""
    p = Path(ref)
    if p.is_absolute() or p.exists():
        return p
    for near in (base / p, base.parent / p):
        if near.exists():
            return near
    builtin = builtin_spaces_dir()
    if builtin is not None and not p.is_absolute():
        for name in (p.name, f"{p.name}.yaml"):
            if (builtin / name).is_file():
                return builtin / name
    return p


def _load_space_raw(ref: str, source: str, base: Path) -> Any:
    path = _resolve_path(ref, base)
    if not path.exists():
        raise StudyError(
            source,
            "space",
            ref,
            "a space file that exists (or an inline mapping)",
            f"file not found ({path}); ",
        )
    return read_yaml(path)


# ------------------------------------------------------------------------------------------------
# Validation


def load_study(path: str | Path, overrides: Mapping[str, Any] | Iterable[str] = ()) -> StudyConfig:
    """Read, override and validate a study file. Raises :class:`StudyError` on any mistake."""
    source = str(path)
    raw = read_yaml(path, source)
    if not isinstance(raw, Mapping):
        raise StudyError(source, "", raw, f"a YAML mapping with study keys {list(STUDY_KEYS)}")
    base = Path(path).resolve().parent
    raw = apply_overrides(dict(raw), overrides, source, base)
    return study_from_mapping(raw, source=source, base=base)


def study_from_mapping(
    raw: Mapping[str, Any],
    source: str = "<inline>",
    base: Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
) -> StudyConfig:
    """Validate a raw study mapping (as read from YAML) into a :class:`StudyConfig`."""
    base = base or Path.cwd()
    r = _Reader(source)
    raw = r.mapping("", raw, STUDY_KEYS)
    if overrides:
        raw = apply_overrides(raw, overrides, source, base)
        raw = r.mapping("", raw, STUDY_KEYS)
    for required in ("name", "task"):
        if raw.get(required) is None:
            raise r.fail(required, None, "a value (this key is required)")
    name = r.string("name", raw["name"])
    if not _NAME_RE.fullmatch(name) or len(name) > NAME_MAX:
        raise r.fail("name", name, f"1 to {NAME_MAX} letters, digits, '_', '-' and '.', starting with a letter "
                                   "or digit (it names the runs/<name> folder)")
    task, task_obj = _task(r, raw["task"])
    space, cells, seeds = _what(r, raw, base)
    model = _model(r, raw.get("model") or {}, space)
    train = _train(r, raw.get("train") or {})
    objective = _objective(r, raw.get("objective", "val_loss"), task_obj)
    search = _search(r, raw.get("search") or {}, len(objective))
    storage = _storage(r, raw.get("storage"))
    output_dir = r.string("output_dir", raw.get("output_dir"), none=True)
    description = r.string("description", raw.get("description") or "")
    cfg = StudyConfig(
        name=name,
        task=task,
        space=space,
        cells=cells,
        seeds=seeds,
        model=model,
        train=FrozenDict(train),
        objective=objective,
        search=search,
        storage=storage,
        output_dir=output_dir,
        description=description,
        source=source,
    )
    if space is not None and space.train:
        _check_space_train(space, train)
    return cfg


def _storage(r: _Reader, raw: Any) -> str | None:
    """``storage``: null or an Optuna storage URL (never an in-memory database; shown without password)."""
    from .search.storage import mask_url, url_problem

    if raw is None:
        return None
    if not isinstance(raw, str):
        raise r.fail("storage", raw, "an Optuna storage URL or null")
    problem = url_problem(raw)
    if problem is not None:
        raise r.fail("storage", mask_url(raw), problem)
    return raw


def _task(r: _Reader, raw: Any) -> tuple[TaskConfig, Any]:
    if isinstance(raw, str):
        raw = {"name": raw}
    data = r.mapping("task", raw)
    if "name" not in data:
        raise r.fail("task.name", None, "a registered task name (task needs a name)")
    name = r.string("task.name", data["name"])
    try:
        from .tasks import make_task

        task = make_task(dict(data))
    except RegistryError as exc:
        raise StudyError.plain(r.source, f"task.name: {exc}") from None
    except SpecError as exc:
        where = exc.where if str(exc.where).startswith("task") else f"task.{exc.where}"
        raise StudyError(r.source, where, exc.value, exc.allowed) from None
    except ImportError as exc:
        raise StudyError.plain(r.source, f"task.name: tasks are not available ({exc})") from None
    args = {k: v for k, v in data.items() if k != "name"}
    return TaskConfig(name, FrozenDict(args)), task


def _what(
    r: _Reader, raw: Mapping[str, Any], base: Path
) -> tuple[SpaceConfig | None, tuple[str, ...] | None, tuple[int, ...] | None]:
    has_space, has_cells = raw.get("space") is not None, raw.get("cells") is not None
    if has_space == has_cells:
        raise r.fail(
            "space",
            raw.get("space"),
            "exactly one of 'space' (a space file or mapping) and 'cells' (a list of cell names)",
        )
    seeds = None
    if raw.get("seeds") is not None:
        if not has_cells:
            raise r.fail(
                "seeds", raw["seeds"], "seeds only with 'cells' (a space searches train.seed instead)"
            )
        seeds = _seeds(r, raw["seeds"])
    if has_cells:
        return None, _cells(r, raw["cells"]), seeds
    ref = raw["space"]
    if isinstance(ref, str):
        path = _resolve_path(ref, base)
        if not path.exists():
            raise r.fail(
                "space", ref, "a space file that exists (or an inline mapping)", f"file not found ({path}); "
            )
        return space_from_mapping(read_yaml(path, ref), source=ref), None, None
    if isinstance(ref, Mapping):
        return space_from_mapping(ref, source=f"{r.source} (space)"), None, None
    raise r.fail("space", ref, "a space file path or an inline mapping")


def _seeds(r: _Reader, raw: Any) -> tuple[int, ...]:
    allowed = f"a count from 1 to {SEEDS_MAX}, or a non-empty list of at most {SEEDS_MAX} distinct integer seeds"
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 1 <= raw <= SEEDS_MAX:
            raise r.fail("seeds", raw, allowed)
        return tuple(range(raw))
    if not isinstance(raw, list) or not raw or len(raw) > SEEDS_MAX:
        raise r.fail("seeds", raw, allowed)
    for i, s in enumerate(raw):
        r.integer(f"seeds[{i}]", s, 0)
    if len(set(raw)) != len(raw):
        raise r.fail("seeds", raw, "distinct seeds")
    return tuple(raw)


def _cells(r: _Reader, raw: Any) -> tuple[str, ...]:
    from .registry import list_cells

    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise r.fail("cells", raw, "a non-empty list of registered cell names")
    known = list_cells()
    for i, name in enumerate(raw):
        r.string(f"cells[{i}]", name, known)
    if len(set(raw)) != len(raw):
        raise r.fail("cells", raw, "distinct cell names")
    return tuple(raw)


def _model(r: _Reader, raw: Any, space: SpaceConfig | None) -> ModelConfig:
    data = r.mapping("model", raw, MODEL_KEYS)
    budget = r.integer("model.param_budget", data.get("param_budget"), 1, none=True)
    hidden = r.integer("model.hidden_size", data.get("hidden_size"), 1, none=True)
    layers = r.integer("model.num_layers", data.get("num_layers", 1), 1)
    _bounded(r, "model.hidden_size", hidden, 1, HIDDEN_MAX, none=True)
    _bounded(r, "model.param_budget", budget, 1, PARAM_BUDGET_MAX, none=True)
    _bounded(r, "model.num_layers", layers, 1, DEPTH_MAX)
    if budget is not None and hidden is not None:
        raise r.fail("model", data, "either hidden_size or param_budget, not both")
    if budget is not None and space is not None and space.hidden_size is not None:
        raise r.fail("model.param_budget", budget, "no param_budget when the space searches hidden_size")
    if budget is None and hidden is None:
        hidden = 64
    return ModelConfig(hidden_size=hidden, num_layers=layers, param_budget=budget)  # type: ignore[arg-type]


def _train_fields() -> tuple[str, ...]:
    from .train import TrainConfig

    return tuple(f.name for f in fields(TrainConfig))


def _validate_train(r: _Reader, key: str, data: Mapping[str, Any]) -> None:
    from .train import TrainConfig

    try:
        TrainConfig.from_dict(dict(data))
    except SpecError as exc:
        where = exc.where if str(exc.where).startswith("train") else f"train.{exc.where}"
        prefix = key.rsplit(".", 1)[0] if key != "train" else "train"
        where = where.replace("train", prefix, 1) if prefix != "train" else where
        raise StudyError(r.source, where, exc.value, exc.allowed) from None


def _train(r: _Reader, raw: Any) -> dict[str, Any]:
    data = r.mapping("train", raw, _train_fields())
    _validate_train(r, "train", data)
    return data


def _check_space_train(space: SpaceConfig, train: Mapping[str, Any]) -> None:
    """Every searched training value must be valid together with the study's own settings."""
    r = _Reader(space.source)
    for key, param in space.train.items():
        for value in param.values:
            if param.kind == "int":
                value = int(value)
            _validate_train(r, f"train.{key}", {**train, key: value})


def _objective(r: _Reader, raw: Any, task: Any) -> tuple[ObjectiveConfig, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise r.fail("objective", raw, "a metric, a mapping {metric, direction} or a list of them")
    allowed = _metrics(task)
    out = []
    for i, item in enumerate(items):
        key = f"objective[{i}]" if isinstance(raw, list) else "objective"
        data = {"metric": item} if isinstance(item, str) else r.mapping(key, item, ("metric", "direction"))
        metric = r.string(f"{key}.metric", data.get("metric"), list(allowed))
        direction = r.string(f"{key}.direction", data.get("direction", allowed[metric]), DIRECTIONS)
        out.append(ObjectiveConfig(metric, direction))
    if len({o.metric for o in out}) != len(out):
        raise r.fail("objective", raw, "distinct metrics")
    return tuple(out)


def _metrics(task: Any) -> dict[str, str]:
    """Objective metrics and their natural directions for ``task``."""
    out = {"val_loss": "minimize"}
    metric = getattr(task, "metric", None)
    if metric:
        out[f"val_{metric}"] = getattr(task, "metric_direction", "minimize")
    for extra in getattr(task, "metrics", ()) or ():
        name = extra if str(extra).startswith("val_") else f"val_{extra}"
        out.setdefault(name, "maximize" if "acc" in name else "minimize")
    out["params"] = "minimize"
    if _speed_available():
        out["speed"] = "maximize"
    return out


#: units of the metrics whose unit is known (a loss or an error has the task's own scale)
METRIC_UNITS = {"params": "parameters", "speed": "tokens/s", "val_bpc": "bits/char", "val_accuracy": "fraction",
                "seconds": "s"}


def metric_label(metric: str) -> str:
    """``val_bpc (bits/char)``: a metric with its unit where known, for plot axes and table headers."""
    unit = METRIC_UNITS.get(metric)
    return f"{metric} ({unit})" if unit else metric


def _speed_available() -> bool:
    try:
        from . import bench
    except ImportError:
        return False
    return hasattr(bench, "measure_speed")


def _search(r: _Reader, raw: Any, n_objectives: int) -> SearchConfig:
    data = r.mapping("search", raw, SEARCH_KEYS)
    backend = r.string("search.backend", data.get("backend", "optuna"), BACKENDS)
    default_sampler = "nsga2" if n_objectives > 1 else "tpe"
    sampler, sampler_args = _named(r, "search.sampler", data.get("sampler", default_sampler), SAMPLERS)
    pruner, pruner_args = _named(r, "search.pruner", data.get("pruner", "median"), PRUNERS)
    scheduler, scheduler_args = _scheduler(r, data.get("scheduler"), n_objectives)
    if n_objectives > 1 and sampler in ("cmaes",):
        raise r.fail(
            "search.sampler", sampler, "a multi-objective sampler: one of ['nsga2', 'tpe', 'random', 'gp']"
        )
    if n_objectives > 1:
        pruner, pruner_args = "none", {}  # Optuna cannot prune multi-objective trials
    _check_args(r, "search.sampler", sampler, sampler_args)
    _check_args(r, "search.pruner", pruner, pruner_args)
    return SearchConfig(
        backend=backend,
        sampler=sampler,
        sampler_args=FrozenDict(sampler_args),
        pruner=pruner,
        pruner_args=FrozenDict(pruner_args),
        n_trials=_budget(r, data),
        timeout=r.number("search.timeout", data.get("timeout"), 0, none=True),
        n_jobs=r.integer("search.n_jobs", data.get("n_jobs"), 1, none=True),
        seed=r.integer("search.seed", data.get("seed"), 0, none=True),
        enqueue_published=r.boolean("search.enqueue_published", data.get("enqueue_published", True)),
        ray_address=r.string("search.ray_address", data.get("ray_address"), none=True),
        resources=FrozenDict(_resources(r, data.get("resources"))),
        scheduler=scheduler,
        scheduler_args=FrozenDict(scheduler_args),
        max_concurrent_trials=r.integer(
            "search.max_concurrent_trials", data.get("max_concurrent_trials"), 1, none=True
        ),
        storage_path=r.string("search.storage_path", data.get("storage_path"), none=True),
        reuse_actors=r.boolean("search.reuse_actors", data.get("reuse_actors", True)),
    )


def _resources(r: _Reader, raw: Any) -> dict[str, float]:
    """``search.resources``: CPUs and GPUs per trial (Ray backend); fractions allowed (``gpu: 0.5``)."""
    data = r.mapping("search.resources", raw or {}, ("cpu", "gpu"))
    out = {k: r.number(f"search.resources.{k}", v, 0) for k, v in data.items()}
    if out.get("cpu", 1) == 0 and out.get("gpu", 0) == 0:
        raise r.fail("search.resources", data, "at least some cpu or gpu per trial")
    return out  # type: ignore[return-value]


def _scheduler(r: _Reader, raw: Any, n_objectives: int) -> tuple[str | None, dict[str, Any]]:
    """``search.scheduler`` (backend ray): a name or ``{name, **args}``; null = follow ``search.pruner``."""
    if raw is None:
        return None, {}
    if raw == "pbt" or (isinstance(raw, Mapping) and raw.get("name") == "pbt"):
        raise r.fail(
            "search.scheduler",
            "pbt",
            f"one of {list(SCHEDULERS)}",
            "population-based training mutates the hyperparameters of running trials and copies weights "
            "between them, which a search over cell architectures cannot do (weights of different cells "
            "do not fit) and the Optuna record could not describe; ",
        )
    name, args = _named(r, "search.scheduler", raw, tuple(SCHEDULERS))
    for k, v in args.items():
        if k not in SCHEDULERS[name]:
            raise r.fail(
                f"search.scheduler.{k}",
                k,
                f"an argument of {name}: {list(SCHEDULERS[name]) or 'none'}",
                did_you_mean(k, SCHEDULERS[name]),
            )
        low = 1 if k in ("grace_period", "max_t", "brackets", "min_samples_required") else 0
        r.number(f"search.scheduler.{k}", v, low)
    if n_objectives > 1 and name != "fifo":
        raise r.fail("search.scheduler", name, "fifo for a multi-objective study (nothing to stop trials by)")
    return name, args


def _budget(r: _Reader, data: Mapping[str, Any]) -> int | None:
    n_trials = r.integer("search.n_trials", data.get("n_trials", 20), 1, none=True)
    if n_trials is None and data.get("timeout") is None:
        raise r.fail(
            "search.n_trials", None, "an integer >= 1 (or set search.timeout: a study needs a budget)"
        )
    return n_trials


def _named(r: _Reader, key: str, raw: Any, choices: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """``tpe`` or ``{name: tpe, n_startup_trials: 5}`` → (name, kwargs)."""
    if isinstance(raw, Mapping):
        data = r.mapping(key, raw)
        name = r.string(f"{key}.name", data.pop("name", None), choices)
        return name, data
    return r.string(key, raw, choices), {}


#: the keyword arguments a study file may give each sampler / pruner (the scalar ones of Optuna's
#: constructors; callables such as TPE's ``gamma`` cannot be written in YAML): name -> (kind, low, high)
#: with kind ``int``, ``float``, ``bool``, ``int|auto`` (an integer or the string "auto"), ``restart``
#: (CMA-ES restart strategy); a kind ending in ``?`` also allows null
_INT, _PROB = ("int", 0, None), ("float", 0.0, 1.0)
ARGUMENTS: dict[str, dict[str, dict[str, tuple[str, Any, Any]]]] = {
    "sampler": {
        "tpe": {"n_startup_trials": _INT, "n_ei_candidates": ("int", 1, None), "consider_prior": ("bool", 0, 0),
                "prior_weight": ("float", 1e-12, None), "consider_magic_clip": ("bool", 0, 0),
                "consider_endpoints": ("bool", 0, 0), "multivariate": ("bool", 0, 0), "group": ("bool", 0, 0),
                "warn_independent_sampling": ("bool", 0, 0), "constant_liar": ("bool", 0, 0)},
        "random": {},
        "cmaes": {"sigma0": ("float?", 1e-12, None), "n_startup_trials": _INT, "popsize": ("int?", 2, None),
                  "inc_popsize": ("int", 1, None), "restart_strategy": ("restart", 0, 0),
                  "consider_pruned_trials": ("bool", 0, 0), "use_separable_cma": ("bool", 0, 0),
                  "with_margin": ("bool", 0, 0), "lr_adapt": ("bool", 0, 0),
                  "warn_independent_sampling": ("bool", 0, 0)},
        "gp": {"n_startup_trials": _INT, "deterministic_objective": ("bool", 0, 0),
               "warn_independent_sampling": ("bool", 0, 0)},
        "nsga2": {"population_size": ("int", 2, None), "mutation_prob": ("float?", 0.0, 1.0),
                  "crossover_prob": _PROB, "swapping_prob": _PROB},
    },
    "pruner": {
        "median": {"n_startup_trials": _INT, "n_warmup_steps": _INT, "interval_steps": ("int", 1, None),
                   "n_min_trials": ("int", 1, None)},
        "successive_halving": {"min_resource": ("int|auto", 1, None), "reduction_factor": ("int", 2, None),
                               "min_early_stopping_rate": _INT, "bootstrap_count": _INT},
        "hyperband": {"min_resource": ("int", 1, None), "max_resource": ("int|auto", 1, None),
                      "reduction_factor": ("int", 2, None), "bootstrap_count": _INT},
        "none": {},
    },
}


def _check_args(r: _Reader, key: str, name: str, args: Mapping[str, Any]) -> None:
    """Keyword arguments of a sampler / pruner: known (:data:`ARGUMENTS`), of the right type and range,
    and accepted by Optuna's constructor (whose own check is reported as one line too)."""
    if not args:
        return
    kind = key.rsplit(".", 1)[1]
    allowed = ARGUMENTS[kind][name]
    for k, v in args.items():
        if k not in allowed:
            listed = sorted(allowed) or f"none ({kind} {name!r} takes no arguments)"
            raise r.fail(f"{key}.{k}", k, f"an argument of {name}: {listed}", did_you_mean(k, allowed))
        _check_arg(r, f"{key}.{k}", v, *allowed[k])
    from .search.optuna_backend import construct

    try:
        construct(kind, name, args)
    except (ValueError, TypeError) as exc:
        raise r.fail(key, dict(args), f"arguments Optuna's {name} {kind} accepts ({_first_line(exc)})") from None


def _check_arg(r: _Reader, key: str, value: Any, kind: str, low: Any, high: Any) -> None:
    if value is None and kind.endswith("?"):
        return
    kind = kind.rstrip("?")
    if kind == "bool":
        r.boolean(key, value)
    elif kind == "restart":
        r.string(key, value, ["ipop", "bipop"], none=True)
    elif kind == "int|auto" and value == "auto":
        return
    elif kind in ("int", "int|auto"):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise r.fail(key, value, f"an integer >= {low}" + (" or 'auto'" if kind == "int|auto" else ""))
    else:
        number = r.number(key, value, low)
        if high is not None and number > high:  # type: ignore[operator]
            raise r.fail(key, value, f"a number in [{low}, {high}]")


def _first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------
# Space files


def load_space(path: str | Path) -> SpaceConfig:
    """Read and validate a space file."""
    return space_from_mapping(read_yaml(path), source=str(path))


def space_from_mapping(raw: Any, source: str = "<inline>") -> SpaceConfig:
    """Validate a raw space mapping into a :class:`SpaceConfig` (primitive names, options, ranges)."""
    r = _Reader(source)
    if not isinstance(raw, Mapping):
        raise r.fail("", raw, f"a YAML mapping with space keys {list(SPACE_KEYS)}")
    data = r.mapping("", raw, SPACE_KEYS)
    cell, options = _space_cell(r, data.get("cell") or {})
    depth = _space_depth(r, data.get("depth") or {})
    hidden = _param(r, "hidden_size", data["hidden_size"], integer=True) if data.get("hidden_size") else None
    if hidden is not None:
        for v in hidden.values:
            _bounded(r, "hidden_size", v, 1, HIDDEN_MAX)
    train_raw = r.mapping("train", data.get("train") or {}, _train_fields())
    train = {k: _param(r, f"train.{k}", v, integer=k not in _TRAIN_NUMERIC) for k, v in train_raw.items()}
    published = _published(r, data.get("published", True))
    space = SpaceConfig(
        cell=_ro(cell),
        options=_ro({k: _ro(v) for k, v in options.items()}),
        depth=_ro(depth),
        hidden_size=hidden,
        train=_ro(train),
        published=published,
        source=source,
    )
    _check_compatible(r, space)
    return space


def _bounded(r: _Reader, key: str, value: Any, low: int, high: int, none: bool = False) -> None:
    """An integer in [low, high] (or null when ``none``)."""
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise r.fail(key, value, f"an integer from {low} to {high}")


def _ro(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a mapping of Params."""
    return MappingProxyType(dict(mapping))


def _space_cell(r: _Reader, raw: Any) -> tuple[dict[str, Param], dict[str, dict[str, Param]]]:
    from .registry import list_primitives

    data = r.mapping("cell", raw, (*CELL_ROLES, "options"))
    cell = {}
    for role in CELL_ROLES:
        if role not in data:
            continue
        param = _param(r, f"cell.{role}", data[role])
        if param.kind != "categorical":
            raise r.fail(f"cell.{role}", data[role], f"a list of {role} primitive names")
        known = list_primitives(role)
        for name in param.choices:
            r.string(f"cell.{role}", name, known)
        cell[role] = param
    options = {}
    for prim, opts in r.mapping("cell.options", data.get("options") or {}).items():
        roles = [role for role in CELL_ROLES if prim in list_primitives(role)]
        if not roles:
            every = sorted({n for role in CELL_ROLES for n in list_primitives(role)})
            r.string(f"cell.options.{prim}", prim, every)
        options[prim] = _space_options(r, roles[0], prim, opts)
    return cell, options


def _space_options(r: _Reader, role: str, prim: str, raw: Any) -> dict[str, Param]:
    from .registry import get_primitive

    cls = get_primitive(role, prim)
    key = f"cell.options.{prim}"
    data = r.mapping(key, raw, sorted(getattr(cls, "defaults", {})) or ["(no options)"])
    out = {}
    for k, v in data.items():
        param = _param(r, f"{key}.{k}", v)
        for value in param.choices if param.kind == "categorical" else (param.low,):
            try:
                cls(**{k: value})
            except SpecError as exc:
                raise StudyError(r.source, f"{key}.{k}", value, exc.allowed) from None
        out[k] = param
    return out


def _space_depth(r: _Reader, raw: Any) -> dict[str, Param]:
    names = tuple(f.name for f in fields(DepthSpec))
    data = r.mapping("depth", raw, names)
    out = {}
    for k, v in data.items():
        key = f"depth.{k}"
        param = _param(r, key, v, integer=k in DEPTH_INT_FIELDS)
        for value in param.values:
            if k in DEPTH_INT_FIELDS:
                _bounded(r, key, value, DEPTH_INT_FIELDS[k], DEPTH_MAX)
            elif k == "transition":
                r.string(key, value, TRANSITIONS)
            elif k == "residual":
                r.boolean(key, value)
            elif k == "dropout" and not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise r.fail(key, value, "a number in [0, 1)")
        out[k] = param
    return out


def _published(r: _Reader, raw: Any) -> bool | tuple[str, ...]:
    if isinstance(raw, bool):
        return raw
    from .registry import list_cells

    if not isinstance(raw, list):
        raise r.fail("published", raw, "true, false or a list of published cell names")
    known = list_cells()
    for i, name in enumerate(raw):
        r.string(f"published[{i}]", name, known)
    return tuple(raw)


def _check_compatible(r: _Reader, space: SpaceConfig) -> None:
    """Options must build; every chosen update must combine with at least one choice of every other role;
    every combination the sampler can propose must build."""
    from .search.space import SearchSpace, check_options, compatible_choices

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


def default_space_from_cell(spec: CellSpec) -> SpaceConfig:
    """A space with one point: ``spec`` (used by tests and for rebuilding)."""
    cell = {role: Param("categorical", (getattr(spec, role),)) for role in CELL_ROLES}
    return SpaceConfig(cell=_ro(cell))
