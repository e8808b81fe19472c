"""Optuna storages for studies: URLs, opening without creating, stale (dead-process) trials.

``sqlite:///runs/<name>/study.db`` is the default; any RDB URL Optuna accepts works (PostgreSQL, MySQL),
and ``journal:///path/to/study.log`` opens a journal-file storage. RDB storages run Optuna's heartbeat,
so a trial whose worker died on another machine is failed after the grace period; on this machine a
RUNNING trial whose process is gone is failed at once (see :func:`fail_dead_trials`).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from ..cli import UserError

__all__ = ["make_storage", "storage_exists", "worker_id", "is_dead", "fail_dead_trials", "HEARTBEAT_S"]

HEARTBEAT_S = 30
GRACE_S = 120


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///") :]
    return None if rest in ("", ":memory:") else Path(rest)


def _journal_path(url: str) -> Path | None:
    return Path(url[len("journal:///") :]) if url.startswith("journal:///") else None


def storage_exists(url: str) -> bool:
    """False when the URL names a local file (SQLite or journal) that does not exist yet."""
    path = _sqlite_path(url) or _journal_path(url)
    return path is None or path.exists()


def make_storage(url: str, create: bool = True, failed_trial_callback: Any = None) -> Any:
    """An Optuna storage for ``url``; the folder of a local file is created only when ``create``."""
    import optuna

    path = _sqlite_path(url) or _journal_path(url)
    if path is not None:
        if not create and not path.exists():
            raise UserError(f"no study storage at {url} (run the study first: cellsearch run STUDY.yaml)")
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    for attempt in range(4):
        try:
            return _rdb(url, failed_trial_callback)
        except Exception as exc:  # bad URL, missing driver, unreachable server
            if attempt < 3 and _is_creation_race(exc):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise UserError(f"storage {url!r} cannot be opened: {type(exc).__name__}: {exc}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _rdb(url: str, failed_trial_callback: Any) -> Any:
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat arguments are marked experimental
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=failed_trial_callback,
            engine_kwargs=engine,
        )


def _is_creation_race(exc: Exception) -> bool:
    """Two processes creating a new database's tables at once (or one holding the lock meanwhile)."""
    text, kind = str(exc).lower(), type(exc).__name__
    if kind == "OperationalError":
        return "already exists" in text or "locked" in text
    return kind == "IntegrityError" and "alembic_version" in text


def _start_time(pid: int) -> str | None:
    """The process start time (Linux: /proc/<pid>/stat field 22), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def worker_id() -> dict[str, Any]:
    """This process: host, pid and start time (stored on every trial it runs)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def is_dead(worker: Any) -> bool:
    """True when ``worker`` ran on this host and its process no longer exists (or the pid was reused)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False
    pid = worker.get("pid")
    if not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = worker.get("start")
    return start is not None and _start_time(pid) not in (None, start)


def fail_dead_trials(study: Any, requeue: Any) -> list[int]:
    """Mark RUNNING trials of dead local processes FAIL (reason stored) and re-queue their parameters."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(trial.user_attrs.get("worker")):
            continue
        storage = study._storage
        reason = f"interrupted: its process ({trial.user_attrs['worker'].get('pid')}) died"
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            requeue(study, storage.get_trial(trial._trial_id))
            failed.append(trial.number)
    return failed
