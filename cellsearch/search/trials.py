"""The trial lifecycle, the same for every backend: what a trial records and what it means for the budget.

A backend (Optuna's ``study.optimize`` in :mod:`.optuna_backend`, Ray Tune in :mod:`.ray_backend`) decides
*where* a trial trains; :class:`TrialBook` writes *what* happens to it, so both backends leave the same
storage behind:

- :meth:`TrialBook.describe` resolves the sampled candidate into a ModelSpec and training config and stores
  ``spec``, ``digest``, ``key`` (spec + training + task), ``summary``, ``readout``, ``train``, ``worker``;
- :meth:`TrialBook.earlier` finds the evaluation a trial duplicates; :meth:`TrialBook.reuse` answers it from
  storage (``reused_from``, the earlier trial's values, state and reason: outside the budget);
- :meth:`TrialBook.complete` records a training's ``n_params``, ``history``, ``metrics``, ``seconds`` and
  ``weights``; :meth:`TrialBook.fail` a failure with its ``fail_reason``;
- :meth:`TrialBook.set_aside` keeps a trial the machine (not the cell) failed out of the budget and
  re-queues its parameters; :meth:`TrialBook.refuse_surplus` a trial started when other workers had
  taken the whole budget.

Each returns an :class:`Outcome` (state and values) that the backend hands to its own mechanism (Optuna:
return / raise; Ray: ``study.tell``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, Trial, TrialState

from ..config import StudyConfig
from .ledger import evaluation_of, retried, uses_budget
from .space import Candidate
from .storage import worker_id
from .studies import requeue

__all__ = ["TrialBook", "Outcome", "TrialFailed", "DuplicateFailed", "key_of", "jsonable", "budget_taken",
           "objective_value", "weights_bytes", "write_weights"]

OUT_OF_MEMORY = "out of memory"

#: what a duplicate copies from the trial it duplicates
COPIED = ("n_params", "history", "metrics", "weights", "seconds", "ray_node")


def key_of(spec: Any, train: dict[str, Any], task: dict[str, Any]) -> str:
    """The identity of an evaluation: spec + training config + task (a duplicate has an earlier one's key)."""
    data = {"spec": spec.to_dict(), "train": train, "task": task}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (tensors and numpy scalars as floats, anything else as text)."""
    return json.loads(json.dumps(value, default=lambda v: float(v) if hasattr(v, "__float__") else str(v)))


@dataclass(frozen=True)
class Outcome:
    """How a trial ends: its state and (COMPLETE) its objective values."""

    state: TrialState
    values: list[float] | None = None
    reason: str = ""


def budget_taken(trial: Trial, budget: int | None) -> bool:
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


class TrialBook:
    """What every backend writes on a study's trials (see the module docstring)."""

    def __init__(self, config: StudyConfig, space: Any, task: Any, budget: int | None = None) -> None:
        self.config, self.space, self.task, self.budget = config, space, task, budget
        self.worker = worker_id()
        self.task_dict = config.task.to_dict()

    def refuse_surplus(self, trial: Trial) -> Outcome | None:
        """A FAIL outcome (outside the budget) when other workers took the whole budget meanwhile."""
        if not budget_taken(trial, self.budget):
            return None
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("interrupted", True)
        reason = f"not run: the budget of {self.budget} trials was taken by other workers"
        trial.set_user_attr("fail_reason", reason)
        return Outcome(TrialState.FAIL, reason=reason)

    def resolve(self, candidate: Candidate) -> tuple[Any, Any]:
        """The ModelSpec and TrainConfig a sampled candidate stands for."""
        from ..train import TrainConfig, resolve_model_spec

        budget = candidate.param_budget if candidate.sized else self.config.model.param_budget
        spec = resolve_model_spec(candidate.cell, candidate.depth, self.task, hidden_size=candidate.hidden_size,
                                  param_budget=budget)
        train = TrainConfig.from_dict({**self.config.train_dict(), **dict(candidate.train), "progress": False})
        return spec, train

    def describe(self, trial: Trial, sampled: Any) -> tuple[Any, Any, str, Candidate]:
        """Resolve what ``trial`` sampled and store what it is; returns (spec, train config, key, candidate)."""
        trial.set_user_attr("worker", self.worker)
        candidate = self.space.candidate_for(sampled, trial.user_attrs.get("published"))
        spec, train = self.resolve(candidate)
        key = key_of(spec, train.to_dict(), self.task_dict)
        trial.set_user_attr("spec", spec.to_json())
        trial.set_user_attr("digest", spec.digest())
        trial.set_user_attr("key", key)
        trial.set_user_attr("summary", candidate.summary())
        trial.set_user_attr("readout", self.task.readout)
        trial.set_user_attr("train", jsonable(train.to_dict()))
        return spec, train, key, candidate

    @staticmethod
    def earlier(trial: Trial, key: str) -> FrozenTrial | None:
        """The evaluation of ``key`` this trial duplicates (:func:`~cellsearch.search.ledger.evaluation_of`)."""
        return evaluation_of(trial.study.get_trials(deepcopy=False), key, trial.number)

    @staticmethod
    def twin_running(trial: Trial, key: str) -> bool:
        """An earlier trial with the same key is training now (another worker, thread or Ray trial)."""
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return any(t.number < trial.number and t.user_attrs.get("key") == key for t in running)

    @staticmethod
    def reuse(trial: Trial, earlier: FrozenTrial) -> Outcome:
        """Answer a duplicate from storage: the earlier trial's record, values and state (outside the budget)."""
        trial.set_user_attr("reused_from", earlier.number)
        for name in COPIED:
            if name in earlier.user_attrs:
                trial.set_user_attr(name, earlier.user_attrs[name])
        if earlier.state == TrialState.FAIL:
            why = earlier.user_attrs.get("fail_reason", "")
            reason = f"same spec and training as trial {earlier.number}, which failed ({why})"
            trial.set_user_attr("fail_reason", reason)
            return Outcome(TrialState.FAIL, reason=reason)
        for step, value in earlier.intermediate_values.items():
            trial.report(value, step)
        if earlier.state == TrialState.PRUNED:
            reason = (f"same spec and training as trial {earlier.number}, which was "
                      f"pruned ({earlier.user_attrs.get('prune_reason', '')})")
            trial.set_user_attr("prune_reason", reason)
            return Outcome(TrialState.PRUNED, reason=reason)
        return Outcome(TrialState.COMPLETE, list(earlier.values))

    def checkpoint(self, key: str) -> str | None:
        """The checkpoint file of the evaluation ``key`` (a retry of a killed trial has the same key and
        resumes from it); None when ``search.checkpoints`` is off."""
        folder = self.config.checkpoint_dir
        return None if folder is None else str((folder / f"{key}.pt").absolute())

    @staticmethod
    def drop_checkpoint(path: str | None) -> None:
        """The evaluation ended (a result of the cell, not an interruption): its checkpoint goes."""
        if path is not None:
            Path(path).unlink(missing_ok=True)

    @staticmethod
    def complete(trial: Trial, values: list[float], n_params: int, metrics: dict[str, Any], seconds: float,
                 weights: str | Path, history: list[dict[str, Any]] | None = None,
                 resumed_from_epoch: int = 0) -> Outcome:
        """Record a finished training (its history may have been stored epoch by epoch already);
        ``resumed_from_epoch``: it continued from a checkpoint written after that epoch."""
        if resumed_from_epoch:
            trial.set_user_attr("resumed_from_epoch", int(resumed_from_epoch))
        trial.set_user_attr("n_params", int(n_params))
        if history is not None:
            trial.set_user_attr("history", jsonable(history))
        trial.set_user_attr("metrics", jsonable(metrics))
        trial.set_user_attr("seconds", float(seconds))
        trial.set_user_attr("weights", str(weights))
        return Outcome(TrialState.COMPLETE, [float(v) for v in values])

    @staticmethod
    def fail(trial: Trial, reason: str) -> Outcome:
        """A failure of the cell or its training (diverged, an error): it uses the budget."""
        trial.set_user_attr("fail_reason", reason)
        return Outcome(TrialState.FAIL, reason=reason)

    @staticmethod
    def failure_reason(exc: BaseException) -> str:
        """``fail_reason`` of a training that raised ``exc``."""
        from ..train import DivergenceError

        return f"diverged: {exc}" if isinstance(exc, DivergenceError) else f"{type(exc).__name__}: {exc}"

    @classmethod
    def machine_failed(cls, trial: Trial, reason: str, requeue_now: bool = True) -> tuple[Outcome, bool]:
        """A failure of the machine, not of the cell (:func:`~cellsearch.search.preflight.infrastructure_failure`):
        (outcome, whether the run stops). Out of memory the first time: set aside (outside the budget) and
        re-queued first, the run goes on (the retry runs when the other trials may have freed memory); out
        of memory again on that retry: FAIL with the reason, in the budget (the cell does not fit here).
        Anything else (disk full, data gone): set aside, re-queued, and the run stops (it would fail every
        trial the same way)."""
        if reason.startswith(OUT_OF_MEMORY):
            if OUT_OF_MEMORY in str(trial.user_attrs.get("retry_reason", "")):
                return cls.fail(trial, f"{reason}, again when retried: the cell does not fit in memory here"), False
            return cls.set_aside(trial, f"infrastructure: {reason}", requeue_now), False
        return cls.set_aside(trial, f"infrastructure: {reason}", requeue_now), True

    @staticmethod
    def set_aside(trial: Trial, reason: str, requeue_now: bool = True) -> Outcome:
        """The machine (or the run) stopped ``trial``, not the cell: recorded with ``reason``, outside the
        budget, its parameters re-queued (``requeue_now=False``: the backend re-queues after telling)."""
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("interrupted", True)
        if requeue_now:
            requeue(trial.study, trial, reason=f"trial {trial.number}: {reason}")
        return Outcome(TrialState.FAIL, reason=reason)


class TrialFailed(RuntimeError):
    """A trial that failed with a reason already recorded (a diverged training)."""


class DuplicateFailed(TrialFailed):
    """A duplicate of a trial whose training diverged: it fails the same way, without training."""


def peak_mib() -> float:
    """This process's peak memory in MiB: CUDA's peak allocation where CUDA is in use, else the resident
    set's high-water mark (Linux)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def oom_note(reason: str) -> str:
    """``reason`` with the peak memory when it is an out-of-memory failure."""
    return f"{reason}; peak {peak_mib():.0f} MiB" if reason.startswith(OUT_OF_MEMORY) else reason


def objective_value(metric: str, record: Any, spec: Any) -> float:
    """The value of objective ``metric`` for a finished training (a :class:`~cellsearch.jobs.Record` with
    its model): ``speed`` timed here, every other metric read by :meth:`~cellsearch.jobs.Record.value`."""
    return _speed(spec, record.model) if metric == "speed" else record.value(metric)


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
