"""`cellsearch reproduce mingru` (issue 14) at its tiny size: the speed table (scan, loop up to its stated
T, minLSTM, nn.LSTM, nn.GRU), the equal-parameter runs on adding and copy, the files, the replot and the
overview. No test asserts a timing (only that every timed variant was timed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from cellsearch.reproduce.config import ConfigError
from cellsearch.reproduce.mingru import LOOP, SPEED_VARIANTS, MinGRU


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("mingru")
    repro = MinGRU()
    return out, repro.run(repro.config("tiny"), out, "tiny")


def test_tiny_run_writes_every_file(tiny: tuple[Path, Any]) -> None:
    out, report = tiny
    for name in ("mingru.md", "mingru.png", "mingru.csv", "mingru_curves.csv", "mingru.json", "mingru_speed.csv"):
        assert (out / name).is_file(), name
    assert "## (a) Training speed against T" in report.markdown
    assert "## (b) Long delays at an equal parameter budget" in report.markdown


def test_speed_table_times_every_variant_and_stops_the_loop_where_stated(tiny: tuple[Path, Any]) -> None:
    _, report = tiny
    spec = MinGRU().config("tiny")["speed"]
    rows = report.extra["speed"]
    assert [r["T"] for r in rows] == spec["lengths"]
    for row in rows:
        for v in SPEED_VARIANTS:
            timed = v != LOOP or row["T"] <= spec["loop_max"]
            assert (math.isfinite(row[v]) and row[v] > 0) if timed else math.isnan(row[v]), (row["T"], v)


def test_equal_parameter_budget_and_seeds(tiny: tuple[Path, Any]) -> None:
    """Every (task, variant) has 3 seeds; every model is the one closest to the budget (within 10 %)."""
    _, report = tiny
    config = MinGRU().config("tiny")
    for exp in config["experiments"]:
        budget = exp["model"]["param_budget"]
        runs = [r for r in report.records if r.experiment == exp["name"]]
        assert {r.variant for r in runs} == {"mingru", "mingru ×2", "minlstm", "lstm", "gru"}
        assert len(runs) == 5 * 3 and all(not r.diverged for r in runs)
        assert all(abs(r.n_params - budget) <= 0.1 * budget for r in runs), [(r.variant, r.n_params) for r in runs]
    wide = {r.variant: r.hidden_size for r in report.records if r.experiment == config["experiments"][0]["name"]}
    assert wide["mingru"] > wide["lstm"]        # no recurrent matrix: a wider state at the same budget


def test_replot_and_overview_from_the_files(tiny: tuple[Path, Any]) -> None:
    out, report = tiny
    repro = MinGRU()
    assert repro.replot(out, figure=False).markdown == report.markdown
    ov = repro.overview(repro.load(out))
    assert "175" in ov.published and ov.verdict.startswith("speed ")
    assert any("nn.LSTM / scan" in line for line in ov.section)


def test_speed_config_is_validated() -> None:
    repro = MinGRU()
    raw = repro.config("tiny")
    raw["speed"]["warmup"] = 2
    with pytest.raises(ConfigError, match="speed.warmup"):
        repro.parse(raw)
    raw = repro.config("tiny")
    raw["speed"]["lengths"] = [0]
    with pytest.raises(ConfigError, match="speed.lengths"):
        repro.parse(raw)
