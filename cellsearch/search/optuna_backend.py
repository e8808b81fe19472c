"""The Optuna backend: samplers, pruners, the objective, budget and resume.

One study per ``StudyConfig`` in its storage (default ``sqlite:///runs/<name>/study.db``). Running the same
study again continues it:

- the study stores a fingerprint of its task, space, model and objective; a changed one is refused;
- RUNNING trials whose process died are marked FAIL (``fail_reason``) and their parameters re-queued;
- the budget ``n_trials`` counts trials that finished (COMPLETE, PRUNED, or FAIL from the training itself,
  e.g. divergence), not trials killed with their process, so a rerun after a kill completes the budget;
- the budget buys distinct cells (:mod:`cellsearch.search.ledger`): a proposal of an already-evaluated key
  is answered from storage (the sampler learns its value) without using the budget and the search asks
  again (a bounded number of times in a row, then it enqueues a point not evaluated yet); a finite space
  whose every point was evaluated stops the run ("space exhausted");
- a seeded sampler is reseeded before every trial from ``search.seed`` and the trial's number, so a fresh
  run is reproducible while a continued run (or another worker) draws new points instead of replaying
  the first ones;
- several workers (``cellsearch run`` processes on one or many machines, one shared storage such as
  PostgreSQL) split the budget: ``n_trials`` is the study's total, checked against the storage before each
  new trial (finished + running trials of every worker); a worker whose free slots are held by other
  workers' running trials waits for them and, when a worker stops sending heartbeats, fails its trial
  and runs the re-queued parameters; a trial that finds the same spec training in another worker waits
  for it and reuses its result;
- the published cells of the space are enqueued as the first trials, once, when the study is created;
- seeding and taking a budget slot are atomic across workers (:mod:`cellsearch.search.claims`: a
  PostgreSQL advisory lock, or ``flock`` beside a SQLite / journal file): N workers started together
  enqueue the published cells once and start exactly the budget's trials; re-queued trials start before
  any other WAITING trial.

Every trial stores as user attributes: ``spec`` (ModelSpec JSON), ``digest``, ``key`` (spec + training
config + task), ``n_params``, ``train``, ``history`` (per-epoch metrics, updated every epoch), ``metrics``
(final epoch), ``summary``, ``worker``, ``weights`` (safetensors of the final model, COMPLETE trials), and
``fail_reason`` / ``prune_reason``. A trial whose key matches an earlier COMPLETE (or PRUNED, or diverged)
trial reuses that result (``reused_from``) instead of training again: a duplicate, outside the budget.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ..config import FORCEABLE_KEYS, IDENTITY_KEYS, StudyConfig
from ..errors import UserError
from .claims import BudgetTaken, claim_slots, study_lock
from .display import Display
from .ledger import Ledger, evaluation_of, retried, uses_budget
from .ledger import counted as counted
from .preflight import InfrastructureError, infrastructure_failure, preflight
from .space import Candidate, build_space
from .storage import fail_dead_trials, make_storage, mask_url, worker_id

__all__ = [
    "constructor_arguments",
    "construct",
    "make_sampler",
    "make_pruner",
    "run",
    "open_study",
    "Objective",
    "counted",
    "n_running",
    "free_slots",
    "fail_stale",
    "requeue",
    "wait_for_slots",
    "BudgetTaken",
    "objective_value",
    "weights_bytes",
    "write_weights",
    "StudyResult",
]

#: seconds between looks at the storage while waiting for other workers' trials
POLL_S = 1.0
_SAMPLERS: dict[str, Callable[[], Any]] = {
    "tpe": lambda: _per_trial(optuna.samplers.TPESampler),
    "random": lambda: _per_trial(optuna.samplers.RandomSampler),
    "cmaes": lambda: _per_trial(optuna.samplers.CmaEsSampler),
    "gp": lambda: _per_trial(optuna.samplers.GPSampler),
    "nsga2": lambda: _per_trial(optuna.samplers.NSGAIISampler),
}
_PRUNERS: dict[str, Callable[[], Any]] = {
    "median": lambda: optuna.pruners.MedianPruner,
    "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": lambda: optuna.pruners.HyperbandPruner,
    "none": lambda: optuna.pruners.NopPruner,
}


# ------------------------------------------------------------------------------------------------
# Samplers and pruners


def constructor_arguments(kind: str, name: str) -> set[str]:
    """Keyword arguments the Optuna class behind sampler / pruner ``name`` accepts."""
    cls = (_SAMPLERS if kind == "sampler" else _PRUNERS)[name]()
    return {p for p in inspect.signature(cls).parameters if p not in ("self", "seed")}


def construct(kind: str, name: str, args: Any = ()) -> Any:
    """A sampler / pruner built from its name and keyword arguments (unseeded: validation builds one to
    let Optuna check the arguments before anything runs)."""
    cls = (_SAMPLERS if kind == "sampler" else _PRUNERS)[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API warnings
        return cls(**dict(args))


class _PerTrialSeed:
    """Sampler mixin: with a seed, every random state of the sampler (and of the samplers it delegates to)
    is reseeded before each trial from (seed, trial number). A fresh run draws what the same seed drew
    before; a continued study, or another worker on the same study, gets other trial numbers and so new
    points (a sampler seeded once per process would replay the first run's draws)."""

    _cs_seed: int | None = None
    _cs_lock = threading.Lock()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._cs_seed is not None:
            with self._cs_lock:
                _reseed(self, f"{self._cs_seed}/{trial.number}")
        super().before_trial(study, trial)  # type: ignore[misc]


_PER_TRIAL: dict[type, type] = {}


def _per_trial(cls: type) -> type:
    """``cls`` with :class:`_PerTrialSeed` (one subclass per sampler class, named like it)."""
    if cls not in _PER_TRIAL:
        sub = type(cls.__name__, (_PerTrialSeed, cls), {"__doc__": cls.__doc__})
        sub.__qualname__ = f"_per_trial.{cls.__name__}"
        _PER_TRIAL[cls] = sub
    return _PER_TRIAL[cls]


def _reseed(sampler: Any, salt: str, seen: set[int] | None = None) -> None:
    """Seed every ``LazyRandomState`` / ``RandomState`` of ``sampler`` and of its nested samplers from
    ``salt`` and the attribute's path (in place: shared references stay shared)."""
    import numpy as np
    from optuna.samplers._lazy_random_state import LazyRandomState

    seen = set() if seen is None else seen
    if id(sampler) in seen:
        return
    seen.add(id(sampler))
    for name, value in sorted(vars(sampler).items()):
        seed = int.from_bytes(hashlib.sha256(f"{salt}/{name}".encode()).digest()[:4], "little")
        if isinstance(value, LazyRandomState):
            value.rng.seed(seed)
        elif isinstance(value, np.random.RandomState):
            value.seed(seed)
        elif isinstance(value, optuna.samplers.BaseSampler):
            _reseed(value, f"{salt}/{name}", seen)


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded with ``search.seed`` (reseeded per trial: :class:`_PerTrialSeed`)."""
    s = config.search
    if s.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("search.sampler 'cmaes' needs the 'cmaes' package (pip install cmaes)") from None
    cls = _SAMPLERS[s.sampler]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = cls(seed=s.seed, **dict(s.sampler_args))
    sampler._cs_seed = s.seed
    return sampler


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The configured pruner (none for multi-objective studies: Optuna cannot prune them)."""
    name = "none" if config.multi_objective else config.search.pruner
    return _PRUNERS[name]()(**dict(config.search.pruner_args if name != "none" else {}))


# ------------------------------------------------------------------------------------------------
# Study, budget, resume


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> None:
    """Enqueue the parameters of a trial killed with its process (a fresh trial redoes it).

    The new trial stores ``retry_of`` (the killed trial's number, which no longer counts towards the
    budget) and, when given, ``retry_reason``.
    """
    attrs: dict[str, Any] = {"retry_of": trial.number}
    if reason:
        attrs["retry_reason"] = reason
    if "published" in trial.user_attrs:
        attrs["published"] = trial.user_attrs["published"]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)


def _stale_callback(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat failed ``trial`` (its worker stopped beating): re-queue it.

    Optuna has already finished the trial, so nothing more can be written on it: the reason goes on the
    retry (``retry_reason``), whose ``retry_of`` takes the failed trial out of the budget.
    """
    requeue(study, trial, reason=f"trial {trial.number} was interrupted: its worker stopped sending heartbeats")


def fail_stale(study: optuna.Study) -> None:
    """Fail (and re-queue) RUNNING trials whose worker stopped sending heartbeats (RDB storages)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental API warnings
        optuna.storages.fail_stale_trials(study)


def n_running(study: optuna.Study) -> int:
    """RUNNING trials of every worker sharing the study's storage."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def free_slots(study: optuna.Study, budget: int | None) -> int | None:
    """Trials this worker may still start: the budget minus finished and running trials (None: no budget)."""
    if budget is None:
        return None
    return max(0, budget - counted(study) - n_running(study))


def _budget_taken(trial: Trial, budget: int | None) -> bool:
    """True when earlier trials (finished or running, any worker) already hold the whole budget.

    Slots are claimed under the study lock before a trial exists (:func:`~cellsearch.search.claims.
    claim_slots`), so this holds only on a storage without a shared lock (neither PostgreSQL, SQLite nor
    a journal file): when two workers start a trial for the last free slot at the same moment, exactly one
    of them (the higher number, trial numbers are given out atomically) finds the budget taken.
    """
    if budget is None:
        return False
    trials = trial.study.get_trials(deepcopy=False)
    again = retried(trials)
    before = sum(
        1
        for t in trials
        if t.number < trial.number
        and (uses_budget(t, again) or (t.state == TrialState.RUNNING and not t.user_attrs.get("interrupted")))
    )
    return before >= budget


def open_study(
    config: StudyConfig, storage_url: str | None = None, create: bool = True, force_continue: bool = False
) -> optuna.Study:
    """Create or load the study; refuse one whose fingerprint (task, space, model, training, objective)
    differs, unless only the training settings or model size changed and ``force_continue``."""
    url = storage_url or config.storage_url
    sampler, pruner = (make_sampler(config), make_pruner(config)) if create else (None, None)
    storage = make_storage(url, create=create, failed_trial_callback=_stale_callback)
    if not create:
        try:
            return optuna.load_study(study_name=config.name, storage=storage)
        except KeyError:
            raise UserError(
                f"no study named {config.name!r} in {mask_url(url)} (run it first: cellsearch run {config.source})"
            ) from None
    study = optuna.create_study(
        storage=storage,
        study_name=config.name,
        directions=config.directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    _check_fingerprint(study, config, url, force_continue)
    set_metric_names(study, config)
    return study


def set_metric_names(study: optuna.Study, config: StudyConfig) -> None:
    """Name the study's objectives after their metrics (optuna-dashboard and Optuna's plots show them)."""
    if list(study.metric_names or ()) == config.metrics:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(config.metrics)


def _check_fingerprint(study: optuna.Study, config: StudyConfig, url: str, force: bool = False) -> None:
    stored = study.user_attrs.get("fingerprint")
    current = config.fingerprint()
    before = study.user_attrs.get("config", {})
    now = config.to_dict()
    if stored is None or (stored == config.fingerprint(legacy=True) and before.get("train") == now["train"]):
        study.set_user_attr("fingerprint", current)  # new, or created before training settings counted
        study.set_user_attr("config", stored_config(config))
        return
    if stored != current:
        changed = [k for k in IDENTITY_KEYS if before.get(k) != now.get(k)] or ["space"]
        where = f"{config.source}: this is a different study: {config.name!r} in {mask_url(url)} was created with"
        if force and set(changed) <= set(FORCEABLE_KEYS):
            study.set_user_attr("fingerprint", current)
            study.set_user_attr("config", stored_config(config))
            study.set_user_attr("forced", [*study.user_attrs.get("forced", []), {"from": stored, "to": current}])
        elif set(changed) <= set(FORCEABLE_KEYS):
            raise UserError(
                f"{where} {_changes(before, now, changed)}; use a new name (--set name=NEW) or --force-continue "
                "to add trials trained this way to it"
            )
        else:
            raise UserError(
                f"{where} a different {', '.join(changed)} (fingerprint {stored}, now {current}); trials "
                "would be mixed. Use a new name (--set name=NEW) or storage, or restore the study file"
            )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in config.directions]:
        raise UserError(f"{config.source}: objective directions differ from the stored study {config.name!r}")


def stored_config(config: StudyConfig) -> dict[str, Any]:
    """``config.to_dict()`` as stored in the study: the storage URL without its password."""
    out = config.to_dict()
    if out.get("storage"):
        out["storage"] = mask_url(out["storage"])
    return out


def _changes(before: dict[str, Any], now: dict[str, Any], keys: list[str]) -> str:
    """``train.epochs 2 -> 3, model.hidden_size 32 -> 64``: what changed in the forceable keys."""
    out = []
    for key in keys:
        old, new = before.get(key) or {}, now.get(key) or {}
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                out.append(f"{key}.{k} {old.get(k, 'unset')} -> {new.get(k, 'unset')}")
    return ", ".join(out) or ", ".join(keys)


def _seed_trials(study: optuna.Study, space: Any, config: StudyConfig) -> int:
    """Enqueue the published cells not enqueued yet, at most as many as the budget has room for (so a
    finished study leaves none WAITING; a continued one with a larger budget enqueues the next ones);
    returns how many were enqueued."""
    if not config.search.enqueue_published:
        return 0
    with study_lock(study):  # workers started together: one reads and enqueues, the next sees it
        trials = study.get_trials(deepcopy=False)
        todo = [seed for seed in space.seed_trials() if not _enqueued(seed, trials)]
        budget = config.search.n_trials
        if budget is not None:
            waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
            todo = todo[: max(0, budget - counted(study) - n_running(study) - waiting)]
        for seed in todo:
            study.enqueue_trial(dict(seed.params), user_attrs=dict(seed.user_attrs), skip_if_exists=True)
        return len(todo)


def _enqueued(seed: Any, trials: list[FrozenTrial]) -> bool:
    """``seed`` (a published cell's parameters) was enqueued before: a trial of any state carries them."""
    name = seed.user_attrs.get("published")
    for t in trials:
        fixed = {**t.params, **(t.system_attrs.get("fixed_params") or {})}
        if t.user_attrs.get("published") == name and all(fixed.get(k) == v for k, v in seed.params.items()):
            return True
    return False


# ------------------------------------------------------------------------------------------------
# The objective


def _key(spec: Any, train: dict[str, Any], task: dict[str, Any]) -> str:
    data = {"spec": spec.to_dict(), "train": train, "task": task}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: float(v) if hasattr(v, "__float__") else str(v)))


class Objective:
    """``objective(trial)``: sample → resolve → (reuse | train) → objective values; see the module doc."""

    def __init__(
        self,
        config: StudyConfig,
        space: Any,
        task: Any,
        display: Display | None = None,
        budget: int | None = None,
    ) -> None:
        self.config, self.space, self.task, self.display = config, space, task, display
        self.budget = budget
        self.worker = worker_id()
        self.task_dict = config.task.to_dict()
        #: why the run stopped when the machine failed a trial (disk full, out of memory), else None
        self.infrastructure: str | None = None

    def __call__(self, trial: Trial) -> float | list[float]:
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # like a kill: the trial does not use the budget and is redone next run
            _set_aside(trial, "interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            reason = infrastructure_failure(exc)
            if reason is None:
                raise
            # the machine failed, not the cell: recorded with the reason, outside the budget, re-queued,
            # and the run stops (it would fail every trial the same way)
            self.infrastructure = f"trial {trial.number}: {reason}"
            try:
                _set_aside(trial, f"infrastructure: {reason}")
                self.infrastructure += "; the trial does not use the budget and its parameters are re-queued"
            except Exception:  # noqa: BLE001 - the storage itself may be what failed (disk full)
                self.infrastructure += "; the trial could not be recorded (it is re-run when the study continues)"
            trial.study.stop()
            raise

    def _run(self, trial: Trial) -> float | list[float]:
        trial.set_user_attr("worker", self.worker)
        if _budget_taken(trial, self.budget):  # another worker started the last trial at the same moment
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr(
                "fail_reason", f"not run: the budget of {self.budget} trials was taken by other workers"
            )
            trial.study.stop()
            raise BudgetTaken(f"the budget of {self.budget} trials is taken")
        candidate = self.space.candidate_for(self.space.sample(trial), trial.user_attrs.get("published"))
        spec, train = self._resolve(candidate)
        key = _key(spec, train.to_dict(), self.task_dict)
        self._describe(trial, candidate, spec, train, key)
        if self.display is not None:
            self.display.trial_started(trial.number, candidate.summary())
        earlier = self._earlier(trial, key) or self._twin(trial, key)
        if earlier is not None:
            return self._reuse(trial, earlier)
        return self._train(trial, spec, train)

    def _twin(self, trial: Trial, key: str) -> FrozenTrial | None:
        """Wait while an earlier trial with the same key runs (another worker or thread); then its result
        (None when it did not finish COMPLETE or PRUNED: this trial trains)."""
        while True:
            running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not any(t.number < trial.number and t.user_attrs.get("key") == key for t in running):
                return self._earlier(trial, key)
            time.sleep(POLL_S)
            fail_stale(trial.study)  # a twin whose worker died is failed after the grace period

    def _resolve(self, candidate: Candidate) -> tuple[Any, Any]:
        from ..train import TrainConfig, resolve_model_spec

        spec = resolve_model_spec(
            candidate.cell,
            candidate.depth,
            self.task,
            hidden_size=candidate.hidden_size,
            param_budget=self.config.model.param_budget,
        )
        train = TrainConfig.from_dict(
            {**self.config.train_dict(), **dict(candidate.train), "progress": False}
        )
        return spec, train

    def _describe(self, trial: Trial, candidate: Candidate, spec: Any, train: Any, key: str) -> None:
        trial.set_user_attr("spec", spec.to_json())
        trial.set_user_attr("digest", spec.digest())
        trial.set_user_attr("key", key)
        trial.set_user_attr("summary", candidate.summary())
        trial.set_user_attr("readout", self.task.readout)
        trial.set_user_attr("train", _jsonable(train.to_dict()))

    def _earlier(self, trial: Trial, key: str) -> FrozenTrial | None:
        """The evaluation of ``key`` this trial duplicates (:func:`~cellsearch.search.ledger.evaluation_of`)."""
        return evaluation_of(trial.study.get_trials(deepcopy=False), key, trial.number)

    def _reuse(self, trial: Trial, earlier: FrozenTrial) -> float | list[float]:
        """Answer a duplicate from storage: the earlier trial's values (outside the budget)."""
        trial.set_user_attr("reused_from", earlier.number)
        for name in ("n_params", "history", "metrics", "weights", "seconds"):
            if name in earlier.user_attrs:
                trial.set_user_attr(name, earlier.user_attrs[name])
        if earlier.state == TrialState.FAIL:
            why = earlier.user_attrs.get("fail_reason", "")
            reason = f"same spec and training as trial {earlier.number}, which failed ({why})"
            trial.set_user_attr("fail_reason", reason)
            raise DuplicateFailed(reason)
        if earlier.state == TrialState.PRUNED:
            trial.set_user_attr(
                "prune_reason",
                f"same spec and training as trial {earlier.number}, which was "
                f"pruned ({earlier.user_attrs.get('prune_reason', '')})",
            )
            raise optuna.TrialPruned()
        for step, value in earlier.intermediate_values.items():
            trial.report(value, step)
        return earlier.values if self.config.multi_objective else earlier.values[0]

    def _train(self, trial: Trial, spec: Any, train: Any) -> float | list[float]:
        from ..train import DivergenceError
        from ..train import train as run_training

        history: list[dict[str, Any]] = []
        callback = self._callback(trial, history)
        try:
            result = run_training(spec, self.task, train, callback=callback)
        except DivergenceError as exc:
            trial.set_user_attr("fail_reason", f"diverged: {exc}")
            raise
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("n_params", result.n_params)
        trial.set_user_attr("history", _jsonable(result.history))
        trial.set_user_attr("metrics", _jsonable(result.final))
        trial.set_user_attr("seconds", result.seconds)
        values = [self._value(o.metric, result, spec) for o in self.config.objective]
        self._save_weights(trial, result.model)
        return values if self.config.multi_objective else values[0]

    def _callback(self, trial: Trial, history: list[dict[str, Any]]) -> Callable[[int, dict[str, Any]], None]:
        metric = self.config.objective[0].metric
        prune = not self.config.multi_objective and metric.startswith("val_")

        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
            history.append(_jsonable(metrics))
            trial.set_user_attr("history", history)
            if self.display is not None:
                self.display.trial_epoch(trial.number, epoch, metrics)
            if not prune or metric not in metrics:
                return
            value = float(metrics[metric])
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr(
                    "prune_reason",
                    f"{self.config.search.pruner} pruner at epoch {epoch}: {metric} = {value:.4g}",
                )
                raise optuna.TrialPruned(f"epoch {epoch}")

        return on_epoch

    def _value(self, metric: str, result: Any, spec: Any) -> float:
        return objective_value(metric, result, spec)

    def _save_weights(self, trial: Trial, model: Any) -> None:
        path = write_weights(self.config.directory / "trials", trial.number, weights_bytes(model))
        trial.set_user_attr("weights", str(path))


def _set_aside(trial: Trial, reason: str) -> None:
    """Record why ``trial`` did not finish, keep it out of the budget and re-queue its parameters."""
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("interrupted", True)
    attrs = {"retry_of": trial.number}
    if "published" in trial.user_attrs:
        attrs["published"] = trial.user_attrs["published"]
    trial.study.enqueue_trial(dict(trial.params), user_attrs=attrs)


class DuplicateFailed(RuntimeError):
    """A duplicate of a trial whose training diverged: it fails the same way, without training."""


def objective_value(metric: str, result: Any, spec: Any) -> float:
    """The value of objective ``metric`` for a finished training ``result`` (a ``TrainResult``)."""
    if metric == "params":
        return float(result.n_params)
    if metric == "speed":
        return _speed(spec, result.model)
    value = result.final.get(metric)
    if value is None:
        raise UserError(f"objective metric {metric!r} is not among the trainer's metrics {sorted(result.final)}")
    return float(value)


def weights_bytes(model: Any) -> bytes:
    """The model's state dict as safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()})


def write_weights(folder: Path, number: int, data: bytes) -> Path:
    """Write a trial's weights atomically as ``<folder>/<number>.safetensors``; returns the absolute path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{number}.safetensors"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path.resolve()


def _speed(spec: Any, model: Any) -> float:
    """Forward + backward tokens per second of the trained model (:func:`cellsearch.timing.measure_speed`)."""
    from ..timing import measure_speed

    return float(measure_speed(model, input_size=spec.input_size, repeats=5, warmup=1))


# ------------------------------------------------------------------------------------------------
# Running


def run(
    config: StudyConfig, storage_url: str | None = None, display: Display | None = None, force_continue: bool = False
) -> StudyResult:
    """Create or continue ``config``'s study and run the remaining budget (``force_continue``: also when
    its training settings or model size changed since it was created)."""
    from ..tasks import make_task

    space = build_space(config)
    task = make_task(config.task.to_dict())
    preflight(config, task, storage_url)  # data, sampler, pruner, storage: one line and nothing written
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are shown with their reason by the display
    study = open_study(config, storage_url, force_continue=force_continue)
    failed = fail_dead_trials(study, requeue)
    fail_stale(study)
    _seed_trials(study, space, config)
    budget = config.search.n_trials
    claim_slots(study, budget)
    free = free_slots(study, budget)
    ledger = Ledger(space, config.search.seed, config.search.n_trials)
    display = display or Display(config, quiet=True)
    display.start(study, free, resumed=counted(study), failed_dead=failed)
    objective = Objective(config, space, task, display, budget)
    deadline = None if config.search.timeout is None else time.monotonic() + config.search.timeout
    try:
        while (budget is None or counted(study) < budget) and ledger.check(study) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if free is None or free > 0:
                _optimize(study, objective, free, left, config.search.n_jobs,
                          [display.trial_finished, _ledger_callback(ledger), _budget_callback(budget)])
            if objective.infrastructure is not None:
                break
            if ledger.stop_reason is not None or budget is None or counted(study) >= budget:
                break
            free = wait_for_slots(study, budget, deadline)  # duplicates and other workers' trials
    finally:
        display.stop(objective.infrastructure and f"stopped: {objective.infrastructure}" or ledger.outcome(study))
    if objective.infrastructure is not None:
        raise InfrastructureError(f"{objective.infrastructure}; finished trials are kept ({_done(study, budget)}); "
                                  "fix the machine and run again to continue")
    return StudyResult(config, study, storage_url or config.storage_url, ledger.outcome(study))


def _done(study: optuna.Study, budget: int | None) -> str:
    try:
        return f"{counted(study)} of {budget} done" if budget else f"{counted(study)} done"
    except Exception:  # noqa: BLE001 - a storage that cannot be read either
        return "the storage cannot be read now"


def _optimize(study: optuna.Study, objective: Objective, n_trials: int | None, timeout: float | None,
              n_jobs: int, callbacks: list[Any]) -> None:
    """``study.optimize``; a storage failure of the machine (disk full) is an :class:`InfrastructureError`;
    other workers holding every free slot (:class:`BudgetTaken`, no trial created) ends it."""
    try:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, n_jobs=n_jobs, catch=(Exception,),
                       callbacks=callbacks)
    except BudgetTaken:
        return
    except Exception as exc:
        reason = infrastructure_failure(exc) or infrastructure_failure(exc.__cause__ or exc)
        if reason is None:
            raise
        objective.infrastructure = objective.infrastructure or f"the storage failed: {reason}"


def wait_for_slots(study: optuna.Study, budget: int, deadline: float | None = None) -> int:
    """Wait while other workers' running trials hold the rest of the budget; returns the free slots.

    Returns 0 when the budget is complete or ``deadline`` (``time.monotonic()``) passed; meanwhile fails
    trials whose worker stopped sending heartbeats (their parameters are re-queued, freeing a slot), or,
    on a storage without heartbeats, trials of dead processes on this machine.
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    while counted(study) < budget:
        if is_heartbeat_enabled(study._storage):
            fail_stale(study)
        else:
            fail_dead_trials(study, requeue)
        free = free_slots(study, budget) or 0
        if free > 0:
            return free
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    return 0


def _ledger_callback(ledger: Ledger) -> Callable[[optuna.Study, FrozenTrial], None]:
    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if ledger.after_trial(study, trial) is not None:
            study.stop()

    return after_trial


def _budget_callback(budget: int | None) -> Callable[[optuna.Study, FrozenTrial], None]:
    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        if budget is not None and counted(study) + n_running(study) >= budget:
            study.stop()

    return stop_when_done


class StudyResult:
    """A study after (or without) running: the config, the ``optuna.Study`` and helpers."""

    def __init__(
        self, config: StudyConfig, study: optuna.Study, storage_url: str, stop_reason: str | None = None
    ) -> None:
        self.config, self.study, self.storage_url = config, study, storage_url
        #: why the run stopped before its budget ("space exhausted: ..."), None otherwise
        self.stop_reason = stop_reason

    def __repr__(self) -> str:
        return (
            f"StudyResult({self.config.name!r}, complete={self.n_complete}, pruned={self.n_pruned}, "
            f"failed={self.n_failed}, distinct={self.n_distinct}, duplicates={self.n_duplicates})"
        )

    @property
    def n_counted(self) -> int:
        """Trials that used the budget."""
        return counted(self.study)

    @property
    def n_distinct(self) -> int:
        """Distinct cells (keys: spec + training + task) among the trials that used the budget."""
        from .ledger import distinct_cells

        return distinct_cells(self.trials)

    @property
    def n_duplicates(self) -> int:
        """Proposals of already-evaluated cells, answered from storage (outside the budget)."""
        from .ledger import n_duplicates

        return n_duplicates(self.trials)

    def _count(self, state: TrialState) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(state,)))

    @property
    def n_complete(self) -> int:
        return self._count(TrialState.COMPLETE)

    @property
    def n_pruned(self) -> int:
        return self._count(TrialState.PRUNED)

    @property
    def n_failed(self) -> int:
        return self._count(TrialState.FAIL)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    @property
    def best_trials(self) -> list[FrozenTrial]:
        """The best trial (single objective) or the Pareto front (multi-objective)."""
        from .results import best_trials

        return best_trials(self.study, self.config)

    @property
    def best_spec(self) -> Any:
        """The ModelSpec of the best trial."""
        from ..spec import ModelSpec

        best = self.best_trials
        return ModelSpec.from_json(best[0].user_attrs["spec"]) if best else None

    def leaderboard(self, top: int = 10) -> list[dict[str, Any]]:
        """The best trials as rows (number, state, summary, params, objective values, metrics)."""
        from .results import leaderboard_rows

        return leaderboard_rows(self.study, self.config, top)
