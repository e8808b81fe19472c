"""The Ray Tune backend, for real: a local study whose trials land in the Optuna storage and export; a
two-node Ray cluster on this machine whose trials run on both nodes; ASHA-stopped trials recorded PRUNED
(never COMPLETE with a truncated budget); a driver killed mid-study and the study continued.

Ray runs under a private temporary folder (``RAY_TMPDIR``), so these tests never join, nor are joined by,
another Ray instance on the machine; every Ray process they start is stopped (``ray.shutdown``,
``Cluster.shutdown``, or killing the killed driver's own process group). Tiny studies (adding, T = 10,
hidden 8, a few steps).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

import studies
from cellsearch.cli import main

pytestmark = pytest.mark.xdist_group("ray")


def tiny(name: str, **changes: Any) -> dict[str, Any]:
    """A Ray study mapping that trains in well under a second per trial."""
    return studies.tiny(name, backend="ray", epochs=2, **changes)


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _load(tmp_path: Path, name: str) -> optuna.Study:
    return studies.load_sqlite(tmp_path / "runs" / name / "study.db", name)


@pytest.fixture(scope="session")
def ray_tmp() -> Iterator[str]:
    """A private Ray temporary folder (short: Ray's socket paths must fit in 107 characters), for this
    process and the drivers it starts; token authentication off (every cluster here is private)."""
    folder = tempfile.mkdtemp(prefix="csray-", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ.update(RAY_TMPDIR=folder, RAY_AUTH_MODE="disabled")
    try:
        yield folder
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def local_ray(ray_tmp: str) -> Iterator[str]:
    """One local Ray for these tests (the backend uses an initialized Ray and leaves it running); its
    address, for drivers started as separate processes. Session-scoped: started once per test process
    even when xdist interleaves other modules between these tests."""
    import ray

    context = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def test_ray_study_on_this_machine_lands_in_the_optuna_storage(
    tmp_path: Path, monkeypatch, capsys, local_ray: str
) -> None:
    """4 trials through Ray Tune: the same trials and user attributes as the Optuna backend's, read back
    from the study's storage; the budget buys 4 distinct cells of a 4-cell space (a proposal of an evaluated
    cell is answered from storage, outside the budget); leaderboard and export work on it."""
    from cellsearch.search import load_config
    from cellsearch.search.results import pick_trial, trial_model
    from cellsearch.search.studies import open_study
    from cellsearch.spec import ModelSpec

    monkeypatch.chdir(tmp_path)
    # no scheduler: a median rule could stop the last of the 4 (this test is about what lands in storage)
    raw = tiny("ray4", space={"cell": {"update": ["lstm", "gru", "star", "mgu"]}}, search={"pruner": "none"})
    path = _write(tmp_path, raw)
    assert main(["run", str(path), "--plain"]) == 0
    assert "done 4/4 (4 distinct cell(s)" in capsys.readouterr().out

    trials = _load(tmp_path, "ray4").get_trials()
    used = [t for t in trials if "reused_from" not in t.user_attrs]
    assert len(used) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["key"] for t in used}) == 4
    for t in trials:
        attrs = t.user_attrs
        assert ModelSpec.from_json(attrs["spec"]).digest() == attrs["digest"]
        assert attrs["n_params"] > 0 and len(attrs["history"]) == 2 and attrs["metrics"]["val_mse"] == t.values[0]
        assert sorted(t.intermediate_values) == [1, 2]  # reported per epoch, as the Optuna backend does
        assert attrs["ray_node"]["node_id"] and attrs["ray_node"]["device"] == "cpu"  # no GPU asked for
        assert attrs["worker"]["pid"] == os.getpid()  # the driver holds the Optuna trial
        assert t.params["cell/update"] in ("lstm", "gru", "star", "mgu")
        source = attrs.get("reused_from", t.number)
        assert Path(attrs["weights"]) == (tmp_path / "runs" / "ray4" / "trials" / f"{source}.safetensors").resolve()
        assert Path(attrs["weights"]).is_file()
    assert (tmp_path / "runs" / "ray4" / "ray").is_dir()  # Ray's own results folder

    assert main(["leaderboard", str(path)]) == 0
    assert "ray4: 4 complete" in capsys.readouterr().out
    assert main(["export", str(path), "--out", "best"]) == 0
    info = yaml.safe_load((tmp_path / "best" / "spec.yaml").read_text())
    spec = importlib.util.spec_from_file_location("ray_exported", tmp_path / "best" / info["files"]["module"])
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    config = load_config(path)
    trial = pick_trial(open_study(config, create=False), config, info["trial"])
    x = torch.randn(5, 10, 2)
    with torch.no_grad():  # the exported module computes what the trial's saved weights compute
        assert (module.load()(x)[0] - trial_model(trial, config)(x)[0]).abs().max() < 1e-6


def test_ray_run_stops_when_the_space_is_exhausted(tmp_path: Path, monkeypatch, local_ray: str) -> None:
    """The ledger's rules in the Ray backend: a budget of 10 on a space of 4 cells evaluates the 4 and stops
    with "space exhausted"; running it again starts nothing."""
    from cellsearch.search import run_study

    monkeypatch.chdir(tmp_path)
    raw = tiny("exhaust", space={"cell": {"update": ["lstm", "gru", "star", "mgu"]}}, search={"n_trials": 10})
    result = run_study(raw, display="quiet")
    assert result.stop_reason is not None and result.stop_reason.startswith("space exhausted: all 4 point(s)")
    trials = _load(tmp_path, "exhaust").get_trials()
    used = [t for t in trials if "reused_from" not in t.user_attrs]
    assert len(used) == 4 and len({t.user_attrs["key"] for t in used}) == 4 and result.n_counted == 4
    again = run_study(raw, display="quiet")
    assert again.stop_reason is not None and len(_load(tmp_path, "exhaust").get_trials()) == len(trials)


def test_asha_stopped_trials_are_pruned_not_complete(tmp_path: Path, monkeypatch, local_ray: str) -> None:
    """ASHA stops the worse trials early: they are PRUNED with their intermediate values; every COMPLETE
    trial trained its full 4 epochs (stock OptunaSearch would tell the stopped ones COMPLETE)."""
    from cellsearch.search import run_study

    monkeypatch.chdir(tmp_path)
    raw = tiny(
        "asha",
        space={"cell": {"update": ["lstm", "gru"]}, "train": {"lr": {"low": 1.0e-4, "high": 0.1, "log": True}}},
        train={"epochs": 4, "steps_per_epoch": 3, "batch_size": 16, "threads": 1},
        search={
            "n_trials": 8,
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
            "max_concurrent_trials": 2,
        },
    )
    result = run_study(raw, display="quiet")
    trials = _load(tmp_path, "asha").get_trials()
    assert len(trials) == 8 and result.n_complete + result.n_pruned == 8
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete, [t.state for t in trials]
    for t in pruned:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and len(steps) < 4
        assert t.values == [t.intermediate_values[steps[-1]]]  # its value is its last intermediate value
        assert t.user_attrs["prune_reason"].startswith("asha scheduler stopped it after epoch")
        assert len(t.user_attrs["history"]) == len(steps) and "weights" not in t.user_attrs
    for t in complete:  # none COMPLETE with a truncated budget
        assert sorted(t.intermediate_values) == [1, 2, 3, 4] and len(t.user_attrs["history"]) == 4
        assert t.values == [t.user_attrs["history"][-1]["val_mse"]]


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path: Path, ray_tmp: str) -> None:
    """A head node and a second node (one CPU each) on this machine; ``cellsearch run`` joins the cluster
    at its address (``search.ray_address: HOST:PORT``) and its trials run on both nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, connect=False)
    try:
        cluster.add_node(num_cpus=1, resources={"second_node": 1})
        cluster.wait_for_nodes()
        nodes = {node.node_id for node in cluster.list_all_nodes()}
        assert len(nodes) == 2
        raw = tiny(
            "cluster",
            space={"cell": {"update": ["lstm", "gru"]}, "train": {"lr": {"low": 1.0e-3, "high": 3.0e-2}}},
            train={"epochs": 2, "steps_per_epoch": 40, "batch_size": 16, "threads": 1},
            # a fresh actor per trial is placed where a CPU is free: the second trial lands on the other node
            search={
                "ray_address": cluster.address,
                "resources": {"cpu": 1},
                "reuse_actors": False,
                "n_trials": 2,
            },
        )
        path = _write(tmp_path, raw)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_TMPDIR": ray_tmp}
        cmd = [sys.executable, "-m", "cellsearch.cli", "run", str(path), "--quiet"]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        cluster.shutdown()
    trials = _load(tmp_path, "cluster").get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    used = {t.user_attrs["ray_node"]["node_id"] for t in trials}
    assert used == nodes, (used, nodes)  # both nodes trained trials
    assert all(Path(t.user_attrs["weights"]).is_file() for t in trials)  # saved on the driver's machine


def test_killed_ray_driver_then_rerun_continues_the_study(tmp_path: Path, local_ray: str) -> None:
    """SIGKILL a Ray-backed ``cellsearch run`` (a driver on this machine's Ray) after a trial completed
    while another trains; running the study again keeps every completed trial, fails and re-runs the
    killed one, and completes the budget."""
    from cellsearch.search import run_study

    raw = tiny(
        "resume",
        space={"cell": {"update": ["lstm", "gru", "star", "mgu"]}, "train": {"lr": {"low": 1.0e-3, "high": 3.0e-2}}},
        train={"epochs": 2, "steps_per_epoch": 60, "batch_size": 16, "threads": 1},
        search={"n_trials": 4, "max_concurrent_trials": 1, "pruner": "none", "ray_address": local_ray},
    )
    path = _write(tmp_path, raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cellsearch.cli", "run", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env)
    # the driver records every trial: frozen, nothing changes in the storage; killed, Ray ends its actors
    before = studies.stop_mid_trial(proc, tmp_path / "runs" / "resume" / "study.db", "resume", attr="key")
    running = [n for n, v in before.items() if v[0] == TrialState.RUNNING]

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = run_study(path, display="quiet")
    finally:
        os.chdir(cwd)
    trials = _load(tmp_path, "resume").get_trials()
    after = studies.snapshot(tmp_path / "runs" / "resume" / "study.db", "resume")
    for n, v in before.items():
        if v[0] == TrialState.COMPLETE:
            assert after[n] == v  # no completed trial lost or changed
    for n in running:
        killed = trials[n]
        assert killed.state == TrialState.FAIL and "interrupted: its process" in killed.user_attrs["fail_reason"]
        retry = [t for t in trials if t.user_attrs.get("retry_of") == n]
        assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    assert result.n_complete == 4 and len([t for t in trials if t.state == TrialState.COMPLETE]) == 4


def test_ray_address_auto_is_refused_unless_ray_address_names_the_cluster(tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 19: ``auto`` could attach to another user's Ray on the machine: refused in one line (exit 2,
    nothing written) unless ``RAY_ADDRESS`` names the cluster, whatever Ray instances run here."""
    from cellsearch.search import ray_backend

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ray_backend.ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = _write(tmp_path, tiny("auto", search={"ray_address": "auto"}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'auto' is refused" in err and "HOST:PORT" in err, err
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_backend.ray_address("auto") == "10.0.0.1:6379"
    assert ray_backend.ray_address("10.0.0.2:6379") == "10.0.0.2:6379" and ray_backend.ray_address(None) is None


def test_resources_no_node_has_are_refused_with_what_each_node_has(
    tmp_path: Path, monkeypatch, capsys, local_ray: str
) -> None:
    """Issue 19: a trial asking more than any node has would wait forever: one line (asked vs each node's
    resources), exit 2, no trial started."""
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, tiny("huge", search={"resources": {"cpu": 64}}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "asks for 64 CPU and 0 GPU" in err and ": 2 CPU, 0 GPU" in err, err
    assert _load(tmp_path, "huge").get_trials(states=(TrialState.RUNNING, TrialState.COMPLETE)) == []


def test_an_infrastructure_failure_on_a_ray_node_is_set_aside_and_requeued_first(tmp_path: Path) -> None:
    """Issue 19: a Ray trial failed by its machine (disk full, out of memory, data gone) is recorded with
    the reason, does not use the budget, is re-queued ahead of the waiting published cells, and the
    driver starts no more trials (the run then exits 1, as the Optuna backend's)."""
    from cellsearch.search.checks import study_from_mapping
    from cellsearch.search.claims import claim_slots
    from cellsearch.search.display import Display
    from cellsearch.search.ledger import counted
    from cellsearch.search.ray_backend import _Driver, _failure
    from cellsearch.search.space import build_space
    from cellsearch.search.studies import open_study
    from cellsearch.tasks import make_task

    config = study_from_mapping(tiny("infra", search={"n_trials": 3}))
    study = open_study(config, f"sqlite:///{tmp_path / 'infra.db'}")
    driver = _Driver(config, build_space(config), make_task(config.task.to_dict()), study, Display(config, quiet=True))
    claim_slots(study, 3)
    trial = study.ask()
    driver.sample(trial)
    driver.prepare(trial)
    study.enqueue_trial({"cell/update": "gru"}, user_attrs={"published": "gru"})
    driver.launch("t1", trial)
    gone = _failure(FileNotFoundError(2, "No such file or directory", "data/train.txt"))
    assert set(gone) == {"infrastructure"}
    assert _failure(ValueError("bad cell")) == {"fail_reason": "ValueError: bad cell"}
    driver.finish("t1", {"cs": gone}, error=False)
    failed = study.get_trials()[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs["interrupted"]
    assert failed.user_attrs["fail_reason"].startswith("infrastructure: a file the run needs is gone")
    assert counted(study) == 0 and driver.admission() == "done" and "re-queued" in driver.infrastructure
    retry = study.ask()
    driver.sample(retry)
    assert retry.user_attrs["retry_of"] == failed.number and retry.params == failed.params


@pytest.mark.parametrize("max_failures", [2, 0])
def test_a_trial_whose_worker_is_lost_is_rerun_max_failures_times_then_failed(tmp_path: Path,
                                                                              max_failures: int) -> None:
    """Issue 15: a trial whose Ray worker or node is lost is set aside (outside the budget) and re-queued
    to resume from its checkpoint, at most ``search.max_failures`` times (default 2); the next loss
    records it FAIL with the count."""
    from cellsearch.search.checks import study_from_mapping
    from cellsearch.search.claims import claim_slots
    from cellsearch.search.display import Display
    from cellsearch.search.ledger import counted
    from cellsearch.search.ray_backend import _Driver
    from cellsearch.search.space import build_space
    from cellsearch.search.studies import open_study
    from cellsearch.tasks import make_task

    search = {"n_trials": 1, "enqueue_published": False}
    if max_failures != 2:
        search["max_failures"] = max_failures
    config = study_from_mapping(tiny("lost", search=search))
    assert config.search.max_failures == max_failures
    study = open_study(config, f"sqlite:///{tmp_path / 'lost.db'}")
    driver = _Driver(config, build_space(config), make_task(config.task.to_dict()), study, Display(config, quiet=True))
    claim_slots(study, 1)
    first = None
    for loss in range(1, max_failures + 2):
        trial = study.ask()
        driver.sample(trial)
        driver.prepare(trial)
        first = first or trial
        driver.launch(f"t{loss}", trial)
        driver.finish(f"t{loss}", None, error=True)
        lost = study.get_trials()[trial.number]
        assert lost.state == TrialState.FAIL and lost.params == first.params
        if loss <= max_failures:
            assert lost.user_attrs["interrupted"] and counted(study) == 0
            assert "its Ray worker failed" in lost.user_attrs["fail_reason"]
            assert len(study.get_trials(states=[TrialState.WAITING])) == 1  # its retry, first in line
        else:
            assert not lost.user_attrs.get("interrupted")
            assert f"its Ray worker failed {loss} times (search.max_failures = {max_failures}" \
                in lost.user_attrs["fail_reason"]
    assert len(study.get_trials()) == max_failures + 1 and not study.get_trials(states=[TrialState.WAITING])


#: what a trial records that must not depend on the backend (timing, paths, node and process differ)
_SAME = ("key", "digest", "summary", "readout", "train", "reused_from", "fail_reason", "retry_of", "retry_reason",
         "interrupted", "n_params", "prune_reason")


def _storage_contents(study: optuna.Study) -> list[tuple[Any, ...]]:
    out = []
    for t in sorted(study.get_trials(), key=lambda t: t.number):
        attrs = {k: t.user_attrs[k] for k in _SAME if k in t.user_attrs}
        values = None if t.values is None else [round(v, 5) for v in t.values]
        metrics = {k: round(v, 5) for k, v in (t.user_attrs.get("metrics") or {}).items() if k != "seconds"
                   and isinstance(v, float)}
        epochs = [e.get("epoch") for e in t.user_attrs.get("history") or []]
        out.append((t.number, t.state.name, t.params, values, attrs, metrics, epochs, sorted(t.intermediate_values)))
    return out


def test_both_backends_leave_the_same_trials_in_storage(tmp_path: Path, monkeypatch, local_ray: str) -> None:
    """Issue 11: the Optuna and the Ray backend write every trial through one backend-neutral ledger
    (cellsearch.search.trials / studies / ledger). The same study, run once on each, leaves the same storage
    behind: a trial whose process died before the run re-queued and retrained first, cells completed, a
    cell whose training diverged failed with its reason, proposals of evaluated cells answered from
    storage (reused, outside the budget), the budget exact. Pruning is each backend's own (Optuna's pruner,
    Ray's scheduler) and is off here; both record it as PRUNED with a prune_reason (tests above)."""
    import socket

    from cellsearch.search import load_config, run_study
    from cellsearch.search.space import build_space
    from cellsearch.search.studies import open_study

    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that has exited: the planted trial's worker
    # lr 1e30 diverges; lr 1e-5 barely learns: the median pruner stops it after its first epoch
    space = {"cell": {"update": ["lstm", "gru"]}, "train": {"lr": [0.01, 1.0e30, 1.0e-5]}}
    search = {"pruner": {"name": "median", "n_startup_trials": 1}, "scheduler": "optuna", "n_trials": 5,
              "n_jobs": 1, "max_concurrent_trials": 1}
    contents = {}
    for backend in ("optuna", "ray"):
        raw = studies.tiny(f"same_{backend}", backend=backend, space=space, epochs=2, search=search)
        config = load_config(raw)
        study = open_study(config)
        planted = study.ask()  # a trial whose worker died mid-training
        build_space(config).sample(planted)
        planted.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid, "start": 0})
        result = run_study(raw, display="quiet")
        assert result.n_counted == 5
        contents[backend] = _storage_contents(result.study)
    optuna_trials, ray_trials = contents["optuna"], contents["ray"]
    assert optuna_trials == ray_trials
    states = [t[1] for t in optuna_trials]
    attrs = [t[4] for t in optuna_trials]
    assert states[0] == "FAIL" and attrs[0]["interrupted"] and attrs[1]["retry_of"] == 0  # re-queued, first
    assert any(a.get("fail_reason", "").startswith("diverged: ") for a in attrs)
    assert "COMPLETE" in states and "PRUNED" in states and any("reused_from" in a for a in attrs)


def test_a_trial_of_a_killed_ray_driver_resumes_from_its_checkpoint(tmp_path: Path, local_ray: str) -> None:
    """Issue 15: SIGKILL a Ray-backed ``cellsearch run`` once its trial wrote a checkpoint; the rerun's
    retry resumes after the checkpoint's epoch (``resumed_from_epoch`` ≥ 1) and ends with the values and
    metrics of the same trial trained without interruption. 10 epochs of ~0.1 s, so that the run cannot
    end before the poll sees its first checkpoint, even under load (with 4 the window was ~0.3 s)."""
    from cellsearch.search import run_study

    space = {"cell": {"update": ["lstm"]}}
    train = {"epochs": 10, "steps_per_epoch": 80, "batch_size": 16, "threads": 1}
    search = {"n_trials": 1, "max_concurrent_trials": 1, "pruner": "none", "ray_address": local_ray}
    path = _write(tmp_path, tiny("ray_resume", space=space, train=train, search=search))
    folder = tmp_path / "runs" / "ray_resume" / "checkpoints"
    cmd = [sys.executable, "-m", "cellsearch.cli", "run", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    studies.kill_when(proc, lambda: bool(list(folder.glob("*.pt"))), "a checkpoint")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_study(path, display="quiet")
        whole = run_study(studies.tiny("whole", space=space, train=train, search={"n_trials": 1, "pruner": "none",
                                                                                  "enqueue_published": False}),
                          display="quiet").trials[0]
    finally:
        os.chdir(cwd)
    trials = _load(tmp_path, "ray_resume").get_trials()
    retry = trials[-1]
    assert trials[0].state == TrialState.FAIL and retry.user_attrs["retry_of"] == 0
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.values == whole.values
    drop = ("seconds",)
    assert {k: v for k, v in retry.user_attrs["metrics"].items() if k not in drop} == \
        {k: v for k, v in whole.user_attrs["metrics"].items() if k not in drop}
    assert not list(folder.glob("*.pt"))
