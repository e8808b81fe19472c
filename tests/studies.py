"""Helpers shared by the search tests (Optuna, Ray, PostgreSQL): a tiny study mapping, reading a study
straight from its SQLite file, and catching a ``cellsearch run`` process with a trial in flight."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

TASK = {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32}


def tiny(name: str, backend: str = "optuna", epochs: int = 1, **changes: Any) -> dict[str, Any]:
    """A study mapping (adding, T = 10, hidden 8) that trains in well under a second per trial.

    ``search`` settings merge into the defaults; every other key replaces its default."""
    raw: dict[str, Any] = {
        "name": name,
        "task": dict(TASK),
        "space": {"cell": {"update": ["lstm", "gru", "star"]}},
        "model": {"hidden_size": 8},
        "train": {"epochs": epochs, "steps_per_epoch": 3, "batch_size": 16, "threads": 1},
        "objective": "val_mse",
        "search": {"backend": backend, "sampler": "random", "n_trials": 4, "seed": 0, "enqueue_published": False},
    }
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if key == "search" else value
    return raw


def load_sqlite(db: Path, name: str) -> optuna.Study:
    """The study as any reader sees it, without creating tables (a running child may be creating them)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True)
    return optuna.load_study(study_name=name, storage=storage)


def trials_now(db: Path, name: str) -> list[FrozenTrial]:
    """The study's trials; [] while the study does not exist yet (a running child may be creating it)."""
    if not db.exists():
        return []
    try:
        return load_sqlite(db, name).get_trials()
    except Exception:  # noqa: BLE001 - the study is being created
        return []


def snapshot(db: Path, name: str) -> dict[int, Any]:
    """number -> (state, values, params, digest) of every trial; {} while the study does not exist yet."""
    return {t.number: (t.state, t.values, t.params, t.user_attrs.get("digest")) for t in trials_now(db, name)}


def running_after_complete(attr: str) -> Callable[[list[FrozenTrial]], bool]:
    """One trial COMPLETE and another RUNNING that already has its parameters and carries the user
    attribute ``attr`` (``spec`` / ``key``: written after every parameter was sampled)."""

    def ready(trials: list[FrozenTrial]) -> bool:
        complete = any(t.state == TrialState.COMPLETE for t in trials)
        return complete and any(
            t.state == TrialState.RUNNING and t.params and attr in t.user_attrs for t in trials
        )

    return ready


def stop_mid_trial(proc: subprocess.Popen, db: Path, name: str, attr: str, limit: float = 180) -> dict[int, Any]:
    """Wait until ``proc`` (the process that writes the study) has a trial completed and another running
    with its parameters and ``attr`` recorded, freeze it (SIGSTOP) and look again (a trial may finish
    between a look and the stop: then let it go on and wait for the next), then SIGKILL it. Returns the
    snapshot taken while it was frozen."""
    ready = running_after_complete(attr)
    start = time.time()
    try:
        while time.time() - start < limit:
            assert proc.poll() is None, "the study finished before it could be killed"
            if ready(trials_now(db, name)):
                proc.send_signal(signal.SIGSTOP)
                if ready(trials_now(db, name)):
                    return snapshot(db, name)
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        raise AssertionError(f"no trial was running after a completed one within {limit:.0f} s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()



def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, limit: float = 180) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` (polled every 20 ms); fails when ``proc`` ends first or
    ``what`` does not happen within ``limit`` seconds."""
    start = time.time()
    try:
        while not ready():
            assert proc.poll() is None, f"the run finished before {what}"
            assert time.time() - start < limit, f"no {what} within {limit:.0f} s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def together_worker(paths: list[str], url: str, cwd: str, barrier: Any, results: Any) -> None:
    """One of several workers started at the same instant (a ``multiprocessing`` process): for each study
    file, wait at ``barrier`` with the others, then run the study on ``url`` as ``cellsearch run`` does;
    puts ``(path, None)`` or ``(path, error)`` on ``results``."""
    import os

    os.chdir(cwd)
    import traceback

    from cellsearch.search import load_config, run_study
    from cellsearch.tasks import make_task
    from cellsearch.train import train  # noqa: F401 - imported before the barrier: the workers meet warm

    make_task(load_config(paths[0]).task.to_dict())
    for path in paths:
        try:
            config = load_config(path, storage=url)
            barrier.wait(timeout=180)
            run_study(config, display="quiet")
            results.put((path, None))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results.put((path, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
