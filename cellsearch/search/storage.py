"""Optuna storages for studies: URLs, opening without creating, stale (dead-process) trials.

``sqlite:///runs/<name>/study.db`` is the default; any RDB URL Optuna accepts works (PostgreSQL, MySQL),
and ``journal:///path/to/study.log`` opens a journal-file storage. RDB storages run Optuna's heartbeat,
so a trial whose worker died on another machine is failed after the grace period; on this machine a
RUNNING trial whose process is gone is failed at once (see :func:`fail_dead_trials`). The heartbeat
interval and grace period (30 s and 120 s) can be changed with the environment variables
``CELLSEARCH_HEARTBEAT_S`` and ``CELLSEARCH_GRACE_S`` (the same on every worker of a study).
"""

from __future__ import annotations

import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from ..config.urls import local_path, mask_url, redact, url_problem
from ..errors import UserError

__all__ = [
    "mask_url",
    "redact",
    "url_problem",
    "check_writable",
    "make_storage",
    "storage_exists",
    "worker_id",
    "is_dead",
    "fail_dead_trials",
    "heartbeat_settings",
    "HEARTBEAT_S",
]

HEARTBEAT_S = 30
GRACE_S = 120


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: the defaults or ``CELLSEARCH_HEARTBEAT_S`` / ``CELLSEARCH_GRACE_S``."""
    values = []
    for name, default in (("CELLSEARCH_HEARTBEAT_S", HEARTBEAT_S), ("CELLSEARCH_GRACE_S", GRACE_S)):
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            raise UserError(f"{name}={text!r}: expected a whole number of seconds >= 1") from None
        if value < 1:
            raise UserError(f"{name}={text!r}: expected a whole number of seconds >= 1")
        values.append(value)
    interval, grace = values
    return interval, max(grace, interval + 1)


def check_writable(url: str) -> None:
    """Raise :class:`UserError` when the local file behind ``url`` could not be created or written: a
    path through a file, a folder without write permission, a file that is not a SQLite database. Nothing
    is created."""
    path = local_path(url)
    if path is None:
        return
    shown = mask_url(url)
    if path.exists():
        if not path.is_file():
            raise UserError(f"storage {shown!r}: {str(path)!r} is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"storage {shown!r}: {str(path)!r} is not writable by this user")
        if url.startswith("sqlite") and path.stat().st_size:
            with open(path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise UserError(f"storage {shown!r}: {str(path)!r} is not a SQLite database; expected a "
                                    "study.db written by cellsearch (or a new path)")
        return
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"storage {shown!r}: {str(folder)!r} is a file, so {str(path)!r} cannot be created")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"storage {shown!r}: folder {str(folder)!r} is not writable by this user")


def storage_exists(url: str) -> bool:
    """False when the URL names a local file (SQLite or journal) that does not exist yet."""
    path = local_path(url)
    return path is None or path.exists()


def make_storage(url: str, create: bool = True, failed_trial_callback: Any = None) -> Any:
    """An Optuna storage for ``url``; the folder of a local file is created only when ``create``."""
    import optuna

    path = local_path(url)
    if path is not None:
        if not create and not path.exists():
            raise UserError(f"no study storage at {mask_url(url)} (run the study first: cellsearch run STUDY.yaml)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"storage {mask_url(url)!r}: folder {str(path.parent)!r} cannot be created "
                            f"({type(exc).__name__}: {exc.strerror or exc})") from None
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    for attempt in range(6):
        try:
            return _rdb(url, failed_trial_callback)
        except Exception as exc:  # bad URL, missing driver, unreachable server
            if attempt < 5 and _is_creation_race(exc):
                time.sleep(0.3 * (attempt + 1) + 0.2 * random.random())   # spread the racing workers
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UserError(redact(f"storage {url!r} cannot be opened: {type(exc).__name__}: {first}", url)) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _with_driver(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 reads it as psycopg 3, cellsearch
    depends on psycopg2 (``psycopg2-binary``); an explicit ``postgresql+<driver>://`` is kept."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            import importlib.util

            if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
                return "postgresql+psycopg2://" + url[len(scheme) :]
            return "postgresql://" + url[len(scheme) :]
    return url


def _rdb(url: str, failed_trial_callback: Any) -> Any:
    import optuna

    url = _with_driver(url)
    # a server connection may be dropped while a long trial trains: test it before use
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    interval, grace = heartbeat_settings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat arguments are marked experimental
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=failed_trial_callback,
            engine_kwargs=engine,
        )


def _is_creation_race(exc: Exception) -> bool:
    """Two processes creating a new database's tables at once (or one holding the lock meanwhile).

    SQLite says "already exists" / "locked"; PostgreSQL a duplicate key in its catalog (``pg_type``) or
    ``DuplicateTable`` (a ProgrammingError).
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # Optuna wraps the driver's error (StorageInternalError)
        seen.add(id(cur))
        text, kind = str(cur).lower(), type(cur).__name__
        if kind in ("OperationalError", "ProgrammingError") and ("already exists" in text or "locked" in text):
            return True
        if kind in ("IntegrityError", "UniqueViolation") and \
                any(k in text for k in ("alembic_version", "pg_type", "already exists", "duplicate key")):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


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
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(trial.user_attrs.get("worker")):
            continue
        storage = study._storage
        reason = f"interrupted: its process ({trial.user_attrs['worker'].get('pid')}) died"
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            done = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker failed it meanwhile (and re-queued it)
            continue
        if done:
            requeue(study, storage.get_trial(trial._trial_id))
            failed.append(trial.number)
    return failed
