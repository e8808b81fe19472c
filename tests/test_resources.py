"""CPU defaults (cellsearch.resources): cores from affinity and cgroup quota, the threads / trials-at-once
rule, the overrides, and a study that runs its trials two at a time with one torch thread each."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from cellsearch import resources
from cellsearch.cli import UserError
from cellsearch.config import StudyError
from cellsearch.resources import WORK_PER_THREAD, available_cores, cgroup_cpu_limit, plan, plan_for, resolve
from cellsearch.search.checks import study_from_mapping
from studies import tiny

ROOT = Path(__file__).resolve().parents[1]


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path: Path, files: dict[str, str], cores: float | None) -> None:
    assert cgroup_cpu_limit(_cgroup(tmp_path, files)) == cores


def test_cores_are_the_affinity_capped_by_the_quota_and_the_environment_wins(tmp_path: Path) -> None:
    import os

    affinity = len(os.sched_getaffinity(0))
    assert available_cores({}, tmp_path) == affinity  # no quota file
    assert available_cores({}, _cgroup(tmp_path, {"cpu.max": "50000 100000"})) == 1  # half a core: still 1
    assert available_cores({}, _cgroup(tmp_path, {"cpu.max": f"{100000 * (affinity + 4)} 100000"})) == affinity
    assert available_cores({"CELLSEARCH_CORES": "6"}, tmp_path) == 6
    for bad in ("0", "two", "-1"):
        with pytest.raises(UserError, match="CELLSEARCH_CORES"):
            available_cores({"CELLSEARCH_CORES": bad}, tmp_path)


def test_the_rule() -> None:
    small, large = 64 * 32 * 32, 64 * 512 * 512  # quickstart's model; a hidden-512 one
    assert (plan(2, small).n_jobs, plan(2, small).threads) == (2, 1)  # two small trials at once
    assert (plan(16, small).n_jobs, plan(16, small).threads) == (16, 1)
    assert (plan(16, small, n_trials=3).n_jobs, plan(16, small, n_trials=3).threads) == (3, 1)
    assert (plan(2, large).n_jobs, plan(2, large).threads) == (1, 2)  # one large trial, both cores
    assert (plan(16, large).n_jobs, plan(16, large).threads) == (2, large // WORK_PER_THREAD)
    assert (plan(1, large).n_jobs, plan(1, large).threads) == (1, 1)
    # overrides: the one given is kept, the other follows from the cores
    assert (plan(2, small, n_jobs=4).n_jobs, plan(2, small, n_jobs=4).threads) == (4, 1)
    assert (plan(8, large, n_jobs=2).n_jobs, plan(8, large, n_jobs=2).threads) == (2, 4)
    assert (plan(8, small, threads=2).n_jobs, plan(8, small, threads=2).threads) == (4, 2)
    assert (plan(2, small, n_jobs=1, threads=2).n_jobs, plan(2, small, n_jobs=1, threads=2).threads) == (1, 2)
    gpu = plan(8, small, gpu=True)
    assert (gpu.n_jobs, gpu.threads) == (1, None) and "GPU" in str(gpu)
    assert str(plan(2, small, size="s")) == "2 trial(s) at once × 1 torch thread each (2 cores, s)"


def _config(**changes):
    raw = tiny("r", **changes)
    raw["train"] = {k: v for k, v in raw["train"].items() if k != "threads"}
    raw["train"]["device"] = "cpu"
    return study_from_mapping(raw)


def test_the_model_size_of_a_study_is_its_largest_model() -> None:
    assert resources.model_work(_config())[0] == 16 * 8 * 8  # batch 16, hidden 8, one layer
    space = {"cell": {"update": ["lstm"]}, "hidden_size": {"low": 32, "high": 1024, "log": True},
             "depth": {"layers": {"low": 1, "high": 3}}, "train": {"batch_size": [16, 128]}}
    work, words = resources.model_work(_config(space=space))
    assert work == 128 * 1024 * 1024 * 3 and words == "batch 128 × hidden 1024² × 3 layers"
    budget = _config(model={"param_budget": 40000})
    assert resources.model_work(budget)[0] == 16 * 10000
    big = plan_for(_config(space=space), cores=4)
    assert (big.n_jobs, big.threads) == (1, 4)


def test_study_files_default_to_the_plan_and_keep_an_explicit_n_jobs() -> None:
    config = _config()
    assert config.search.n_jobs is None  # not written: chosen when the study runs
    resolved, p = resolve(config, cores=2)
    assert resolved.search.n_jobs == 2 and p.threads == 1 and resolved.search.n_trials == config.search.n_trials
    kept, _ = resolve(_config(search={"n_jobs": 1}), cores=2)
    assert kept.search.n_jobs == 1
    assert study_from_mapping({**tiny("r"), "search": {"n_jobs": None}}).search.n_jobs is None
    with pytest.raises(StudyError, match="search.n_jobs"):
        study_from_mapping({**tiny("r"), "search": {"n_jobs": 0}})


def test_ray_trials_get_the_threads_as_their_cpus() -> None:
    local, _ = resolve(_config(search={"backend": "ray"}), cores=2)
    assert local.search.resources["cpu"] == 1.0
    space = {"cell": {"update": ["lstm"]}, "hidden_size": [1024]}
    remote, p = resolve(_config(search={"backend": "ray", "ray_address": "auto"}, space=space), cores=2)
    assert remote.search.resources["cpu"] == p.threads == 16 * 1024 * 1024 // WORK_PER_THREAD  # not capped at 2
    given, _ = resolve(_config(search={"backend": "ray", "resources": {"cpu": 3}}), cores=2)
    assert given.search.resources["cpu"] == 3


def test_concurrent_runs_restore_torch_threads_only_when_the_last_ends() -> None:
    from cellsearch.train import _threads

    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 3
    first, second = _threads(wanted), _threads(wanted)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first trial ends while the second still trains
    assert torch.get_num_threads() == wanted
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == before


def test_a_study_runs_two_small_trials_at_once_with_one_thread_each(tmp_path: Path, monkeypatch, capsys) -> None:
    """On 2 cores, with neither n_jobs nor threads set: Optuna runs 2 trial threads, each training with one
    torch thread, and torch's count is back to what it was after the run."""
    import cellsearch.train
    from cellsearch.search import optuna_backend, run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CELLSEARCH_CORES", "2")
    seen: list[tuple[int, int]] = []
    jobs: list[int] = []
    real_train, real_run = cellsearch.train.train, optuna_backend.run

    def spy_train(*args, **kwargs):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return real_train(*args, **kwargs)

    def spy_run(config, **kwargs):
        jobs.append(config.search.n_jobs)
        return real_run(config, **kwargs)

    monkeypatch.setattr(cellsearch.train, "train", spy_train)
    monkeypatch.setattr(optuna_backend, "run", spy_run)
    space = {"cell": {"update": ["lstm", "gru", "star"]}, "train": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    raw = tiny("two", search={"n_trials": 4}, space=space)  # every trial a distinct cell: all 4 train
    raw["train"] = {k: v for k, v in raw["train"].items() if k != "threads"}
    raw["train"]["device"] = "cpu"
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = run_study(raw, display="plain")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    assert jobs == [2]
    assert "cpu: 2 trial(s) at once × 1 torch thread each (2 cores, batch 16 × hidden 8² × 1 layer)" in (
        capsys.readouterr().out
    )
    assert result.n_complete == 4 and len(seen) == 4
    assert {n for _, n in seen} == {1}
    assert threading.get_ident() not in {t for t, _ in seen}  # trials ran in Optuna's worker threads
