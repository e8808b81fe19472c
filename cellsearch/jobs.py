"""One runner of training jobs: (model spec, task, training config, seed) → :class:`Record`.

Everything in cellsearch that trains a model goes through :func:`run_job`: a search's trials (both backends),
a study's cells × seeds, the reproductions (:mod:`cellsearch.reproduce.runner` builds its jobs from cards),
``cellsearch confirm``'s retrainings and the retraining of a trial whose weights were not saved.
:func:`run_jobs` runs many in this process or in a pool of spawned processes (one torch thread each).

A :class:`Job` is plain data (picklable: a ModelSpec or its JSON, a task mapping, a training mapping, a
seed). A training that diverges (NaN/inf loss) is a record marked ``diverged`` with the reason, not an
exception; anything else a training raises (a pruning signal from ``callback``, a real error) propagates.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Job", "Record", "Journal", "run_job", "run_jobs", "run_parallel", "run_journaled", "digest",
           "drop_torn_tail", "cell_spec", "variant_spec"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Job:
    """One training run. ``spec``: a :class:`~cellsearch.spec.ModelSpec` or its JSON; ``task``: a task
    name or mapping (or a built task, in this process); ``train``: a training mapping or TrainConfig whose
    ``seed`` is replaced by ``seed`` (None: keep it); ``label``: what the caller needs to find it again."""

    spec: Any
    task: Any
    train: Any
    seed: int | None = None
    label: Mapping[str, Any] = field(default_factory=dict)
    #: a checkpoint file (:class:`cellsearch.train.Checkpoint`): written every epoch, resumed from
    checkpoint: str | None = None


@dataclass
class Record:
    """What a job produced: the trainer's ``final`` / ``best`` entries and ``history``, sizes and time;
    ``diverged`` with the trainer's message in ``error`` when the loss became NaN/inf. ``model`` (the
    trained module) only when asked for and only in the process that trained it."""

    label: Mapping[str, Any]
    n_params: int = 0
    hidden_size: int = 0
    seconds: float = 0.0
    diverged: bool = False
    error: str = ""
    final: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    #: the epoch a checkpoint resumed the training after (0: trained from the start)
    resumed_from_epoch: int = 0

    def value(self, metric: str) -> float:
        """A metric of the final evaluation (``params``: the parameter count); NaN when it diverged."""
        if self.diverged:
            return float("nan")
        if metric == "params":
            return float(self.n_params)
        if metric not in self.final:
            from .errors import UserError

            raise UserError(f"metric {metric!r} is not among the trainer's metrics {sorted(self.final)}")
        return float(self.final[metric])


def run_job(job: Job, callback: Callable[[int, dict[str, Any]], None] | None = None,
            keep_model: bool = False) -> Record:
    """Train ``job`` (``callback(epoch, metrics)`` after every evaluation) and return its :class:`Record`."""
    import time

    from .spec import ModelSpec
    from .train import DivergenceError, TrainConfig, train

    spec = ModelSpec.from_json(job.spec) if isinstance(job.spec, str) else job.spec
    config = TrainConfig.coerce(job.train)
    overrides = {"progress": False} if config.progress is None else {}
    if job.seed is not None:
        overrides["seed"] = job.seed
    if overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    record = Record(dict(job.label), hidden_size=spec.hidden_size)
    start = time.perf_counter()
    try:
        result = train(spec, job.task, config, callback=callback, checkpoint=job.checkpoint)
    except DivergenceError as exc:
        record.diverged, record.error, record.seconds = True, str(exc), time.perf_counter() - start
        return record
    record.n_params, record.seconds = result.n_params, result.seconds
    record.hidden_size = result.model_spec.hidden_size
    record.final, record.best, record.history = dict(result.final), dict(result.best), list(result.history)
    record.model = result.model if keep_model else None
    record.resumed_from_epoch = int(result.extra.get("resumed_from_epoch", 0))
    return record


def cell_spec(cell: str, spec: Mapping[str, str] | None = None,
              options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Any, Any]:
    """(CellSpec, DepthSpec) of a card with primitives replaced (``spec``) and role options merged in."""
    from .api import resolve

    cell_spec, depth = resolve(cell, **dict(spec or {}))
    if options:
        merged = {role: cell_spec.options_for(role) for role in cell_spec.options}
        for role, extra in options.items():
            merged[role] = {**merged.get(role, {}), **dict(extra)}
        cell_spec = cell_spec.replace(options=merged)
    return cell_spec, depth


def variant_spec(cell: str, layers: int, spec: Mapping[str, str] | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 depth: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(CellSpec, DepthSpec) of a grid's variant (:class:`~cellsearch.config.variants.Variant`): the card's
    cell with its ``spec`` and ``options`` overrides, the card's depth at ``layers`` with ``depth``'s fields.
    A study's grid (:class:`~cellsearch.search.space.CellListSpace`) and a reproduction's jobs
    (:func:`cellsearch.reproduce.runner.model_spec_for`) both resolve their cells here."""
    cell_part, depth_part = cell_spec(cell, spec, options)
    return cell_part, depth_part.replace(layers=layers, **dict(depth or {}))


def _worker_init() -> None:
    """One intra-op thread per worker process (read by torch when the first job imports it)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def run_jobs(jobs: Sequence[Job], workers: int = 1, on_done: Callable[[Record], None] | None = None,
             priority: Callable[[Job], float] | None = None) -> list[Record]:
    """:func:`run_job` of every job, in this process or in ``workers`` spawned processes; records in the
    order of ``jobs`` (``on_done(record)`` as each finishes; ``priority``: smallest submitted first)."""
    return run_parallel(run_job, jobs, workers, on_done, priority)


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


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash or kill left without its newline (every whole line ends in one), so the
    file holds whole lines only and the next one appended starts on its own line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class Journal:
    """Results of finished jobs, one JSON line each (``{"key": ..., "result": ...}``), appended and fsynced as
    each job finishes, so that a run killed or crashed half-way takes them on its rerun instead of training
    them again. A last line torn by a kill is ignored. ``done`` maps a key to its result."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: dict[str, Any] = {}
        drop_torn_tail(self.path)  # a line a kill cut short: that job runs again
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                entry = json.loads(line)
                self.done[entry["key"]] = entry["result"]

    def add(self, key: str, result: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "result": result}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = result


def digest(value: Any) -> str:
    """A job's identity: sha256 of the canonical JSON of ``value`` (a dataclass, mappings, sequences)."""
    from .config.yamlio import plain

    data = asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
    return hashlib.sha256(json.dumps(plain(data), sort_keys=True).encode()).hexdigest()[:24]


def _call_keyed(fn: Callable[[T], R], pair: tuple[str, T]) -> tuple[str, R]:
    return pair[0], fn(pair[1])


def run_journaled(fn: Callable[[T], R], items: Sequence[T], journal: Journal | None, workers: int = 1,
                  on_done: Callable[[R], None] | None = None, priority: Callable[[T], float] | None = None,
                  encode: Callable[[R], Any] = lambda r: r, decode: Callable[[Any], R] = lambda d: d,
                  key: Callable[[T], str] = digest,
                  finished: Callable[[str], None] | None = None) -> tuple[list[R], int]:
    """:func:`run_parallel` of the items whose ``key`` (default :func:`digest`) ``journal`` does not hold
    yet, each result journaled (``encode``) as it finishes; the others are read back (``decode``). Returns
    the results in the order of ``items`` and how many came from the journal. ``finished(key)`` after each
    is journaled."""
    keys = [key(item) for item in items]
    done = {k: decode(journal.done[k]) for k in keys if journal is not None and k in journal.done}
    todo = [(k, item) for k, item in zip(keys, items) if k not in done]

    def record(result: tuple[str, R]) -> None:
        k, value = result
        if journal is not None:
            journal.add(k, encode(value))
        if finished is not None:
            finished(k)
        if on_done is not None:
            on_done(value)

    order = (lambda pair: priority(pair[1])) if priority is not None else None
    ran = dict(run_parallel(partial(_call_keyed, fn), todo, workers, record, order))
    return [done[k] if k in done else ran[k] for k in keys], len(done)
