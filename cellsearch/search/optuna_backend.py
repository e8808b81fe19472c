"""The Optuna backend: trials run in this process by ``study.optimize``; budget and resume.

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

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ..config import StudyConfig
from .backend import Backend
from .claims import BudgetTaken, claim_slots
from .display import Display
from .ledger import Ledger, counted
from .preflight import InfrastructureError, infrastructure_failure, preflight
from .space import build_space
from .storage import fail_dead_trials
from .studies import (
    POLL_S,
    StudyResult,
    fail_stale,
    free_slots,
    n_running,
    open_study,
    requeue,
    seed_trials,
    wait_for_slots,
)
from .trials import (
    DuplicateFailed,
    Outcome,
    TrialBook,
    TrialFailed,
    objective_value,
    oom_note,
    weights_bytes,
    write_weights,
)

__all__ = ["run", "Objective", "OptunaBackend", "BACKEND"]


class Objective:
    """``objective(trial)``: sample → describe → (reuse | train) → objective values, each step written by the
    backend-neutral :class:`~cellsearch.search.trials.TrialBook`; see the module doc."""

    def __init__(self, book: TrialBook, display: Display | None = None) -> None:
        self.book, self.display = book, display
        self.config = book.config
        #: why the run stopped when the machine failed a trial (disk full, out of memory), else None
        self.infrastructure: str | None = None

    def __call__(self, trial: Trial) -> float | list[float]:
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # like a kill: the trial does not use the budget and is redone next run
            self.book.set_aside(trial, "interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            reason = infrastructure_failure(exc)
            if reason is None:
                raise
            # the machine failed, not the cell: recorded with the reason, outside the budget, re-queued;
            # out of memory is retried, anything else stops the run (TrialBook.machine_failed)
            reason = oom_note(reason)
            try:
                _, stop = self.book.machine_failed(trial, reason)
                why = "; the trial does not use the budget and its parameters are re-queued"
            except Exception:  # noqa: BLE001 - the storage itself may be what failed (disk full)
                stop, why = True, "; the trial could not be recorded (it is re-run when the study continues)"
            if stop:
                self.infrastructure = f"trial {trial.number}: {reason}{why}"
                trial.study.stop()
            raise

    def _run(self, trial: Trial) -> float | list[float]:
        if self.book.refuse_surplus(trial) is not None:  # another worker started the last trial meanwhile
            trial.study.stop()
            raise BudgetTaken(f"the budget of {self.book.budget} trials is taken")
        spec, train, key, candidate = self.book.describe(trial, self.book.space.sample(trial))
        if self.display is not None:
            self.display.trial_started(trial.number, candidate.summary())
        earlier = self.book.earlier(trial, key) or self._twin(trial, key)
        if earlier is not None:
            return self._end(self.book.reuse(trial, earlier))
        return self._train(trial, spec, train, key)

    def _end(self, outcome: Outcome) -> float | list[float]:
        """An outcome the Optuna way: values returned, a pruned or failed duplicate raised."""
        if outcome.state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        if outcome.state == TrialState.FAIL:
            raise DuplicateFailed(outcome.reason)
        values = outcome.values or []
        return values if self.config.multi_objective else values[0]

    def _twin(self, trial: Trial, key: str) -> FrozenTrial | None:
        """Wait while an earlier trial with the same key runs (another worker or thread); then its result
        (None when it did not finish COMPLETE or PRUNED: this trial trains)."""
        while self.book.twin_running(trial, key):
            time.sleep(POLL_S)
            fail_stale(trial.study)  # a twin whose worker died is failed after the grace period
        return self.book.earlier(trial, key)

    def _train(self, trial: Trial, spec: Any, train: Any, key: str) -> float | list[float]:
        from ..jobs import Job, run_job

        history: list[dict[str, Any]] = []
        ckpt = self.book.checkpoint(key)    # a killed trial's retry resumes from it
        try:
            record = run_job(Job(spec, self.book.task, train, checkpoint=ckpt),
                             callback=self._callback(trial, history), keep_model=True)
        except optuna.TrialPruned:
            self.book.drop_checkpoint(ckpt)
            raise
        except Exception as exc:
            if infrastructure_failure(exc) is None:  # the machine's failure keeps it for the retry
                self.book.drop_checkpoint(ckpt)
            self.book.fail(trial, self.book.failure_reason(exc))
            raise
        self.book.drop_checkpoint(ckpt)
        if record.diverged:
            raise TrialFailed(self.book.fail(trial, f"diverged: {record.error}").reason)
        values = [objective_value(o.metric, record, spec) for o in self.config.objective]
        path = write_weights(self.config.directory / "trials", trial.number, weights_bytes(record.model))
        outcome = self.book.complete(trial, values, record.n_params, record.final, record.seconds, path,
                                     history=record.history, resumed_from_epoch=record.resumed_from_epoch)
        return self._end(outcome)

    def _callback(self, trial: Trial, history: list[dict[str, Any]]) -> Callable[[int, dict[str, Any]], None]:
        from .trials import jsonable

        metric = self.config.objective[0].metric
        prune = not self.config.multi_objective and metric.startswith("val_")

        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
            history.append(jsonable(metrics))
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
    seed_trials(study, space, config)
    budget = config.search.n_trials
    claim_slots(study, budget)
    free = free_slots(study, budget)
    ledger = Ledger(space, config.search.seed, config.search.n_trials)
    display = display or Display(config, quiet=True)
    display.start(study, free, resumed=counted(study), failed_dead=failed)
    objective = Objective(TrialBook(config, space, task, budget), display)
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


class OptunaBackend(Backend):
    """Trials run in this process (``search.n_jobs`` threads), by ``study.optimize``."""

    name = "optuna"

    def run(self, config: StudyConfig, storage_url: str | None = None, display: Display | None = None,
            force_continue: bool = False) -> StudyResult:
        return run(config, storage_url=storage_url, display=display, force_continue=force_continue)


BACKEND = OptunaBackend()
