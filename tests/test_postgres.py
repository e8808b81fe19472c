"""Several ``cellsearch run`` workers on one study in PostgreSQL: the budget is split without duplicates,
and when one worker is killed its running trial is failed by Optuna's heartbeat and re-run by the other.

The server: ``CELLSEARCH_TEST_POSTGRES`` (a URL; ``.ci/run`` installs Debian's ``postgresql`` and sets it),
else a throwaway cluster started here with the PostgreSQL server binaries of this machine (``initdb`` and
``pg_ctl`` run as the ``postgres`` user when the tests run as root). Skipped only when there are none.
Real processes and a real server throughout; tiny studies (adding, T = 10, hidden 8).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cellsearch.search.checks import load_study
from cellsearch.search.results import leaderboard_rows
from studies import TASK

pytestmark = pytest.mark.xdist_group("postgres")


# ------------------------------------------------------------------------------------------------
# The server (started as scripts/pgserver.py starts it for `make chaos`: one implementation)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database URL for the tests (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        from pgserver import Unavailable, postgres
    finally:
        sys.path.pop(0)
    server = postgres("cellsearch_test")
    try:
        url = server.__enter__()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL is not available: {exc}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------------
# Helpers


def _study_file(tmp_path: Path, name: str, space: dict[str, Any], n_trials: int, steps: int) -> Path:
    raw = {
        "name": name,
        "task": dict(TASK),
        "space": space,
        "model": {"hidden_size": 8},
        "train": {"epochs": 2, "steps_per_epoch": steps, "batch_size": 16, "threads": 1},
        "objective": "val_mse",
        "search": {"sampler": "random", "pruner": "none", "n_trials": n_trials, "enqueue_published": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _worker(path: Path, url: str, cwd: Path, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cellsearch.cli", "run", str(path), "--storage", url, "--plain"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _load(url: str, name: str) -> optuna.Study:
    from cellsearch.search.storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(url, create=False))


def _trained_keys(trials: list[Any]) -> list[str]:
    """The keys (spec + training + task) of the trials that actually trained."""
    return [
        t.user_attrs["key"]
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "reused_from" not in t.user_attrs
    ]


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"worker {proc.pid} did not finish:\n{out}") from None
    assert proc.returncode == 0, out
    return out


# ------------------------------------------------------------------------------------------------
# Tests


def test_two_workers_split_the_budget_without_duplicates(tmp_path: Path, postgres_url: str) -> None:
    """Two processes on one study: exactly N trials count (COMPLETE here), distinct numbers, no spec trained
    twice (a spec another worker already trained, or is training, is answered from storage, outside the
    budget), so a budget of 8 on a space of 8 cells buys all 8; both workers did trials. Slots are taken
    atomically (cellsearch.search.claims), so no worker records a FAIL "not run" trial for the last slot."""
    name = f"split_{uuid.uuid4().hex[:8]}"
    # 8 specs for 8 trials: the random samplers of two workers propose repeats
    space = {"cell": {"update": ["lstm", "gru", "star", "mgu"], "recurrence": ["free", "orthogonal"]}}
    path = _study_file(tmp_path, name, space, n_trials=8, steps=15)
    workers = [_worker(path, postgres_url, tmp_path) for _ in range(2)]
    outputs = [_finish(w) for w in workers]

    trials = _load(postgres_url, name).get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    done = trials
    assert all(t.state == TrialState.COMPLETE for t in done), [t.state for t in trials]
    used = [t for t in done if "reused_from" not in t.user_attrs]
    assert len(used) == 8 and len({t.user_attrs["key"] for t in used}) == 8  # 8 distinct cells
    keys = _trained_keys(trials)
    assert len(keys) == len(set(keys)) == 8, keys  # no spec computed twice
    by_key = {t.user_attrs["key"]: t for t in done if "reused_from" not in t.user_attrs}
    for t in done:
        if "reused_from" in t.user_attrs:
            assert by_key[t.user_attrs["key"]].number == t.user_attrs["reused_from"]
            assert t.values == by_key[t.user_attrs["key"]].values
    pids = {t.user_attrs["worker"]["pid"] for t in used}
    assert pids == {w.pid for w in workers}, outputs  # the budget was split between the two
    # the worker that ends last sees the whole budget done; one that ends first may still see the other's
    # trial running (its last line then reads "running 1"), so only the last one is held to the total
    assert any("done 8/8 (8 distinct cell(s)" in out for out in outputs), outputs


def _wait_for(url: str, name: str, ready: Any, what: str, proc: subprocess.Popen, limit: float = 120) -> list[Any]:
    start = time.time()
    while time.time() - start < limit:
        assert proc.poll() is None, f"worker {proc.pid} ended before {what}"
        try:
            trials = _load(url, name).get_trials()
        except Exception:  # noqa: BLE001 - the study is being created
            trials = []
        if ready(trials):
            return trials
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_trial_is_failed_by_heartbeat_and_rerun(tmp_path: Path, postgres_url: str) -> None:
    """Worker A is SIGKILLed while training; worker B waits for A's trial, which Optuna's heartbeat fails
    after the grace period, re-runs its parameters and completes the budget: exactly N trials count."""
    name = f"kill_{uuid.uuid4().hex[:8]}"
    space = {"cell": {"update": ["lstm", "gru"]}, "train": {"lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}}
    # trials of ~1 s: long enough that A is seen training after a completed trial even on a busy machine
    path = _study_file(tmp_path, name, space, n_trials=6, steps=300)
    beat = {"CELLSEARCH_HEARTBEAT_S": "1", "CELLSEARCH_GRACE_S": "3"}
    a = _worker(path, postgres_url, tmp_path, **beat)
    b = _worker(path, postgres_url, tmp_path, **beat)

    def a_running(trials: list[Any]) -> list[Any]:
        return [
            t
            for t in trials
            if t.user_attrs.get("worker", {}).get("pid") == a.pid
            and t.state == TrialState.RUNNING
            and "key" in t.user_attrs
        ]

    def a_is_training(trials: list[Any]) -> bool:
        mine = [t for t in trials if t.user_attrs.get("worker", {}).get("pid") == a.pid]
        return any(t.state == TrialState.COMPLETE for t in mine) and bool(a_running(trials))

    killed: list[Any] = []
    try:
        for _ in range(50):  # freeze A, then look: the trial may have finished between the check and the stop
            _wait_for(postgres_url, name, a_is_training, "worker A training after a completed trial", a)
            a.send_signal(signal.SIGSTOP)
            killed = a_running(_load(postgres_url, name).get_trials())
            if killed:
                break
            a.send_signal(signal.SIGCONT)
    finally:
        a.send_signal(signal.SIGKILL)
        a.communicate()
    assert len(killed) == 1
    out = _finish(b)

    trials = _load(postgres_url, name).get_trials()
    by_number = {t.number: t for t in trials}
    dead = by_number[killed[0].number]
    assert dead.state == TrialState.FAIL  # failed by Optuna's heartbeat (A never told it)
    retries = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and "stopped sending heartbeats" in retries[0].user_attrs["retry_reason"]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["worker"]["pid"] == b.pid  # the surviving worker re-ran it
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6, [(t.number, t.state) for t in trials]
    assert len(by_number) == len(trials)
    keys = _trained_keys(trials)
    assert len(keys) == len(set(keys))
    assert "done 6/6" in out, out
    # the leaderboard says why the dead trial failed and which trial re-ran it
    rows = {r["number"]: r for r in leaderboard_rows(_load(postgres_url, name), load_study(path), top=None)}
    note = rows[dead.number]["note"]
    assert "stopped sending heartbeats" in note and f"re-run as trial {retry.number}" in note, note


def test_workers_started_together_run_exactly_the_budget(tmp_path: Path, postgres_url: str) -> None:
    """Issue 19 / 12.10: four workers start the same study at the same instant (four processes, warm, meet
    at a barrier right before ``run_study``), repeated with a new study each time. Each time the published
    cells (3 cells x 2 seeds, the budget of 6) are enqueued once (atomic seeding: a PostgreSQL advisory
    lock) and exactly 6 trials exist, all COMPLETE: none twice, none reused, no FAIL "not run" from two
    workers taking the last slot, nothing left WAITING.

    4 repetitions by default (about 10 s each on a loaded 2-core machine: four processes training);
    ``CELLSEARCH_TOGETHER_REPS=10`` runs the issue's ten."""
    import multiprocessing

    from studies import together_worker

    reps, workers = int(os.environ.get("CELLSEARCH_TOGETHER_REPS", "4")), 4
    tag = uuid.uuid4().hex[:6]
    paths = []
    for rep in range(reps):
        raw = yaml.safe_load(_study_file(tmp_path, f"together{rep}_{tag}", {}, n_trials=6, steps=3).read_text())
        del raw["space"]
        raw.update(cells=["lstm", "gru", "star"], seeds=2)
        raw["train"]["epochs"] = 1
        raw["search"]["enqueue_published"] = True
        path = tmp_path / f"together{rep}_{tag}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        paths.append(str(path))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=together_worker, args=(paths, postgres_url, str(tmp_path), barrier, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=300) for _ in range(reps * workers)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [e for _, e in outcomes if e is not None] == []
    for path in paths:
        trials = _load(postgres_url, yaml.safe_load(Path(path).read_text())["name"]).get_trials()
        states = [t.state for t in trials]
        assert states == [TrialState.COMPLETE] * 6, (path, [(t.number, t.state, t.user_attrs) for t in trials])
        assert not any("reused_from" in t.user_attrs for t in trials)
        seeded = sorted((t.user_attrs["published"], t.params.get("train/seed")) for t in trials)
        assert len(set(seeded)) == 6, seeded  # every (cell, seed) once
        assert len(set(_trained_keys(trials))) == 6
    # the README's URL form opens the study in plain Optuna (postgresql:// alone means psycopg 3 there)
    plain = postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    name = yaml.safe_load(Path(paths[0]).read_text())["name"]
    assert len(optuna.load_study(study_name=name, storage=plain).trials) == 6
