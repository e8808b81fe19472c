"""The trial ledger: what a study's trials mean for its budget, the same rules for every backend.

- **The budget buys distinct cells.** A trial uses the budget when it finished (COMPLETE, PRUNED, or FAIL
  from the training itself), not when it was killed with its process (``interrupted``, or re-queued as
  ``retry_of`` by another trial), and not when it was a *duplicate*: a proposal whose key (spec + training
  + task) was already evaluated is answered from storage (``reused_from``: the earlier trial's values, so
  the sampler learns them) and the search asks again.
- **Retries are bounded.** After :data:`MAX_RETRIES` duplicate proposals in a row, the next slot gets a
  point of the space that was not evaluated yet (drawn at random, seeded by ``search.seed`` and the trial
  count), enqueued with ``proposed_by``; when none can be found the search stops with the reason.
- **A finite space can be exhausted.** When the space is finite (no float range without a step) and every
  one of its points was evaluated (or is being evaluated), the search stops: "space exhausted".

:class:`Ledger` holds one run's state (the duplicate streak, the reason it stopped); the functions read a
study's trials and are what the display, the leaderboard and both backends count with.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from optuna import Study
from optuna.trial import FrozenTrial, TrialState

from .space import enumerate_points, random_point

__all__ = [
    "FINISHED",
    "MAX_RETRIES",
    "retried",
    "is_duplicate",
    "uses_budget",
    "counted",
    "point",
    "evaluated_points",
    "distinct_cells",
    "n_duplicates",
    "evaluation_of",
    "Ledger",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
#: duplicate proposals in a row (one slot) before the slot gets a point not evaluated yet
MAX_RETRIES = 10
#: random draws tried for a point not evaluated yet in a space too large to list
_DRAWS = 200


def retried(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of trials re-queued as another trial's ``retry_of`` (killed or heartbeat-failed)."""
    return {t.user_attrs["retry_of"] for t in trials if isinstance(t.user_attrs.get("retry_of"), int)}


def is_duplicate(trial: FrozenTrial) -> bool:
    """The trial proposed an already-evaluated key and was answered from storage."""
    return "reused_from" in trial.user_attrs


def _interrupted(trial: FrozenTrial, again: set[int]) -> bool:
    return bool(trial.user_attrs.get("interrupted")) or trial.number in again


def uses_budget(trial: FrozenTrial, again: set[int]) -> bool:
    """Finished, not interrupted (nor re-queued: ``again``), not a duplicate."""
    return trial.state in FINISHED and not _interrupted(trial, again) and not is_duplicate(trial)


def counted(study: Study) -> int:
    """Trials that used the budget."""
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    return sum(1 for t in trials if uses_budget(t, again))


def point(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A parameter point as a hashable value (floats to 10 significant digits)."""
    return tuple(sorted((k, float(f"{v:.10g}") if isinstance(v, float) else v) for k, v in params.items()))


def evaluated_points(trials: Iterable[FrozenTrial], running: bool = True) -> set[tuple[tuple[str, Any], ...]]:
    """Points of trials that were evaluated (used the budget or were answered from storage), and, when
    ``running``, of trials being evaluated."""
    trials = list(trials)
    again = retried(trials)
    out = set()
    for t in trials:
        done = t.state in FINISHED and not _interrupted(t, again)
        if done or (running and t.state == TrialState.RUNNING and not t.user_attrs.get("interrupted")):
            out.add(point(t.params))
    return out


def distinct_cells(trials: Iterable[FrozenTrial]) -> int:
    """Distinct keys (spec + training + task) among the trials that used the budget."""
    trials = list(trials)
    again = retried(trials)
    return len({t.user_attrs.get("key", f"#{t.number}") for t in trials if uses_budget(t, again)})


def n_duplicates(trials: Iterable[FrozenTrial]) -> int:
    """Proposals answered from storage."""
    return sum(1 for t in trials if is_duplicate(t) and t.state in FINISHED)


def evaluation_of(trials: Iterable[FrozenTrial], key: str, number: int) -> FrozenTrial | None:
    """The earlier evaluation of ``key`` a new trial ``number`` is answered with: a COMPLETE or PRUNED
    trial, or one whose training diverged (deterministic: it would diverge again); the trial that
    trained it rather than one of its duplicates. None: not evaluated yet (or only failed otherwise)."""
    found = []
    for t in trials:
        if t.number == number or t.user_attrs.get("key") != key:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            found.append(t)
        elif t.state == TrialState.FAIL and str(t.user_attrs.get("fail_reason", "")).startswith("diverged"):
            found.append(t)
    if not found:
        return None
    return min(found, key=lambda t: (is_duplicate(t), t.number))


class Ledger:
    """One run's bookkeeping on top of the study's trials: the duplicate streak, the space's points, the
    reason the run stopped early (``stop_reason``). Thread-safe (Optuna's ``n_jobs``)."""

    def __init__(self, space: Any, seed: int | None = None, budget: int | None = None) -> None:
        self.space, self.seed, self.budget = space, seed, budget
        self.points = enumerate_points(space.sample)  # None: unbounded
        self.streak = 0
        self.stop_reason: str | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int | None:
        """How many points the space has (None: unbounded)."""
        return None if self.points is None else len(self.points)

    def exhausted(self, trials: list[FrozenTrial]) -> bool:
        """Every point of a finite space evaluated or being evaluated, the budget not complete."""
        if self.points is None:
            return False
        if self.budget is not None:
            again = retried(trials)
            if sum(1 for t in trials if uses_budget(t, again)) >= self.budget:
                return False  # the budget is complete: nothing to stop
        seen = evaluated_points(trials)
        return all(point(p) in seen for p in self.points)

    def check(self, study: Study) -> str | None:
        """Before a trial: stop (returns the reason) when the space is exhausted."""
        with self._lock:
            if self.stop_reason is None and self.exhausted(study.get_trials(deepcopy=False)):
                self.stop_reason = self._exhausted_message(study)
            return self.stop_reason

    def after_trial(self, study: Study, trial: FrozenTrial) -> str | None:
        """After a trial: update the duplicate streak, enqueue a fresh point after too many duplicates in a
        row, stop when the space is exhausted. Returns the stop reason (None: go on)."""
        with self._lock:
            if is_duplicate(trial):
                self.streak += 1
            elif trial.state in FINISHED and not trial.user_attrs.get("interrupted"):
                self.streak = 0
            trials = study.get_trials(deepcopy=False)
            if self.stop_reason is None and self.exhausted(trials):
                self.stop_reason = self._exhausted_message(study)
            elif self.stop_reason is None and self.streak >= MAX_RETRIES:
                self._fill(study, trials)
            return self.stop_reason

    def outcome(self, study: Study) -> str | None:
        """At the end of a run: why it stopped before its budget (None: the budget is complete, or the run
        was not stopped by the ledger). The count is the final one (running trials have finished)."""
        with self._lock:
            if self.stop_reason is None:
                return None
            if self.budget is not None and counted(study) >= self.budget:
                return None
            if self.stop_reason.startswith("space exhausted"):
                return self._exhausted_message(study)
            return self.stop_reason

    def _exhausted_message(self, study: Study) -> str:
        of = f" of the budget of {self.budget}" if self.budget is not None else ""
        return (
            f"space exhausted: all {self.size} point(s) of the space have been evaluated; "
            f"stopping after {counted(study)} trial(s){of}"
        )

    def _fill(self, study: Study, trials: list[FrozenTrial]) -> None:
        """Enqueue a point not evaluated (nor waiting) yet; stop when there is none to be found."""
        taken = evaluated_points(trials) | {  # enqueued: their parameters are fixed, not yet params
            point(t.system_attrs.get("fixed_params", {})) for t in trials if t.state == TrialState.WAITING
        }
        rng = random.Random(f"{self.seed}/{len(trials)}")
        fresh: dict[str, Any] | None = None
        if self.points is not None:
            left = [p for p in self.points if point(p) not in taken]
            fresh = rng.choice(left) if left else None
        else:
            for _ in range(_DRAWS):
                candidate = random_point(self.space.sample, rng)
                if point(candidate) not in taken:
                    fresh = candidate
                    break
        if fresh is None:
            self.stop_reason = (
                f"the sampler proposed {self.streak} already-evaluated cells in a row and no point of the space "
                "left unevaluated was found; stopping"
            )
            return
        why = f"a point not evaluated yet, after {self.streak} duplicate proposals in a row"
        study.enqueue_trial(dict(fresh), user_attrs={"proposed_by": why})
        self.streak = 0
