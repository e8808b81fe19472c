"""Multi-seed confirmation of a study's winners: ``cellsearch confirm STUDY --top K --seeds S``.

A search ranks candidates by one training run each, so its winner may be a lucky seed. :func:`confirm`
takes the top-K distinct COMPLETE trials of a study (ranked by the study's first objective; trials that
reused an earlier identical candidate count once), retrains each from its stored ModelSpec and training
config with S new seeds (never the study's own), and ranks them by the mean of the metric over the new
seeds, with a 95 % Student-t confidence interval. It writes ``confirm.csv`` (one row per retraining) and
``confirm.md`` (the ranked table) into ``out`` (default ``runs/<study>/confirm/``).

Reads the study through :mod:`cellsearch.search` (``load_config`` / ``open_study`` / ``ranked``); the
trials' user attributes it needs are ``spec`` (ModelSpec JSON) and ``train`` (the TrainConfig dict).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..jobs import Journal, run_journaled
from .report import markdown_table, write_csv
from .stats import CI, mean_ci

__all__ = ["Candidate", "Confirmation", "confirm", "retrain", "SEED_BASE"]

#: new seeds start here (or after the largest seed the study used, if that is larger)
SEED_BASE = 1000
_CONSTANT = ("params", "speed")


@dataclass(frozen=True)
class RetrainJob:
    """One retraining: a trial's spec and training config with a new seed."""

    trial: int
    spec: str
    task: Mapping[str, Any]
    train: Mapping[str, Any]
    seed: int
    metric: str


@dataclass
class Candidate:
    """One confirmed trial: its study value and the metric over the new seeds."""

    trial: int
    summary: str
    digest: str
    study_value: float
    study_rank: int
    n_params: int | None
    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    ci: CI | None = None


@dataclass
class Confirmation:
    """The ranked candidates (best mean first) and where the files went."""

    study: str
    metric: str
    direction: str
    seeds: list[int]
    ranked: list[Candidate]
    files: list[Path]

    @property
    def separable(self) -> bool | None:
        """Whether the winner's 95 % CI is disjoint from the runner-up's (None with fewer than two)."""
        if len(self.ranked) < 2:
            return None
        a, b = self.ranked[0].ci, self.ranked[1].ci
        if a is None or b is None or not (math.isfinite(a.half) and math.isfinite(b.half)):
            return None
        return a.high < b.low or b.high < a.low


def retrain(job: RetrainJob) -> tuple[float, float]:
    """(metric value of the final model, seconds) of one retraining (:func:`cellsearch.jobs.run_job`); NaN
    when training diverged."""
    from ..jobs import Job, run_job

    record = run_job(Job(job.spec, dict(job.task), dict(job.train), job.seed))
    if record.diverged:
        return math.nan, math.nan
    return record.value(job.metric), record.seconds


def _distinct_top(trials: Sequence[Any], top: int) -> list[tuple[int, Any]]:
    """The first ``top`` COMPLETE trials with distinct candidates (by stored key / spec), with their rank."""
    out, seen = [], set()
    for rank, trial in enumerate(trials, start=1):
        if trial.state.name != "COMPLETE" or "spec" not in trial.user_attrs:
            continue
        key = trial.user_attrs.get("key") or (trial.user_attrs["spec"], str(trial.user_attrs.get("train")))
        if key in seen:
            continue
        seen.add(key)
        out.append((rank, trial))
        if len(out) == top:
            break
    return out


def confirm(study: str | Path | Any, top: int = 3, seeds: int = 3, metric: str | None = None,
            storage: str | None = None, first_seed: int | None = None, workers: int = 1,
            out: str | Path | None = None, on_done: Callable[[tuple[float, float]], None] | None = None,
            fresh: bool = False) -> Confirmation:
    """Retrain the top-``top`` trials of ``study`` (a study file or StudyConfig) with ``seeds`` new seeds.

    ``metric`` defaults to the study's first objective (it must depend on the seed: not ``params`` or
    ``speed``); ``storage`` overrides the study's storage URL; ``first_seed`` the first new seed (default
    :data:`SEED_BASE`, moved past the largest seed the trials used). Resumable: each finished retraining is
    journaled at once (``<out>/.resume/``, removed when the report is written), so the same command after a
    crash or kill retrains only what was not finished; ``fresh`` discards that journal.
    """
    from ..search import load_config
    from ..search.results import ranked
    from ..search.studies import open_study

    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds must be >= 1, got top={top}, seeds={seeds}")
    config = load_config(study, storage=storage)
    objective = config.objective[0]
    metric = metric or objective.metric
    direction = objective.direction if metric == objective.metric else _direction(metric)
    if metric in _CONSTANT:
        raise UserError(f"metric {metric!r} does not depend on the seed; pass --metric (e.g. val_loss)")
    optuna_study = open_study(config, create=False)
    picked = _distinct_top(ranked(optuna_study, config), top)
    if not picked:
        raise UserError(f"study {config.name!r} has no completed trial to confirm yet")
    used = [int((t.user_attrs.get("train") or {}).get("seed", 0)) for _, t in picked]
    start = first_seed if first_seed is not None else max(SEED_BASE, max(used) + 1)
    new_seeds = list(range(start, start + seeds))
    clash = sorted(set(new_seeds) & set(used))
    if clash:
        raise UserError(f"--first-seed: seed {clash[0]} is one the study already trained with; pick another")
    task = config.task.to_dict()
    candidates, jobs = [], []
    for rank, trial in picked:
        attrs = trial.user_attrs
        candidates.append(Candidate(trial.number, str(attrs.get("summary", "")), str(attrs.get("digest", "")),
                                    float(trial.values[0]), rank, attrs.get("n_params")))
        train = {**(attrs.get("train") or config.train_dict())}
        jobs += [RetrainJob(trial.number, attrs["spec"], task, train, s, metric) for s in new_seeds]
    folder = Path(out) if out is not None else config.directory / "confirm"
    if fresh:
        shutil.rmtree(folder / ".resume", ignore_errors=True)
    journal = Journal(folder / ".resume" / "journal.jsonl")
    results, _ = run_journaled(retrain, jobs, journal, workers, on_done, encode=list, decode=tuple)
    by_trial = {c.trial: c for c in candidates}
    for job, (value, seconds) in zip(jobs, results):
        c = by_trial[job.trial]
        c.values.append(value)
        c.seeds.append(job.seed)
        c.seconds.append(seconds)
    for c in candidates:
        c.ci = mean_ci(c.values)
    order = sorted(candidates, key=lambda c: _rank_key(c, direction))
    result = Confirmation(config.name, metric, direction, new_seeds, order, [])
    result.files = _write(folder, result)
    shutil.rmtree(folder / ".resume", ignore_errors=True)
    return result


def _rank_key(c: Candidate, direction: str) -> tuple[bool, float]:
    """Best mean first; candidates without a finite mean (every seed diverged) last."""
    mean = c.ci.mean if c.ci is not None else math.nan
    if not math.isfinite(mean):
        return True, 0.0
    return False, -mean if direction == "maximize" else mean


def _direction(metric: str) -> str:
    name = metric.split("_", 1)[-1]
    return "maximize" if name in ("accuracy", "acc") else "minimize"


def _write(folder: Path, result: Confirmation) -> list[Path]:
    rows = [{"rank": i, "trial": c.trial, "study_rank": c.study_rank, "summary": c.summary, "digest": c.digest,
             "seed": s, result.metric: v, "seconds": sec}
            for i, c in enumerate(result.ranked, start=1) for s, v, sec in zip(c.seeds, c.values, c.seconds)]
    csv_path = write_csv(folder / "confirm.csv", rows)
    md_path = folder / "confirm.md"
    md_path.write_text("\n".join([
        f"# Confirmation of study `{result.study}`", "",
        f"Top {len(result.ranked)} trials retrained with new seeds {', '.join(map(str, result.seeds))}; ranked by "
        f"the mean {result.metric} ({result.direction}) ± the half-width of its 95 % Student-t CI.", "",
        *markdown_table(*table(result)), "", verdict(result), ""]))
    return [csv_path, md_path]


def table(result: Confirmation) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the ranked table."""
    header = ["rank", "trial", "study rank", "candidate", "params", f"study {result.metric}",
              f"mean {result.metric} ± 95 % CI", "per seed"]
    rows = [[i, c.trial, c.study_rank, c.summary or c.digest, c.n_params if c.n_params is not None else "—",
             f"{c.study_value:.4g}", c.ci.format(4) if c.ci else "—",
             ", ".join("diverged" if math.isnan(v) else f"{v:.4g}" for v in c.values)]
            for i, c in enumerate(result.ranked, start=1)]
    return header, rows


def verdict(result: Confirmation) -> str:
    """One sentence: is the winner separable from the runner-up, and did the order change?"""
    if len(result.ranked) < 2:
        return "Only one candidate: nothing to compare."
    first, second = result.ranked[0], result.ranked[1]
    ranks = [c.study_rank for c in result.ranked]
    moved = ranks != sorted(ranks)
    order = "The order differs from the study's." if moved else "The order is the study's."
    if result.separable:
        return f"Trial {first.trial} beats trial {second.trial}: their 95 % CIs do not overlap. {order}"
    return (f"Trial {first.trial} has the best mean, but its 95 % CI overlaps trial {second.trial}'s: the "
            f"difference is not resolved with {len(result.seeds)} seeds. {order}")
