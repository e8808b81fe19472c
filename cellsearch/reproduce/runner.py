"""Jobs of a reproduction: one (experiment, variant, seed) training run each, run in 1..N processes.

A :class:`Job` is plain data (picklable, YAML-able pieces only); :func:`run_job` trains it with the one
training loop (:func:`cellsearch.train.train`) and returns a :class:`Record` — the final and best
metrics, the test metrics of the final model, the parameter count, the wall time and the per-evaluation
history — or a record marked ``diverged`` when the loss became NaN/inf. :func:`run_jobs` runs jobs in
this process (``workers=1``) or in a pool of spawned processes, one torch thread each.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

__all__ = ["Job", "Record", "run_job", "run_jobs", "run_parallel", "model_spec_for", "cell_spec"]

T = TypeVar("T")
R = TypeVar("R")


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


def cell_spec(cell: str, spec: Mapping[str, str] | None = None,
              options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Any, Any]:
    """(CellSpec, DepthSpec) of a card with primitives replaced (``spec``) and role options merged in."""
    from ..api import resolve

    cell_spec, depth = resolve(cell, **dict(spec or {}))
    if options:
        merged = {role: cell_spec.options_for(role) for role in cell_spec.options}
        for role, extra in options.items():
            merged[role] = {**merged.get(role, {}), **dict(extra)}
        cell_spec = cell_spec.replace(options=merged)
    return cell_spec, depth


def model_spec_for(job: Job) -> tuple[Any, Any]:
    """(ModelSpec, Task) of a job: the card's spec with the overrides, the depth, the sizes."""
    from ..tasks import make_task
    from ..train import resolve_model_spec

    spec, depth = cell_spec(job.cell, job.spec, job.options)
    depth = depth.replace(layers=job.layers, **dict(job.depth))
    task = make_task(dict(job.task))
    model = dict(job.model)
    ms = resolve_model_spec(spec, depth, task, hidden_size=model.get("hidden_size"),
                            param_budget=model.get("param_budget"))
    return ms, task


def run_job(job: Job) -> Record:
    """Train one job and return its :class:`Record` (divergence is recorded, not raised)."""
    from ..train import DivergenceError, TrainConfig, train

    ms, task = model_spec_for(job)
    config = TrainConfig.from_dict({**dict(job.train), "seed": job.seed, "progress": False, "test": True})
    record = Record(job.experiment, job.variant, job.cell, job.layers, job.seed, task.metric,
                    task.metric_direction, hidden_size=ms.hidden_size, baseline=_baseline(task))
    start = time.perf_counter()
    try:
        result = train(ms, task, config)
    except DivergenceError as exc:
        record.diverged, record.error, record.seconds = True, str(exc), time.perf_counter() - start
        return record
    metric = task.metric
    record.n_params, record.seconds = result.n_params, result.seconds
    record.steps = int(result.final["step"])
    record.val_loss, record.val_metric = result.final["val_loss"], result.final[f"val_{metric}"]
    record.best_val_metric = result.best[f"val_{metric}"]
    record.test_loss = result.final.get("test_loss", math.nan)
    record.test_metric = result.final.get(f"test_{metric}", math.nan)
    record.history = [{"step": h["step"], "train_loss": h["train_loss"], "val_loss": h["val_loss"],
                       "val_metric": h[f"val_{metric}"]} for h in result.history]
    return record


def _baseline(task: Any) -> float | None:
    try:
        value = task.baseline
    except Exception:  # a task whose baseline needs data it cannot load reports none
        return None
    return None if value is None else float(value)


def _worker_init() -> None:
    """One intra-op thread per worker process (read by torch when the first job imports it)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def run_jobs(jobs: Sequence[Job], workers: int = 1,
             on_done: Callable[[Record], None] | None = None) -> list[Record]:
    """Run ``jobs`` in this process or in ``workers`` spawned processes; records in the order of ``jobs``.

    A pool starts the deepest models first (a cheap proxy of the longest jobs), so that the last jobs
    to finish are short ones. ``on_done(record)`` is called as each job finishes (in completion order).
    """
    return run_parallel(run_job, jobs, workers, on_done, priority=lambda job: -job.layers)


def run_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int = 1,
                 on_done: Callable[[R], None] | None = None,
                 priority: Callable[[T], float] | None = None) -> list[R]:
    """``[fn(item) for item in items]``, in this process (``workers=1``) or a pool of spawned processes
    (one torch thread each; ``fn`` must be importable). Items are submitted in ``priority`` order
    (smallest first); results come back in the order of ``items``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(items) <= 1:
        out = []
        for item in items:
            out.append(fn(item))
            if on_done is not None:
                on_done(out[-1])
        return out
    import multiprocessing

    results: dict[int, R] = {}
    order = sorted(range(len(items)), key=lambda i: priority(items[i]) if priority else 0)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx,
                             initializer=_worker_init) as pool:
        pending = {pool.submit(fn, items[i]): i for i in order}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                results[i] = future.result()
                if on_done is not None:
                    on_done(results[i])
    return [results[i] for i in range(len(items))]
