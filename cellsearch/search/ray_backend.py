"""The Ray Tune backend: the same study, its trials run by ``ray.tune.Tuner`` on a machine or a cluster.

``search.backend: ray`` runs the study through Ray Tune with Ray's :class:`OptunaSearch` wrapping the
*same* define-by-run ``sample(trial)`` as the Optuna backend, on the *same* Optuna study (name and storage):
every trial lands in the study's storage with the same user attributes (``spec``, ``digest``, ``key``,
``n_params``, ``history``, ``metrics``, ``weights`` at ``runs/<name>/trials/<n>.safetensors``,
``fail_reason`` / ``prune_reason``), so ``leaderboard``, ``plot`` and ``export`` work whatever the backend.
Ray-only attribute: ``ray_node`` (node id, host, pid and torch device that trained the trial).

Search settings (``search:`` in the study file):

- ``ray_address``: null starts Ray on this machine (never joins another cluster by accident),
  ``HOST:PORT`` joins that head node; ``auto`` is refused unless ``RAY_ADDRESS`` names the cluster (Ray's
  ``auto`` attaches to whatever instance the machine's temporary folder points at, another user's too);
- per-trial ``resources`` that no node of the cluster has are refused when the run starts (one line,
  exit 2: what a trial asks, what each node has) instead of waiting forever;
- ``resources``: per trial, e.g. ``{cpu: 2, gpu: 0.5}`` (``tune.with_resources``; default one CPU). Ray
  gives a trial with GPUs its own ``CUDA_VISIBLE_DEVICES`` and ``train.device: auto`` picks CUDA; a trial
  without GPUs trains on the CPU (Ray leaves every GPU visible to it);
- ``scheduler``: ``asha``, ``hyperband`` (asynchronous, no pausing), ``median`` (median stopping rule; never pauses),
  ``optuna`` (the study's Optuna pruner, ``search.pruner``, decides after every epoch: the same trials
  pruned, with the same reasons, as on the Optuna backend) or
  ``fifo``, with arguments (``{name: asha, grace_period: 1, reduction_factor: 3}``); null follows
  ``search.pruner`` (median → median, successive_halving → asha, hyperband → hyperband, none → fifo).
  A multi-objective study, or an objective that is not a validation metric, runs FIFO (nothing to stop
  trials by). The time unit is the evaluation (epoch) count. ``pbt`` is refused when the study is read;
- ``max_concurrent_trials``; ``storage_path``: Ray's results folder (default ``runs/<name>/ray``);
  ``reuse_actors`` (default true): a trial runs in the process of a finished one when the resources match
  (false: a fresh process per trial, placed where resources are free at that moment);
- ``n_trials`` is the study's total, checked against the Optuna storage before each new trial (so Ray
  drivers and Optuna workers may share one study); ``timeout`` stops starting new trials.

Bookkeeping. Ray's OptunaSearch would tell Optuna that a trial a scheduler stopped early is COMPLETE with
its low-fidelity value; here such a trial is told PRUNED, after its intermediate values were reported
(``trial.report``) at each epoch, so the sampler is not misled. A trial is COMPLETE only when it trained
its full budget (its final report carries ``final``). The Optuna trials are held by this driver process:
it sends their heartbeats, and when it dies a later run (either backend) fails them and re-queues their
parameters. A trial whose key (spec + training + task) matches a finished trial reuses its result without
starting a Ray trial (a duplicate: it does not use the budget, the searcher asks again); one matching a
trial still running waits for it. The rules of :mod:`cellsearch.search.ledger` apply as in the Optuna
backend: bounded duplicate retries, then a point not evaluated yet; a finite space whose every point was
evaluated stops the run ("space exhausted").

Resume: run the same study again. Completed trials are in the Optuna storage; the killed driver's
unfinished trials are failed and re-run; the budget is completed. Ray's own experiment folders (one per
run, ``<storage_path>/<name>-<time>``) hold Ray's logs and results; ``Tuner.restore`` is not needed.

Overheads: importing this module imports Ray (``import cellsearch`` and the Optuna backend never do);
``ray.init`` takes seconds, so a program may call ``ray.init`` itself and run several studies on it
(an initialized Ray is used as is and left running, whatever ``ray_address`` says). Actors are reused
between trials (``reuse_actors``): about 0.3 s per trial instead of 1 s or more.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import FrozenTrial, Trial, TrialState
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from .._env import env_var
from ..config import StudyConfig
from ..errors import UserError
from .backend import Backend
from .claims import BudgetTaken, claim_slots
from .display import Display
from .ledger import Ledger, counted
from .samplers import make_pruner
from .space import build_space
from .storage import fail_dead_trials
from .studies import StudyResult, fail_stale, n_running, open_study, requeue, seed_trials
from .trials import TrialBook, jsonable, write_weights

__all__ = [
    "run",
    "RayBackend",
    "BACKEND",
    "scheduler_name",
    "make_scheduler",
    "planned_evaluations",
    "CellOptunaSearch",
    "WeightsStore",
    "TrialSetup",
    "ray_address",
    "check_resources",
]

_PRUNER_TO_SCHEDULER = {"median": "median", "successive_halving": "asha", "hyperband": "hyperband", "none": "fifo"}
#: seconds between two looks at the storage while every free slot is held by running trials
_ADMIT_EVERY_S = 0.5
_WORKER_FAILED = "its Ray worker failed"
#: drivers of the studies running in this process, by key (the searcher and schedulers are pickled by Tune
#: and must not carry the study, the display or threads; they find their driver here)
_LIVE: dict[str, _Driver] = {}


# ------------------------------------------------------------------------------------------------
# Settings


def scheduler_name(config: StudyConfig) -> str:
    """The scheduler the study runs with (see the module docstring)."""
    prunable = not config.multi_objective and config.objective[0].metric.startswith("val_")
    if not prunable:
        return "fifo"
    return config.search.scheduler or _PRUNER_TO_SCHEDULER[config.search.pruner]


def planned_evaluations(train: Any, task: Any) -> int:
    """How many evaluations (epochs) :func:`cellsearch.train.train` runs for ``train`` on ``task``."""
    if train.steps is None:
        return int(train.epochs)
    per_epoch = train.steps_per_epoch
    if per_epoch is None:
        per_epoch = len(task.make_loaders(train.batch_size, train.seed, bptt=train.bptt).train)
    return math.ceil(train.steps / max(1, per_epoch))


def _metric_names(config: StudyConfig) -> list[str]:
    return ["objective"] if not config.multi_objective else [f"objective_{i}" for i in range(len(config.objective))]


def _modes(config: StudyConfig) -> list[str]:
    return ["min" if o.direction == "minimize" else "max" for o in config.objective]


class _RecordStops:
    """Mixin for a Tune scheduler: remembers which trials it stopped (told PRUNED, not COMPLETE)."""

    _driver_key: str = ""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        driver = _LIVE.get(self._driver_key)
        if decision == TrialScheduler.STOP and driver is not None:
            driver.stopped.add(trial.trial_id)
        return decision


class _AsyncHyperBand(_RecordStops, AsyncHyperBandScheduler):
    """ASHA (``brackets: 1``) or asynchronous Hyperband (several brackets), recording its stops."""


class _MedianStopping(_RecordStops, MedianStoppingRule):
    """Ray's median stopping rule, recording its stops."""


class _OptunaPruning(FIFOScheduler):
    """``scheduler: optuna``: every epoch's value goes to the study's Optuna pruner (``search.pruner``),
    which stops the trial exactly when it would stop it on the Optuna backend (same decision, same
    ``prune_reason``)."""

    _driver_key: str = ""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        driver = _LIVE.get(self._driver_key)
        if driver is not None and driver.should_prune(trial.trial_id, result):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def make_scheduler(config: StudyConfig, max_t: int, driver_key: str = "") -> TrialScheduler:
    """The configured Tune scheduler; the time unit is ``training_iteration`` (one per evaluation)."""
    name = scheduler_name(config)
    args = dict(config.search.scheduler_args) if name == config.search.scheduler else {}
    mode = _modes(config)[0]
    scheduler: TrialScheduler
    if name in ("asha", "hyperband"):
        top = int(args.get("max_t", max_t))
        scheduler = _AsyncHyperBand(
            time_attr="training_iteration",
            metric="objective",
            mode=mode,
            max_t=max(1, top),
            grace_period=min(int(args.get("grace_period", 1)), max(1, top)),
            reduction_factor=float(args.get("reduction_factor", 3 if name == "asha" else 3)),
            brackets=int(args.get("brackets", 1 if name == "asha" else 3)),
        )
    elif name == "median":
        scheduler = _MedianStopping(
            time_attr="training_iteration",
            metric="objective",
            mode=mode,
            grace_period=float(args.get("grace_period", 1)),
            min_samples_required=int(args.get("min_samples_required", 3)),
            min_time_slice=math.inf,  # never pause a trial to give others time: trials are not checkpointed
            hard_stop=True,
        )
    elif name == "optuna":
        scheduler = _OptunaPruning()
    else:
        return FIFOScheduler()
    scheduler._driver_key = driver_key  # type: ignore[attr-defined]
    return scheduler


# ------------------------------------------------------------------------------------------------
# What runs on the Ray workers


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its own config (sent once through Ray's object store)."""

    task: Mapping[str, Any]
    metrics: tuple[str, ...]
    store: Any  # a WeightsStore actor handle
    cwd: str
    gpus: float = 0.0  # GPUs per trial: with none, ``device: auto`` trains on the CPU (Ray leaves GPUs visible)


class WeightsStore:
    """A Ray actor on the driver's node that writes trial weights where the Optuna backend writes them,
    so a trial trained on any node of a cluster has its ``runs/<name>/trials/<n>.safetensors``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def save(self, number: int, data: bytes) -> str:
        """Write trial ``number``'s safetensors bytes; returns the absolute path."""
        return str(write_weights(self.folder, number, data))


_TASKS: dict[str, Any] = {}


def _task(spec: Mapping[str, Any]) -> Any:
    """The task object, built once per worker process (actors are reused between trials)."""
    from ..tasks import make_task

    key = json.dumps(dict(spec), sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS[key] = make_task(dict(spec))
    return _TASKS[key]


@contextmanager
def _in_directory(path: str) -> Iterator[None]:
    """Run in the driver's working directory when this node has it (relative data paths of tasks)."""
    old = os.getcwd()
    if path and os.path.isdir(path):
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _objectives(metrics: tuple[str, ...], values: list[float]) -> dict[str, float]:
    if len(metrics) == 1:
        return {"objective": float(values[0])}
    return {f"objective_{i}": float(v) for i, v in enumerate(values)}


def _scalars(entry: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a history entry (shown in Ray's own results)."""
    return {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _failure(exc: Exception) -> dict[str, str]:
    """How a trial's exception is reported: ``infrastructure`` (disk full, out of memory, data gone: the
    machine's failure, set aside and re-queued by the driver) or ``fail_reason`` (the cell's)."""
    from .preflight import infrastructure_failure
    from .trials import oom_note

    machine = infrastructure_failure(exc)
    return {"infrastructure": oom_note(machine)} if machine else {"fail_reason": f"{type(exc).__name__}: {exc}"}


def _node(train_config: Any) -> str:
    """Where this trial runs (stored as ``ray_node``): Ray node, host, process, device."""
    from ..train import resolve_device

    return json.dumps({"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                       "pid": os.getpid(), "device": str(resolve_device(train_config.device))})


def _trainable(config: dict[str, Any], setup: TrialSetup | None = None) -> None:
    """One Ray trial: train the spec the driver resolved (:func:`cellsearch.jobs.run_job`), report every
    epoch, save the weights, report the final result (the last epoch is reported once, with ``final``: a
    scheduler deciding on it sees it)."""
    from dataclasses import replace

    from ..jobs import Job, run_job
    from ..spec import ModelSpec
    from ..train import TrainConfig
    from .trials import objective_value, weights_bytes

    assert setup is not None
    cs = config["cellsearch"]
    train_config = TrainConfig.from_dict(cs["train"])
    if train_config.device == "auto" and not setup.gpus:
        train_config = replace(train_config, device="cpu")
    node = _node(train_config)
    nan = _objectives(setup.metrics, [math.nan] * len(setup.metrics))
    with _in_directory(setup.cwd):
        try:
            task = _task(setup.task)  # its data may have vanished from this node since the preflight
            job = Job(ModelSpec.from_json(cs["spec"]), task, train_config, checkpoint=cs.get("checkpoint"))
            record = run_job(job, callback=_epoch_reporter(setup, task, train_config, node), keep_model=True)
            if record.diverged:
                tune.report({**nan, "cs": {"fail_reason": f"diverged: {record.error}", "node": node}})
                return
            values = [objective_value(m, record, job.spec) for m in setup.metrics]
        except Exception as exc:  # the trial fails with its reason; Ray's actor stays usable
            tune.report({**nan, "cs": {**_failure(exc), "node": node}})
            return
        path = ray.get(setup.store.save.remote(int(cs["number"]), weights_bytes(record.model)))
    entry = jsonable(record.history[-1])
    final = {"final": True, "entry": json.dumps(entry), "node": node, "values": json.dumps(values),
             "n_params": int(record.n_params), "metrics": json.dumps(jsonable(record.final)),
             "seconds": float(record.seconds), "weights": path, "resumed_from_epoch": record.resumed_from_epoch}
    tune.report({**_scalars(entry), **_objectives(setup.metrics, values), "cs": final})


def _epoch_reporter(setup: TrialSetup, task: Any, train_config: Any, node: str) -> Any:
    """``callback(epoch, metrics)`` reporting each epoch but the last to Tune (the objective when a
    scheduler can stop the trial on it)."""
    last = planned_evaluations(train_config, task)
    prunable = len(setup.metrics) == 1 and setup.metrics[0].startswith("val_")
    nan = _objectives(setup.metrics, [math.nan] * len(setup.metrics))

    def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
        if epoch >= last:
            return  # reported by the trainable, with the final result
        entry = jsonable(metrics)
        value = {"objective": float(entry[setup.metrics[0]])} if prunable else nan
        tune.report({**_scalars(entry), **value, "cs": {"entry": json.dumps(entry), "node": node}})

    return on_epoch


# ------------------------------------------------------------------------------------------------
# The driver: everything that touches the Optuna study


def _cs(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``cs`` part of a Tune result (flattened ``cs/<key>`` or nested)."""
    if not result:
        return {}
    nested = result.get("cs")
    out = dict(nested) if isinstance(nested, Mapping) else {}
    out.update({k[3:]: v for k, v in result.items() if k.startswith("cs/")})
    return out


class _Driver:
    """The study side of a Ray run: resolves and describes trials, records results, budget, heartbeats."""

    def __init__(self, config: StudyConfig, space: Any, task: Any, study: optuna.Study, display: Display) -> None:
        self.key = uuid.uuid4().hex
        self.config, self.space, self.task, self.study, self.display = config, space, task, study, display
        self.budget = config.search.n_trials
        self.deadline = None if config.search.timeout is None else time.monotonic() + config.search.timeout
        self.book = TrialBook(config, space, task, self.budget)
        self.ledger = Ledger(space, config.search.seed, config.search.n_trials)
        self.metrics = tuple(config.metrics)
        self.prunable = not config.multi_objective and self.metrics[0].startswith("val_")
        self.scheduler = scheduler_name(config)
        self.max_failures = config.search.max_failures  # re-runs of a trial whose worker or node was lost
        self.stopped: set[str] = set()  # Tune trial ids a scheduler stopped
        self.pruned: set[str] = set()  # those the study's Optuna pruner stopped (scheduler: optuna)
        self.open: dict[str, Trial] = {}  # Tune trial id -> Optuna trial (launched, not told yet)
        self.deferred: list[tuple[Trial, str]] = []  # (trial, key) waiting for a twin with the same key
        self.history: dict[int, list[dict[str, Any]]] = {}
        self.seen: dict[int, set[int]] = {}  # training_iterations recorded per trial number
        self.reported: dict[int, set[int]] = {}  # epochs reported to Optuna per trial number
        self.candidate: Any = None
        self.searcher: CellOptunaSearch | None = None
        self.storage_path = ""
        self._admit_at = self._deferred_at = 0.0
        #: why the run stops when the machine failed a trial (disk full, out of memory, data gone)
        self.infrastructure: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeats, name="cellsearch-heartbeat", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        _LIVE[self.key] = self
        self._beat.start()

    def close(self) -> list[int]:
        """Fail (interrupted, re-queued) every trial the run did not finish; returns the numbers of those
        that were training (not those waiting for a twin)."""
        self._stop.set()
        _LIVE.pop(self.key, None)
        with self._lock:
            training = list(self.open.values())
            left = training + [t for t, _ in self.deferred]
            self.open.clear()
            self.deferred.clear()
        for trial in left:
            self.book.set_aside(trial, "interrupted: the Ray run stopped before the trial finished", requeue_now=False)
            self._tell(trial, None, TrialState.FAIL)
            requeue(self.study, self._frozen(trial), reason=f"trial {trial.number}: the Ray run stopped")
        return [t.number for t in training]

    def _heartbeats(self) -> None:
        """Beat for every Optuna trial this driver holds (another worker fails them once we stop)."""
        storage = self.study._storage
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        if not interval:
            return
        while not self._stop.wait(min(interval, 5)):
            with self._lock:
                ids = [t._trial_id for t in self.open.values()] + [t._trial_id for t, _ in self.deferred]
            for trial_id in ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                    pass

    # -- admission -----------------------------------------------------------------------------------
    def admission(self) -> str:
        """``go`` (start a trial), ``wait`` (every free slot is held by running trials) or ``done``."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "done"
        if self.ledger.stop_reason is not None or self.infrastructure is not None:
            return "done"
        if self.budget is None:
            return "go" if self.ledger.check(self.study) is None else "done"
        now = time.monotonic()
        if now < self._admit_at:
            return "wait"
        if counted(self.study) >= self.budget:
            return "done"
        if counted(self.study) + n_running(self.study) < self.budget:
            return "go" if self.ledger.check(self.study) is None else "done"
        self._admit_at = now + _ADMIT_EVERY_S
        fail_stale(self.study)  # other workers' trials whose worker died free their slot
        return "wait"

    # -- starting trials -----------------------------------------------------------------------------
    def sample(self, trial: Any) -> None:
        """The define-by-run function handed to OptunaSearch: the space's own ``sample``."""
        self.candidate = self.space.sample(trial)

    def prepare(self, trial: Trial) -> tuple[str, FrozenTrial | None, bool]:
        """Describe a new trial like the Optuna backend does; (key, finished twin, twin still running)."""
        _, _, key, candidate = self.book.describe(trial, self.candidate)
        self.display.trial_started(trial.number, candidate.summary())
        earlier = self.book.earlier(trial, key)
        return key, earlier, earlier is None and self.book.twin_running(trial, key)

    def launch(self, trial_id: str, trial: Trial) -> dict[str, Any]:
        """The Tune config of a trial that trains."""
        with self._lock:
            self.open[trial_id] = trial
        cs = {
            "number": trial.number,
            "spec": trial.user_attrs["spec"],
            "train": trial.user_attrs["train"],
            "summary": trial.user_attrs.get("summary", ""),
            "checkpoint": self.book.checkpoint(trial.user_attrs["key"]),
        }
        return {"params": unflatten_dict(dict(trial.params)), "cellsearch": cs}

    def resolve_deferred(self) -> Trial | None:
        """Finish deferred trials whose twin finished (reuse); return one whose twin failed (it trains)."""
        if not self.deferred or time.monotonic() < self._deferred_at:
            return None
        self._deferred_at = time.monotonic() + _ADMIT_EVERY_S
        fail_stale(self.study)  # a twin whose worker died
        for item in list(self.deferred):
            trial, key = item
            if self.book.twin_running(trial, key):
                continue
            with self._lock:
                self.deferred.remove(item)
            earlier = self.book.earlier(trial, key)
            if earlier is None:
                return trial
            self.reuse(trial, earlier)
        return None

    def defer(self, trial: Trial, key: str) -> None:
        with self._lock:
            self.deferred.append((trial, key))

    def surplus(self, trial: Trial) -> bool:
        """True (and the trial failed, not counted) when other workers took the budget meanwhile."""
        outcome = self.book.refuse_surplus(trial)
        if outcome is None:
            return False
        self._tell(trial, None, outcome.state)
        return True

    # -- results -------------------------------------------------------------------------------------
    def record(self, trial: Trial, result: Mapping[str, Any]) -> None:
        """One Tune result: history, node, intermediate value (reported at its epoch, as Optuna does)."""
        step = result.get("training_iteration")
        seen = self.seen.setdefault(trial.number, set())
        if step in seen:
            return
        seen.add(step)
        cs = _cs(result)
        if "node" in cs and "ray_node" not in trial.user_attrs:
            trial.set_user_attr("ray_node", json.loads(cs["node"]))
        if "entry" not in cs:
            return
        entry = json.loads(cs["entry"])
        history = self.history.setdefault(trial.number, [])
        history.append(entry)
        trial.set_user_attr("history", history)
        epoch = int(entry.get("epoch", len(history)))
        self.display.trial_epoch(trial.number, epoch, entry)
        if self.prunable and self.metrics[0] in entry:
            value = float(entry[self.metrics[0]])
            reported = self.reported.setdefault(trial.number, set())
            if math.isfinite(value) and epoch not in reported:
                reported.add(epoch)
                trial.report(value, epoch)

    def should_prune(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        """``scheduler: optuna``: record the result, then ask the study's pruner, as the Optuna backend's
        objective does after every epoch (the reason written the same way)."""
        with self._lock:
            trial = self.open.get(trial_id)
        if trial is None or not self.prunable:
            return False
        self.record(trial, result)
        return self._pruned_now(trial_id, trial, result)

    def _pruned_now(self, trial_id: str, trial: Trial, result: Mapping[str, Any]) -> bool:
        entry = json.loads(_cs(result).get("entry", "{}"))
        metric = self.metrics[0]
        if metric not in entry or not trial.should_prune():
            return False
        epoch, value = int(entry.get("epoch", 0)), float(entry[metric])
        trial.set_user_attr("prune_reason", f"{self.config.search.pruner} pruner at epoch {epoch}: "
                                            f"{metric} = {value:.4g}")
        self.stopped.add(trial_id)
        self.pruned.add(trial_id)
        return True

    def finish(self, trial_id: str, result: Mapping[str, Any] | None, error: bool) -> None:
        """Tell Optuna how the trial ended: COMPLETE (full budget), PRUNED (stopped by the scheduler),
        FAIL (training failed; or its worker failed / the run stopped: then re-queued)."""
        with self._lock:
            trial = self.open.pop(trial_id, None)
        if trial is None:
            return
        if result:
            self.record(trial, result)
        cs = _cs(result)
        if self.scheduler == "optuna" and self.prunable and cs.get("final") and trial_id not in self.pruned:
            self._pruned_now(trial_id, trial, result or {})   # the last epoch arrives with the trial's end
        history = self.history.get(trial.number, [])
        if cs.get("final") or cs.get("fail_reason") or (trial_id in self.stopped and not error):
            self.book.drop_checkpoint(self.book.checkpoint(trial.user_attrs["key"]))  # ended: not resumed
        if trial_id in self.pruned:  # the Optuna pruner's decision (even on the final epoch, as Optuna's)
            self._tell(trial, None, TrialState.PRUNED)
        elif cs.get("final"):
            outcome = self.book.complete(trial, json.loads(cs["values"]), cs["n_params"], json.loads(cs["metrics"]),
                                         cs["seconds"], cs["weights"],
                                         resumed_from_epoch=int(cs.get("resumed_from_epoch", 0)))
            self._tell(trial, outcome.values, outcome.state)
        elif cs.get("infrastructure"):  # as the Optuna backend: set aside and re-queued, or (OOM twice) FAIL
            outcome, stop = self.book.machine_failed(trial, str(cs["infrastructure"]), requeue_now=False)
            self._tell(trial, None, TrialState.FAIL)
            if trial.user_attrs.get("interrupted"):
                requeue(self.study, self._frozen(trial), reason=f"trial {trial.number}: {outcome.reason}")
            if stop:
                self.infrastructure = self.infrastructure or (
                    f"trial {trial.number}: {cs['infrastructure']}; the trial does not use the budget and its "
                    "parameters are re-queued")
        elif cs.get("fail_reason"):
            self._tell(trial, None, self.book.fail(trial, str(cs["fail_reason"])).state)
        elif trial_id in self.stopped and not error:
            last = history[-1] if history else {}
            metric = self.metrics[0]
            shown = f"{metric} = {last[metric]:.4g}" if isinstance(last.get(metric), (int, float)) else "no value"
            trial.set_user_attr(
                "prune_reason", f"{self.scheduler} scheduler stopped it after epoch {last.get('epoch', 0)}: {shown}"
            )
            self._tell(trial, None, TrialState.PRUNED)
        else:
            self._lost(trial, error)

    def _lost(self, trial: Trial, error: bool) -> None:
        """A trial Ray did not finish: its worker or node was lost (``error``), or the run stopped it. It is
        set aside (outside the budget) and re-queued to resume from its checkpoint; a trial whose worker
        was lost more than ``search.max_failures`` times is recorded FAIL instead."""
        failures = int(trial.user_attrs.get("worker_failures", 0)) + (1 if error else 0)
        if error and failures > self.max_failures:
            self.book.fail(trial, f"{_WORKER_FAILED} {failures} times (search.max_failures = {self.max_failures}; "
                                  f"Ray's logs: {self.storage_path})")
            self._tell(trial, None, TrialState.FAIL)
            return
        why = _WORKER_FAILED if error else "the Ray run stopped it"
        self.book.set_aside(trial, f"interrupted: {why} (Ray's logs: {self.storage_path})", requeue_now=False)
        self._tell(trial, None, TrialState.FAIL)
        requeue(self.study, self._frozen(trial), reason=f"trial {trial.number}: {why}", worker_failures=failures)

    def reuse(self, trial: Trial, earlier: FrozenTrial) -> None:
        """Finish ``trial`` with the result of ``earlier`` (same key): a duplicate, outside the budget."""
        outcome = self.book.reuse(trial, earlier)
        self._tell(trial, outcome.values, outcome.state)

    def _tell(self, trial: Trial, values: list[float] | None, state: TrialState) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        except Exception as exc:  # noqa: BLE001 - e.g. a NaN objective: the trial fails with the reason
            logging.getLogger(__name__).warning("trial %d: %s", trial.number, exc)
            if self.study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
                self.study.tell(trial, state=TrialState.FAIL)
        frozen = self._frozen(trial)
        self.display.trial_finished(self.study, frozen)
        self.ledger.after_trial(self.study, frozen)

    def _frozen(self, trial: Trial) -> FrozenTrial:
        return self.study._storage.get_trial(trial._trial_id)


# ------------------------------------------------------------------------------------------------
# The searcher


def _revive(key: str) -> CellOptunaSearch:
    driver = _LIVE.get(key)
    if driver is None or driver.searcher is None:
        raise UserError(
            "a cellsearch Ray run cannot be restored with Tuner.restore; run the study again "
            "(its trials are in the Optuna storage and the budget is completed)"
        )
    return driver.searcher


class CellOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch on the study's own Optuna study, with cellsearch's bookkeeping.

    Differences from OptunaSearch: trials a scheduler stopped are told PRUNED (not COMPLETE with a
    low-fidelity value); intermediate values are reported at their epoch; every trial is described
    (spec, digest, key, ...) before it starts and its results are stored as user attributes; a trial whose
    key was already trained reuses that result without a Ray trial; the budget is checked against the
    storage before each new trial. Pickling (Tune saves its searcher) keeps only a key to the live driver.
    """

    def __init__(self, driver: _Driver, **kwargs: Any) -> None:
        self._driver_key = driver.key
        self._cs_driver = driver
        super().__init__(space=driver.sample, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _revive, (self._driver_key,)

    def save(self, checkpoint_path: str) -> None:
        """Tune's searcher checkpoint: the state lives in the Optuna storage."""
        Path(checkpoint_path).write_text(json.dumps({"cellsearch": "state is in the Optuna storage"}))

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a rerun of the study continues from the Optuna storage."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        d = self._cs_driver
        waiting = d.resolve_deferred()
        if waiting is not None:
            self._ot_trials[trial_id] = waiting
            return d.launch(trial_id, waiting)
        status = d.admission()
        if status == "done":
            return Searcher.FINISHED if not d.deferred else None
        if status == "wait":
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat ... supposed to be used with Study.optimize"
                super().suggest(trial_id)
        except BudgetTaken:  # other workers took the free slots meanwhile: no trial was created
            return None
        trial = self._ot_trials[trial_id]
        if d.surplus(trial):
            self._ot_trials.pop(trial_id, None)
            return None
        key, earlier, twin = d.prepare(trial)
        if earlier is not None or twin:
            self._ot_trials.pop(trial_id, None)
            if earlier is not None:
                d.reuse(trial, earlier)
            else:
                d.defer(trial, key)
            return None
        return d.launch(trial_id, trial)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self._cs_driver.open.get(trial_id)
        if trial is not None:
            self._cs_driver.record(trial, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        self._ot_trials.pop(trial_id, None)
        self._cs_driver.finish(trial_id, result, error)


# ------------------------------------------------------------------------------------------------
# Running


def _init_ray(address: str | None) -> bool:
    """Connect to Ray per ``search.ray_address``; returns True when this call started the connection.

    Worker output is not forwarded (a trial's failure is stored with its reason; Ray's logs stay in its
    session folder), so shutting a cluster's actors down does not print their exit tracebacks here.
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address in (None, "local"):
        # A new local cluster: Ray turns token authentication on when RAY_AUTH_MODE is unset and warns that
        # it did, on every run. Asking for the same mode explicitly keeps it on without the warning.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "this machine"
        hint = ""
        if address not in (None, "auto", "local") and os.environ.get("RAY_AUTH_MODE", "") != "token":
            hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token here too)"
        raise UserError(f"search.ray_address: cannot start or reach Ray at {where}: {exc}{hint}") from None
    return True


@contextmanager
def _quiet_tune() -> Iterator[None]:
    """Ray Tune's own console output off (the study's display reports progress)."""
    with env_var("RAY_AIR_NEW_OUTPUT", "0"):
        yield


def _max_t(config: StudyConfig, task: Any) -> int:
    from ..train import TrainConfig

    base = TrainConfig.from_dict({**config.train_dict(), "progress": False})
    top = planned_evaluations(base, task)
    space = config.space
    if space is not None and "epochs" in space.train and base.steps is None:
        top = max(top, int(max(space.train["epochs"].values)))
    return top


def run(
    config: StudyConfig, storage_url: str | None = None, display: Display | None = None, force_continue: bool = False
) -> StudyResult:
    """Create or continue ``config``'s study and run the remaining budget on Ray Tune (``force_continue``:
    as the Optuna backend's)."""
    from ..tasks import make_task
    from .preflight import preflight

    address = ray_address(config.search.ray_address)  # before anything is written
    space = build_space(config)
    task = make_task(config.task.to_dict())
    preflight(config, task, storage_url)  # data, sampler, pruner, storage: one line and nothing written
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = storage_url or config.storage_url
    study = open_study(config, storage_url, force_continue=force_continue)
    failed = fail_dead_trials(study, requeue)
    fail_stale(study)
    seed_trials(study, space, config)
    budget = config.search.n_trials
    free = None if budget is None else max(0, budget - counted(study) - n_running(study))
    display = display or Display(config, quiet=True)
    display.start(study, free, resumed=counted(study), failed_dead=failed)
    if budget is not None and counted(study) >= budget:
        display.stop()
        return StudyResult(config, study, url)
    exhausted = Ledger(space, config.search.seed, config.search.n_trials).check(study)
    if exhausted is not None:
        display.stop(exhausted)
        return StudyResult(config, study, url, exhausted)
    storage_path = Path(config.search.storage_path or config.directory / "ray")
    storage_path = storage_path if "://" in str(storage_path) else storage_path.resolve()
    driver = _Driver(config, space, task, study, display)
    driver.storage_path = str(storage_path)
    started = _init_ray(address)
    interrupted: list[int] = []
    try:
        check_resources(config.search.resources)
        driver.start()
        tuner = _tuner(config, driver, task, storage_path)
        with _quiet_tune():
            tuner.fit()
    finally:
        interrupted = driver.close()
        if started:
            ray.shutdown()
        display.stop(driver.ledger.outcome(study))
    if interrupted:  # Ctrl-C: Tune stops gracefully; the study is interrupted like the Optuna backend's
        raise KeyboardInterrupt
    if driver.infrastructure is not None:
        from .preflight import InfrastructureError

        raise InfrastructureError(f"{driver.infrastructure}; finished trials are kept ({counted(study)} of "
                                  f"{budget} done); fix the machine and run again to continue")
    return StudyResult(config, study, url, driver.ledger.outcome(study))


def ray_address(address: str | None) -> str | None:
    """``search.ray_address`` as ``ray.init`` gets it. ``auto`` is refused (Ray's ``auto`` attaches to
    whatever instance this machine's temporary folder points at, another user's included) unless
    ``RAY_ADDRESS`` names the cluster; an already initialized Ray is used as is."""
    if address != "auto" or ray.is_initialized():
        return address
    named = os.environ.get("RAY_ADDRESS", "").strip()
    if named and named != "auto":
        return named
    raise UserError(
        "search.ray_address: 'auto' is refused (it can attach to another user's Ray on this machine); name "
        "the head node as HOST:PORT (--set search.ray_address=HEAD_IP:6379) or set RAY_ADDRESS=HOST:PORT"
    )


def check_resources(resources: Mapping[str, Any]) -> None:
    """Refuse (one line, exit 2) per-trial ``resources`` that no live node of the Ray cluster has: Ray
    would wait for them forever. Says what a trial asks and what each node has."""
    want = {"CPU": float(resources.get("cpu", 1)), "GPU": float(resources.get("gpu", 0))}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if any(all(n.get("Resources", {}).get(k, 0.0) >= v for k, v in want.items() if v) for n in nodes):
        return
    have = "; ".join(
        f"{n.get('NodeManagerAddress', '?')}: {n.get('Resources', {}).get('CPU', 0):g} CPU, "
        f"{n.get('Resources', {}).get('GPU', 0):g} GPU" for n in nodes
    ) or "no live node"
    raise UserError(
        f"search.resources: a trial asks for {want['CPU']:g} CPU and {want['GPU']:g} GPU, more than any node of "
        f"the Ray cluster has ({have}); no trial could ever start. Lower search.resources or add a larger node"
    )


def _tuner(config: StudyConfig, driver: _Driver, task: Any, storage_path: Path) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    store = (
        ray.remote(num_cpus=0)(WeightsStore)
        .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False))
        .remote(str((config.directory / "trials").resolve()))
    )
    metrics, modes = _metric_names(config), _modes(config)
    searcher = CellOptunaSearch(
        driver,
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        sampler=_sampler(config),
        study_name=config.name,
        storage=driver.study._storage,
    )
    driver.searcher = searcher
    searcher._ot_study.pruner = make_pruner(config)  # scheduler optuna: the study's own pruner decides
    claim_slots(searcher._ot_study, driver.budget)  # slots taken atomically; re-queued trials first
    driver.study = searcher._ot_study  # tell through the searcher's study: its sampler sees every result
    max_t = _max_t(config, task)
    setup = TrialSetup(
        task=config.task.to_dict(),
        metrics=tuple(config.metrics),
        store=store,
        cwd=os.getcwd(),
        gpus=float(config.search.resources.get("gpu", 0)),
    )
    resources = {
        "cpu": float(config.search.resources.get("cpu", 1)),
        "gpu": float(config.search.resources.get("gpu", 0)),
    }
    trainable = tune.with_resources(tune.with_parameters(_trainable, setup=setup), resources)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(config, max_t, driver.key),
            num_samples=-1,
            max_concurrent_trials=config.search.max_concurrent_trials,
            reuse_actors=config.search.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=f"{config.name}-{stamp}-{driver.key[:6]}",
            storage_path=str(storage_path),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    from .samplers import make_sampler

    return make_sampler(config)


class RayBackend(Backend):
    """Trials run as Ray Tune trials (one machine or a cluster), sampled by OptunaSearch with the same
    sampler and recorded in the same Optuna storage as the Optuna backend's."""

    name = "ray"

    def run(self, config: StudyConfig, storage_url: str | None = None, display: Display | None = None,
            force_continue: bool = False) -> StudyResult:
        return run(config, storage_url=storage_url, display=display, force_continue=force_continue)


BACKEND = RayBackend()
