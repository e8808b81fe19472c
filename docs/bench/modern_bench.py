"""Bench (not a test): minGRU's parallel scan against its own sequential loop and torch.nn.LSTM.

    .venv/bin/python docs/bench/modern_bench.py [ROUNDS] [THREADS]   # writes docs/bench/MODERN.md

Forward + backward of out.sum() at batch 16, input = hidden = 256, float32, on the CPU, all variants in one
process, interleaved round by round (the machine is shared: ratios, not absolute times, are what carries
over). The allocator is tuned for every variant, as ``make bench`` and training do (cellsearch.allocator;
nn.LSTM's oneDNN kernel gains most from it). The load average is recorded before and after.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import cellsearch as cs
from cellsearch import allocator, fast
from cellsearch.fast import scan

OUT = Path(__file__).resolve().parent / "MODERN.md"
B, H = 16, 256
SCAN, TORCH_SCAN, LOOP = "mingru scan (compiled, fused)", "mingru scan (torch ops, chunked)", "mingru sequential loop"
VARIANTS = (SCAN, TORCH_SCAN, "torch.nn.LSTM", "torch.nn.GRU", LOOP)


def _timer(fn: Callable[[], None], rounds: int) -> Callable[[], float]:
    fn()                                              # warm-up (allocations, first-call work)

    def once() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return once


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor, loop: bool = False, compiled: bool = True
             ) -> Callable[[], None]:
    def run() -> None:
        old = scan.use_compiled()
        scan.use_compiled(compiled)
        try:
            with fast.enabled(not loop), fast.hand_first():    # the scan (not the derived C loop)
                out = model(x)[0]
            out.sum().backward()
        finally:
            scan.use_compiled(old)
        model.zero_grad(set_to_none=True)

    return run


def measure(steps: int, rounds: int, with_loop: bool = True) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(B, steps, H)
    mingru = cs.create_rnn("mingru", H, H)
    lstm = torch.nn.LSTM(H, H, batch_first=True)
    gru = torch.nn.GRU(H, H, batch_first=True)
    variants = {SCAN: _fwd_bwd(mingru, x), TORCH_SCAN: _fwd_bwd(mingru, x, compiled=False),
                "torch.nn.LSTM": _fwd_bwd(lstm, x), "torch.nn.GRU": _fwd_bwd(gru, x)}
    if with_loop:
        variants[LOOP] = _fwd_bwd(mingru, x, loop=True)
    timers = {k: _timer(v, rounds) for k, v in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, t in timers.items():
            times[k].append(t())
    return {k: min(v) for k, v in times.items()} | {f"{k} (median)": statistics.median(v) for k, v in times.items()}


def profile(steps: int = 2000, top: int = 6) -> list[str]:
    """torch.profiler's self CPU time of one forward + backward, compiled scan and torch-op scan."""
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    x = torch.randn(B, steps, H)
    mingru = cs.create_rnn("mingru", H, H)
    lines = []
    for name, compiled in ((SCAN, True), (TORCH_SCAN, False)):
        run = _fwd_bwd(mingru, x, compiled=compiled)
        run()
        with torch_profile() as prof:
            run()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        ops = ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3:.0f} ms ({e.count}×)" for e in events[:top])
        lines.append(f"- {name}: {total / 1e3:.0f} ms self CPU in all; {ops}")
    return lines


def _load() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def _growth_rows(growth: dict[int, dict[str, float]]) -> list[str]:
    rows = []
    for t, r in growth.items():
        loop = f"{r[LOOP] * 1e3:.1f}" if LOOP in r else "—"
        ratio = f"{r[LOOP] / r[SCAN]:.1f}×" if LOOP in r else "—"
        rows.append(f"| {t} | {r[SCAN] * 1e3:.1f} | {r[TORCH_SCAN] * 1e3:.1f} | {loop} | {r['torch.nn.LSTM'] * 1e3:.1f} "
                    f"| {r['torch.nn.GRU'] * 1e3:.1f} | {ratio} | {r['torch.nn.LSTM'] / r[SCAN]:.1f}× "
                    f"| {r[SCAN] * 1e6 / t:.1f} |")
    return rows


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    tuned = allocator.tune()
    before = _load()
    head = measure(2000, rounds)
    growth = {t: measure(t, max(3, rounds // 2), with_loop=t <= 2048)
              for t in (64, 256, 512, 1024, 2048, 4096)}
    profiled = profile()
    after = _load()
    lines = [
        "# minGRU: parallel scan vs its sequential loop vs torch.nn.LSTM / GRU",
        "",
        f"`python docs/bench/modern_bench.py {rounds} {torch.get_num_threads()}`: forward + backward of "
        f"`out.sum()`, batch {B}, input = hidden = {H}, float32, CPU, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}; allocator: {tuned}. "
        f"Best (and median) of {rounds} interleaved rounds after one warm-up call each (growth table: best "
        f"of {max(3, rounds // 2)}; on a shared machine the best round is the least disturbed one). Machine load: {before} before, {after} after (the machine is shared; "
        "read the ratios: same process, same rounds). Not a timed test.",
        "",
        "## T = 2000",
        "",
        "| variant | ms / iteration (best) | the compiled scan is faster by | ms (median) | faster by (medians) |",
        "|---|---|---|---|---|",
    ]
    for k in VARIANTS:
        v, med = head[k], head[f"{k} (median)"]
        lines.append(f"| {k} | {v * 1e3:.1f} | {v / head[SCAN]:.2f}× | {med * 1e3:.1f} "
                     f"| {med / head[f'{SCAN} (median)']:.2f}× |")
    lines += [
        "",
        f"minGRU's compiled scan vs its own sequential loop: **{head[LOOP] / head[SCAN]:.1f}×**; vs torch.nn.LSTM "
        f"(oneDNN): **{head['torch.nn.LSTM'] / head[SCAN]:.1f}×** (best rounds; medians: "
        f"{head[LOOP + ' (median)'] / head[SCAN + ' (median)']:.1f}× and "
        f"{head['torch.nn.LSTM (median)'] / head[SCAN + ' (median)']:.1f}×). Issue 14 asks ≥ 5× and ≥ 3×.",
        "",
        "## Growth with T (loop up to T = 2048)",
        "",
        "| T | compiled scan (ms) | torch-op scan (ms) | sequential loop (ms) | nn.LSTM (ms) | nn.GRU (ms) "
        "| loop / scan | LSTM / scan | compiled scan, ms per 1k steps |",
        "|---|---|---|---|---|---|---|---|---|",
        *_growth_rows(growth),
        "",
        "## Where the time goes (torch.profiler, one forward + backward at T = 2000, top operators)",
        "",
        *profiled,
        "",
        "The compiled scan's time is the two GEMMs of the input projection (forward through oneDNN's "
        "`_linear_pointwise`, the weight gradient `mm`; the input needs no gradient here) and one pass of "
        "the recurrence each way (`FusedScan`, `FusedScanBackward`). The GEMMs bound what the scan can gain "
        "on a CPU: nn.LSTM does 5× minGRU's GEMM work (4 blocks and a recurrent matrix against 2 blocks), "
        "and the sequential loop pays the same two GEMMs as the scan. Under contention (other processes on "
        "the 2 cores) the per-step ops of the loop, of nn.LSTM / nn.GRU and of the torch-op scan slow down "
        "far more than the scan's few large ops, so ratios measured on a busy machine flatter the scan.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
