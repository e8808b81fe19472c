"""Files a reproduction writes: per-seed CSV, learning-curve CSV, markdown tables, curve plots.

Every number in a table is a mean over seeds ± the half-width of its 95 % Student-t confidence interval
(:func:`cellsearch.reproduce.stats.mean_ci`); a diverged run is left out of the mean and counted.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from .config import Experiment
from .runner import Record
from .stats import CI, mean_ci

__all__ = ["write_csv", "write_records", "read_records", "experiment_table", "markdown_table", "curve_band",
           "plot_curves", "by_variant", "steps_to_solve", "fmt"]


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV; floats with 8 significant digits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        if not rows:
            return path
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def write_records(out: Path, name: str, records: Sequence[Record]) -> list[Path]:
    """``<name>.csv`` (one row per run) and ``<name>_curves.csv`` (one row per run and evaluation)."""
    rows = [r.row() for r in records]
    for row in rows:
        row.pop("error", None)
    curves = [{"experiment": r.experiment, "variant": r.variant, "seed": r.seed, **h}
              for r in records for h in r.history]
    return [write_csv(out / f"{name}.csv", rows), write_csv(out / f"{name}_curves.csv", curves)]


def read_records(out: Path, name: str) -> list[Record]:
    """The records :func:`write_records` wrote (values as stored: 8 significant digits)."""
    path, curves = out / f"{name}.csv", out / f"{name}_curves.csv"
    if not path.is_file():
        from ..errors import UserError

        raise UserError(f"no {path}: nothing to rebuild the report from")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    with curves.open() as fh:
        points = list(csv.DictReader(fh)) if curves.is_file() else []
    history: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for p in points:
        history.setdefault((p["experiment"], p["variant"], p["seed"]), []).append(
            {k: float(p[k]) for k in ("step", "train_loss", "val_loss", "val_metric")})
    out_records = []
    for row in rows:
        types = {f.name: f.type for f in fields(Record)}
        values: dict[str, Any] = {}
        for key, text in row.items():
            kind = str(types.get(key, "str"))
            if kind == "int":
                values[key] = int(text)
            elif kind == "bool":
                values[key] = text == "True"
            elif kind in ("float", "float | None"):
                values[key] = None if text == "" else float(text)
            else:
                values[key] = text
        values["history"] = history.get((row["experiment"], row["variant"], row["seed"]), [])
        out_records.append(Record(**values))
    return out_records


def by_variant(records: Iterable[Record], experiment: str) -> dict[str, list[Record]]:
    """The records of one experiment grouped by variant label (in first-seen order)."""
    out: dict[str, list[Record]] = {}
    for r in records:
        if r.experiment == experiment:
            out.setdefault(r.variant, []).append(r)
    return out


def steps_to_solve(record: Record, threshold: float) -> float:
    """The first evaluated step whose validation metric is below ``threshold`` (NaN: never)."""
    for h in record.history:
        if h["val_metric"] < threshold:
            return float(h["step"])
    return math.nan


def fmt(ci: CI, metric: str) -> str:
    """A CI formatted for its metric (accuracy in %, others with 3–4 digits)."""
    if metric == "accuracy":
        return ci.format(1, percent=True)
    return ci.format(4 if metric == "mse" else 3)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table (first column left-aligned, others right-aligned)."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def experiment_table(experiment: Experiment, records: Sequence[Record]) -> list[str]:
    """The markdown table of one experiment: one row per variant (parameters, test and validation
    metrics mean ± 95 % CI, seeds solved and steps to solve when the experiment has a threshold)."""
    groups = by_variant(records, experiment.name)
    metric = next(iter(groups.values()))[0].metric if groups else "metric"
    unit = " %" if metric == "accuracy" else ""
    header = ["model", "params", "hidden", "seeds", f"test {metric}{unit} (final)", f"best val {metric}{unit}"]
    if experiment.solved_below is not None:
        header += [f"solved (val < {experiment.solved_below:g})", "steps to solve"]
    header += ["s / run"]
    rows = []
    for label, runs in groups.items():
        ok = [r for r in runs if not r.diverged]
        params = _span([r.n_params for r in ok])
        hidden = _span([r.hidden_size for r in runs])
        row: list[Any] = [label, params, hidden, len(runs), fmt(mean_ci([r.test_metric for r in runs]), metric),
                          fmt(mean_ci([r.best_val_metric for r in runs]), metric)]
        if experiment.solved_below is not None:
            steps = [steps_to_solve(r, experiment.solved_below) for r in ok]
            solved = [s for s in steps if math.isfinite(s)]
            row += [f"{len(solved)}/{len(runs)}", mean_ci(solved).format(0) if solved else "—"]
        row.append(f"{np.mean([r.seconds for r in runs]):.0f}")
        rows.append(row)
    return markdown_table(header, rows)


def _span(values: Sequence[int]) -> str:
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def curve_band(runs: Sequence[Record], key: str = "val_metric") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and 95 % CI half-width over seeds of ``key`` at each evaluation the runs share."""
    finished = [r for r in runs if r.history]
    if not finished:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    length = min(len(r.history) for r in finished)
    steps = np.array([finished[0].history[i]["step"] for i in range(length)], dtype=float)
    cis = [mean_ci([r.history[i][key] for r in finished]) for i in range(length)]
    mean = np.array([c.mean for c in cis])
    half = np.array([c.half if math.isfinite(c.half) else 0.0 for c in cis])
    return steps, mean, half


def plot_curves(ax: Any, experiment: Experiment, records: Sequence[Record], log: bool = False,
                styles: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Validation metric vs optimizer step: mean over seeds with a 95 % CI band; the memoryless
    baseline (when the task has one) as a dashed line."""
    groups = by_variant(records, experiment.name)
    baseline = None
    for label, runs in groups.items():
        steps, mean, half = curve_band(runs)
        if steps.size == 0:
            continue
        style = dict((styles or {}).get(label, {}))
        (line,) = ax.plot(steps, mean, label=label, lw=1.4, **style)
        ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.15, lw=0)
        baseline = baseline if baseline is not None else runs[0].baseline
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=1, label=f"memoryless baseline {baseline:.3g}")
    metric = next(iter(groups.values()))[0].metric if groups else ""
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {metric}")
    if log:
        ax.set_yscale("log")
    elif baseline is not None and baseline > 0 and ax.get_ylim()[1] > 1.5 * baseline:
        ax.set_ylim(top=1.5 * baseline)  # early transients far above the baseline would flatten the rest
    ax.set_title(experiment.title or experiment.name, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
