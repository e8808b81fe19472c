"""Reproductions (issue 7): every one runs end to end at tiny size; the statistics; `cellsearch confirm`."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats

from cellsearch.cli import main
from cellsearch.jobs import Journal, run_parallel
from cellsearch.reproduce import (
    ConfigError,
    config_yaml,
    get_reproduction,
    list_reproductions,
    mean_ci,
    reproduce,
)
from cellsearch.reproduce.report import fmt

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("values", [[1.0, 2.0], [1.0, 2.0, 3.0], [0.3, 0.1, 0.25, 0.4, 0.05],
                                    list(np.random.default_rng(0).normal(5, 2, 10))])
def test_ci_is_the_student_t_interval_of_scipy(values: list[float]) -> None:
    ci = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert ci.n == len(values) and ci.mean == pytest.approx(np.mean(values), abs=1e-12)
    assert (ci.low, ci.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_ci_of_three_values_by_hand() -> None:
    # mean 2, s = 1; with 2 degrees of freedom the t quantile has the closed form (2p − 1) / √(2p(1 − p))
    p = 0.975
    t = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.half == pytest.approx(t / math.sqrt(3), rel=1e-12)
    assert mean_ci([1.0, 2.0, 3.0], confidence=0.9).half < ci.half


def test_diverged_values_are_left_out_and_counted() -> None:
    ci = mean_ci([1.0, math.nan, 3.0, math.inf])
    assert (ci.n, ci.dropped, ci.mean) == (2, 2, 2.0)
    assert "(2 diverged)" in ci.format()
    single = mean_ci([0.5])
    assert single.n == 1 and math.isnan(single.half)
    assert mean_ci([]).n == 0 and mean_ci([]).format() == "—"


# ----------------------------------------------------------------------------------------------------------
# reproductions at tiny size


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Every reproduction run once at tiny size: name -> (output folder, report). The music21 chorales
    the pascanu2014 run builds are cached in a temporary folder."""
    root = tmp_path_factory.mktemp("reproductions")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLSEARCH_CACHE", str(root / "cache"))
        return {name: (root / name, reproduce(name, "tiny", out=root / name)) for name in list_reproductions()}


@pytest.mark.parametrize("name", list_reproductions())
def test_every_reproduction_runs_end_to_end_at_tiny_size(name: str, tiny: dict[str, tuple[Path, Any]]) -> None:
    out, report = tiny[name]
    for suffix in (".md", ".png", ".csv", "_curves.csv"):
        assert (out / f"{name}{suffix}").is_file(), suffix
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = get_reproduction(name).parse(get_reproduction(name).config("tiny"))
    rows = _rows(out / f"{name}.csv")
    assert len(rows) == len(config.jobs()) == len(report.records)
    markdown = (out / f"{name}.md").read_text()
    assert "95 %" in markdown and ("| model |" in markdown or "| cell |" in markdown)
    for exp in config.experiments:
        seeds_per_variant = {v.label: sum(r["variant"] == v.label and r["experiment"] == exp.name for r in rows)
                             for v in exp.variants}
        assert set(seeds_per_variant.values()) == {len(config.seeds)} and len(config.seeds) >= 3
        for label in seeds_per_variant:
            assert f"| {label.split(' ×')[0]} |" in markdown
    curves = _rows(out / f"{name}_curves.csv")
    assert len(curves) == sum(len(r.history) for r in report.records) > 0


def test_table_entries_are_the_mean_and_ci_of_the_per_seed_csv(tiny: dict[str, tuple[Path, Any]]) -> None:
    out, report = tiny["refined"]
    markdown = (out / "refined.md").read_text()
    for variant in ("lstm", "refined_mgu"):
        values = [r.test_metric for r in report.records if r.variant == variant]
        assert len(values) == 3
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {variant} |"))
        assert fmt(mean_ci(values), "mse") in line


def test_star_writes_gradient_maps_per_seed(tiny: dict[str, tuple[Path, Any]]) -> None:
    out, report = tiny["star"]
    rows = _rows(out / "star_gradients.csv")
    spec = get_reproduction("star").config("tiny")["gradient_maps"]
    assert len(rows) == len(spec["cells"]) * len(spec["losses"]) * spec["layers"] * spec["steps"]
    for row in rows[:5]:
        seeds = [float(row[k]) for k in ("seed0", "seed1", "seed2")]
        assert float(row["mean"]) == pytest.approx(np.mean(seeds), rel=1e-5)
    assert {r.layers for r in report.records} == {1, 2}


@pytest.mark.parametrize("name", ["gu2020", "star"])
def test_replot_rebuilds_the_same_report_from_the_files(name: str, tiny: dict[str, tuple[Path, Any]]) -> None:
    out, _ = tiny[name]
    before = (out / f"{name}.md").read_text()
    (out / f"{name}.md").unlink()
    report = get_reproduction(name).replot(out)
    assert (out / f"{name}.md").read_text() == before == report.markdown
    assert len(report.records) == len(_rows(out / f"{name}.csv"))


def test_parallel_runs_return_results_in_job_order() -> None:
    done: list[float] = []
    assert run_parallel(math.sqrt, [16.0, 1.0, 9.0], workers=2, on_done=done.append,
                        priority=lambda x: -x) == [4.0, 1.0, 3.0]
    assert sorted(done) == [1.0, 3.0, 4.0]


def test_a_killed_reproduction_resumes_from_its_journal(tmp_path: Path) -> None:
    """kill -9 of `cellsearch reproduce` half-way, then the same command: the finished runs come from the
    journal (not trained again, counted in the report), the rest are trained, the results equal an
    uninterrupted run's (same processes' settings), and the resume folder is gone once the report is
    written. (An interrupted run also resumes from its last evaluation: the trainer's checkpoints,
    tests/test_checkpoints.py.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).with_name("cellsearch")), "reproduce", "refined", "--size", "tiny", "--out"]
    whole = subprocess.run([*cmd, str(tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    journal = out / ".resume" / "refined" / "journal.jsonl"
    proc = subprocess.Popen([*cmd, str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (journal.is_file() and journal.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    kept = len(Journal(journal).done)
    assert 3 <= kept < 18 and not (out / "refined.md").exists()
    again = subprocess.run([*cmd, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" seed ") == 18 - kept  # only the unfinished runs were trained
    assert json.loads((out / "refined.json").read_text())["resumed_runs"] == kept
    assert "taken from its journal" in (out / "refined.md").read_text()
    assert not (out / ".resume").exists()
    same = [{k: v for k, v in row.items() if k != "seconds"} for row in _rows(tmp_path / "whole" / "refined.csv")]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in _rows(out / "refined.csv")] == same


def test_journal_ignores_a_line_torn_by_a_kill(tmp_path: Path) -> None:
    """A journal whose last line a kill cut short keeps every whole entry, and the next entry starts on a
    line of its own."""
    path = tmp_path / "journal.jsonl"
    Journal(path).add("a", {"x": 1.0})
    with open(path, "a") as f:
        f.write('{"key": "b", "res')
    torn = Journal(path)
    assert torn.done == {"a": {"x": 1.0}}
    torn.add("c", {"x": float("nan")})
    again = Journal(path)
    assert set(again.done) == {"a", "c"} and math.isnan(again.done["c"]["x"])


def test_config_mistakes_name_the_key() -> None:
    repro = get_reproduction("gu2020")
    raw = repro.config("tiny")
    with pytest.raises(ConfigError, match=r"experiments\[0\].bogus"):
        repro.parse({**raw, "experiments": [{**raw["experiments"][0], "bogus": 1}]})
    bad_cell = {**raw["experiments"][0], "cells": [{"cell": "lstm", "layrs": 2}]}
    with pytest.raises(ConfigError, match=r"cells\[0\].layrs"):
        repro.parse({**raw, "experiments": [bad_cell]})
    typo = {**raw["experiments"][0], "cells": ["ur_lstmm"]}
    with pytest.raises(ConfigError, match=r"cells\[0\].cell: 'ur_lstmm' is not a registered cell; did you mean"):
        repro.parse({**raw, "experiments": [typo]})
    with pytest.raises(ConfigError, match="did you mean"):
        get_reproduction("gu2021")
    assert len(repro.parse(raw, seeds=5).seeds) == 5


@pytest.mark.parametrize("name", list_reproductions())
def test_shipped_full_configs_are_the_built_in_ones(name: str) -> None:
    path = ROOT / "studies" / "reproduce" / f"{name}-full.yaml"
    assert path.read_text() == config_yaml(name, "full")
    raw = yaml.safe_load(path.read_text())
    raw.pop("name")
    assert get_reproduction(name).parse(raw).jobs()  # a valid config (nothing is trained here)


def test_cli_reproduce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "asrnn", "--size", "tiny", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "asrnn.md").is_file()
    assert main(["reproduce", "asrn", "--size", "tiny"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["reproduce", "refined", "--size", "cpu", "--dump-config"]) == 0
    assert "refined_mgu" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# confirm


def _tiny_study(tmp_path: Path) -> Path:
    raw: dict[str, Any] = {
        "name": "confirm_tiny",
        "task": {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32},
        "cells": ["lstm", "gru", "star", "vanilla"],
        "model": {"hidden_size": 8},
        "train": {"epochs": 2, "steps_per_epoch": 4, "batch_size": 16, "lr": 1e-2, "threads": 1, "seed": 0},
        "objective": "val_mse",
        "search": {"sampler": "random", "n_trials": 4, "seed": 0},
    }
    path = tmp_path / "confirm_tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_confirm_retrains_the_top_trials_with_new_seeds_and_ranks_by_mean(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cellsearch.reproduce.confirm import confirm
    from cellsearch.search import run_study

    monkeypatch.chdir(tmp_path)
    path = _tiny_study(tmp_path)
    study = run_study(path, display="quiet")
    assert study.n_complete == 4
    result = confirm(path, top=3, seeds=3)
    assert len(result.ranked) == 3 and result.seeds == [1000, 1001, 1002]
    study_best = sorted(t.values[0] for t in study.trials)[:3]
    assert sorted(c.study_value for c in result.ranked) == pytest.approx(study_best)
    means = [c.ci.mean for c in result.ranked]
    assert means == sorted(means)  # val_mse: smaller is better
    for c in result.ranked:
        assert len(c.values) == 3 and c.seeds == [1000, 1001, 1002]
        assert (c.ci.mean, c.ci.half) == (pytest.approx(mean_ci(c.values).mean), pytest.approx(mean_ci(c.values).half))
    rows = _rows(tmp_path / "runs" / "confirm_tiny" / "confirm" / "confirm.csv")
    assert len(rows) == 9 and {r["seed"] for r in rows} == {"1000", "1001", "1002"}
    assert "± " in (tmp_path / "runs" / "confirm_tiny" / "confirm" / "confirm.md").read_text()
    assert main(["confirm", str(path), "--top", "1", "--seeds", "2", "--out", str(tmp_path / "c")]) == 0
    assert len(_rows(tmp_path / "c" / "confirm.csv")) == 2
    # interrupted after two retrainings, the same call retrains only the other seven, to the same results
    calls: list[Any] = []

    def interrupt(value: Any) -> None:
        calls.append(value)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        confirm(path, top=3, seeds=3, out=tmp_path / "r", on_done=interrupt)
    assert (tmp_path / "r" / ".resume" / "journal.jsonl").read_text().count("\n") == 2
    again: list[Any] = []
    resumed = confirm(path, top=3, seeds=3, out=tmp_path / "r", on_done=again.append)
    assert len(again) == 7 and not (tmp_path / "r" / ".resume").exists()
    assert [(c.trial, c.values) for c in resumed.ranked] == [(c.trial, c.values) for c in result.ranked]


def test_confirm_refuses_a_seed_independent_metric_and_a_missing_study(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cellsearch.cli import UserError
    from cellsearch.reproduce.confirm import confirm

    monkeypatch.chdir(tmp_path)
    path = _tiny_study(tmp_path)
    with pytest.raises(UserError, match="no study"):
        confirm(path, top=1, seeds=2)
    with pytest.raises(UserError, match="does not depend on the seed"):
        confirm(path, top=1, seeds=2, metric="params")
