"""Mid-trial checkpoints (issue 15): a trial killed with its process resumes from its last epoch.

Training writes its whole state after every epoch (model, optimizer, random generators, the training
stream's position: :class:`cellsearch.train.Checkpoint`); a search keys the file by the evaluation (spec +
training + task), so the retry of a killed trial finds it, resumes after its last epoch, records
``resumed_from_epoch`` and ends with the metrics of an uninterrupted run (bitwise on CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from cellsearch.search import run_study
from studies import kill_when, load_sqlite, tiny, trials_now

pytestmark = pytest.mark.xdist_group("checkpoints")

TASK = {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32}


def test_train_resumes_bitwise_from_its_checkpoint(tmp_path: Path) -> None:
    """Stopped while reporting epoch 3 (by its callback; the checkpoint is written before an epoch is
    reported), the run resumes at epoch 4 and ends where an uninterrupted run ends, for lstm, gru and
    ur_lstm (small: their hand-written and native paths)."""
    from cellsearch.api import resolve
    from cellsearch.tasks import make_task
    from cellsearch.train import resolve_model_spec, train

    config = {"epochs": 4, "steps_per_epoch": 3, "batch_size": 16, "threads": 1, "progress": False}

    class Stop(Exception):
        pass

    def stop_at_3(epoch: int, metrics: dict) -> None:
        if epoch == 3:
            raise Stop

    for name in ("lstm", "gru", "ur_lstm"):
        cell, depth = resolve(name)
        spec = resolve_model_spec(cell, depth, make_task(TASK), hidden_size=8)
        whole = train(spec, TASK, config)
        path = tmp_path / f"{name}.pt"
        with pytest.raises(Stop):
            train(spec, TASK, config, callback=stop_at_3, checkpoint=path)
        seen: list[int] = []
        resumed = train(spec, TASK, config, callback=lambda e, m, seen=seen: seen.append(e), checkpoint=path)
        assert resumed.extra == {"resumed_from_epoch": 3} and seen == [1, 2, 3, 4]
        drop = ("seconds",)
        assert [{k: v for k, v in e.items() if k not in drop} for e in resumed.history] == \
            [{k: v for k, v in e.items() if k not in drop} for e in whole.history], name
        other = {**config, "lr": 0.5}   # another config ignores the file: trained from the start
        assert "resumed_from_epoch" not in train(spec, TASK, other, checkpoint=path).extra


def _running_with_epochs(db: Path, name: str, epochs: int) -> bool:
    return any(t.state == TrialState.RUNNING and len(t.user_attrs.get("history") or []) >= epochs
               for t in trials_now(db, name))


def test_a_trial_killed_mid_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """kill -9 of a ``cellsearch run`` worker after its trial's second epoch; the rerun retrains the
    re-queued trial from its checkpoint (``resumed_from_epoch`` ≥ 2) and ends with the values and metrics
    of the same trial run without interruption; no checkpoint is left behind. 16 epochs of ~0.1 s: the
    poll (a read of the study) must see epoch 2 before the run ends (with 5 it once missed, under load)."""
    train = {"epochs": 16, "steps_per_epoch": 80, "batch_size": 16, "threads": 1}
    space = {"cell": {"update": ["lstm"]}}
    search = {"sampler": "random", "n_trials": 1, "seed": 0, "enqueue_published": False, "pruner": "none"}
    raw = tiny("resumed", space=space, train=train, search=search)
    path = tmp_path / "resumed.yaml"
    path.write_text(yaml.safe_dump(raw))
    db = tmp_path / "runs" / "resumed" / "study.db"
    cmd = [sys.executable, "-m", "cellsearch.cli", "run", str(path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env)
    kill_when(proc, lambda: _running_with_epochs(db, "resumed", 2), "a second epoch")
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = load_sqlite(db, "resumed").get_trials()
    killed, retry = trials[0], trials[-1]
    assert killed.state == TrialState.FAIL and killed.user_attrs["interrupted"]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == killed.number
    assert retry.user_attrs["resumed_from_epoch"] >= 2
    assert not list((tmp_path / "runs" / "resumed" / "checkpoints").glob("*"))

    os.chdir(tmp_path)
    whole = run_study(tiny("whole", space=space, train=train, search=search), display="quiet").trials[0]
    assert retry.values == whole.values
    metrics = {k: v for k, v in retry.user_attrs["metrics"].items() if k != "seconds"}
    assert metrics == {k: v for k, v in whole.user_attrs["metrics"].items() if k != "seconds"}
    assert [e["epoch"] for e in retry.user_attrs["history"]] == list(range(1, 17))


def test_precision_bf16_and_fp16_train_on_the_cpu_near_fp32(tmp_path: Path, monkeypatch) -> None:
    """``train.precision``: bf16 and fp16 (with a gradient scaler) studies run on the CPU; the cells stay on
    their fast paths under autocast (in float32), so the result is within a few thousandths of fp32's."""
    monkeypatch.chdir(tmp_path)
    values = {}
    for precision in ("fp32", "bf16", "fp16"):
        train = {"epochs": 2, "steps_per_epoch": 10, "batch_size": 16, "threads": 1, "precision": precision}
        raw = tiny(f"p_{precision}", train=train, search={"n_trials": 1, "pruner": "none"})
        raw.pop("space")
        result = run_study({**raw, "cells": ["ur_lstm"]}, display="quiet")
        assert result.n_complete == 1
        values[precision] = result.trials[0].values[0]
    assert abs(values["bf16"] - values["fp32"]) < 0.02 and abs(values["fp16"] - values["fp32"]) < 0.05


@pytest.mark.parametrize("device,resources,why", [
    ("cuda", {}, "search.resources.gpu > 0"),
    ("cuda:1", {"gpu": 0.5}, "each trial sees the GPU Ray assigned it"),
])
def test_devices_a_ray_trial_cannot_hold_are_refused(device: str, resources: dict, why: str) -> None:
    from cellsearch.config import StudyError, study_from_mapping

    raw = tiny("devices", backend="ray", train={"epochs": 1, "device": device}, search={"resources": resources})
    with pytest.raises(StudyError, match=why):
        study_from_mapping(raw)
    study_from_mapping(tiny("devices", backend="ray", train={"epochs": 1, "device": "cuda"},
                            search={"resources": {"gpu": 0.5}}))   # a share of a GPU: cuda is the one Ray gives


def test_losses_read_once_per_epoch_give_the_same_run_and_still_catch_divergence(monkeypatch) -> None:
    """On a GPU the per-step losses stay on the device and are read once an epoch (no host sync per step):
    the same history as reading each step, and a diverging run still stops with the step that diverged."""
    import cellsearch.train as train_module
    from cellsearch.api import resolve
    from cellsearch.tasks import make_task
    from cellsearch.train import DivergenceError, resolve_model_spec, train

    cell, depth = resolve("gru")
    spec = resolve_model_spec(cell, depth, make_task(TASK), hidden_size=8)
    config = {"epochs": 2, "steps_per_epoch": 4, "batch_size": 16, "threads": 1, "progress": False}
    per_step = train(spec, TASK, config)
    with pytest.raises(DivergenceError) as at_once:
        train(spec, TASK, {**config, "lr": 1e30})
    monkeypatch.setattr(train_module, "DEFERRED_DEVICES", ("cpu",))
    deferred = train(spec, TASK, config)
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in deferred.history] == \
        [{k: v for k, v in e.items() if k != "seconds"} for e in per_step.history]
    with pytest.raises(DivergenceError) as later:
        train(spec, TASK, {**config, "lr": 1e30})
    assert later.value.step == at_once.value.step


def test_workers_run_a_study_in_processes_sharing_its_storage(tmp_path: Path, monkeypatch) -> None:
    """``cellsearch run --workers 2``: two processes (this one and a child) split the budget of one study
    exactly, each trial recorded with the process that ran it (one GPU each where there are GPUs)."""
    from cellsearch.cli import main

    monkeypatch.chdir(tmp_path)
    raw = tiny("workers", space={"cell": {"update": ["lstm", "gru", "star", "mgu"]}},
               train={"epochs": 1, "steps_per_epoch": 40, "batch_size": 16, "threads": 1},
               search={"n_trials": 4, "pruner": "none"})
    (tmp_path / "workers.yaml").write_text(yaml.safe_dump(raw))
    db = tmp_path / "runs" / "workers" / "study.db"
    from cellsearch.commands import run as run_command

    real = run_command._run

    def after_the_child_started(args) -> int:   # this process has torch loaded already: let the child in
        start = time.time()
        while not any(t.user_attrs.get("worker", {}).get("pid") not in (None, os.getpid())
                      for t in trials_now(db, "workers")):
            assert time.time() - start < 180, "the second worker did not start a trial"
            time.sleep(0.05)
        return real(args)

    monkeypatch.setattr(run_command, "_run", after_the_child_started)
    assert main(["run", "workers.yaml", "--workers", "2", "--quiet"]) == 0
    trials = load_sqlite(db, "workers").get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    assert len(done) == 4 and len({t.user_attrs["key"] for t in done}) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert {t.user_attrs["worker"]["pid"] for t in trials} - {os.getpid()}   # the child process trained
    assert main(["run", "workers.yaml", "--workers", "0"]) == 2


@pytest.mark.parametrize("ooms", [1, 2])
def test_out_of_memory_is_retried_once_then_fails_the_cell(ooms: int, tmp_path: Path, monkeypatch) -> None:
    """A trial out of memory is set aside (outside the budget) and retried first while the run goes on; out
    of memory again on the retry is the cell's failure ("does not fit"), in the budget, with the peak."""
    import cellsearch.jobs

    real, seen = cellsearch.jobs.run_job, []

    def run_job(job, *args, **kwargs):
        if job.spec.cell.update == "lstm" and len(seen) < ooms:
            seen.append(1)
            raise MemoryError("cannot allocate 8 GiB")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(cellsearch.jobs, "run_job", run_job)
    monkeypatch.chdir(tmp_path)
    raw = tiny("oom", space={"cell": {"update": ["lstm", "gru"]}}, search={"n_trials": 2, "pruner": "none"})
    result = run_study(raw, display="quiet")
    trials = {t.number: t for t in result.trials}
    first = next(t for t in result.trials if t.params["cell/update"] == "lstm")
    assert first.user_attrs["interrupted"] and "out of memory" in first.user_attrs["fail_reason"]
    assert "peak" in first.user_attrs["fail_reason"]
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == first.number)
    assert result.n_counted == 2
    if ooms == 1:
        assert retry.state == TrialState.COMPLETE
    else:
        assert retry.state == TrialState.FAIL and "again when retried" in retry.user_attrs["fail_reason"]
        assert not retry.user_attrs.get("interrupted")
