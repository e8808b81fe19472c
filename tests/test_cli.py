"""The CLI end to end: a 4-trial study run, continued, ranked, exported, plotted; multi-objective; errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cellsearch.cli import main

TASK = {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32}


def _write(tmp_path: Path, name: str, **changes: Any) -> Path:
    raw: dict[str, Any] = {
        "name": name,
        "task": dict(TASK),
        "space": {
            "cell": {"update": ["lstm", "gru", "star"], "gate": ["sigmoid", "ur"]},
            "published": ["lstm", "ur_lstm"],
        },
        "model": {"hidden_size": 8},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 16, "threads": 1},
        "objective": "val_mse",
        "search": {"sampler": "tpe", "pruner": "median", "n_trials": 4, "seed": 0},
    }
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _import(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem + "_exported", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_four_trial_study_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    """run → leaderboard → export → plot → run again (continues to a larger budget)."""
    monkeypatch.chdir(tmp_path)
    study = _write(tmp_path, "e2e")
    assert main(["run", str(study), "--plain"]) == 0
    out = capsys.readouterr().out
    assert "trial 0 COMPLETE" in out and "done 4/4" in out
    assert (tmp_path / "runs" / "e2e" / "study.db").is_file()

    assert main(["leaderboard", str(study)]) == 0
    board = capsys.readouterr().out
    assert "e2e:" in board and "lstm" in board and "val_mse" in board

    assert main(["export", str(study), "--out", "best"]) == 0
    capsys.readouterr()
    assert main(["export", str(study), "--out", "best"]) == 2  # never overwrites silently
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(study), "--out", "best", "--force"]) == 0
    capsys.readouterr()
    info = yaml.safe_load((tmp_path / "best" / "spec.yaml").read_text())
    assert info["study"] == "e2e" and isinstance(info["trial"], int)
    module = _import(tmp_path / "best" / info["files"]["module"])

    from cellsearch.search import load_config
    from cellsearch.search.results import pick_trial, trial_model
    from cellsearch.search.studies import open_study

    config = load_config(study)
    trial = pick_trial(open_study(config, create=False), config, info["trial"])
    x = torch.randn(5, 10, 2)
    with torch.no_grad():
        assert (module.load()(x)[0] - trial_model(trial, config)(x)[0]).abs().max() < 1e-6

    assert main(["plot", str(study), "--out", "plots"]) == 0
    capsys.readouterr()
    for name in ("history", "parallel_coordinates", "intermediate_values"):
        assert (tmp_path / "plots" / f"{name}.png").is_file() and (
            tmp_path / "plots" / f"{name}.html"
        ).is_file()

    assert main(["resume", str(study), "--n-trials", "5", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "continuing: 4 trial(s) already done" in out and "done 5/5" in out


def test_multi_objective_study_marks_the_pareto_front(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    study = _write(
        tmp_path,
        "pareto",
        objective=["val_mse", "params"],
        search={"sampler": "nsga2", "n_trials": 3, "seed": 0},
    )
    assert main(["run", str(study), "--quiet"]) == 0
    assert main(["leaderboard", str(study)]) == 0
    assert "Pareto front" in capsys.readouterr().out
    assert main(["plot", str(study), "--out", "plots"]) == 0
    assert (tmp_path / "plots" / "pareto_front.png").is_file()
    assert main(["export", str(study), "--out", "best"]) == 0


def test_plot_with_too_few_trials_skips_gracefully(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    study = _write(tmp_path, "one", search={"n_trials": 1, "sampler": "random"})
    assert main(["run", str(study), "--quiet"]) == 0
    assert main(["plot", str(study), "--out", "plots"]) == 0
    assert "skipped importances" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.epochs"], "KEY=VALUE"),
        (["--set", "train.epochs=["], "malformed YAML"),
        (["--set", "search.sampler=tpee"], "did you mean 'tpe'"),
        (["--n-trials", "0"], "search.n_trials: 0 is not allowed"),
        (["--storage", "nosuchdb://x"], "storage 'nosuchdb://x' cannot be opened"),
    ],
)
def test_command_line_mistakes_exit_2(
    tmp_path: Path, monkeypatch, capsys, args: list[str], message: str
) -> None:
    study = _write(tmp_path, "bad")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(study), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_leaderboard_of_a_study_never_run_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    study = _write(tmp_path, "never")
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", str(study)]) == 2
    assert "run the study first" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_import_cellsearch_does_not_import_optuna() -> None:
    import subprocess

    code = ("import cellsearch, sys; cellsearch.list_cells(); "
            "print('optuna' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_storage_password_is_never_printed_or_stored(tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 12.9 / 19: a PostgreSQL password is masked in validate's summary, the run's first line and
    its errors, and in the config stored in the study; a URL without one reads PGPASSWORD / ~/.pgpass."""
    import io
    import json

    from rich.console import Console

    from cellsearch.search.checks import load_study
    from cellsearch.search.display import Display
    from cellsearch.search.storage import mask_url, redact
    from cellsearch.search.studies import stored_config

    monkeypatch.chdir(tmp_path)
    url = "postgresql://alice:hunter2@127.0.0.1:1/cs"
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ntask: {name: adding, seq_len: 10}\ncells: [lstm]\nsearch: {n_trials: 1}\n"
                     f"storage: {url}\n")
    assert main(["validate", str(study)]) == 0
    out, err = capsys.readouterr()
    assert "postgresql://alice:***@127.0.0.1:1/cs" in out and "hunter2" not in out + err
    assert main(["run", str(study), "--quiet"]) == 2  # nothing listens on port 1
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "alice:***@" in err and "hunter2" not in out + err
    config = load_study(study)
    shown = io.StringIO()
    display = Display(config, live=False)
    display.console = Console(file=shown, width=200)
    display.start(None, 1)
    assert "storage postgresql://alice:***@127.0.0.1:1/cs" in shown.getvalue()
    assert "hunter2" not in json.dumps(stored_config(config)) and config.storage == url  # used, never kept
    assert mask_url("postgresql://u:p%40ss@h/db?sslmode=require") == "postgresql://u:***@h/db?sslmode=require"
    assert mask_url("postgresql://h/db?user=u&password=zz") == "postgresql://h/db?user=u&password=***"
    assert redact("driver said: password 'hunter2' rejected", url) == "driver said: password '***' rejected"
    assert list(tmp_path.iterdir()) == [study]


def test_every_test_the_readme_guarantees_cite_exists() -> None:
    """The README's "Guarantees" lines name the tests that show them; each named test exists."""
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    section = text.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    cited = 0
    for line in section.splitlines():
        if not line.startswith("|") or "`" not in line:
            continue
        current = None
        for ref in re.findall(r"`((?:test_\w+\.py)?::\w+|test_\w+\.py::\w+)`", line):
            file, _, name = ref.partition("::")
            current = file or current
            assert current, line
            assert re.search(rf"^def {name}\(", (root / "tests" / current).read_text(), re.M), ref
            cited += 1
    assert cited >= 15
