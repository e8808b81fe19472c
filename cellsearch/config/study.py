"""Study files: typed, frozen configs, their structure validated before anything runs (torch-free).

A study file (``studies/*.yaml``) says what to search (a space file, an inline space, or a fixed list of
cells), on which task, with which model size, training recipe, objective(s) and search settings::

    name: quickstart
    task: {name: adding, seq_len: 50}
    space: spaces/gating.yaml          # or an inline mapping, or `cells: [lstm, gru, star]` (names or
                                       #   variants {label, cell, layers, spec, options, depth, train, model})
    model: {hidden_size: 64, num_layers: 1}      # or {param_budget: 20000}
    train: {epochs: 3, batch_size: 64, lr: 1.0e-3}
    objective: {metric: val_loss, direction: minimize}   # or a list: multi-objective
    search: {backend: optuna, sampler: tpe, pruner: median, n_trials: 12, timeout: null, n_jobs: null}
    storage: null                      # default sqlite:///runs/<name>/study.db

Every mistake (unknown key, wrong type, a bad range, malformed YAML, a YAML tag that would construct an
object) raises one :class:`~cellsearch.errors.StudyError` whose message names the file, the key, the value
and what is allowed. Dotted overrides (``--set train.epochs=1``) are applied to the raw mapping before
validation, values parsed as YAML.

This floor checks structure only and imports neither torch, Optuna nor the registry. The search layer's
:func:`cellsearch.search.load_config` reads a study through :func:`load_study` and then checks what needs the
registry or a library (:mod:`cellsearch.search.checks`): registered task, cell and primitive names, the
task's options, the objective's metrics and their directions, primitive options and combinations that must
build, and sampler / pruner arguments Optuna must accept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import StudyError, did_you_mean
from ..spec import FrozenDict, SpecError
from .reader import Reader, bounded
from .space import DEPTH_MAX, HIDDEN_MAX, PARAM_BUDGET_MAX, SpaceConfig, space_from_mapping, train_fields
from .train import TrainConfig
from .urls import mask_url, url_problem
from .variants import Variant, read_variants
from .yamlio import apply_overrides, plain, read_yaml, resolve_path

__all__ = [
    "TaskConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "SearchConfig",
    "StudyConfig",
    "load_study",
    "study_from_mapping",
    "metric_label",
    "SAMPLERS",
    "PRUNERS",
    "SCHEDULERS",
    "BACKENDS",
    "DIRECTIONS",
    "ARGUMENTS",
]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
#: Ray Tune schedulers (``search.scheduler``, backend ray) and the keyword arguments each accepts
SCHEDULERS: dict[str, tuple[str, ...]] = {
    "asha": ("grace_period", "reduction_factor", "max_t", "brackets"),
    "hyperband": ("grace_period", "reduction_factor", "max_t", "brackets"),
    "median": ("grace_period", "min_samples_required"),
    "fifo": (),
    "optuna": (),   # the study's Optuna pruner (search.pruner) decides, as on the Optuna backend
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
    "checkpoints",
    "checkpoint_dir",
    "max_failures",
)
#: the most seeds a ``seeds: N`` count may ask for (each is a full training per cell)
SEEDS_MAX = 1000
#: a name is a folder name (runs/<name>) and a study name in the storage
NAME_MAX = 100
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: what a study is: trials are comparable only while these are unchanged (see StudyConfig.fingerprint)
IDENTITY_KEYS = ("task", "space", "cells", "seeds", "model", "train", "objective")
#: identity keys a study may continue across with ``--force-continue`` (each trial stores its own values)
FORCEABLE_KEYS = ("train", "model")


@dataclass(frozen=True)
class TaskConfig:
    """A registered task and its arguments (``{name: adding, seq_len: 50}``)."""

    name: str
    args: Mapping[str, Any] = field(default_factory=FrozenDict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: plain(v) for k, v in self.args.items()}}


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
    direction: str | None = None  # None until the search layer fills in the metric's natural direction

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
    #: a checkpoint after every epoch of a trial, so a trial killed or preempted resumes where it was
    checkpoints: bool = True
    #: where (default ``<study directory>/checkpoints``; on a Ray cluster a folder every node shares)
    checkpoint_dir: str | None = None
    #: backend ray: how many times a trial whose Ray worker or node was lost is re-run (from its last
    #: checkpoint) before it is recorded FAIL; the lost runs never use the budget
    max_failures: int = 2

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: plain(getattr(self, f.name)) for f in fields(self)}
        out["sampler"] = {"name": self.sampler, **out.pop("sampler_args")}
        out["pruner"] = {"name": self.pruner, **out.pop("pruner_args")}
        args = out.pop("scheduler_args")
        out["scheduler"] = {"name": self.scheduler, **args} if self.scheduler is not None else None
        return out


@dataclass(frozen=True)
class StudyConfig:
    """A whole study, validated. Build it with :func:`load_study` or :func:`study_from_mapping`."""

    name: str
    task: TaskConfig
    space: SpaceConfig | None = None
    #: a grid's cells: registered names or variants of them (:class:`~cellsearch.config.variants.Variant`)
    cells: tuple[Variant, ...] | None = None
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
    def checkpoint_dir(self) -> Path | None:
        """Where trials write their per-epoch checkpoints (None: ``search.checkpoints`` is off)."""
        if not self.search.checkpoints:
            return None
        return Path(self.search.checkpoint_dir) if self.search.checkpoint_dir else self.directory / "checkpoints"

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
        return {k: plain(v) for k, v in self.train.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "task": self.task.to_dict(),
            "space": self.space.to_dict() if self.space is not None else None,
            "cells": [v.to_dict() for v in self.cells] if self.cells is not None else None,
            "seeds": list(self.seeds) if self.seeds is not None else None,
            "model": self.model.to_dict(),
            "train": self.train_dict(),
            "objective": [o.to_dict() for o in self.objective],
            "search": self.search.to_dict(),
            "storage": self.storage,
            "output_dir": self.output_dir,
        }

    def to_file_dict(self) -> dict[str, Any]:
        """The mapping of a study file that reads back to this config: :meth:`to_dict` without the nulls,
        an empty description and the search settings left at their defaults."""
        d = self.to_dict()
        defaults = SearchConfig().to_dict()
        d["search"] = {k: v for k, v in d["search"].items() if v != defaults[k]}
        d["model"] = {k: v for k, v in d["model"].items() if v is not None}
        objective = [{k: v for k, v in o.items() if v is not None} for o in d["objective"]]
        d["objective"] = objective if len(objective) > 1 else objective[0]
        return {k: v for k, v in d.items() if v is not None and v != "" and v != {}}

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


def load_study(path: str | Path, overrides: Mapping[str, Any] | Iterable[str] = ()) -> StudyConfig:
    """Read, override and validate a study file's structure (keys, types, ranges; torch-free). Raises
    :class:`~cellsearch.errors.StudyError` on any mistake. Registered names, the task's options and whether the
    space builds are checked by the search layer's :func:`cellsearch.search.load_config`."""
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
    reader: Reader | None = None,
) -> StudyConfig:
    """Read a raw study mapping (as read from YAML) into a :class:`StudyConfig` (structure only, as
    :func:`load_study`); ``reader``: how mistakes are reported (default: a StudyError naming ``source``)."""
    base = base or Path.cwd()
    r = reader or Reader(source)
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
    task = _task(r, raw["task"])
    space, cells, seeds = _what(r, raw, base)
    model = _model(r, raw.get("model") or {}, space)
    train = _train(r, raw.get("train") or {})
    for i, variant in enumerate(cells or ()):
        if variant.train:
            _validate_train(r, f"cells[{i}].train", {**train, **variant.train})
    objective = _objective(r, raw.get("objective", "val_loss"))
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
    _check_devices(r, train, search)
    return cfg


def _check_devices(r: Reader, train: Mapping[str, Any], search: SearchConfig) -> None:
    """A trial's device must be one its backend can give it: on Ray, a CUDA device only with GPUs in
    ``search.resources`` (Ray hides the GPUs from a trial that asked for none) and without an index (each
    trial sees the GPU Ray assigned it as ``cuda``)."""
    device, gpus = str(train.get("device", "auto")), search.resources.get("gpu", 0)
    if search.backend != "ray" or not device.startswith("cuda"):
        return
    if not gpus:
        raise r.fail("train.device", device, "auto or cpu, or search.resources.gpu > 0 (with backend ray a "
                     "trial sees no GPU unless it asks for a share of one)")
    if device != "cuda":
        raise r.fail("train.device", device, "cuda (with backend ray each trial sees the GPU Ray assigned it "
                     "as cuda; an index would name a GPU the trial does not hold)")


def _storage(r: Reader, raw: Any) -> str | None:
    """``storage``: null or an Optuna storage URL (never an in-memory database; shown without password)."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise r.fail("storage", raw, "an Optuna storage URL or null")
    problem = url_problem(raw)
    if problem is not None:
        raise r.fail("storage", mask_url(raw), problem)
    return raw


def _task(r: Reader, raw: Any) -> TaskConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    data = r.mapping("task", raw)
    if "name" not in data:
        raise r.fail("task.name", None, "a registered task name (task needs a name)")
    name = r.string("task.name", data["name"])
    args = {k: v for k, v in data.items() if k != "name"}
    return TaskConfig(name, FrozenDict(args))


def _what(
    r: Reader, raw: Mapping[str, Any], base: Path
) -> tuple[SpaceConfig | None, tuple[Variant, ...] | None, tuple[int, ...] | None]:
    has_space, has_cells = raw.get("space") is not None, raw.get("cells") is not None
    if has_space == has_cells:
        raise r.fail(
            "space",
            raw.get("space"),
            "exactly one of 'space' (a space file or mapping) and 'cells' (a list of cell names or variants)",
        )
    seeds = None
    if raw.get("seeds") is not None:
        if not has_cells:
            raise r.fail(
                "seeds", raw["seeds"], "seeds only with 'cells' (a space searches train.seed instead)"
            )
        seeds = _seeds(r, raw["seeds"])
    if has_cells:
        return None, read_variants(r, "cells", raw["cells"]), seeds
    ref = raw["space"]
    if isinstance(ref, str):
        path = resolve_path(ref, base)
        if not path.exists():
            raise r.fail(
                "space", ref, "a space file that exists (or an inline mapping)", f"file not found ({path}); "
            )
        return space_from_mapping(read_yaml(path, ref), source=ref), None, None
    if isinstance(ref, Mapping):
        return space_from_mapping(ref, source=f"{r.source} (space)"), None, None
    raise r.fail("space", ref, "a space file path or an inline mapping")


def _seeds(r: Reader, raw: Any) -> tuple[int, ...]:
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


def _model(r: Reader, raw: Any, space: SpaceConfig | None) -> ModelConfig:
    data = r.mapping("model", raw, MODEL_KEYS)
    budget = r.integer("model.param_budget", data.get("param_budget"), 1, none=True)
    hidden = r.integer("model.hidden_size", data.get("hidden_size"), 1, none=True)
    layers = r.integer("model.num_layers", data.get("num_layers", 1), 1)
    bounded(r, "model.hidden_size", hidden, 1, HIDDEN_MAX, none=True)
    bounded(r, "model.param_budget", budget, 1, PARAM_BUDGET_MAX, none=True)
    bounded(r, "model.num_layers", layers, 1, DEPTH_MAX)
    if budget is not None and hidden is not None:
        raise r.fail("model", data, "either hidden_size or param_budget, not both")
    if budget is not None and space is not None and space.hidden_size is not None:
        raise r.fail("model.param_budget", budget, "no param_budget when the space searches hidden_size")
    if budget is None and hidden is None:
        hidden = 64
    return ModelConfig(hidden_size=hidden, num_layers=layers, param_budget=budget)  # type: ignore[arg-type]


def _validate_train(r: Reader, prefix: str, data: Mapping[str, Any]) -> None:
    """Training settings ``data`` must make a TrainConfig; a mistake is named under ``prefix`` (``train``,
    ``cells[2].train``)."""
    try:
        TrainConfig.from_dict(dict(data))
    except SpecError as exc:
        where = exc.where if str(exc.where).startswith("train") else f"train.{exc.where}"
        raise r.fail(prefix + where[len("train"):], exc.value, exc.allowed) from None


def _train(r: Reader, raw: Any) -> dict[str, Any]:
    data = r.mapping("train", raw, train_fields())
    _validate_train(r, "train", data)
    return data


def _check_space_train(space: SpaceConfig, train: Mapping[str, Any]) -> None:
    """Every searched training value must be valid together with the study's own settings."""
    r = Reader(space.source)
    for key, param in space.train.items():
        for value in param.values:
            if param.kind == "int":
                value = int(value)
            _validate_train(r, "train", {**train, key: value})


def _objective(r: Reader, raw: Any) -> tuple[ObjectiveConfig, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise r.fail("objective", raw, "a metric, a mapping {metric, direction} or a list of them")
    out = []
    for i, item in enumerate(items):
        key = f"objective[{i}]" if isinstance(raw, list) else "objective"
        data = {"metric": item} if isinstance(item, str) else r.mapping(key, item, ("metric", "direction"))
        metric = r.string(f"{key}.metric", data.get("metric"))
        direction = r.string(f"{key}.direction", data.get("direction"), DIRECTIONS, none=True)
        out.append(ObjectiveConfig(metric, direction))
    if len({o.metric for o in out}) != len(out):
        raise r.fail("objective", raw, "distinct metrics")
    return tuple(out)


#: units of the metrics whose unit is known (a loss or an error has the task's own scale)
METRIC_UNITS = {"params": "parameters", "speed": "tokens/s", "val_bpc": "bits/char", "val_accuracy": "fraction",
                "seconds": "s"}


def metric_label(metric: str) -> str:
    """``val_bpc (bits/char)``: a metric with its unit where known, for plot axes and table headers."""
    unit = METRIC_UNITS.get(metric)
    return f"{metric} ({unit})" if unit else metric


def _search(r: Reader, raw: Any, n_objectives: int) -> SearchConfig:
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
        checkpoints=r.boolean("search.checkpoints", data.get("checkpoints", True)),
        checkpoint_dir=r.string("search.checkpoint_dir", data.get("checkpoint_dir"), none=True),
        max_failures=r.integer("search.max_failures", data.get("max_failures", 2), 0),
    )


def _resources(r: Reader, raw: Any) -> dict[str, float]:
    """``search.resources``: CPUs and GPUs per trial (Ray backend); fractions allowed (``gpu: 0.5``)."""
    data = r.mapping("search.resources", raw or {}, ("cpu", "gpu"))
    out = {k: r.number(f"search.resources.{k}", v, 0) for k, v in data.items()}
    if out.get("cpu", 1) == 0 and out.get("gpu", 0) == 0:
        raise r.fail("search.resources", data, "at least some cpu or gpu per trial")
    return out  # type: ignore[return-value]


def _scheduler(r: Reader, raw: Any, n_objectives: int) -> tuple[str | None, dict[str, Any]]:
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


def _budget(r: Reader, data: Mapping[str, Any]) -> int | None:
    n_trials = r.integer("search.n_trials", data.get("n_trials", 20), 1, none=True)
    if n_trials is None and data.get("timeout") is None:
        raise r.fail(
            "search.n_trials", None, "an integer >= 1 (or set search.timeout: a study needs a budget)"
        )
    return n_trials


def _named(r: Reader, key: str, raw: Any, choices: Sequence[str]) -> tuple[str, dict[str, Any]]:
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


def _check_args(r: Reader, key: str, name: str, args: Mapping[str, Any]) -> None:
    """Keyword arguments of a sampler / pruner: known (:data:`ARGUMENTS`) and of the right type and range
    (whether Optuna's constructor accepts them together is checked by the search layer)."""
    kind = key.rsplit(".", 1)[1]
    allowed = ARGUMENTS[kind][name]
    for k, v in args.items():
        if k not in allowed:
            listed = sorted(allowed) or f"none ({kind} {name!r} takes no arguments)"
            raise r.fail(f"{key}.{k}", k, f"an argument of {name}: {listed}", did_you_mean(k, allowed))
        _check_arg(r, f"{key}.{k}", v, *allowed[k])


def _check_arg(r: Reader, key: str, value: Any, kind: str, low: Any, high: Any) -> None:
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
