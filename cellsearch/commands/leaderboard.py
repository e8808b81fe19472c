"""``cellsearch leaderboard STUDY.yaml``: the best cells, their specs, parameter counts and metrics.

One row per distinct cell (spec + training): the trial that trained it, and how often the search proposed
it (the other proposals were answered from storage). A metric column equal to an objective column in every
row (``val_loss`` when the objective is ``val_mse`` on a regression task) is not repeated.
"""

from __future__ import annotations

import argparse
import json
import math
import re
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


def _epochs(trial: Any) -> tuple[int, int | None]:
    """(epochs trained, epochs planned): ``2/3`` for a trial pruned after its second of three epochs."""
    attrs = trial.user_attrs
    done = len(attrs.get("history") or [])
    train = attrs.get("train") or {}
    total = train.get("epochs") if not train.get("steps") else None
    return done, total if isinstance(total, int) else None


def _wall_seconds(trial: Any) -> float | None:
    """The trial's wall time, start to finish (what the live display prints)."""
    start, end = trial.datetime_start, trial.datetime_complete
    return (end - start).total_seconds() if start and end else trial.user_attrs.get("seconds")


def _exportable(trial: Any, config: Any) -> str:
    """"" when ``cellsearch export --trial N`` works from the saved weights; else why not (or what it costs)."""
    if trial.state.name != "COMPLETE":
        return f"no: {trial.state.name.lower()}"
    from ..search.results import _weights_path

    return "" if _weights_path(trial, config) is not None else "retrains: weights missing"


def _annotate(rows: list[dict[str, Any]], trials: dict[int, Any], config: Any) -> None:
    """Add epochs, epochs_total, wall_seconds and export to each row; the note's epoch gets its total."""
    for r in rows:
        t = trials[r["number"]]
        r["epochs"], r["epochs_total"] = _epochs(t)
        r["wall_seconds"] = _wall_seconds(t)
        r["export"] = _exportable(t, config)
        if r["epochs_total"]:
            r["note"] = re.sub(r"\bat epoch (\d+)\b(?!/)", rf"at epoch \1/{r['epochs_total']}", r["note"])


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..search import load_config
    from ..search.studies import StudyResult, open_study

    config = load_config(args.study, args.sets, storage=args.storage)
    result = StudyResult(
        config, open_study(config, args.storage, create=False), args.storage or config.storage_url
    )
    rows = result.leaderboard(args.top or None)
    _annotate(rows, {t.number: t for t in result.trials}, config)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=160)
    if args.json:
        console.print_json(json.dumps(rows, default=str))
        return 0
    metric_names = sorted({k for r in rows for k in r["metrics"]} - set(config.metrics))
    same = {m: o for m in metric_names if (o := _same_as_objective(rows, m, config.metrics))}
    metric_names = [m for m in metric_names if m not in same]
    console.print(_table(result, rows, metric_names))
    for metric, objective in same.items():
        console.print(f"{metric} equals {objective} in every row (not repeated)")
    _footnotes(console, config, rows)
    return 0


def _table(result: Any, rows: list[dict[str, Any]], metric_names: list[str]) -> Any:
    """The leaderboard as a rich table: one row per trial, the objectives then the other metrics."""
    from rich.table import Table

    from ..config import metric_label

    config, states = result.config, _states(result.trials)
    table = Table(
        "#", "state", "cell", "proposed", "params",
        *(metric_label(m) for m in config.metrics), *(metric_label(m) for m in metric_names),
        "epochs", "time (s)", "note",
        title=f"{config.name}: {states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed; "
        f"{result.n_distinct} distinct cell(s) in {result.n_counted} trial(s) of the budget, "
        f"{result.n_duplicates} duplicate proposal(s) answered from storage",
    )
    for r in rows:
        mark = (" *" if r["pareto"] else "") + (" †" if r["export"].startswith("no") else "")
        note = "; ".join(n for n in (r["note"], r["export"] if r["export"].startswith("retrains") else "") if n)
        table.add_row(
            f"{r['number']}{mark}", r["state"], r["summary"], str(r["proposed"]), _fmt(r["params"]),
            *(_fmt(r["objectives"].get(m)) for m in config.metrics),
            *(_fmt(r["metrics"].get(m)) for m in metric_names),
            f"{r['epochs']}/{r['epochs_total']}" if r["epochs_total"] else str(r["epochs"]),
            _fmt(r["wall_seconds"] and round(r["wall_seconds"], 1)),
            note[:70],
        )
    return table


def _footnotes(console: Any, config: Any, rows: list[dict[str, Any]]) -> None:
    if config.multi_objective:
        console.print("* on the Pareto front")
    if any(r["export"].startswith("no") for r in rows):
        console.print("† cannot be exported (only COMPLETE trials can: cellsearch export STUDY --trial N)")
    firsts = [r["objectives"].get(config.metrics[0]) for r in rows if r["state"] == "COMPLETE"]
    if len(set(firsts)) < len(firsts) and config.metrics[0] != "val_loss":
        console.print(f"equal {config.metrics[0]}: ranked by the lower val_loss")
