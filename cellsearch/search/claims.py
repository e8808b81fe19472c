"""Study-wide decisions made atomically across workers: seeding, budget slots, the order of the queue.

Several workers (processes on one or many machines, threads of one process) share a study through its
storage. Two decisions read the storage and then write it, so two workers doing them at the same moment
would both act on the same reading:

- *seeding*: which published cells are not enqueued yet and how many fit in the budget;
- *taking a budget slot*: whether the finished + running trials leave a free slot, then starting a trial
  in it (popping a WAITING trial or creating a new one).

Both run under :func:`study_lock`, one mutex per study held by the storage itself:

- **PostgreSQL**: a transaction-level advisory lock, ``pg_advisory_xact_lock(key)`` with ``key`` a 64-bit
  hash of the study name, on a connection of the storage's own SQLAlchemy engine. The server grants one
  key to one session at a time and queues the others; the lock ends with the transaction, or when the
  connection drops (a killed worker never holds it), and the lock's transaction is ended by the server
  after 60 s idle (``idle_in_transaction_session_timeout``), so a lost node frees it too. No table or row
  is needed (a ``SELECT ... FOR UPDATE`` needs a row that must itself be created race-free). The reads and
  writes done meanwhile go through Optuna's storage API on other connections and are committed before
  the lock is released, so the next holder sees them.
- **SQLite** and **journal files** (one machine): ``flock`` on ``<file>.cellsearch-lock`` beside the
  storage file, released by the kernel when the process dies. (SQLite's own write lock cannot be used:
  Optuna's writes inside the section would wait for it.)
- any other storage: a lock of this process only (threads); workers in other processes are not
  serialized and the backends' check after a trial starts (``not run: the budget ... was taken``) is the
  fallback.

:func:`claim_slots` makes a study (an ``optuna.Study`` object: Optuna's ``optimize`` and Ray's OptunaSearch
both start trials through its ``ask``) take each trial's slot under the lock before the trial exists, and
start re-queued trials (``retry_of``: a killed worker's, a lost node's, an infrastructure failure's) before
any other WAITING trial (the published cells), so a lost spec is trained next.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from .storage import worker_id

__all__ = ["study_lock", "lock_kind", "claim_slots", "BudgetTaken", "queue_order", "IDLE_TIMEOUT_S"]

#: seconds a PostgreSQL lock holder may stay idle before the server ends its lock (a lost node)
IDLE_TIMEOUT_S = 60
_LOCAL: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


class BudgetTaken(RuntimeError):
    """Finished and running trials (any worker) already hold the study's whole budget: no trial started."""


def _backend(study: optuna.Study) -> Any:
    storage = study._storage
    return getattr(storage, "_backend", storage)


def _lock_file(study: optuna.Study) -> Path | None:
    """The file to ``flock`` for a SQLite or journal-file storage (None: not a local file)."""
    backend = _backend(study)
    engine = getattr(backend, "engine", None)
    if engine is not None:
        if engine.dialect.name != "sqlite" or not engine.url.database:
            return None
        path = Path(engine.url.database)
    else:
        path_attr = getattr(getattr(backend, "_backend", None), "_file_path", None)
        if path_attr is None:
            return None
        path = Path(path_attr)
    return path.with_name(path.name + ".cellsearch-lock")


def lock_kind(study: optuna.Study) -> str:
    """``postgresql``, ``file`` or ``process``: how :func:`study_lock` serializes this study's workers."""
    engine = getattr(_backend(study), "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        return "postgresql"
    return "file" if _lock_file(study) is not None else "process"


def _key(name: str) -> int:
    """A signed 64-bit advisory-lock key for study ``name`` (the same on every worker)."""
    digest = hashlib.sha256(f"cellsearch/claims/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def study_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the study-wide mutex (see the module doc) for the duration of the ``with`` block."""
    kind = lock_kind(study)
    if kind == "postgresql":
        from sqlalchemy import text

        with _backend(study).engine.connect() as conn, conn.begin():
            conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = '{IDLE_TIMEOUT_S}s'"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _key(study.study_name)})
            yield
        return
    if kind == "file":
        path = _lock_file(study)
        assert path is not None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # separate open file descriptions: threads exclude each other too
            yield
        finally:
            os.close(fd)  # releases the lock
        return
    with _LOCAL_GUARD:
        lock = _LOCAL.setdefault(study.study_name, threading.Lock())
    with lock:
        yield


def queue_order(waiting: list[FrozenTrial]) -> list[FrozenTrial]:
    """WAITING trials in the order they start: re-queued trials (``retry_of``) first, then by number."""
    return sorted(waiting, key=lambda t: (not isinstance(t.user_attrs.get("retry_of"), int), t.number))


def claim_slots(study: optuna.Study, budget: int | None) -> optuna.Study:
    """Make ``study`` start every trial under :func:`study_lock`: when finished + running trials (any
    worker) hold the whole ``budget`` its ``ask`` raises :class:`BudgetTaken` and no trial is created;
    otherwise the first WAITING trial in :func:`queue_order` is started, or a new trial. Returns ``study``.

    Installed on the study object (Optuna's ``ask`` takes its trial id from ``_pop_waiting_trial_id``,
    which here also creates the trial, so the sampler runs outside the lock).
    """
    from .ledger import counted

    storage = study._storage
    study_id = study._study_id

    def take_slot() -> int:
        with study_lock(study):
            if budget is not None:
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if counted(study) + running >= budget:
                    raise BudgetTaken(f"the budget of {budget} trials is taken")
            me = worker_id()
            waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
            for trial in queue_order(list(waiting)):
                try:
                    storage.set_trial_user_attr(trial._trial_id, "worker", me)  # before it runs: see below
                    if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                        return _first_beat(storage, trial._trial_id)
                except UpdateFinishedTrialError:  # a worker without the lock took it (other storages)
                    continue
            return _first_beat(storage, storage.create_new_trial(study_id, template_trial=_running(me)))

    study._pop_waiting_trial_id = take_slot  # type: ignore[method-assign]
    return study


# A worker killed between taking its slot and Optuna's first heartbeat (or the objective's ``worker``
# attribute) left a RUNNING trial that nothing ever failed: Optuna's stale check skips trials without a
# heartbeat and ``fail_dead_trials`` needs the worker, so every later run waited for it (kill_loop.py).
# The trial is now created RUNNING with its ``worker`` in one write (a popped WAITING trial gets it before
# it runs), and beats once at once.


def _running(worker: dict[str, Any]) -> FrozenTrial:
    """A template for a new RUNNING trial that names its worker from the start."""
    return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                       datetime_complete=None, params={}, distributions={}, user_attrs={"worker": worker},
                       system_attrs={}, intermediate_values={}, trial_id=-1)


def _first_beat(storage: Any, trial_id: int) -> int:
    """Record the trial's first heartbeat (RDB storages with heartbeats); returns ``trial_id``."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)
    return trial_id
