"""Jobs of a reproduction: one (experiment, variant, seed) training run each, run in 1..N processes.

A :class:`Job` is plain data (picklable, YAML-able pieces only) naming a card, its overrides and sizes;
:func:`run_job` resolves it into a ModelSpec and trains it with the one job runner
(:func:`cellsearch.jobs.run_job`) and returns a :class:`Record` — the final and best
metrics, the test metrics of the final model, the parameter count, the wall time and the per-evaluation
history — or a record marked ``diverged`` when the loss became NaN/inf. :func:`run_jobs` runs jobs in
this process (``workers=1``) or in a pool of spawned processes, one torch thread each
(:func:`cellsearch.jobs.run_parallel`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..jobs import cell_spec, variant_spec

__all__ = ["Job", "Record", "run_job", "run_jobs", "model_spec_for", "cell_spec"]

@dataclass(frozen=True)
class Job:
    """One training run: a cell (with per-role option overrides and a depth) on a task with a seed.

    ``model`` holds ``hidden_size`` or ``param_budget``; ``train`` is a :class:`~cellsearch.train.TrainConfig`
    mapping (``seed`` is set from ``seed``); ``spec`` replaces primitives of the card's CellSpec (e.g.
    ``{"init": "orthogonal"}``), ``options`` merges per-role options into it, ``depth`` changes fields of the
    card's DepthSpec.
    """

    experiment: str
    variant: str
    cell: str
    task: Mapping[str, Any]
    model: Mapping[str, Any]
    train: Mapping[str, Any]
    seed: int
    layers: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    depth: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Record:
    """What one job produced (``history``: one dict per evaluation: step, train_loss, val_loss, val_metric)."""

    experiment: str
    variant: str
    cell: str
    layers: int
    seed: int
    metric: str
    direction: str
    hidden_size: int = 0
    n_params: int = 0
    steps: int = 0
    seconds: float = 0.0
    diverged: bool = False
    error: str = ""
    val_loss: float = math.nan
    val_metric: float = math.nan
    best_val_metric: float = math.nan
    test_loss: float = math.nan
    test_metric: float = math.nan
    baseline: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The flat CSV row (no history)."""
        out = asdict(self)
        out.pop("history")
        return out


def model_spec_for(job: Job) -> tuple[Any, Any]:
    """(ModelSpec, Task) of a job: its variant's cell and depth (:func:`cellsearch.jobs.variant_spec`, as a
    study's grid resolves them), the sizes."""
    from ..tasks import make_task
    from ..train import resolve_model_spec

    spec, depth = variant_spec(job.cell, job.layers, job.spec, job.options, job.depth)
    task = make_task(dict(job.task))
    model = dict(job.model)
    ms = resolve_model_spec(spec, depth, task, hidden_size=model.get("hidden_size"),
                            param_budget=model.get("param_budget"))
    return ms, task


def run_job(job: Job, checkpoint: str | None = None) -> Record:
    """Train one job with the one job runner (:func:`cellsearch.jobs.run_job`) and return its
    :class:`Record` (divergence is recorded, not raised); ``checkpoint``: a file to checkpoint to after
    every evaluation and to resume from."""
    from .. import jobs

    ms, task = model_spec_for(job)
    record = Record(job.experiment, job.variant, job.cell, job.layers, job.seed, task.metric,
                    task.metric_direction, hidden_size=ms.hidden_size, baseline=_baseline(task))
    train = {**dict(job.train), "progress": False, "test": True}
    done = jobs.run_job(jobs.Job(ms, task, train, job.seed, checkpoint=checkpoint))
    record.seconds = done.seconds
    if done.diverged:
        record.diverged, record.error = True, done.error
        return record
    metric = task.metric
    record.n_params = done.n_params
    record.steps = int(done.final["step"])
    record.val_loss, record.val_metric = done.final["val_loss"], done.final[f"val_{metric}"]
    record.best_val_metric = done.best[f"val_{metric}"]
    record.test_loss = done.final.get("test_loss", math.nan)
    record.test_metric = done.final.get(f"test_{metric}", math.nan)
    record.history = [{"step": h["step"], "train_loss": h["train_loss"], "val_loss": h["val_loss"],
                       "val_metric": h[f"val_{metric}"]} for h in done.history]
    return record


def _baseline(task: Any) -> float | None:
    try:
        value = task.baseline
    except Exception:  # a task whose baseline needs data it cannot load reports none
        return None
    return None if value is None else float(value)


def _run_resumable(item: tuple[Job, str | None]) -> Record:
    return run_job(*item)


def run_jobs(jobs: Sequence[Job], workers: int = 1, on_done: Callable[[Record], None] | None = None,
             work: str | Path | None = None) -> tuple[list[Record], int]:
    """Run ``jobs`` in this process or in ``workers`` spawned processes; returns the records in the order of
    ``jobs`` and how many came from an earlier, interrupted run.

    A pool starts the deepest models first (a cheap proxy of the longest jobs), so that the last jobs
    to finish are short ones. ``on_done(record)`` is called as each job finishes (in completion order).
    ``work``: a folder for resuming — each finished record goes to its journal (``journal.jsonl``) at once,
    and each job checkpoints every evaluation (``checkpoints/<job digest>.pt``), so a rerun after a crash or
    kill takes the finished records and resumes the interrupted jobs from their last evaluation.
    """
    from ..jobs import Journal, digest, run_journaled

    folder = Path(work) if work is not None else None
    journal = Journal(folder / "journal.jsonl") if folder is not None else None
    keys = {id(job): digest(job) for job in jobs}
    checkpoint = {k: folder / "checkpoints" / f"{k}.pt" for k in keys.values()} if folder is not None else {}
    items = [(job, str(checkpoint[keys[id(job)]]) if folder is not None else None) for job in jobs]

    def finished(key: str) -> None:  # journaled: its checkpoint is no longer needed
        if key in checkpoint:
            checkpoint[key].unlink(missing_ok=True)

    return run_journaled(_run_resumable, items, journal, workers, on_done, priority=lambda item: -item[0].layers,
                         encode=asdict, decode=lambda d: Record(**d), key=lambda item: keys[id(item[0])],
                         finished=finished)
