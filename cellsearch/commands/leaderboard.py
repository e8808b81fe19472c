"""``cellsearch leaderboard STUDY.yaml``: the best cells, their specs, parameter counts and metrics.

One row per distinct cell (spec + training): the trial that trained it, and how often the search proposed
it (the other proposals were answered from storage). A metric column equal to an objective column in every
row (``val_loss`` when the objective is ``val_mse`` on a regression task) is not repeated.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from .run import add_study_arguments

HELP = "best cells of a study"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--top", type=int, default=10, help="how many cells (0: all)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _same_as_objective(rows: list[dict[str, Any]], metric: str, objectives: list[str]) -> str | None:
    """The objective whose value ``metric`` equals in every row that has both (None: none)."""
    for name in objectives:
        pairs = [(r["metrics"].get(metric), r["objectives"].get(name)) for r in rows]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs and all(math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12) for a, b in pairs):
            return name
    return None


def _states(trials: list[Any]) -> dict[str, int]:
    """Trials per state, duplicate proposals (answered from storage) left out."""
    from ..search.ledger import is_duplicate

    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
    for t in trials:
        if t.state.name in out and not is_duplicate(t):
            out[t.state.name] += 1
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..search import load_config
    from ..search.optuna_backend import StudyResult, open_study

    config = load_config(args.study, args.sets, storage=args.storage)
    result = StudyResult(
        config, open_study(config, args.storage, create=False), args.storage or config.storage_url
    )
    rows = result.leaderboard(args.top or None)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=160)
    if args.json:
        console.print_json(json.dumps(rows, default=str))
        return 0
    metric_names = sorted({k for r in rows for k in r["metrics"]} - set(config.metrics))
    same = {m: o for m in metric_names if (o := _same_as_objective(rows, m, config.metrics))}
    metric_names = [m for m in metric_names if m not in same]
    states = _states(result.trials)
    table = Table(
        "#",
        "state",
        "cell",
        "proposed",
        "params",
        *config.metrics,
        *metric_names,
        "time",
        "note",
        title=f"{config.name}: {states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed; "
        f"{result.n_distinct} distinct cell(s) in {result.n_counted} trial(s) of the budget, "
        f"{result.n_duplicates} duplicate proposal(s) answered from storage",
    )
    for r in rows:
        mark = " *" if r["pareto"] else ""
        table.add_row(
            f"{r['number']}{mark}",
            r["state"],
            r["summary"],
            str(r["proposed"]),
            _fmt(r["params"]),
            *(_fmt(r["objectives"].get(m)) for m in config.metrics),
            *(_fmt(r["metrics"].get(m)) for m in metric_names),
            _fmt(r["seconds"] and round(r["seconds"], 1)),
            r["note"][:60],
        )
    console.print(table)
    for metric, objective in same.items():
        console.print(f"{metric} equals {objective} in every row (not repeated)")
    if config.multi_objective:
        console.print("* on the Pareto front")
    return 0
