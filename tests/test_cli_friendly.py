"""The habits of Optuna, timm and Ray users: `list PATTERN`, `--version`, built-in spaces from anywhere,
`validate`, `schema`, the public API, metric names and readable plots, the leaderboard's units and marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellsearch.cli import main


def test_version_prints_the_installed_version(capsys) -> None:
    from importlib import metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cellsearch {metadata.version('cellsearch')}"
    assert main(["--verison"]) == 2
    assert "did you mean '--version'" in capsys.readouterr().err


def test_list_pattern_searches_every_kind_like_timm_list_models(capsys) -> None:
    assert main(["list", "*lstm*"]) == 0
    out = capsys.readouterr().out
    assert "cells" in out and "ur_lstm" in out and "chrono_lstm" in out  # cells
    assert "primitives" in out and "lstm_tied" in out  # update primitives
    assert "gru" not in out and "tasks" not in out  # kinds without a match are left out


def test_list_kind_with_pattern_and_plain_word(capsys) -> None:
    assert main(["list", "cells", "ur_*"]) == 0
    out = capsys.readouterr().out
    assert "ur_lstm" in out and "ur_gru" in out and "chrono_lstm" not in out
    assert main(["list", "tasks", "digits"]) == 0  # a plain word matches names containing it
    out = capsys.readouterr().out
    assert "seq_digits" in out and "perm_digits" in out and "adding" not in out


def test_list_unknown_kind_with_pattern_is_one_line(capsys) -> None:
    assert main(["list", "cels", "lstm"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'cells'" in err and len(err.strip().splitlines()) == 1


def test_list_spaces_outside_the_repository_finds_the_built_in_spaces(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["list", "spaces"]) == 0
    out = capsys.readouterr().out
    assert "gating" in out and "full" in out and "(built-in)" in out


def test_built_in_spaces_are_package_data() -> None:
    import tomllib

    from cellsearch.config import builtin_spaces_dir

    folder = builtin_spaces_dir()
    assert folder is not None and (folder / "gating.yaml").is_file()
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "spaces/*.yaml" in data["cellsearch"]
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(p.name for p in (root / "spaces").glob("*.yaml"))


def test_a_study_outside_the_repository_names_a_built_in_space(tmp_path: Path, monkeypatch) -> None:
    from cellsearch.search.checks import study_from_mapping

    monkeypatch.chdir(tmp_path)
    raw = {"name": "s", "task": {"name": "adding", "seq_len": 10}, "space": "spaces/gating.yaml"}
    config = study_from_mapping(raw, source="s.yaml", base=tmp_path)
    assert "update" in config.space.cell


def _study(tmp_path: Path, **changes: object) -> Path:
    import yaml

    raw = {"name": "v", "task": {"name": "adding", "seq_len": 10}, "cells": ["lstm", "gru"],
           "train": {"epochs": 1}, "objective": "val_mse", "search": {"n_trials": 2}}
    raw.update(changes)
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_accepts_a_good_study_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path)
    assert main(["validate", str(study)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {study}: study 'v': task adding, cells lstm, gru")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.yaml"]


def test_validate_prints_the_error_run_prints(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, search={"sampler": "tpee"})
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert main(["run", str(study)]) == 2
    run_err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "did you mean 'tpe'" in err
    assert err.split("error: ", 1)[1] == run_err.split("error: ", 1)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.yaml"]


def test_shipped_schemas_are_what_the_config_classes_generate() -> None:
    from cellsearch.config_schema import schemas, shipped_dir

    for name, text in schemas(builtin_only=True).items():
        hint = f"regenerate: cellsearch schema --builtin --out {shipped_dir()}"
        assert (shipped_dir() / name).read_text() == text, hint


def test_every_shipped_study_and_space_validates_against_the_schema_and_typos_do_not() -> None:
    import json

    import jsonschema
    import yaml

    from cellsearch.config_schema import shipped_dir

    root = Path(__file__).resolve().parents[1]
    study = jsonschema.Draft7Validator(json.loads((shipped_dir() / "study.schema.json").read_text()))
    space = jsonschema.Draft7Validator(json.loads((shipped_dir() / "space.schema.json").read_text()))
    jsonschema.Draft7Validator.check_schema(study.schema)
    for path in sorted((root / "studies").glob("*.yaml")):
        assert not list(study.iter_errors(yaml.safe_load(path.read_text()))), path
    for path in sorted((root / "spaces").glob("*.yaml")):
        assert not list(space.iter_errors(yaml.safe_load(path.read_text()))), path
    good = yaml.safe_load((root / "studies" / "quickstart.yaml").read_text())
    for key, value in (("trian", {}), ("search", {"sampler": "tpee"}), ("train", {"epochs": 0}),
                       ("task", {**good["task"], "seq_lenn": 3})):
        assert list(study.iter_errors({**good, key: value})), key


def test_schema_command_prints_json(capsys) -> None:
    import json

    assert main(["schema", "space"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "cellsearch space file" and "update" in schema["properties"]["cell"]["properties"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-trial study run once (cells lstm, gru, star; 2 epochs): (folder, study file)."""
    import os

    import yaml

    folder = tmp_path_factory.mktemp("ran")
    raw = {"name": "ran", "task": {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32},
           "cells": ["lstm", "gru", "star"], "model": {"hidden_size": 8},
           "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 16, "threads": 1},
           "objective": "val_mse", "search": {"sampler": "random", "pruner": "none", "n_trials": 3, "seed": 0}}
    study = folder / "ran.yaml"
    study.write_text(yaml.safe_dump(raw))
    old = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["run", str(study), "--quiet"]) == 0
    finally:
        os.chdir(old)
    return folder, study


def _open(folder: Path, study: Path, monkeypatch) -> tuple[object, object]:
    from cellsearch.search import load_config
    from cellsearch.search.studies import open_study

    monkeypatch.chdir(folder)
    config = load_config(study)
    return open_study(config, create=False), config


def test_every_study_names_its_metrics(ran, monkeypatch) -> None:
    optuna_study, _ = _open(*ran, monkeypatch)
    assert optuna_study.metric_names == ["val_mse"]


def test_plots_name_metric_cells_and_epochs_and_embed_plotly(ran, monkeypatch, capsys) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis_mpl

    from cellsearch.commands.plot import _cell_names, _relabel_matplotlib

    folder, study = ran
    monkeypatch.chdir(folder)
    assert main(["plot", str(study), "--out", "plots"]) == 0
    out = capsys.readouterr().out
    assert "skipped importances: needs at least 20 completed trials (the study has 3" in out
    html = (folder / "plots" / "intermediate_values.html").read_text()
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js inside, nothing loaded from a CDN
    assert '"title":{"text":"epoch"}' in html and '"text":"val_mse"' in html and '"name":"Trial0"' not in html
    assert '"dtick":1' in html
    history = (folder / "plots" / "history.html").read_text()
    assert "Objective Value" not in history and "val_mse" in history

    optuna_study, config = _open(folder, study, monkeypatch)
    names = _cell_names(optuna_study)
    ax = vis_mpl.plot_intermediate_values(optuna_study)
    _relabel_matplotlib("intermediate_values", ax, config, names)
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val_mse"
    labels = {line.get_label() for line in ax.get_lines()}
    assert labels and all(not label.startswith("Trial") for label in labels)
    assert any("lstm" in label for label in labels)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert all(float(t).is_integer() for t in ticks)


def test_public_api_loads_a_study_and_its_trained_model(ran, monkeypatch) -> None:
    import torch

    import cellsearch as cs
    from cellsearch.search.results import pick_trial, trial_model

    folder, study = ran
    monkeypatch.chdir(folder)
    result = cs.load_study(study)
    assert result.config.name == "ran" and result.n_complete == 3
    model = cs.load_trial_model(result)  # the best trial
    assert not model.training
    x = torch.randn(4, 10, 2)
    with torch.no_grad():
        out, _ = model(x)
        best = pick_trial(result.study, result.config, None)
        assert torch.equal(out, trial_model(best, result.config)(x)[0])
        by_path = cs.load_trial_model(str(study), best.number)(x)[0]
        by_study = cs.load_trial_model(result.study, best)(x)[0]
    assert torch.equal(out, by_path) and torch.equal(out, by_study)


def test_load_study_never_run_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import cellsearch as cs
    from cellsearch.cli import UserError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="run the study first"):
        cs.load_study(_study(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.yaml"]


def test_make_task_and_the_plugin_base_classes_are_public() -> None:
    import cellsearch as cs
    from cellsearch.spec import SpecError

    task = cs.make_task("adding", seq_len=20)
    assert isinstance(task, cs.SyntheticTask) and isinstance(task, cs.Task) and task.config["seq_len"] == 20
    with pytest.raises(SpecError):
        cs.make_task("adding", seq_len=1)
    for name in ("Task", "ClassificationTask", "SyntheticTask", "Option", "Loaders", "ArrayLoader",
                 "GeneratedLoader", "load_study", "load_trial_model", "make_task"):
        assert name in cs.__all__ and getattr(cs, name).__doc__, name


def test_import_cellsearch_stays_light() -> None:
    import subprocess
    import sys

    code = "import cellsearch, sys; print(sorted(m for m in ('torch', 'optuna', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ties_at_the_objective_are_broken_by_val_loss() -> None:
    import optuna

    from cellsearch.search.checks import study_from_mapping
    from cellsearch.search.results import _sort_key

    config = study_from_mapping({"name": "t", "task": "seq_digits", "cells": ["lstm"], "objective": "val_accuracy"})
    trials = [optuna.trial.create_trial(value=0.9, user_attrs={"metrics": {"val_loss": loss}})
              for loss in (0.5, 0.3, 0.4)]
    ranked = sorted(trials, key=lambda t: _sort_key(config, t))
    assert [t.user_attrs["metrics"]["val_loss"] for t in ranked] == [0.3, 0.4, 0.5]


def test_leaderboard_units_epoch_totals_and_export_marks(ran, monkeypatch, capsys) -> None:
    import optuna

    folder, study = ran
    optuna_study, config = _open(folder, study, monkeypatch)
    done = optuna_study.get_trials()[0]
    optuna_study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params=done.params, distributions=done.distributions,
        intermediate_values={1: 1.0},
        user_attrs={"key": "pruned-one", "summary": "mgu", "history": [{"epoch": 1, "val_mse": 1.0}],
                    "train": {"epochs": 2}, "prune_reason": "median pruner at epoch 1: val_mse = 1"}))
    assert main(["leaderboard", str(study), "--top", "0"]) == 0
    out = capsys.readouterr().out
    assert "time (s)" in out and "epochs" in out and "2/2" in out
    assert "at epoch 1/2" in out and " †" in out and "† cannot be exported" in out
    assert main(["leaderboard", str(study), "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert {r["export"] for r in rows} == {"", "no: pruned"}


def test_a_local_ray_cluster_keeps_token_auth_without_the_warning(monkeypatch) -> None:
    import ray

    from cellsearch.search import ray_backend

    seen = {}
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(mode=__import__("os").environ.get("RAY_AUTH_MODE")))
    assert ray_backend._init_ray(None) is True
    assert seen["mode"] == "token"  # set explicitly: Ray's default (token) without its "enabled by default" warning
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_backend._init_ray("local")
    assert seen["mode"] == "disabled"  # a user's choice is kept


def test_a_plugin_card_without_equations_is_reported_once_naming_the_field(tmp_path: Path) -> None:
    """A real installed distribution whose module defines two cards without `equations`."""
    import os
    import subprocess
    import sys

    info = tmp_path / "cardless-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cardless\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cellsearch.cells]\ncard_a = cardless_mod:A\ncard_b = cardless_mod:B\n")
    (tmp_path / "cardless_mod.py").write_text(
        "from cellsearch.cards import CellCard\nfrom cellsearch.spec import CellSpec\n"
        "A = CellCard(name='card_a', spec=CellSpec(), formula='f', citation='c')\n"
        "B = CellCard(name='card_b', spec=CellSpec(), formula='f', citation='c')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "cellsearch.cli", "list", "cells"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if "card_a" in ln or "card_b" in ln]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("cellsearch: warning: plugin 'card_a'")
    assert "CellCard is missing the field 'equations'" in lines[0] and "also breaks card_b" in lines[0]
    assert "Traceback" not in run.stderr and "lstm" in run.stdout


def test_dashboard_serves_the_study_over_http(ran) -> None:
    """A real optuna-dashboard process on a free port: the study list over HTTP names the study."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("optuna_dashboard")
    folder, study = ran
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cellsearch.cli", "dashboard", str(study), "--port", str(port)],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        studies = None
        for _ in range(600):  # up to a minute or so on a loaded machine; no timing is asserted
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.loads(response.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        assert studies is not None and [s["study_name"] for s in studies] == ["ran"]
        detail = f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}"
        with urllib.request.urlopen(detail, timeout=30) as response:
            assert json.loads(response.read())["objective_names"] == ["val_mse"]  # the metric names
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert f"http://127.0.0.1:{port}/dashboard/" in out


def test_dashboard_without_the_extra_is_one_line(ran, monkeypatch, capsys) -> None:
    import builtins

    real_import = builtins.__import__

    def no_dashboard(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("optuna_dashboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dashboard)
    folder, study = ran
    monkeypatch.chdir(folder)
    assert main(["dashboard", str(study)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'cellsearch[dashboard]'" in err and len(err.strip().splitlines()) == 1
