"""A tabular benchmark in the NAS-Bench style: every cell of a finite space trained once per seed, kept as a
table, so samplers can be compared offline by looking results up instead of training.

A table is defined by a study mapping (task, space, model, train, objective; read by
:func:`cellsearch.config.study_from_mapping`, so it is checked like any study) and a list of seeds.
:func:`build_table` enumerates every compatible point of the space (:func:`~.space.enumerate_points`),
trains each point once per seed through :func:`cellsearch.jobs.run_jobs` and appends one CSV row per
finished job (flushed and synced), so an interrupted build loses at most the jobs in flight and a rerun skips
the rows already written. A side file (``<table>.json``) records the definition, the code version of every
build session and the torch version; a rerun with another definition is refused.

:func:`replay` runs an Optuna study whose objective samples the *same* ``SearchSpace.sample`` a real search
uses and answers with the table's mean over seeds; :func:`trials_to_top` counts how many distinct cells a
sampler evaluates before one of the table's top fraction (duplicates are free, as in a real search, whose
ledger answers an already-evaluated cell from storage). :func:`compare_samplers` repeats it per sampler.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import StudyConfig, study_from_mapping
from ..spec import CELL_ROLES
from .space import SearchSpace, enumerate_points

__all__ = ["TableDefinition", "TablePoint", "Replay", "table_points", "build_table", "read_table", "scores",
           "top_keys", "beat_published", "trials_to_top", "replay", "compare_samplers", "summarize", "code_version"]

COLUMNS = ["key", "seed", *CELL_ROLES, "published", "n_params", "metric", "value", "best_value",
           "train_loss", "seconds", "diverged", "code"]


@dataclass(frozen=True)
class TableDefinition:
    """What a table holds: a study mapping (task, space, model, train, objective) and the seeds."""

    study: Mapping[str, Any]
    seeds: tuple[int, ...] = (0, 1)
    base: str = "."

    def config(self) -> StudyConfig:
        """The study mapping read and checked as a study."""
        return study_from_mapping(self.study, source="<table>", base=Path(self.base))

    def to_dict(self) -> dict[str, Any]:
        return {"study": json.loads(json.dumps(self.study)), "seeds": list(self.seeds)}


@dataclass(frozen=True)
class TablePoint:
    """One cell of the table: its key (the roles joined by ``/``), the sampler's parameters, the cell
    spec that is trained and the published cell's name when it is one."""

    key: str
    params: Mapping[str, Any]
    cell: Any
    depth: Any
    hidden_size: int | None
    published: str = ""


def cell_key(cell: Any) -> str:
    """``update/gate/init/bias/saturation/recurrence`` of a cell spec."""
    return "/".join(str(getattr(cell, role)) for role in CELL_ROLES)


def _space(config: StudyConfig) -> SearchSpace:
    assert config.space is not None, "a table needs a study with a space"
    return SearchSpace(config.space, config.model)


def table_points(config: StudyConfig) -> list[TablePoint]:
    """Every compatible point of the study's space (the published cells as their cards define them)."""
    import optuna

    space = _space(config)
    published = {json.dumps(s.params, sort_keys=True): s.user_attrs["published"] for s in space.seed_trials()}
    points = enumerate_points(space.sample)
    if points is None:
        raise ValueError("the space is not finite (or has more points than enumerate_points lists)")
    out = []
    for params in points:
        name = published.get(json.dumps(params, sort_keys=True), "")
        cand = space.candidate_for(space.sample(optuna.trial.FixedTrial(params)), name or None)
        out.append(TablePoint(cell_key(cand.cell), params, cand.cell, cand.depth, cand.hidden_size, name))
    keys = [p.key for p in out]
    if len(set(keys)) != len(keys):
        raise ValueError("two points of the space share a cell key: the table cannot tell them apart")
    return out


def code_version(root: str | Path = ".") -> str:
    """The git commit of ``root`` (``+dirty`` when tracked files differ), else the package version."""
    import subprocess

    from .._version import __version__

    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "cellsearch"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return __version__
    return head + ("+dirty" if dirty else "")


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """The complete rows of a table CSV (a torn last line, left by a crash, is dropped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if None in row or any(row.get(c) is None for c in COLUMNS) or not row["code"]:
                continue
            row["seed"], row["n_params"] = int(row["seed"]), int(row["n_params"])
            row["diverged"] = row["diverged"] == "True"
            for c in ("value", "best_value", "train_loss", "seconds"):
                row[c] = float(row[c]) if row[c] not in ("", "nan") else math.nan
            rows.append(row)
    return rows


def _check_meta(meta_path: Path, definition: TableDefinition, version: str) -> None:
    """Write the side file, or refuse a definition other than the one the table was built with."""
    import torch

    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is not None and meta["definition"] != definition.to_dict():
        raise ValueError(f"{meta_path} records another table definition; write to another file")
    meta = meta or {"definition": definition.to_dict(), "code_versions": [], "torch": torch.__version__}
    if version not in meta["code_versions"]:
        meta["code_versions"].append(version)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")


def _row(record: Any, metric: str, version: str) -> dict[str, Any]:
    label = record.label
    value = record.value(metric)
    best = math.nan if record.diverged else float(record.best.get(metric, math.nan))
    train_loss = math.nan if record.diverged else float(record.final.get("train_loss", math.nan))
    return {"key": label["key"], "seed": label["seed"], **dict(zip(CELL_ROLES, label["key"].split("/"))),
            "published": label["published"], "n_params": record.n_params, "metric": metric,
            "value": f"{value:.6g}", "best_value": f"{best:.6g}", "train_loss": f"{train_loss:.6g}",
            "seconds": f"{record.seconds:.2f}", "diverged": record.diverged, "code": version}


def build_table(definition: TableDefinition, path: str | Path, workers: int = 1,
                on_row: Callable[[dict[str, Any]], None] | None = None, limit: int | None = None) -> int:
    """Train every (point, seed) missing from the CSV at ``path`` and append its row; returns how many
    rows were added. ``limit``: at most this many jobs this time."""
    from ..jobs import Job, drop_torn_tail, run_jobs
    from ..train import resolve_model_spec

    config = definition.config()
    path = Path(path)
    version = code_version(definition.base)
    _check_meta(path.with_suffix(".json"), definition, version)
    done = {(r["key"], r["seed"]) for r in read_table(path)}
    metric = config.objective[0].metric
    task, train = config.task.to_dict(), {**config.train_dict(), "progress": False}
    jobs = []
    for p in table_points(config):
        spec = resolve_model_spec(p.cell, p.depth, task, hidden_size=p.hidden_size,
                                  param_budget=config.model.param_budget)
        jobs += [Job(spec.to_json(), task, train, seed, {"key": p.key, "seed": seed, "published": p.published})
                 for seed in definition.seeds if (p.key, seed) not in done]
    jobs = jobs[:limit] if limit is not None else jobs
    drop_torn_tail(path)
    fresh = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if fresh:
            writer.writeheader()

        def write(record: Any) -> None:
            row = _row(record, metric, version)
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
            if on_row is not None:
                on_row(row)

        run_jobs(jobs, workers, on_done=write)
    return len(jobs)


def scores(rows: Sequence[Mapping[str, Any]], worst: float = math.inf) -> dict[str, float]:
    """Cell key → the mean value over its seeds (``worst`` when any seed diverged)."""
    by_key: dict[str, list[float]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(worst if r["diverged"] or math.isnan(r["value"]) else r["value"])
    return {k: statistics.fmean(v) if all(math.isfinite(x) for x in v) else worst for k, v in by_key.items()}


def top_keys(table: Mapping[str, float], fraction: float, direction: str = "minimize") -> set[str]:
    """The best ``fraction`` of the cells (at least one; ties with the last one included)."""
    n = max(1, math.ceil(fraction * len(table)))
    ordered = sorted(table.values(), reverse=direction == "maximize")
    cut = ordered[n - 1]
    better = (lambda v: v <= cut) if direction == "minimize" else (lambda v: v >= cut)
    return {k for k, v in table.items() if better(v)}


@dataclass(frozen=True)
class Replay:
    """One sampler run against the table: distinct cells evaluated up to and including the first one in
    the top set (None: not reached within the cap), and Optuna trials used (duplicates included)."""

    sampler: str
    seed: int
    distinct: int | None
    trials: int


def trials_to_top(keys: Sequence[str], top: set[str]) -> int | None:
    """How many distinct cells of ``keys`` (in order) are evaluated up to the first one in ``top``."""
    seen: set[str] = set()
    for key in keys:
        seen.add(key)
        if key in top:
            return len(seen)
    return None


def replay(config: StudyConfig, table: Mapping[str, float], top: set[str], sampler: str, seed: int,
           enqueue_published: bool = False, max_trials: int | None = None) -> Replay:
    """Run ``sampler`` (built by :func:`cellsearch.search.samplers.make_sampler`, seeded ``seed``) on the
    study's space with the table as the objective, until a top cell is proposed or ``max_trials``
    Optuna trials (default: 10 × the table's cells) have run."""
    import warnings

    import optuna

    from .samplers import make_sampler

    config = replace(config, search=replace(config.search, sampler=sampler, seed=seed, sampler_args={}))
    space = _space(config)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=config.objective[0].direction or "minimize",
                                sampler=make_sampler(config))
    if enqueue_published:
        for s in space.seed_trials():
            study.enqueue_trial(dict(s.params))
    keys: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        key = cell_key(space.sample(trial).cell)
        keys.append(key)
        if key in top:
            trial.study.stop()
        return table[key]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CMA-ES / GP: "falls back to independent sampling" per parameter
        study.optimize(objective, n_trials=max_trials or 10 * len(table))
    return Replay(sampler, seed, trials_to_top(keys, top), len(keys))


def compare_samplers(definition: TableDefinition, rows: Sequence[Mapping[str, Any]],
                     samplers: Sequence[str] = ("tpe", "cmaes", "random", "gp"), repetitions: int = 20,
                     fraction: float = 0.01, enqueue_published: bool = False,
                     on_replay: Callable[[Replay], None] | None = None,
                     target: str = "fraction") -> dict[str, list[Replay]]:
    """:func:`replay` of every sampler with seeds 0 .. ``repetitions`` - 1 against the table ``rows``.
    ``target``: ``fraction`` (the top ``fraction`` of the cells) or ``beat_published`` (the cells strictly
    better than every published cell of the table)."""
    config = definition.config()
    direction = config.objective[0].direction or "minimize"
    worst_default = math.inf if direction == "minimize" else -math.inf
    table = scores(rows, worst=worst_default)
    finite = [v for v in table.values() if math.isfinite(v)]
    worst = max(finite) if direction == "minimize" else min(finite)
    table = {k: v if math.isfinite(v) else worst for k, v in table.items()}
    missing = {p.key for p in table_points(config)} - set(table)
    if missing:
        raise ValueError(f"the table lacks {len(missing)} cell(s) of the space, e.g. {sorted(missing)[0]}")
    top = top_keys(table, fraction, direction) if target == "fraction" else beat_published(rows, table, direction)
    if not top:
        raise ValueError(f"no cell of the table meets the target {target!r}")
    out: dict[str, list[Replay]] = {}
    for name in samplers:
        for seed in range(repetitions):
            result = replay(config, table, top, name, seed, enqueue_published)
            out.setdefault(name, []).append(result)
            if on_replay is not None:
                on_replay(result)
    return out


def beat_published(rows: Sequence[Mapping[str, Any]], table: Mapping[str, float],
                   direction: str = "minimize") -> set[str]:
    """The cells whose mean is strictly better than every published cell's."""
    published = [table[r["key"]] for r in rows if r.get("published")]
    if not published:
        raise ValueError("the table has no published cell to beat")
    if direction == "minimize":
        return {k for k, v in table.items() if v < min(published)}
    return {k for k, v in table.items() if v > max(published)}


def summarize(replays: Sequence[Replay]) -> dict[str, Any]:
    """Median, quartiles and range of the distinct cells needed (reps that never reached: ``missed``)."""
    hits = sorted(r.distinct for r in replays if r.distinct is not None)
    out: dict[str, Any] = {"repetitions": len(replays), "missed": len(replays) - len(hits)}
    if hits:
        q = statistics.quantiles(hits, n=4, method="inclusive") if len(hits) > 1 else [hits[0]] * 3
        out.update(median=statistics.median(hits), q1=q[0], q3=q[2], min=hits[0], max=hits[-1],
                   mean_trials=statistics.fmean(r.trials for r in replays))
    return out
