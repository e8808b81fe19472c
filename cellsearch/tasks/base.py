"""The task contract: options, sizes, loss, metric, baseline and deterministic loaders.

A task is a registered class (``@register_task``, or the ``cellsearch.tasks`` entry-point group for a
third party). Its constructor takes the task's keyword options, declared in :attr:`Task.options`, and
validates them: an unknown key or a bad value raises :class:`~cellsearch.spec.SpecError` naming
``task.<key>``. After construction a task states

- ``input_size`` / ``output_size`` — the model's sizes (categorical inputs are one-hot floats);
- ``readout`` — ``"last"`` (one output per sequence) or ``"all"`` (one per step);
- ``metric`` / ``metric_direction`` — e.g. ``("accuracy", "maximize")``, ``("bpc", "minimize")``;
- ``baseline`` — the memoryless baseline of the metric, or ``None``;
- ``stateful`` — whether consecutive batches continue each other (truncated BPTT: the trainer carries the
  recurrent state across batches, detached).

``loss(output, target)`` is the differentiable training loss (a mean over the batch's scored elements);
``metric_value(output, target)`` the metric on one batch; ``weight(target)`` how many scored elements
the batch holds, so that :meth:`Task.evaluate` averages exactly over a whole split.
``make_loaders(batch_size, seed)`` returns :class:`Loaders` whose iterables yield ``(x, y)`` with
``x`` a float tensor ``[B, T, input_size]``; the same seed gives the same batches in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.options import Option
from ..registry import get_task
from ..spec import SpecError

__all__ = [
    "Task", "Option", "Loaders", "ArrayLoader", "make_task", "cache_dir", "ClassificationTask",
    "to_device", "map_tensors", "detach_state",
]

Batch = tuple[Tensor, Any]


# --------------------------------------------------------------------------------------------------
# loaders (a task's options are declared with Option, cellsearch.config.options)
class Loaders(NamedTuple):
    """The train / valid / test iterables of a task (test may be None)."""

    train: Any
    valid: Any
    test: Any = None


class ArrayLoader:
    """Batches over equal-length arrays, optionally shuffled; deterministic given ``seed``.

    Each ``iter()`` is one epoch; epoch ``e`` shuffles with ``numpy.random.default_rng([seed, e])``, so two
    loaders built with the same seed yield the same batches in the same order. ``collate`` turns the
    sliced arrays into a batch ``(x, y)``.
    """

    def __init__(self, arrays: Sequence[np.ndarray], batch_size: int, collate: Callable[..., Batch],
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> None:
        self.arrays, self.batch_size, self.collate = list(arrays), int(batch_size), collate
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0
        self.n = len(self.arrays[0])

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` epoch ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
                 if self.shuffle else np.arange(self.n))
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.collate(*(a[idx] for a in self.arrays))


class GeneratedLoader:
    """Fresh synthetic samples every batch: batch ``i`` of epoch ``e`` comes from rng([seed, e, i]).

    ``make(rng, n)`` returns the arrays of ``n`` samples; ``collate`` makes the batch.
    """

    def __init__(self, make: Callable[[np.random.Generator, int], tuple[np.ndarray, ...]], n_samples: int,
                 batch_size: int, collate: Callable[..., Batch], seed: int = 0) -> None:
        self.make, self.n, self.batch_size, self.collate = make, n_samples, batch_size, collate
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` epoch ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for i in range(len(self)):
            size = min(self.batch_size, self.n - i * self.batch_size)
            yield self.collate(*self.make(np.random.default_rng([self.seed, epoch, i]), size))


# --------------------------------------------------------------------------------------------------
# the base class
class Task:
    """Base class of every task (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    readout: str = "last"
    metric: str = "loss"
    metric_direction: str = "minimize"
    baseline: float | None = None
    stateful: bool = False
    input_size: int
    output_size: int

    def __init__(self, **kwargs: Any) -> None:
        declared = self.all_options()
        for key in kwargs:
            if key not in declared:
                raise SpecError(f"task.{key}", key, f"an option of task {self.name!r}: {sorted(declared)}")
        self.config: dict[str, Any] = {}
        for key, opt in declared.items():
            value = opt.check(key, kwargs[key]) if key in kwargs else opt.default
            self.config[key] = value
            setattr(self, key, value)

    @classmethod
    def all_options(cls) -> dict[str, Option]:
        """Options declared by this class and its bases (a subclass overrides a base's)."""
        out: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            out.update(getattr(klass, "options", None) or {})
        return out

    # -- what subclasses implement --------------------------------------------------------------
    def loss(self, output: Tensor, target: Any) -> Tensor:
        """The differentiable training loss: a mean over the batch's scored elements."""
        raise NotImplementedError

    def metric_value(self, output: Tensor, target: Any) -> float:
        """The task's metric on one batch (a mean over its scored elements)."""
        raise NotImplementedError

    def weight(self, target: Any) -> int:
        """How many scored elements a batch holds (samples, characters, time steps)."""
        return int(target.shape[0])

    def make_loaders(self, batch_size: int, seed: int = 0, bptt: int | None = None) -> Loaders:
        """Train / valid / test iterables of ``(x [B, T, d], y)``, deterministic given ``seed``."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device | str = "cpu",
                 max_batches: int | None = None) -> dict[str, float]:
        """``{"loss": ..., <metric>: ...}`` averaged over every scored element of ``loader``."""
        was_training = model.training
        model.eval()
        totals, count, state = {"loss": 0.0, self.metric: 0.0}, 0, None
        try:
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = to_device(x, device), to_device(y, device)
                out, state = model(x, state if self.stateful else None)
                w = self.weight(y)
                totals["loss"] += float(self.loss(out, y)) * w
                totals[self.metric] += self.metric_value(out, y) * w
                count += w
        finally:
            model.train(was_training)
        return {k: v / max(count, 1) for k, v in totals.items()}

    def describe(self) -> dict[str, Any]:
        """What the task is: sizes, readout, metric, baseline and its options."""
        return {"name": self.name, "input_size": self.input_size, "output_size": self.output_size,
                "readout": self.readout, "metric": self.metric, "direction": self.metric_direction,
                "baseline": self.baseline, "options": dict(self.config)}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({opts})"


class ClassificationTask(Task):
    """One label per sequence (readout ``last``): cross-entropy loss, accuracy metric."""

    readout = "last"
    metric = "accuracy"
    metric_direction = "maximize"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy of the logits [B, C] against the labels [B]."""
        return F.cross_entropy(output, target)

    def metric_value(self, output: Tensor, target: Tensor) -> float:
        """Fraction of correct arg-max predictions."""
        return float((output.argmax(-1) == target).float().mean())


# --------------------------------------------------------------------------------------------------
# helpers
def make_task(cfg: str | Mapping[str, Any] | Task) -> Task:
    """A task from its name or a mapping ``{"name": "adding", "seq_len": 50}`` (a Task passes through)."""
    if isinstance(cfg, Task):
        return cfg
    if isinstance(cfg, str):
        return get_task(cfg)()
    if not isinstance(cfg, Mapping):
        raise SpecError("task", cfg, "a task name or a mapping with a 'name' key and the task's options")
    if "name" not in cfg:
        raise SpecError("task.name", None, "the name of a registered task")
    options = {k: v for k, v in cfg.items() if k != "name"}
    return get_task(str(cfg["name"]))(**options)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where built datasets are cached: ``path``, else $CELLSEARCH_CACHE, else ~/.cache/cellsearch."""
    base = path or os.environ.get("CELLSEARCH_CACHE") or Path.home() / ".cache" / "cellsearch"
    out = Path(base).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """Where local datasets live: ``path``, else $CELLSEARCH_DATA, else ~/.cache/cellsearch/data."""
    base = path or os.environ.get("CELLSEARCH_DATA") or Path.home() / ".cache" / "cellsearch" / "data"
    return Path(base).expanduser()


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to a tensor, or to the tensors of a (named) tuple/list; anything else unchanged."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        items = [map_tensors(o, fn) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors of a tuple/list, to ``device`` (asynchronously from pinned memory)."""
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def detach_state(state: Any) -> Any:
    """The recurrent state with every tensor detached (truncated BPTT)."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return state


def one_hot(indices: np.ndarray, classes: int) -> Tensor:
    """Float one-hot encoding of an integer array (a new last axis of size ``classes``)."""
    return F.one_hot(torch.as_tensor(indices, dtype=torch.long), classes).float()


def split_indices(n: int, n_valid: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed random split of ``range(n)`` into train / valid / test index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    return order[n_valid + n_test:], order[:n_valid], order[n_valid:n_valid + n_test]
