"""The one training loop used by the CLI, the Optuna and Ray backends and the reproductions.

``train(model_spec, task, config, callback)`` builds the model a :class:`~cellsearch.spec.ModelSpec`
describes (input/output sizes from the task), trains it with Adam / RMSprop / SGD (per-parameter-group
learning rates from :func:`cellsearch.api.parameter_groups`, gradient-norm clipping), evaluates on the
validation split after every epoch and reports the epoch's metrics to ``callback`` (a search prunes by
raising from it; the exception propagates). A NaN/inf loss stops the run with :class:`DivergenceError`.

Budget: ``epochs`` passes of ``steps_per_epoch`` batches (default: the whole training loader), or, when
``steps`` is set, that many optimizer steps in total (evaluated every ``steps_per_epoch`` steps and at the
end). Batches continue across epochs: an epoch capped by ``steps_per_epoch`` resumes the training stream
where the previous one stopped (a new pass reshuffles). Stateful tasks (truncated BPTT) carry the
recurrent state from batch to batch, detached, and reset it at the start of each pass.

Deterministic on CPU given ``seed``: torch, numpy and Python's ``random`` are seeded, and the task's
loaders are deterministic given the seed.
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .allocator import tune as tune_allocator
from .api import count_parameters, parameter_groups
from .config.train import OPTIMIZERS, TrainConfig
from .model import build_model
from .spec import CellSpec, DepthSpec, ModelSpec, SpecError
from .tasks.base import Task, detach_state, make_task, to_device

__all__ = ["TrainConfig", "TrainResult", "DivergenceError", "train", "resolve_model_spec",
           "hidden_size_for_budget", "resolve_device", "make_optimizer", "OPTIMIZERS"]


@dataclass
class TrainResult:
    """What a run produced: per-epoch history, final and best epochs, the trained model and its spec.

    Each history entry: ``epoch`` (1-based), ``step`` (optimizer steps so far), ``train_loss`` (mean
    over the epoch), ``val_loss``, ``val_<metric>``, ``seconds`` (elapsed since the run started).
    ``best`` is the entry with the best ``val_<metric>`` (ties: the earliest); ``final`` the last entry
    (plus ``test_*`` when the config asks for it); ``seconds`` the wall time of the whole call.
    """

    history: list[dict[str, Any]]
    final: dict[str, Any]
    best: dict[str, Any]
    n_params: int
    model: nn.Module
    model_spec: ModelSpec
    seconds: float
    metric: str = "loss"
    direction: str = "minimize"
    extra: dict[str, Any] = field(default_factory=dict)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite; carries the step and the last finite loss."""

    def __init__(self, step: int, last_finite_loss: float | None, value: float = math.nan) -> None:
        self.step, self.last_finite_loss, self.value = step, last_finite_loss, value
        last = "none (the first step diverged)" if last_finite_loss is None else f"{last_finite_loss:.6g}"
        super().__init__(f"training diverged at step {step}: loss became {value}; last finite loss {last}")


# --------------------------------------------------------------------------------------------------
# sizes
def _count(cell: CellSpec, depth: DepthSpec, n: int, input_size: int, output_size: int) -> int:
    spec = ModelSpec(cell=cell, depth=depth, hidden_size=n, input_size=input_size, output_size=output_size)
    with torch.random.fork_rng(devices=[]):
        return count_parameters(build_model(spec))


def hidden_size_for_budget(cell: CellSpec, depth: DepthSpec, input_size: int, output_size: int,
                           budget: int) -> int:
    """The hidden size whose full model (rnn + linear head) has the parameter count closest to ``budget``.

    The count is a quadratic in the hidden size n (fitted exactly from four small builds and checked);
    cells whose count is not quadratic fall back to bisection over real builds. With n ≳ 50 the closest n
    is within 2 % of the budget; tiny budgets may not be reachable that closely.
    """
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise SpecError("model.param_budget", budget, "an integer >= 1")
    points = [n for n in range(4, 10) if n != input_size][:4]
    counts = [_count(cell, depth, n, input_size, output_size) for n in points]
    coef = np.polyfit(points, counts, 2)
    if np.allclose(np.polyval(coef, points), counts, atol=1e-3):
        best = _solve_quadratic(coef, budget)
        candidates = {max(1, best + d) for d in (-1, 0, 1)}
        exact = {n: (_count(cell, depth, n, input_size, output_size) if n == input_size
                     else round(float(np.polyval(coef, n)))) for n in candidates}
    else:
        exact = _bisect(lambda n: _count(cell, depth, n, input_size, output_size), budget)
    return min(sorted(exact), key=lambda n: abs(exact[n] - budget))


def _solve_quadratic(coef: np.ndarray, budget: int) -> int:
    a, b, c = (float(v) for v in coef)
    if abs(a) < 1e-9:
        return max(1, round((budget - c) / b)) if b > 0 else 1
    disc = b * b - 4 * a * (c - budget)
    return max(1, round((-b + math.sqrt(max(disc, 0.0))) / (2 * a)))


def _bisect(count: Callable[[int], int], budget: int) -> dict[int, int]:
    lo, hi = 1, 2
    while count(hi) < budget and hi < 1 << 16:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < budget else (lo, mid)
    return {lo: count(lo), hi: count(hi)}


def resolve_model_spec(cell: CellSpec, depth: DepthSpec, task: Task | Mapping[str, Any] | str,
                       hidden_size: int | None = None, param_budget: int | None = None) -> ModelSpec:
    """A complete ModelSpec for ``task``: its input/output sizes and the hidden size.

    ``param_budget`` (when set, it takes precedence over ``hidden_size``) picks the hidden size whose
    full model has N ± 2 % parameters; otherwise ``hidden_size`` (default 64).
    """
    task = make_task(task)
    if param_budget is not None:
        n = hidden_size_for_budget(cell, depth, task.input_size, task.output_size, param_budget)
    else:
        n = 64 if hidden_size is None else hidden_size
    from .cells import for_task  # options a primitive takes from the task (chrono's t_max ← seq_len)

    return ModelSpec(cell=for_task(cell, task), depth=depth, hidden_size=n, input_size=task.input_size,
                     output_size=task.output_size)


def _complete_spec(spec: ModelSpec | Mapping[str, Any], task: Task, config: TrainConfig) -> ModelSpec:
    if isinstance(spec, Mapping):
        spec = ModelSpec.from_dict(spec)
    if not isinstance(spec, ModelSpec):
        raise SpecError("model", spec, "a ModelSpec or a mapping")
    for name in ("input_size", "output_size"):
        given, needed = getattr(spec, name), getattr(task, name)
        if given is not None and given != needed:
            raise SpecError(f"model.{name}", given, f"{needed} (what task {task.name!r} needs) or null")
    from .cells import for_task  # options a primitive takes from the task (chrono's t_max ← seq_len)

    spec = spec.replace(cell=for_task(spec.cell, task), input_size=task.input_size, output_size=task.output_size)
    if config.dropout > 0:
        spec = spec.replace(depth=spec.depth.replace(dropout=config.dropout))
    return spec


# --------------------------------------------------------------------------------------------------
# pieces of the loop
def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; any other name as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over :func:`~cellsearch.api.parameter_groups` (per-group lr scales)."""
    groups = parameter_groups(model, config.lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


_THREADS_LOCK = threading.Lock()
_THREADS_HELD = [0, 0]  # runs inside _threads now, torch's thread count before the first of them


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's thread count ``n`` for a run (None: unchanged). Runs in threads of one process (Optuna's
    ``n_jobs``) share torch's count: each sets it, and only the last one out restores the count from before
    the first one came in (a run ending early must not change the threads of one still running)."""
    if n is None:
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_HELD[0] == 0:
            _THREADS_HELD[1] = torch.get_num_threads()
        _THREADS_HELD[0] += 1
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_HELD[0] -= 1
            if _THREADS_HELD[0] == 0:
                torch.set_num_threads(_THREADS_HELD[1])


def _stream(loader: Any) -> Iterator[tuple[bool, Any]]:
    """Batches forever: ``(starts_a_pass, batch)``; each pass is one ``iter()`` of the loader."""
    passes = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(passes)
        empty = True
        for i, batch in enumerate(loader):
            empty = False
            yield i == 0, batch
        if empty:
            raise SpecError("task", loader, "a task whose training loader yields at least one batch")
        passes += 1


class _Progress:
    """A rich progress bar over optimizer steps (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                                "{task.total} steps"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, info="")

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=f"loss {loss:.4g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@dataclass
class _Run:
    """The state of one training run."""

    model: nn.Module
    task: Task
    config: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    batches: Iterator[tuple[bool, Any]]
    progress: _Progress
    step: int = 0
    last_finite: float | None = None
    state: Any = None

    def train_step(self, starts_pass: bool, batch: Any) -> float:
        x, y = to_device(batch[0], self.device), to_device(batch[1], self.device)
        carry = None if (starts_pass or not self.task.stateful) else detach_state(self.state)
        out, self.state = self.model(x, carry)
        loss = self.task.loss(out, y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(self.step + 1, self.last_finite, value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        self.step += 1
        self.last_finite = value
        self.progress.advance(value)
        return value

    def train_epoch(self, n_steps: int) -> float:
        self.model.train()
        losses = [self.train_step(*next(self.batches)) for _ in range(n_steps)]
        return sum(losses) / max(len(losses), 1)

    def evaluate(self, loader: Any, prefix: str) -> dict[str, float]:
        values = self.task.evaluate(self.model, loader, self.device, self.config.eval_batches)
        if not math.isfinite(values["loss"]):
            raise DivergenceError(self.step, self.last_finite, values["loss"])
        return {f"{prefix}_{k}": v for k, v in values.items()}


def _schedule(config: TrainConfig, loader_len: int | None) -> list[int]:
    """Optimizer steps per epoch."""
    per_epoch = config.steps_per_epoch or loader_len
    if per_epoch is None:
        raise SpecError("train.steps_per_epoch", None, "a number: the task's training loader has no length")
    per_epoch = max(1, per_epoch)
    if config.steps is None:
        return [per_epoch] * config.epochs
    full, rest = divmod(config.steps, per_epoch)
    return [per_epoch] * full + ([rest] if rest else [])


def _is_better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


# --------------------------------------------------------------------------------------------------
def train(model_spec: ModelSpec, task: Task | Mapping[str, Any] | str,
          config: TrainConfig | Mapping[str, Any] | None = None,
          callback: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train the model ``model_spec`` describes on ``task``; see the module docstring.

    ``callback(epoch, metrics)`` runs after every evaluation with that epoch's history entry; whatever
    it raises (e.g. ``optuna.TrialPruned``) propagates. Raises :class:`DivergenceError` on a NaN/inf loss.
    """
    start = time.perf_counter()
    tune_allocator()    # work buffers reused, not re-mapped (cellsearch.allocator; CELLSEARCH_ALLOCATOR=default: off)
    task, config = make_task(task), TrainConfig.coerce(config)
    spec = _complete_spec(model_spec, task, config)
    with _threads(config.threads):
        _seed_everything(config.seed)
        device = resolve_device(config.device)
        model = build_model(spec, task.readout).to(device)
        loaders = task.make_loaders(config.batch_size, config.seed, bptt=config.bptt)
        schedule = _schedule(config, len(loaders.train) if hasattr(loaders.train, "__len__") else None)
        show = config.progress if config.progress is not None else sys.stdout.isatty()
        progress = _Progress(show, sum(schedule), f"{task.name} {spec.cell.update}")
        optimizer = make_optimizer(model, config)
        run = _Run(model, task, config, device, optimizer, _stream(loaders.train), progress)
        try:
            history = _loop(run, schedule, loaders.valid, callback)
            final = dict(history[-1])
            if config.test and loaders.test is not None:
                final.update(run.evaluate(loaders.test, "test"))
        finally:
            progress.close()
    key = f"val_{task.metric}"
    best = history[0]
    for entry in history[1:]:
        best = entry if _is_better(entry[key], best[key], task.metric_direction) else best
    return TrainResult(history, final, dict(best), count_parameters(model), model, spec,
                       time.perf_counter() - start, task.metric, task.metric_direction)


def _loop(run: _Run, schedule: list[int], valid: Any,
          callback: Callable[[int, dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    start, history = time.perf_counter(), []
    for epoch, n_steps in enumerate(schedule, start=1):
        train_loss = run.train_epoch(n_steps)
        entry = {"epoch": epoch, "step": run.step, "train_loss": train_loss, **run.evaluate(valid, "val")}
        entry["seconds"] = time.perf_counter() - start
        history.append(entry)
        if callback is not None:
            callback(epoch, dict(entry))
    return history
