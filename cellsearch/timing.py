"""Timing a model's forward + backward pass: what ``cellsearch bench`` measures and what a search's ``speed``
objective records for each trial (:func:`measure_speed`).

It sits on the trainer's floor so that the search layer can time a trained model without importing the
benchmark reports (:mod:`cellsearch.bench`, a consumer above the search). Rounds disturbed by other
processes can be measured (:class:`LoadMeter`) and discarded (:func:`time_runs`).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LoadMeter", "time_runs", "measure_speed", "build_model", "clear_grads", "forward_backward"]


def build_model(cell: str | Any, input_size: int, hidden: int, layers: int = 1,
                device: str | torch.device = "cpu") -> nn.Module:
    """A network to time: ``"nn.LSTM"`` / ``"nn.GRU"`` (torch's, batch first) or a cellsearch cell."""
    if cell == "nn.LSTM":
        return nn.LSTM(input_size, hidden, num_layers=layers, batch_first=True).to(device)
    if cell == "nn.GRU":
        return nn.GRU(input_size, hidden, num_layers=layers, batch_first=True).to(device)
    from .api import create_rnn

    return create_rnn(cell, input_size, hidden, num_layers=layers).to(device)


def _output(result: Any) -> Tensor:
    return result[0] if isinstance(result, tuple) else result


def forward_backward(model: nn.Module, x: Tensor) -> None:
    """One forward and backward pass of ``model`` on ``x`` (the summed output as the loss)."""
    _output(model(x)).sum().backward()


def clear_grads(model: nn.Module, x: Tensor) -> None:
    """Drop the gradients of ``model``'s parameters and of the input ``x``."""
    for p in model.parameters():
        p.grad = None
    x.grad = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """A function that times one call in milliseconds (CUDA events on a GPU)."""
    if device.type == "cuda":
        def timed(fn: Callable[[], None]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return float(start.elapsed_time(end))
        return timed

    def timed_cpu(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return timed_cpu


class LoadMeter:
    """CPU time that *other* processes used, in CPUs, over an interval (Linux ``/proc``; else 0).

    The machine the bench runs on may be shared; a timing round during which other processes kept a
    CPU busy is not comparable with the others, so :func:`time_runs` can discard it.
    """

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ok = sys.platform.startswith("linux") and os.path.exists("/proc/stat")
        self._start: tuple[float, int, int] | None = None

    def _read(self) -> tuple[float, int, int]:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        busy = sum(v) - v[3] - (v[4] if len(v) > 4 else 0)
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])             # utime + stime, all threads
        return time.perf_counter(), busy, own

    def start(self) -> None:
        self._start = self._read() if self.ok else None

    def others(self) -> float:
        """Average number of CPUs other processes kept busy since :meth:`start`."""
        if self._start is None:
            return 0.0
        t1, busy1, own1 = self._read()
        t0, busy0, own0 = self._start
        return max(0, (busy1 - busy0) - (own1 - own0)) / self.hz / max(t1 - t0, 1e-9)


def time_runs(models: Sequence[nn.Module], x: Tensor, repeats: int = 10, warmup: int = 2,
              max_load: float | None = 0.25, max_rounds: int | None = None
              ) -> tuple[list[list[float]], float, int, int]:
    """Interleaved timings (ms) of forward + backward for each model.

    The order alternates between rounds (a, b, …, then …, b, a) so that no model always runs right
    after another. With ``max_load`` set, a round during which other processes used more than that
    many CPUs on average (see :class:`LoadMeter`) is discarded and run again, up to ``max_rounds``
    rounds in all (default 2 × repeats); if clean rounds stay short, the discarded ones are used.
    Returns ([times of model 0, …], seconds of model 0's first run, rounds discarded, discarded rounds
    used after all because clean ones ran short).
    """
    device = x.device
    timed = _timer(device)
    xs = x.detach().clone().requires_grad_(True)
    first = 0.0
    for i, m in enumerate(models):
        for w in range(max(1, warmup)):
            clear_grads(m, xs)
            _sync(device)
            ms = timed(lambda m=m: forward_backward(m, xs))
            if i == 0 and w == 0:
                first = ms / 1e3
    meter = LoadMeter()
    clean: list[list[float]] = []
    dirty: list[list[float]] = []
    order = list(range(len(models)))
    limit = max_rounds or 2 * repeats
    r = 0
    while len(clean) < repeats and r < limit:
        meter.start()
        row = [0.0] * len(models)
        for i in (order if r % 2 == 0 else order[::-1]):
            clear_grads(models[i], xs)
            _sync(device)
            row[i] = timed(lambda i=i: forward_backward(models[i], xs))
        (dirty if max_load is not None and meter.others() > max_load else clean).append(row)
        r += 1
    used = dirty[: max(0, repeats - len(clean))]
    rows = clean + used
    return [[row[i] for row in rows] for i in order], first, len(dirty), len(used)


def measure_speed(model_or_spec: nn.Module | Any, batch: int = 64, seq: int = 100, input_size: int = 32,
                  device: str | torch.device | None = None, hidden: int | None = None, repeats: int = 10,
                  warmup: int = 2) -> float:
    """Forward + backward tokens per second of one model (median of ``repeats`` after ``warmup`` runs).

    ``model_or_spec``: a module taking x [B, T, d] (batch first) and returning ``out`` or
    ``(out, state)``, timed on its own device unless ``device`` is given; or a cell name / CellSpec /
    ModelSpec (built with :func:`cellsearch.create_rnn` on ``device``, default CPU; ``hidden``
    defaults to the ModelSpec's, else 128). Usable as a ``speed`` search objective.
    """
    if isinstance(model_or_spec, nn.Module):
        model = model_or_spec
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        device = torch.device(device)
        model = model.to(device)
    else:
        from .spec import ModelSpec

        device = torch.device(device or "cpu")
        size = hidden or (model_or_spec.hidden_size if isinstance(model_or_spec, ModelSpec) else 128)
        model = build_model(model_or_spec, input_size, size, device=device)
    x = torch.randn(batch, seq, input_size, device=device)
    (times,), _, _, _ = time_runs([model], x, repeats, warmup, max_load=None)
    for p in model.parameters():
        p.grad = None
    return batch * seq / (statistics.median(times) / 1e3)
