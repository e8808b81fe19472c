"""``cellsearch leaderboard STUDY.yaml``: the best trials, their specs, parameter counts and metrics."""

from __future__ import annotations

import argparse
import json

from .run import add_study_arguments

HELP = "best trials of a study"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--top", type=int, default=10, help="how many trials (0: all)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


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
    table = Table(
        "#",
        "state",
        "cell",
        "params",
        *config.metrics,
        *metric_names,
        "time",
        "note",
        title=f"{config.name}: {result.n_complete} complete, {result.n_pruned} pruned, "
        f"{result.n_failed} failed",
    )
    for r in rows:
        mark = " *" if r["pareto"] else ""
        table.add_row(
            f"{r['number']}{mark}",
            r["state"],
            r["summary"],
            _fmt(r["params"]),
            *(_fmt(r["objectives"].get(m)) for m in config.metrics),
            *(_fmt(r["metrics"].get(m)) for m in metric_names),
            _fmt(r["seconds"] and round(r["seconds"], 1)),
            r["note"][:60],
        )
    console.print(table)
    if config.multi_objective:
        console.print("* on the Pareto front")
    return 0
