"""The search: sample(trial) naming, published seeds, pruning, reuse, resume after SIGKILL, refusal of a
changed study. Tiny studies: adding T = 10, hidden 8, a few steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cellsearch.cells import check_spec
from cellsearch.cli import UserError
from cellsearch.config import ModelConfig
from cellsearch.registry import get_cell_card, list_cells
from cellsearch.search import run_study
from cellsearch.search.checks import load_space, study_from_mapping
from cellsearch.search.space import SearchSpace, build_space
from studies import load_sqlite, snapshot, stop_mid_trial, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_categorical_choices_depend_only_on_the_name() -> None:
    """Over many sampled trials each parameter name has one distribution, and every cell builds."""
    space = SearchSpace(load_space(ROOT / "spaces" / "full.yaml"), ModelConfig())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, Any] = {}
    for _ in range(150):
        trial = study.ask()
        candidate = space.sample(trial)
        check_spec(candidate.cell)  # never an invalid cell
        for name, dist in trial.distributions.items():
            assert seen.setdefault(name, dist) == dist, name
        study.tell(trial, 0.0)
    assert "cell/update" in seen and "depth/layers" in seen and "train/lr" in seen
    assert any("@" in name for name in seen)  # conditional names exist where compatibility depends on the update


def test_every_published_cell_is_a_point_of_the_full_space() -> None:
    space = SearchSpace(load_space(ROOT / "spaces" / "full.yaml"), ModelConfig())
    seeds = {s.user_attrs["published"]: s.params for s in space.seed_trials()}
    assert sorted(seeds) == list_cells()
    for name, params in seeds.items():  # replaying the parameters gives the card's cell and depth
        got = space.sample(optuna.trial.FixedTrial({**_defaults(space), **params}))
        card = get_cell_card(name)
        assert (got.cell.update, got.cell.gate, got.cell.init, got.cell.saturation, got.cell.recurrence) == (
            card.spec.update,
            card.spec.gate,
            card.spec.init,
            card.spec.saturation,
            card.spec.recurrence,
        ), name
        assert got.depth.transition == card.depth.transition and got.depth.output_layers == card.depth.output_layers


def _defaults(space: SearchSpace) -> dict[str, Any]:
    """Values for the non-cell parameters a FixedTrial must answer."""
    return {
        "depth/layers": 1,
        "depth/transition_layers": 1,
        "depth/output_layers": 0,
        "depth/residual": False,
        "model/hidden_size": 32,
        "train/lr": 1e-3,
        "train/dropout": 0.0,
    }


def test_published_cells_outside_the_space_are_not_enqueued() -> None:
    config = study_from_mapping(tiny("s", space={"cell": {"update": ["lstm", "gru"]}, "published": True}))
    names = {s.user_attrs["published"] for s in build_space(config).seed_trials()}
    assert names == {"lstm", "gru"}  # not ur_lstm (gate ur), not star (update star)


def test_published_cells_are_the_first_trials(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    search = {"sampler": "random", "n_trials": 4, "seed": 0, "enqueue_published": True}
    # star's card is the authors' code (init orthogonal, bias chrono); chrono_lstm comes with bias chrono
    space = {"cell": {"update": ["lstm", "gru", "star"], "init": ["default", "orthogonal"],
                      "bias": ["default", "chrono"]}}
    result = run_study(tiny("seeded", search=search, space=space), display="quiet")
    first = [t.user_attrs.get("published") for t in result.trials[:4]]
    assert first == ["chrono_lstm", "gru", "lstm", "star"]
    assert all(t.state == TrialState.COMPLETE for t in result.trials)


def test_trials_store_spec_digest_params_history(tmp_path: Path, monkeypatch) -> None:
    from cellsearch.spec import ModelSpec

    monkeypatch.chdir(tmp_path)
    result = run_study(tiny("attrs", search={"sampler": "random", "n_trials": 2, "seed": 1}), display="quiet")
    assert result.n_complete == 2
    for t in result.study.get_trials(states=(TrialState.COMPLETE,)):
        spec = ModelSpec.from_json(t.user_attrs["spec"])
        assert spec.digest() == t.user_attrs["digest"]
        assert t.user_attrs["n_params"] > 0 and len(t.user_attrs["history"]) == 1
        assert Path(t.user_attrs["weights"]).is_file()


def test_a_duplicate_proposal_is_answered_from_storage_outside_the_budget(tmp_path: Path, monkeypatch) -> None:
    """A proposal of an evaluated cell (here enqueued on purpose) gets the stored values without training
    and without a budget slot: the budget of 2 still buys 2 distinct cells."""
    monkeypatch.chdir(tmp_path)
    raw = tiny("reuse", space={"cell": {"update": ["gru", "lstm"]}}, search={"n_trials": 1})
    first = run_study(raw, display="quiet")
    (trained,) = first.trials
    first.study.enqueue_trial(dict(trained.params))  # the same cell proposed again
    result = run_study(raw, n_trials=2, display="quiet")
    trials = result.trials
    duplicate = trials[1]
    assert duplicate.state == TrialState.COMPLETE and duplicate.params == trained.params
    assert duplicate.user_attrs["reused_from"] == 0 and duplicate.values == trained.values
    assert duplicate.user_attrs["weights"] == trained.user_attrs["weights"]  # nothing trained
    used = [t for t in trials if "reused_from" not in t.user_attrs]  # the random sampler may repeat gru too
    assert [t.params["cell/update"] for t in used] == ["gru", "lstm"] and used[1].number == len(trials) - 1
    assert result.n_counted == 2 and result.n_distinct == 2 and result.n_duplicates == len(trials) - 2
    rows = result.leaderboard(top=None)  # one row per distinct cell, with how often it was proposed
    assert sorted((r["number"], r["proposed"], r["duplicates"]) for r in rows) == [
        (0, len(trials) - 1, list(range(1, len(trials) - 1))),
        (len(trials) - 1, 1, []),
    ]


FOUR = {"cell": {"update": ["lstm", "gru", "star", "mgu"]}}  # a space of exactly 4 cells


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes"])
def test_a_budget_of_4_on_a_space_of_4_cells_evaluates_all_4(sampler: str, tmp_path: Path, monkeypatch) -> None:
    """TPE and CMA-ES (independent sampling on categoricals) re-propose evaluated cells: those proposals are
    answered from storage and the search asks again until every slot bought a new cell."""
    monkeypatch.chdir(tmp_path)
    result = run_study(tiny(f"four_{sampler}", space=FOUR, search={"sampler": sampler, "seed": 0}), display="quiet")
    used = [t for t in result.trials if "reused_from" not in t.user_attrs]
    assert len(used) == 4 and all(t.state == TrialState.COMPLETE for t in used)
    assert {t.params["cell/update"] for t in used} == {"lstm", "gru", "star", "mgu"}
    assert len({t.user_attrs["key"] for t in used}) == 4 and result.n_distinct == 4 and result.n_counted == 4
    by_number = {t.number: t for t in result.trials}
    for t in result.trials:  # every duplicate carries the values of the trial that trained its cell
        if "reused_from" in t.user_attrs:
            source = by_number[t.user_attrs["reused_from"]]
            assert "reused_from" not in source.user_attrs and t.values == source.values and t.params == source.params
    assert result.stop_reason is None  # the budget was completed, not the space


def test_a_budget_of_10_on_a_space_of_4_cells_stops_when_the_space_is_exhausted(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from cellsearch.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ten.yaml"
    path.write_text(yaml.safe_dump(tiny("ten", space=FOUR, search={"sampler": "tpe", "n_trials": 10, "seed": 0})))
    assert main(["run", str(path), "--plain"]) == 0
    out = capsys.readouterr().out
    assert "space exhausted: all 4 point(s) of the space have been evaluated" in out, out
    assert "stopping after 4 trial(s) of the budget of 10" in out and "done 4/10 (4 distinct cell(s)" in out
    study = load_sqlite(tmp_path / "runs" / "ten" / "study.db", "ten")
    used = [t for t in study.trials if "reused_from" not in t.user_attrs]
    assert len(used) == 4 and len({t.user_attrs["key"] for t in used}) == 4
    n = len(study.trials)
    assert main(["run", str(path), "--plain"]) == 0  # running it again: nothing left to evaluate
    assert "space exhausted" in capsys.readouterr().out
    assert len(load_sqlite(tmp_path / "runs" / "ten" / "study.db", "ten").trials) == n
    assert main(["leaderboard", str(path)]) == 0
    board = capsys.readouterr().out
    assert "4 distinct cell(s) in 4 trial(s) of the budget" in board
    assert "val_loss equals val_mse in every row (not repeated)" in board  # the adding task's loss is its mse


def test_duplicates_in_a_row_get_a_point_not_evaluated_yet() -> None:
    """After MAX_RETRIES duplicate proposals in a row the ledger enqueues a point of the space that was
    not evaluated; with none left to find, it stops with the reason."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from cellsearch.search.ledger import MAX_RETRIES, Ledger

    config = study_from_mapping(tiny("streak", space=FOUR))
    ledger = Ledger(build_space(config), seed=0, budget=10)
    study = optuna.create_study()
    dist = {"cell/update": CategoricalDistribution(["lstm", "gru", "star", "mgu"])}

    def add(update: str, **attrs: Any) -> Any:
        study.add_trial(
            create_trial(params={"cell/update": update}, distributions=dist, value=1.0, user_attrs=attrs)
        )
        return study.trials[-1]

    add("lstm", key="a")
    for _ in range(MAX_RETRIES):
        assert not study.get_trials(states=(TrialState.WAITING,))
        assert ledger.after_trial(study, add("lstm", key="a", reused_from=0)) is None
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    fresh = waiting.system_attrs["fixed_params"]["cell/update"]
    assert fresh in ("gru", "star", "mgu") and "proposed_by" in waiting.user_attrs
    assert ledger.streak == 0
    for update in ("gru", "star", "mgu"):  # every cell evaluated: the space is exhausted
        if update != fresh:
            add(update, key=update)
    trial = study.ask()  # the waiting trial runs
    assert trial.suggest_categorical("cell/update", ["lstm", "gru", "star", "mgu"]) == fresh
    study.tell(trial, 1.0)
    assert ledger.after_trial(study, study.trials[-1]).startswith("space exhausted: all 4 point(s)")


def test_continuing_a_seeded_study_explores_new_points(tmp_path: Path, monkeypatch) -> None:
    """Issue 12.1: a seeded study run for 3 trials and continued to 6 draws 3 new points (not replays of
    the first 3, answered from storage); a fresh run with the same seed draws the same points again."""
    monkeypatch.chdir(tmp_path)
    space = {"cell": {"update": ["lstm", "gru", "star", "mgu"]}, "train": {"lr": {"low": 1.0e-3, "high": 3.0e-2}}}
    for sampler in ("random", "tpe"):
        raw = tiny(f"cont_{sampler}", space=space, search={"sampler": sampler, "n_trials": 3, "seed": 0})
        first = [dict(t.params) for t in run_study(raw, display="quiet").trials]
        trials = run_study(raw, n_trials=6, display="quiet").trials
        assert len(trials) == 6 and not any("reused_from" in t.user_attrs for t in trials)
        assert [dict(t.params) for t in trials[:3]] == first
        assert not any(dict(t.params) in first for t in trials[3:])
        again = run_study(raw, name=f"fresh_{sampler}", display="quiet").trials  # a fresh study, same seed
        assert [dict(t.params) for t in again] == first


def test_two_workers_with_one_seed_draw_different_points() -> None:
    """Two samplers built from one seeded config (two workers) on one study: trial numbers differ, so do
    their draws; the same trial number draws the same point (reproducible)."""
    from cellsearch.search.samplers import make_sampler

    config = study_from_mapping(tiny("s", search={"sampler": "random", "seed": 7}))
    space = build_space(config)

    def draw(study: optuna.Study) -> dict[str, Any]:
        trial = study.ask()
        space.sample(trial)
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, 0.0)
        return dict(trial.params)

    shared = optuna.create_study(sampler=make_sampler(config))
    a = draw(shared)
    shared.sampler = make_sampler(config)  # the second worker's sampler, same seed
    b = draw(shared)
    assert a != b
    fresh = optuna.create_study(sampler=make_sampler(config))
    assert draw(fresh) == a


def test_median_pruner_prunes(tmp_path: Path, monkeypatch) -> None:
    """A wide learning-rate range makes some trials clearly worse after the first epoch: they are PRUNED."""
    monkeypatch.chdir(tmp_path)
    raw = tiny(
        "prune",
        space={
            "cell": {"update": ["lstm", "gru", "vanilla"]},
            "train": {"lr": {"low": 1.0e-5, "high": 0.3, "log": True}},
        },
        train={"epochs": 3, "steps_per_epoch": 3, "batch_size": 16, "threads": 1},
        search={
            "sampler": "random",
            "n_trials": 10,
            "seed": 3,
            "enqueue_published": False,
            "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        },
    )
    result = run_study(raw, display="quiet")
    pruned = [t for t in result.trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in result.trials]
    assert all("median pruner at epoch" in t.user_attrs["prune_reason"] for t in pruned)
    assert result.n_complete >= 2


def test_changed_space_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_study(tiny("fp", search={"sampler": "random", "n_trials": 1, "seed": 0}), display="quiet")
    with pytest.raises(UserError, match="different space"):
        run_study(tiny("fp", space={"cell": {"update": ["lstm", "mgu"]}}), display="quiet")
    again = run_study(tiny("fp", search={"sampler": "random", "n_trials": 2, "seed": 0}), display="quiet")
    assert again.n_complete == 2  # the unchanged study continues


def test_changed_training_is_a_different_study_unless_forced(tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 12.10: a changed train config on resume is one line naming what changed and the two ways
    on; --force-continue adds the new trials and records the change; a space change is never forced."""
    from cellsearch.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "fp.yaml"
    path.write_text(yaml.safe_dump(tiny("fp", search={"n_trials": 1})))
    assert main(["run", str(path), "--quiet"]) == 0
    assert main(["run", str(path), "--quiet", "--n-trials", "2", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this is a different study" in err[0], err
    assert "train.epochs 1 -> 2" in err[0] and "--force-continue" in err[0] and "new name" in err[0]
    assert load_sqlite(tmp_path / "runs" / "fp" / "study.db", "fp").get_trials()[-1].number == 0  # nothing ran
    assert main(["run", str(path), "--quiet", "--n-trials", "2", "--set", "train.epochs=2", "--force-continue"]) == 0
    study = load_sqlite(tmp_path / "runs" / "fp" / "study.db", "fp")
    assert [t.user_attrs["train"]["epochs"] for t in study.trials] == [1, 2]
    assert study.user_attrs["config"]["train"]["epochs"] == 2 and len(study.user_attrs["forced"]) == 1
    assert main(["run", str(path), "--quiet", "--set", "space.cell.update=[lstm]", "--force-continue"]) == 2
    assert "--force-continue" not in capsys.readouterr().err  # a space change cannot be forced


def test_a_study_fingerprinted_before_training_counted_continues(tmp_path: Path, monkeypatch) -> None:
    """A study created by an earlier version (fingerprint without the training settings) continues when
    its training settings are unchanged; its fingerprint is upgraded."""
    monkeypatch.chdir(tmp_path)
    raw = tiny("old", search={"n_trials": 1})
    run_study(raw, display="quiet")
    study = load_sqlite(tmp_path / "runs" / "old" / "study.db", "old")
    config = study_from_mapping(raw)
    study.set_user_attr("fingerprint", config.fingerprint(legacy=True))
    assert run_study(raw, n_trials=2, display="quiet").n_counted == 2
    assert load_sqlite(tmp_path / "runs" / "old" / "study.db", "old").user_attrs["fingerprint"] == config.fingerprint()


def test_a_finished_study_leaves_no_waiting_trials(tmp_path: Path, monkeypatch) -> None:
    """Issue 12.10: published cells are enqueued only as far as the budget reaches, so a finished study has
    no WAITING trials; continuing with a larger budget enqueues the next published cells."""
    monkeypatch.chdir(tmp_path)
    search = {"sampler": "random", "n_trials": 2, "seed": 0, "enqueue_published": True, "n_jobs": 1}
    raw = tiny("waiting", search=search, space={"cell": {"update": ["lstm", "gru", "mgu"]}})
    first = run_study(raw, display="quiet")
    assert [t.state for t in first.trials] == [TrialState.COMPLETE] * 2
    assert [t.user_attrs.get("published") for t in first.trials] == ["gru", "lstm"]
    again = run_study(raw, n_trials=3, display="quiet")
    assert [t.user_attrs.get("published") for t in again.trials] == ["gru", "lstm", "mgu"]
    assert all(t.state == TrialState.COMPLETE for t in again.trials)


def test_missing_backend_module_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """A backend whose module is not installed is refused before anything runs (the Ray backend itself
    is tested in test_ray.py)."""
    import cellsearch.search as search

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(search.BACKENDS, "ray", "cellsearch.search.no_such_backend")
    with pytest.raises(UserError, match="backend 'ray' is not available"):
        run_study(tiny("ray", search={"backend": "ray", "n_trials": 1}), display="quiet")
    assert not (tmp_path / "runs").exists()


def test_sigkill_then_rerun_keeps_completed_trials_and_completes_budget(tmp_path: Path) -> None:
    raw = tiny(
        "killed",
        space={"cell": {"update": ["lstm", "gru", "star", "mgu"]}},
        # long enough (~1 s a trial with the fast paths) that the run is still going when the test looks
        train={"epochs": 2, "steps_per_epoch": 300, "batch_size": 16, "threads": 1},
        search={"sampler": "random", "n_trials": 4, "seed": 0, "enqueue_published": False},
    )
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(raw))
    db = tmp_path / "runs" / "killed" / "study.db"
    cmd = [sys.executable, "-m", "cellsearch.cli", "run", str(path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env)
    # caught only once the running trial has its parameters and spec (a trial just created has neither)
    before = stop_mid_trial(proc, db, "killed", attr="spec")
    done_before = {n: v for n, v in before.items() if v[0] == TrialState.COMPLETE}
    running = [n for n, v in before.items() if v[0] == TrialState.RUNNING and v[2]]
    assert done_before and running
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = snapshot(db, "killed")
    for n, v in done_before.items():  # no completed trial lost or changed
        assert after[n] == v
    study = load_sqlite(db, "killed")
    killed = study.trials[running[0]]
    assert killed.state == TrialState.FAIL and "interrupted" in killed.user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert killed.params and killed.user_attrs["spec"]
    assert retry and retry[0].params == killed.params  # re-queued with the same parameters
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [t for t in study.trials if t.state in done and "reused_from" not in t.user_attrs]
    assert len(finished) == 4 and len({t.user_attrs["key"] for t in finished}) == 4  # the budget is complete


_TAKE_SLOTS_AND_DIE = """
import os, signal, sys
from cellsearch.search import claims, load_config
from cellsearch.search.optuna_backend import open_study
config = load_config(sys.argv[1])
study = claims.claim_slots(open_study(config), config.search.n_trials)
study.ask()  # a worker of this machine
claims.worker_id = lambda: {"host": "another-machine", "pid": 1, "start": None}
study.ask()  # a worker of another machine
os.kill(os.getpid(), signal.SIGKILL)  # before Optuna's heartbeat thread or the objective ran
"""


def test_workers_killed_right_after_taking_a_slot_do_not_hold_the_budget(tmp_path: Path, monkeypatch) -> None:
    """Found by scripts/kill_loop.py: a worker SIGKILLed between taking its budget slot and Optuna's first
    heartbeat left a RUNNING trial that nothing failed (Optuna's stale check skips trials without a
    heartbeat; the dead-process check needs the trial's worker), so every later run waited for it forever.
    Now the trial names its worker from its creation and beats at once: the one from this machine is failed
    when the next run starts, the one from another machine after the heartbeat's grace period; both are
    re-queued and the budget completes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CELLSEARCH_HEARTBEAT_S", "1")
    monkeypatch.setenv("CELLSEARCH_GRACE_S", "2")
    raw = tiny("orphan", search={"n_trials": 3, "n_jobs": 1, "pruner": "none", "timeout": 60},
               space={"cell": {"update": ["lstm", "gru", "star", "mgu"]}})
    path = tmp_path / "orphan.yaml"
    path.write_text(yaml.safe_dump(raw))
    child = subprocess.run([sys.executable, "-c", _TAKE_SLOTS_AND_DIE, str(path)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    orphans = load_sqlite(tmp_path / "runs" / "orphan" / "study.db", "orphan").trials
    assert [t.state for t in orphans] == [TrialState.RUNNING] * 2
    result = run_study(raw, display="quiet")  # search.timeout: without the fix it gives up waiting
    trials = result.trials
    assert result.n_counted == 3, [(t.number, t.state, t.user_attrs) for t in trials]
    assert [trials[0].state, trials[1].state] == [TrialState.FAIL] * 2
    assert "interrupted: its process" in trials[0].user_attrs["fail_reason"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and "stopped sending heartbeats" in retried[0].user_attrs["retry_reason"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "nsga2", "cmaes"])
@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband", "none"])
def test_every_sampler_and_pruner_is_constructed(sampler: str, pruner: str) -> None:
    from cellsearch.search.samplers import make_pruner, make_sampler

    config = study_from_mapping(tiny("s", search={"sampler": sampler, "pruner": pruner, "seed": 1}))
    try:
        import cmaes  # noqa: F401
    except ImportError:
        if sampler == "cmaes":
            with pytest.raises(UserError, match="pip install cmaes"):
                make_sampler(config)
            return
    assert isinstance(make_sampler(config), optuna.samplers.BaseSampler)
    assert isinstance(make_pruner(config), optuna.pruners.BasePruner)


def test_divergence_fails_the_trial_with_its_reason(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = tiny(
        "div",
        space=None,
        cells=["vanilla"],
        train={
            "epochs": 2,
            "steps_per_epoch": 5,
            "batch_size": 16,
            "lr": 1.0e8,
            "optimizer": "sgd",
            "clip": None,
            "threads": 1,
        },
        search={"n_trials": 1},
    )
    result = run_study(raw, display="quiet")
    (trial,) = result.trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("diverged: training diverged at step")


# ------------------------------------------------------------------------------------------------
# Infrastructure failures: disk full (issue 12 items 6 and 7)


def _infra_study(tmp_path: Path, **search: Any) -> Path:
    raw = tiny("infra", search={"n_trials": 2, "n_jobs": 1, **search}, space={"cell": {"update": ["lstm", "gru"]}},
               storage=f"sqlite:///{tmp_path / 'db' / 'study.db'}", output_dir=str(tmp_path / "out"))
    path = tmp_path / "infra.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_disk_full_while_saving_a_trial_sets_it_aside_and_stops_non_zero(tmp_path: Path, monkeypatch, capsys) -> None:
    """ENOSPC injected into the first weights write (portable; the tmpfs test below is the real one): the
    trial is recorded with its reason, does not use the budget, is re-queued; exit 1 with one line; the
    next run trains the re-queued point and completes the budget."""
    import errno

    from cellsearch.cli import main
    from cellsearch.search import optuna_backend

    real = optuna_backend.write_weights
    calls: list[int] = []

    def full_once(folder: Path, number: int, data: bytes) -> Path:
        calls.append(number)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / f"{number}.safetensors"))
        return real(folder, number, data)

    monkeypatch.setattr(optuna_backend, "write_weights", full_once)
    monkeypatch.chdir(tmp_path)
    study_file = _infra_study(tmp_path)
    assert main(["run", str(study_file), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cellsearch run: stopped: trial 0: disk full"), err
    assert "re-queued" in err[0] and "0 of 2 done" in err[0]
    trials = load_sqlite(tmp_path / "db" / "study.db", "infra").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["fail_reason"].startswith("infrastructure: disk full (OSError: [Errno 28]")
    assert trials[0].user_attrs["interrupted"] and trials[1].user_attrs["retry_of"] == 0
    assert main(["run", str(study_file), "--quiet"]) == 0
    result = run_study(study_file, display="quiet")
    assert result.n_counted == 2 and result.trials[2].params == trials[0].params  # the set-aside point ran next


def _namespace_tmpfs() -> str | None:
    """Why a small tmpfs cannot be mounted here without root (None: it can, in a user+mount namespace)."""
    import shutil

    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a user namespace ({probe.stderr.strip()[:120]})"
    return None


def test_a_real_full_disk_stops_the_run_with_one_line_and_keeps_what_finished(tmp_path: Path) -> None:
    """A 1 MiB tmpfs (a user+mount namespace, no root needed) holds the study's SQLite file and weights;
    once it is filled, the next run fails to write (SQLite 'database or disk is full'), stops with exit 1
    and one line saying so, no traceback; the trial finished before is kept, and once the database has
    room again (a copy on a normal disk) the same study completes its budget."""
    why = _namespace_tmpfs()
    if why is not None:
        pytest.skip(why)
    mount = tmp_path / "disk"
    mount.mkdir()
    raw = tiny("full", search={"n_trials": 3, "n_jobs": 1}, space={"cell": {"update": ["lstm", "gru", "star"]}},
               storage=f"sqlite:///{mount / 'study.db'}", output_dir=str(mount))
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(raw))
    cli = str(Path(sys.executable).with_name("cellsearch"))
    script = f"""
mount -t tmpfs -o size=1m tmpfs {mount} || exit 99
{cli} run full.yaml --quiet --n-trials 1; echo "first=$?"
head -c 4M /dev/zero > {mount}/filler 2>/dev/null
{cli} run full.yaml --quiet; echo "full=$?"
cp {mount}/study.db {tmp_path}/kept.db
"""
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    out, err = run.stdout, run.stderr
    assert "first=0" in out and "full=1" in out, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("cellsearch run: stopped: ") and "disk full" in err and "1 of 3 done" in err, err
    kept = load_sqlite(tmp_path / "kept.db", "full").get_trials()
    assert [t.state for t in kept if t.state == TrialState.COMPLETE] == [TrialState.COMPLETE]
    raw["storage"], raw["output_dir"] = f"sqlite:///{tmp_path / 'kept.db'}", str(tmp_path / "out")
    result = run_study(raw, display="quiet")
    assert result.n_counted == 3 and result.n_complete == 3


# ------------------------------------------------------------------------------------------------
# Claims: seeding and budget slots atomic across workers, re-queued trials first (issue 19)


def test_requeued_trials_start_before_the_published_cells(tmp_path: Path) -> None:
    """A re-queued trial (a killed worker's, a lost node's) is the next to start, ahead of the published
    cells enqueued before it; the rest keep their order."""
    from cellsearch.search.claims import claim_slots

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'q.db'}", study_name="q")
    for name in ("gru", "lstm"):
        study.enqueue_trial({"cell/update": name}, user_attrs={"published": name})
    study.enqueue_trial({"cell/update": "star"}, user_attrs={"retry_of": 9})
    study.enqueue_trial({"cell/update": "mgu"}, user_attrs={"published": "mgu"})
    claim_slots(study, None)
    assert [study.ask().number for _ in range(5)] == [2, 0, 1, 3, 4]


def test_no_trial_is_created_when_the_budget_is_taken(tmp_path: Path) -> None:
    """With every slot held by running trials, ``ask`` refuses before a trial exists (no FAIL "not run"
    record) and a WAITING trial stays WAITING; a finished trial frees nothing (it counts)."""
    from cellsearch.search.claims import BudgetTaken, claim_slots

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'b.db'}", study_name="b")
    claim_slots(study, 2)
    first, _ = study.ask(), study.ask()
    study.enqueue_trial({"x": 1})
    with pytest.raises(BudgetTaken):
        study.ask()
    study.tell(first, 1.0)
    with pytest.raises(BudgetTaken):
        study.ask()
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING]


def test_workers_started_together_enqueue_the_published_cells_once(tmp_path: Path) -> None:
    """Four workers (threads, each with its own storage connection) seed one SQLite study at the same
    instant, ten times: every published cell is enqueued exactly once."""
    import threading

    from cellsearch.search.storage import make_storage
    from cellsearch.search.studies import seed_trials as _seed_trials

    url = f"sqlite:///{tmp_path / 'together.db'}"
    storages = [make_storage(url) for _ in range(4)]
    space = {"cell": {"update": ["lstm", "gru", "mgu"]}}
    for rep in range(10):
        search = {"sampler": "random", "n_trials": 6, "enqueue_published": True}
        config = study_from_mapping(tiny(f"together{rep}", search=search, space=space))
        studies = [optuna.create_study(storage=s, study_name=config.name, load_if_exists=True) for s in storages]
        built, barrier, errors = build_space(config), threading.Barrier(4), []

        def seed(study: optuna.Study, barrier: Any = barrier, built: Any = built, config: Any = config,
                 errors: list[BaseException] = errors) -> None:
            try:
                barrier.wait(timeout=60)
                _seed_trials(study, built, config)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=seed, args=(s,)) for s in studies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        names = sorted(t.user_attrs["published"] for t in studies[0].get_trials())
        assert names == ["gru", "lstm", "mgu"], (rep, names)
