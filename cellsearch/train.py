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

import contextlib
import hashlib
import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
from .tasks.prefetch import Prefetcher, prefetching

__all__ = ["TrainConfig", "TrainResult", "DivergenceError", "Checkpoint", "train", "resolve_model_spec",
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


#: device types whose per-step losses stay on the device until the epoch ends (reading a CUDA tensor's value
#: waits for the GPU: one sync per step); on the CPU a loss is read at once (divergence stops that step)
DEFERRED_DEVICES = ("cuda", "mps")

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


def _stream(loader: Any, position: list[int]) -> Iterator[tuple[bool, Any]]:
    """Batches forever: ``(starts_a_pass, batch)``; each pass is one ``iter()`` of the loader.

    ``position`` ([pass, next batch index]) is kept current as batches are taken, so a checkpoint can
    store it; a stream started from a stored position skips the batches of that pass already used."""
    passes, skip = position
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(passes)
        empty = True
        for i, batch in enumerate(loader):
            empty = False
            if i < skip:
                continue
            position[0], position[1] = passes, i + 1
            yield i == 0, batch
        if empty:
            raise SpecError("task", loader, "a task whose training loader yields at least one batch")
        passes, skip = passes + 1, 0


def _batches(loader: Any, position: list[int], device: torch.device) -> Iterator[tuple[bool, Any]]:
    """The training stream, made ahead in a thread and pinned for a CUDA copy where that pays
    (:mod:`cellsearch.tasks.prefetch`: GPUs by default, ``CELLSEARCH_PREFETCH``)."""
    if not prefetching(device):
        return _stream(loader, position)
    pin = device.type == "cuda" and torch.cuda.is_available()
    return Prefetcher(lambda own: _stream(loader, own), position, pin=pin)


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
    position: list[int] = field(default_factory=lambda: [0, 0])
    scaler: Any = None

    def __post_init__(self) -> None:
        if self.config.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.config.tf32

    def autocast(self) -> Any:
        """The forward passes' precision (``train.precision``): autocast to bf16 / fp16, or nothing."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    @property
    def deferred(self) -> bool:
        """Losses stay on the device and are read once per epoch (no host sync per step on a GPU)."""
        return self.device.type in DEFERRED_DEVICES

    def train_step(self, starts_pass: bool, batch: Any) -> Any:
        x, y = to_device(batch[0], self.device), to_device(batch[1], self.device)
        carry = None if (starts_pass or not self.task.stateful) else detach_state(self.state)
        with self.autocast():
            out, self.state = self.model(x, carry)
            loss = self.task.loss(out, y)
        if self.deferred:
            value: Any = loss.detach()
        else:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergenceError(self.step + 1, self.last_finite, value)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:     # fp16: a scaled loss; steps with inf/NaN gradients are skipped
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        if not self.deferred:
            self.last_finite = value
            self.progress.advance(value)
        return value

    def train_epoch(self, n_steps: int) -> float:
        self.model.train()
        first = self.step
        losses = [self.train_step(*next(self.batches)) for _ in range(n_steps)]
        if self.deferred:           # one read of the epoch's losses; a NaN / inf names its step
            losses = torch.stack(losses).float().cpu().tolist()
            for i, value in enumerate(losses):
                if not math.isfinite(value):
                    raise DivergenceError(first + i + 1, losses[i - 1] if i else self.last_finite, value)
                self.progress.advance(value)
            self.last_finite = losses[-1] if losses else self.last_finite
        return sum(losses) / max(len(losses), 1)

    def evaluate(self, loader: Any, prefix: str) -> dict[str, float]:
        with self.autocast():
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
          callback: Callable[[int, dict[str, Any]], None] | None = None,
          checkpoint: str | Path | None = None) -> TrainResult:
    """Train the model ``model_spec`` describes on ``task``; see the module docstring.

    ``callback(epoch, metrics)`` runs after every evaluation with that epoch's history entry; whatever
    it raises (e.g. ``optuna.TrialPruned``) propagates. Raises :class:`DivergenceError` on a NaN/inf loss.
    ``checkpoint``: a file the run's state is written to after every epoch, before the epoch is reported
    to ``callback`` (so what a search has recorded is in it; :class:`Checkpoint`); when it
    holds an earlier run of the same spec and config, training resumes after its last epoch (the restored
    epochs are passed to ``callback`` again) and ``extra["resumed_from_epoch"]`` says where.
    """
    start = time.perf_counter()
    tune_allocator()    # work buffers reused, not re-mapped (cellsearch.allocator; CELLSEARCH_ALLOCATOR=default: off)
    task, config = make_task(task), TrainConfig.coerce(config)
    spec = _complete_spec(model_spec, task, config)
    ckpt = Checkpoint(checkpoint, spec, config) if checkpoint is not None else None
    with _threads(config.threads):
        _seed_everything(config.seed)
        device = resolve_device(config.device)
        model = build_model(spec, task.readout).to(device)
        loaders = task.make_loaders(config.batch_size, config.seed, bptt=config.bptt)
        schedule = _schedule(config, len(loaders.train) if hasattr(loaders.train, "__len__") else None)
        show = config.progress if config.progress is not None else sys.stdout.isatty()
        progress = _Progress(show, sum(schedule), f"{task.name} {spec.cell.update}")
        run = _Run(model, task, config, device, make_optimizer(model, config), iter(()), progress)
        restored = ckpt.restore(run) if ckpt is not None else []
        run.batches = _batches(loaders.train, run.position, device)
        try:
            history = _loop(run, schedule, loaders.valid, callback, ckpt, restored)
            final = dict(history[-1])
            if config.test and loaders.test is not None:
                final.update(run.evaluate(loaders.test, "test"))
        finally:
            progress.close()
            if isinstance(run.batches, Prefetcher):
                run.batches.close()
    key = f"val_{task.metric}"
    best = history[0]
    for entry in history[1:]:
        best = entry if _is_better(entry[key], best[key], task.metric_direction) else best
    extra = {"resumed_from_epoch": len(restored)} if restored else {}
    return TrainResult(history, final, dict(best), count_parameters(model), model, spec,
                       time.perf_counter() - start, task.metric, task.metric_direction, extra)


def _loop(run: _Run, schedule: list[int], valid: Any, callback: Callable[[int, dict[str, Any]], None] | None,
          ckpt: Checkpoint | None = None, restored: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    history = list(restored or [])
    start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    if callback is not None:
        for entry in history:  # a resumed run reports its restored epochs again (a search records them)
            callback(entry["epoch"], dict(entry))
    for epoch, n_steps in enumerate(schedule[len(history):], start=len(history) + 1):
        train_loss = run.train_epoch(n_steps)
        entry = {"epoch": epoch, "step": run.step, "train_loss": train_loss, **run.evaluate(valid, "val")}
        entry["seconds"] = time.perf_counter() - start
        history.append(entry)
        if ckpt is not None and epoch < len(schedule):   # before the epoch is reported: what a search has
            ckpt.save(run, history)                       # recorded is in the checkpoint (a kill -9 between
        if callback is not None:                          # the two used to resume one epoch early)
            callback(epoch, dict(entry))
    return history


class Checkpoint:
    """A training run's state after an epoch, in one file written atomically: model, optimizer, random
    number generators (torch, CUDA, numpy, Python), step, the training stream's position, the carried
    state of a stateful task and the history so far. :meth:`restore` puts a run exactly where the saved
    one was, so the resumed run ends with the metrics of an uninterrupted one (bitwise on CPU, given the
    seed, on the native and fused paths; the derived path takes its first calls of a new process on a
    hand-written kernel or the reference loop, which may differ in the last bits). A file of another spec
    or config is ignored. Read with ``torch.load(weights_only=True)``: no pickled objects."""

    def __init__(self, path: str | Path, spec: ModelSpec, config: TrainConfig) -> None:
        self.path = Path(path)
        same = {k: v for k, v in config.to_dict().items() if k not in ("progress", "threads", "device", "test")}
        text = json.dumps({"spec": spec.to_dict(), "train": same}, sort_keys=True, default=str)
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, run: _Run, history: list[dict[str, Any]]) -> None:
        """Write the run's state after its latest epoch (``history[-1]``)."""
        state = {
            "digest": self.digest, "history": history, "step": run.step, "last_finite": run.last_finite,
            "position": list(run.position), "carry": run.state, "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": _numpy_state(), "python_rng": list(random.getstate()[1]),
            "python_rng_version": random.getstate()[0], "python_rng_gauss": random.getstate()[2],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def restore(self, run: _Run) -> list[dict[str, Any]]:
        """Put ``run`` where the saved run was; returns its history ([] when there is nothing to resume)."""
        try:
            state = torch.load(self.path, map_location=run.device, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):  # none yet, or unreadable: start afresh
            return []
        if not isinstance(state, dict) or state.get("digest") != self.digest:
            return []
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.step, run.last_finite, run.state = state["step"], state["last_finite"], state["carry"]
        run.position[:] = state["position"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        _set_numpy_state(state["numpy_rng"])
        random.setstate((state["python_rng_version"], tuple(state["python_rng"]), state["python_rng_gauss"]))
        return list(state["history"])

    def clear(self) -> None:
        """Remove the file (the run finished, or will not be resumed)."""
        self.path.unlink(missing_ok=True)


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))
