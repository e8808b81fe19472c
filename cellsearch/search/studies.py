"""A study in its storage, the same for every backend: create or continue it (fingerprint, metric names),
enqueue the published cells once, count and free budget slots, re-queue trials killed with their process,
and :class:`StudyResult`, what a run returns.

The rules of what a trial means for the budget are in :mod:`cellsearch.search.ledger`; what a backend writes
on each trial in :mod:`cellsearch.search.trials`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ..config import FORCEABLE_KEYS, IDENTITY_KEYS, StudyConfig
from ..errors import UserError
from .claims import study_lock
from .ledger import counted
from .samplers import make_pruner, make_sampler
from .storage import fail_dead_trials, make_storage, mask_url

__all__ = ["open_study", "set_metric_names", "stored_config", "seed_trials", "requeue", "fail_stale", "n_running",
           "free_slots", "wait_for_slots", "StudyResult", "POLL_S"]

#: seconds between looks at the storage while waiting for other workers' trials
POLL_S = 1.0


def requeue(study: optuna.Study, trial: FrozenTrial | Trial, reason: str | None = None,
            **extra: Any) -> None:
    """Enqueue the parameters of a trial killed with its process (a fresh trial redoes it).

    The new trial stores ``retry_of`` (the killed trial's number, which no longer counts towards the
    budget), when given ``retry_reason``, and the ``extra`` user attributes.
    """
    attrs: dict[str, Any] = {"retry_of": trial.number, **extra}
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


def seed_trials(study: optuna.Study, space: Any, config: StudyConfig) -> int:
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
