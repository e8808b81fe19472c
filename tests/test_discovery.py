"""The tabular benchmark (cellsearch.search.tabular): a resumable build through the job runner, and the
offline replay of samplers against a table."""

from __future__ import annotations

import math

import pytest

from cellsearch.search.tabular import (
    TableDefinition,
    beat_published,
    build_table,
    compare_samplers,
    read_table,
    replay,
    scores,
    summarize,
    table_points,
    top_keys,
    trials_to_top,
)

SPACE = {"cell": {"update": ["gru", "mgu", "lstm"], "init": ["default", "orthogonal"],
                  "bias": ["default", "ugi"]}}


def _definition(space=SPACE, seeds=(0, 1)) -> TableDefinition:
    study = {"name": "tiny", "task": {"name": "adding", "seq_len": 4, "n_valid": 8, "n_test": 8},
             "space": space, "model": {"hidden_size": 2},
             "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "threads": 1},
             "objective": {"metric": "val_mse", "direction": "minimize"}}
    return TableDefinition(study, seeds)


def _rows(definition: TableDefinition) -> list[dict]:
    """A made-up table: the i-th cell scores i (seed 1 adds 0.5), one cell diverged."""
    points = table_points(definition.config())
    rows = [{"key": p.key, "seed": s, "value": i + 0.5 * s, "diverged": False}
            for i, p in enumerate(points) for s in definition.seeds]
    rows[-1].update(value=math.nan, diverged=True)
    return rows


def test_points_cover_the_space_once_with_published_cells_marked():
    points = table_points(_definition().config())
    assert len(points) == 12 and len({p.key for p in points}) == 12
    assert {p.published for p in points} >= {"gru", "lstm", "mgu"}


def test_scores_top_and_trials_to_top():
    rows = _rows(_definition())
    table = scores(rows)
    first = rows[0]["key"]
    assert table[first] == 0.25 and table[rows[-1]["key"]] == math.inf
    assert top_keys(table, 0.01) == {first}
    assert len(top_keys(table, 0.25)) == 3
    assert trials_to_top(["a", "b", "a", "c", "d"], {"c"}) == 3
    assert trials_to_top(["a", "b"], {"c"}) is None


def test_beat_published_is_the_cells_better_than_every_published_one():
    definition = _definition()
    points = table_points(definition.config())
    rows = [{"key": p.key, "seed": 0, "value": float(i + (100 if p.published else 0)), "diverged": False,
             "published": p.published} for i, p in enumerate(points)]
    table = scores(rows)
    assert beat_published(rows, table) == {p.key for p in points if not p.published}
    assert beat_published(rows, table, "maximize") == set()
    got = compare_samplers(definition, rows, ("random",), 2, target="beat_published")["random"]
    assert all(r.distinct is not None and r.distinct <= 12 for r in got)
    for r in rows:
        r["value"] = -r["value"] if r["published"] else r["value"]  # now a published cell is the best
    with pytest.raises(ValueError, match="meets the target"):
        compare_samplers(definition, rows, ("random",), 1, target="beat_published")


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_replay_stops_at_the_top_cell(sampler):
    definition = _definition()
    table = scores(_rows(definition), worst=100.0)
    top = top_keys(table, 0.01)
    result = replay(definition.config(), table, top, sampler, seed=3)
    assert result.distinct is not None and 1 <= result.distinct <= len(table)
    assert result.trials >= result.distinct


def test_compare_samplers_is_seeded_and_summarized():
    definition = _definition()
    rows = _rows(definition)
    a = compare_samplers(definition, rows, ("random",), repetitions=6)
    b = compare_samplers(definition, rows, ("random",), repetitions=6)
    assert [r.distinct for r in a["random"]] == [r.distinct for r in b["random"]]
    assert len({r.distinct for r in a["random"]}) > 1  # the seeds differ
    summary = summarize(a["random"])
    assert summary["repetitions"] == 6 and summary["missed"] == 0
    assert summary["min"] <= summary["q1"] <= summary["median"] <= summary["q3"] <= summary["max"]
    first = compare_samplers(definition, rows, ("random",), repetitions=2, enqueue_published=True)
    assert all(r.distinct is not None and r.distinct <= 3 for r in first["random"])  # gru/lstm/mgu first
    with pytest.raises(ValueError, match="lacks"):
        compare_samplers(definition, rows[2:], ("random",), repetitions=1)


def test_build_resumes_and_refuses_another_definition(tmp_path):
    space = {"cell": {"update": ["gru", "mgu"]}}
    definition = _definition(space, seeds=(0,))
    path = tmp_path / "t.csv"
    assert build_table(definition, path, limit=1) == 1
    with path.open("a") as f:
        f.write("gru/sigmoid/default/default/tanh/free,0,gru")  # a row torn by a crash
    assert len(read_table(path)) == 1
    assert build_table(definition, path) == 1  # only the missing cell
    rows = read_table(path)
    assert sorted(r["key"].split("/")[0] for r in rows) == ["gru", "mgu"]
    assert all(r["n_params"] > 0 and r["metric"] == "val_mse" and r["code"] for r in rows)
    assert build_table(definition, path) == 0
    with pytest.raises(ValueError, match="another table definition"):
        build_table(_definition(space, seeds=(0, 1)), path)
