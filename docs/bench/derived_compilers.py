"""Bench (not a test): the derived path's step graphs compiled by the C generator against Inductor.

    .venv/bin/python docs/bench/derived_compilers.py [CELL ...]        # default: janet indrnn slstm ur_lstm

Per cell, forced onto the derived path, hidden 256, sequence 200, batch 64, input 32, float32: forward +
backward of out.sum() with ``CELLSEARCH_DERIVED_COMPILER=c`` and ``=inductor``, two models with the same
weights in one process, interleaved round by round (the order alternates), one torch thread, process CPU
time (``time.process_time``: other processes' load hardly inflates it; wall time beside it), medians of
``ROUNDS`` rounds (env, default 7) and the median of the per-round ratios. Then the per-call cost of one
forward and one backward step graph at hidden 8, batch 2 (where the work is nothing and the call is all:
Python, ctypes or Inductor's wrapper, allocations). The load (CPUs other processes kept busy) is printed.
First use (fresh processes, cold and warm cache) is ``cellsearch bench --first-use ur_lstm
--first-use-compiler both --hidden 256 --seq 200``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

import cellsearch as cs
from cellsearch import fast
from cellsearch.timing import LoadMeter, clear_grads, forward_backward

COMPILERS = ("c", "inductor")


@contextmanager
def compiler(name: str) -> Iterator[None]:
    old = os.environ.get("CELLSEARCH_DERIVED_COMPILER")
    os.environ["CELLSEARCH_DERIVED_COMPILER"] = name
    try:
        with fast.force_derived():
            yield
    finally:
        if old is None:
            del os.environ["CELLSEARCH_DERIVED_COMPILER"]
        else:
            os.environ["CELLSEARCH_DERIVED_COMPILER"] = old


class With(torch.nn.Module):
    """The model on the derived path, its step graphs compiled by ``name``."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.model, self.name = model, name

    def forward(self, x: torch.Tensor) -> Any:
        with compiler(self.name):
            return self.model(x)


def sequence(name: str, rounds: int, hidden: int = 256, seq: int = 200, batch: int = 64) -> dict[str, float]:
    torch.manual_seed(0)
    base = cs.create_rnn(name, 32, hidden)
    models = []
    for c in COMPILERS:
        m = cs.create_rnn(name, 32, hidden)
        m.load_state_dict(base.state_dict())
        models.append(With(m, c))
    x = torch.randn(batch, seq, 32).requires_grad_(True)
    for m in models:
        for _ in range(2):
            clear_grads(m, x)
            forward_backward(m, x)
    cpu: list[list[float]] = [[], []]
    wall: list[list[float]] = [[], []]
    meter = LoadMeter()
    meter.start()
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            clear_grads(models[i], x)
            c0, w0 = time.process_time(), time.perf_counter()
            forward_backward(models[i], x)
            cpu[i].append(1e3 * (time.process_time() - c0))
            wall[i].append(1e3 * (time.perf_counter() - w0))
    return {"c_cpu": statistics.median(cpu[0]), "inductor_cpu": statistics.median(cpu[1]),
            "ratio": statistics.median(b / a for a, b in zip(cpu[0], cpu[1])),
            "c_wall": statistics.median(wall[0]), "inductor_wall": statistics.median(wall[1]),
            "load": meter.others()}


def _step_args(name: str, g: Any, runner: Any, cell: Any, batch: int) -> tuple[list[Any], list[Any]]:
    """One step's forward and backward graph inputs (from the forward graph run once)."""
    x = torch.randn(3, batch, cell.input_size)
    _, xp, xs, st = cell._recurrence_inputs(x, cell.initial_state(batch, x))
    inv = [t.detach() for t in g.prologue(*runner._traced.params(cell))]
    fw = [*inv, xp[0].contiguous(), *((xs[0],) if xs is not None else ()), *[s.contiguous() for s in st]]
    with torch.no_grad():
        res = g.forward(*fw)
        pre = g.bw_pre(*inv) if g.n_pre else ()
        douts = [torch.randn_like(r) for r in res[:g.n_out]]
        bw = [*inv, *pre, *res[g.n_out:], *douts, torch.empty_like(xp[0])]
    return fw, bw


def per_call(name: str, hidden: int = 8, batch: int = 2, n: int = 3000) -> dict[str, float]:
    """µs per call of the forward and backward step graphs, best of 7 batches of ``n`` calls."""
    graphs, out = {}, {}
    for c in COMPILERS:
        torch.manual_seed(0)
        m = cs.create_rnn(name, 32, hidden)
        with compiler(c):
            m(torch.randn(batch, 3, 32))[0].sum().backward()
            runner = fast.plan(m.layers[0]).run
        graphs[c] = next(g for g in runner._graphs.values() if g.compiled)
    fw, bw = _step_args(name, graphs["c"], runner, m.layers[0], batch)
    with torch.no_grad():
        for which, args in (("forward", fw), ("backward", bw)):
            for c in COMPILERS:
                fn = getattr(graphs[c], which)
                best = float("inf")
                for _ in range(7):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn(*args)
                    best = min(best, (time.perf_counter() - t0) / n * 1e6)
                out[f"{which}_{c}"] = best
    return out


def main() -> None:
    torch.set_num_threads(1)
    cells = sys.argv[1:] or ["janet", "indrnn", "slstm", "ur_lstm"]
    rounds = int(os.environ.get("ROUNDS", 7))
    print("| cell | C, ms CPU | Inductor, ms CPU | Inductor / C | wall C / Inductor, ms | other processes, CPUs |")
    print("|---|---|---|---|---|---|")
    for name in cells:
        r = sequence(name, rounds)
        print(f"| {name} | {r['c_cpu']:.0f} | {r['inductor_cpu']:.0f} | {r['ratio']:.2f} | "
              f"{r['c_wall']:.0f} / {r['inductor_wall']:.0f} | {r['load']:.1f} |", flush=True)
    print("\n| cell | forward step, C / Inductor, µs | backward step, C / Inductor, µs |")
    print("|---|---|---|")
    for name in cells:
        p = per_call(name)
        print(f"| {name} | {p['forward_c']:.1f} / {p['forward_inductor']:.1f} | "
              f"{p['backward_c']:.1f} / {p['backward_inductor']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
