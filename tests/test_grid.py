"""Grids: a study's ``cells`` take registered names or variants with overrides (one schema with the
reproductions); a grid trains through ``cellsearch run``; a reproduction's experiments are study grids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from cellsearch.cli import main
from cellsearch.config import StudyError
from cellsearch.config import study_from_mapping as structure_only
from cellsearch.search.checks import study_from_mapping
from studies import TASK, load_sqlite

VARIANTS: list[Any] = [
    "lstm",
    {"label": "lstm_ortho_x2", "cell": "lstm", "layers": 2, "spec": {"init": "orthogonal"},
     "train": {"lr": 0.01}, "model": {"hidden_size": 12}},
    {"cell": "chrono_lstm", "options": {"bias": {"t_max": 7}}},
    {"label": "gru_budget", "cell": "gru", "model": {"param_budget": 400}},
]


def _grid(name: str, cells: list[Any] = VARIANTS, **changes: Any) -> dict[str, Any]:
    raw = {"name": name, "task": dict(TASK), "cells": cells, "seeds": 2, "model": {"hidden_size": 8},
           "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "threads": 1}, "objective": "val_mse",
           "search": {"sampler": "random", "pruner": "none", "n_trials": 2 * len(cells), "seed": 0}}
    return {**raw, **changes}


def test_a_names_only_study_keeps_its_digest() -> None:
    """Plain names are written as names: the fingerprint of a names-only grid is the one stored by studies
    created before variants existed (computed with that code), so their storages stay valid."""
    raw = {"name": "grid", "task": {"name": "adding", "seq_len": 10}, "cells": ["lstm", "gru", "star"], "seeds": 2,
           "model": {"hidden_size": 8}, "train": {"epochs": 1}}
    config = structure_only(raw)
    assert config.to_dict()["cells"] == ["lstm", "gru", "star"]
    assert (config.fingerprint(), config.fingerprint(legacy=True)) == ("a6dee310e71d37b7", "fba310df94361472")


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", [None, *SHIPPED], ids=lambda p: p.stem if p else "variants")
def test_a_study_round_trips_through_its_file_mapping(path: Path | None, monkeypatch) -> None:
    """What the study files a reproduction writes rely on: ``to_file_dict`` reads back to the same study."""
    from cellsearch.config import load_study

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    config = study_from_mapping(_grid("rt")) if path is None else load_study(path)
    again = structure_only(config.to_file_dict()) if path else study_from_mapping(config.to_file_dict())
    assert again.to_dict() == config.to_dict() and again.fingerprint() == config.fingerprint()


def test_a_grid_with_variants_validates_runs_and_its_trials_carry_the_overrides(tmp_path: Path, monkeypatch,
                                                                               capsys) -> None:
    from cellsearch.spec import ModelSpec

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid("grid")))
    assert main(["validate", str(path)]) == 0
    assert "cells lstm, lstm_ortho_x2, chrono_lstm, gru_budget" in capsys.readouterr().out
    assert main(["run", str(path), "--quiet"]) == 0
    trials = load_sqlite(tmp_path / "runs" / "grid" / "study.db", "grid").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 8
    by = {t.user_attrs["summary"]: t for t in trials}
    assert set(by) == {f"{c} seed={s}" for c in ("lstm", "lstm_ortho_x2", "chrono_lstm", "gru_budget") for s in (0, 1)}
    ortho = ModelSpec.from_json(by["lstm_ortho_x2 seed=1"].user_attrs["spec"])
    assert (ortho.cell.init, ortho.depth.layers, ortho.hidden_size) == ("orthogonal", 2, 12)
    assert by["lstm_ortho_x2 seed=1"].user_attrs["train"]["lr"] == 0.01
    assert by["lstm_ortho_x2 seed=1"].user_attrs["train"]["seed"] == 1
    plain = ModelSpec.from_json(by["lstm seed=0"].user_attrs["spec"])
    assert (plain.cell.init, plain.depth.layers, plain.hidden_size) == ("default", 1, 8)
    assert ModelSpec.from_json(by["chrono_lstm seed=0"].user_attrs["spec"]).cell.options_for("bias")["t_max"] == 7
    budget = by["gru_budget seed=0"].user_attrs
    assert abs(budget["n_params"] - 400) <= 0.02 * 400 + 40 and ModelSpec.from_json(budget["spec"]).hidden_size != 8
    assert main(["leaderboard", str(path)]) == 0
    assert "lstm_ortho_x2" in capsys.readouterr().out
    number = by["lstm_ortho_x2 seed=1"].number
    assert main(["export", str(path), "--trial", str(number), "--out", str(tmp_path / "out")]) == 0
    exported = yaml.safe_load((tmp_path / "out" / "spec.yaml").read_text())
    assert (tmp_path / "out" / "lstm_ortho_x2.py").is_file() and exported["model"]["cell"]["init"] == "orthogonal"
    # a variant that changes its card's primitives is not that published cell (no card, no citation claimed)
    assert exported["published_cell"] is None and by["lstm_ortho_x2 seed=1"].user_attrs["variant"] == "lstm_ortho_x2"
    assert by["gru_budget seed=0"].user_attrs["published"] == "gru"     # only the size changed: still GRU


@pytest.mark.parametrize(("cell", "said"), [
    ({"cell": "lstm", "lable": "x"}, "cells[1].lable: 'lable' is not allowed; did you mean 'label'?"),
    ({"cell": "lstm", "spec": {"gates": "ur"}}, "cells[1].spec.gates: 'gates' is not allowed; did you mean 'gate'?"),
    ({"cell": "lstm", "spec": {"init": "orthogonl"}}, "cells[1].spec.init: 'orthogonl' is not allowed"),
    ({"cell": "lstm", "train": {"lrr": 0.1}}, "cells[1].train.lrr: 'lrr' is not allowed; did you mean 'lr'?"),
    ({"cell": "lstm", "train": {"lr": -1}}, "cells[1].train.lr: -1 is not allowed; expected a number > 0"),
    ({"cell": "lstm", "depth": {"transition": "deeep"}}, "cells[1].depth.transition: 'deeep' is not allowed"),
    ({"cell": "lstm", "model": {"hidden_size": 8, "param_budget": 900}}, "cells[1].model: "),
    ({"cell": "lstm", "layers": 0}, "cells[1].layers: 0 is not allowed"),
    ({"label": "x", "cell": "lstmm"}, "cells[1].cell: 'lstmm' is not allowed; did you mean 'lstm'"),
    ({"cell": "lstm", "options": {"update": {"nope": 1}}}, "cells[1].options.update.nope"),
    ("gru", "cells: 'gru' is not allowed; expected distinct cell names"),
])
def test_a_bad_variant_is_one_line_naming_the_key(cell: Any, said: str, tmp_path: Path, monkeypatch,
                                                  capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_grid("bad", cells=["gru", cell])))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml: " in err[0] and said in err[0], err
    with pytest.raises(StudyError):
        study_from_mapping(_grid("bad", cells=["gru", cell]), source="bad.yaml")


# ------------------------------------------------------------------------------------------------------
# reproductions as study grids


def _trial_of(config: Any, space: Any, book: Any, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    candidate = space.sample(optuna.trial.FixedTrial(params))
    spec, train = book.resolve(candidate)
    return spec, train.to_dict()


@pytest.mark.parametrize("name", ["star", "gu2020", "asrnn", "refined", "refined_ablation", "pascanu2014", "mingru"])
def test_the_study_files_of_a_reproduction_validate_and_their_grid_is_its_job_list(name: str, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """Every experiment's study file validates (as `cellsearch run` reads it), and its grid, cell by cell and
    seed by seed, resolves to the ModelSpec and training settings of the reproduction's job (in job order)."""
    from cellsearch.reproduce import get_reproduction, study_files
    from cellsearch.reproduce.runner import model_spec_for
    from cellsearch.search import load_config
    from cellsearch.search.space import build_space
    from cellsearch.search.trials import TrialBook
    from cellsearch.tasks import make_task
    from cellsearch.train import TrainConfig

    monkeypatch.chdir(tmp_path)
    repro = get_reproduction(name)
    config = repro.parse(repro.config("cpu"))
    paths = study_files(name, tmp_path / "studies", "cpu")
    assert [p.name for p in paths] == [f"{name}-{e.name}.yaml" for e in config.experiments]
    for path, exp in zip(paths, config.experiments):
        assert main(["validate", str(path)]) == 0
        study = load_config(path)
        assert study.to_dict() == exp.grid.to_dict() | {"objective": study.to_dict()["objective"]}
        space, task = build_space(study), make_task(study.task.to_dict())
        book = TrialBook(study, space, task)
        points = [dict(s.params) for s in space.seed_trials()]
        jobs = exp.jobs()
        assert study.search.n_trials == len(points) == len(jobs)
        by_point = {(p.get("cell", study.cells[0].label), p.get("train/seed", study.seeds[0])): p for p in points}
        for job in jobs:
            spec, train = _trial_of(study, space, book, by_point[(job.variant, job.seed)])
            assert spec == model_spec_for(job)[0], (job.variant, job.seed)
            want = TrainConfig.from_dict({**job.train, "seed": job.seed, "progress": False}).to_dict()
            assert train == want, (job.variant, job.seed)


def test_a_reproduction_grid_run_as_a_study_gives_the_reproductions_numbers(tmp_path: Path, monkeypatch) -> None:
    """asrnn at tiny size: the study file's trials and the reproduction's runs agree to the last bit
    (validation and test loss, parameters), variant by variant and seed by seed."""
    from cellsearch.reproduce import reproduce

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    assert main(["reproduce", "asrnn", "--size", "tiny", "--study-files", "grids"]) == 0
    path = tmp_path / "grids" / "asrnn-copy_6.yaml"
    assert main(["run", str(path), "--quiet"]) == 0
    report = reproduce("asrnn", "tiny", out=tmp_path / "report")
    trials = {t.user_attrs["summary"]: t.user_attrs
              for t in load_sqlite(tmp_path / "runs" / "asrnn-copy_6" / "study.db", "asrnn-copy_6").get_trials()}
    assert len(trials) == len(report.records) == 9
    for r in report.records:
        t = trials[f"{r.variant} seed={r.seed}"]
        assert (t["metrics"]["val_loss"], t["metrics"]["test_loss"], t["n_params"]) == (r.val_loss, r.test_loss,
                                                                                        r.n_params)
