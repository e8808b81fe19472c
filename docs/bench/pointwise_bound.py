"""Bench (not a test): how close to its GEMM floor a cell's math lets it get on this CPU (issue 17).

    .venv/bin/python docs/bench/pointwise_bound.py [ROUNDS] [CELL ...]   # writes docs/bench/BOUND.md

(default: 15 rounds, every published cell; ~10 min on 2 cores)

``make bench``'s *× GEMM floor* is a cell's forward + backward over the time of its matrix products
alone (cellsearch.bench.compare.GemmFloor). Whatever the implementation, a cell also pays its pointwise
work: its gates' exponentials, divisions and products, forward and backward. This script measures that
work at its cheapest and adds it to the floor:

1. the cell runs on the derived path's C loop (forced), and the C source its step graphs were compiled
   to is captured from the build (cellsearch.fast.csrc.build);
2. the pointwise kernels called inside the forward and the backward time loops (``pwG_kN`` in
   ``seqfw_0`` / ``seqbw_0``; the products are left out: they are the floor's) are compiled into a small
   C harness, called T times over every batch row of one step's buffers, which stay in the L1/L2 cache:
   no memory traffic, no Python, no products; best of 20 repeats, one thread, divided by the number of
   torch threads (an ideal split: the loop splits the rows over threads with no barrier);
3. the per-sequence prologue, forward and backward: the step's work on parameters alone (the derived
   path's ``prepare``: asRNN's two orthogonal matrix exponentials, a transpose elsewhere), which the floor
   leaves out; median of 20;
4. **bound** = (floor + pointwise + prologue) / floor: the × GEMM floor a perfect implementation of the
   same math would reach, next to the cell's measured × floor on the path it takes by default (floor
   and cell timed as ``make bench`` times them: interleaved rounds, a round during which other processes
   kept a CPU busy discarded and run again, ``time_runs``).

The inputs are uniform in (0.05, 0.95) (every transcendental's argument stays in range; timings do not
depend on the values otherwise). A cell whose step has no C loop is reported without a bound.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CELLSEARCH_DERIVED_AFTER", "0")

import torch  # noqa: E402

import cellsearch as cs  # noqa: E402
from cellsearch import allocator, fast  # noqa: E402
from cellsearch.bench.compare import GemmFloor  # noqa: E402
from cellsearch.fast import csrc, pwgen_c  # noqa: E402
from cellsearch.timing import build_model, forward_backward, time_runs  # noqa: E402

OUT = Path(__file__).resolve().parent / "BOUND.md"
SIZES = ((128, 100), (256, 200))
B, D = 64, 32

_captured: list[str] = []
_build = csrc.build


def _capture(src: str, prefix: str, *args, **kwargs):  # type: ignore[no-untyped-def]
    if prefix == "cellsearch_pw":
        _captured.append(src)
    return _build(src, prefix, *args, **kwargs)


csrc.build = _capture                                   # this process only: a measurement hook


def _body(src: str, name: str) -> str | None:
    m = re.search(r"^void " + name + r"\(.*?^}", src, re.S | re.M)
    return None if m is None else m.group(0)


def _loop_calls(body: str) -> list[str]:
    """The pointwise kernels called inside the time loop of a loop function, in order."""
    loop = body[body.index("for (i64 t"):]
    return re.findall(r"\b(pw\d+_k\d+)\(", loop)


def _params(src: str, kernel: str) -> int:
    sig = re.search(r"^void " + kernel + r"\(([^)]*)\)", src, re.M)
    assert sig is not None, kernel
    return sig.group(1).count("*")


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double cs_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
#define NBUF %(nbuf)d
#define FLOATS %(floats)d
int main(void) {
    static float *b[NBUF];
    for (int i = 0; i < NBUF; i++) {
        b[i] = aligned_alloc(64, sizeof(float) * FLOATS);
        for (long j = 0; j < FLOATS; j++) b[i][j] = 0.05f + 0.9f * (float)((j * 7919 + i * 104729) %% 1000) / 1000.0f;
    }
    double best[2] = {1e9, 1e9};
    for (int rep = 0; rep < 20; rep++) {
        double t0 = cs_now();
        for (int t = 0; t < %(T)d; t++) { %(fw)s }
        double t1 = cs_now();
        for (int t = 0; t < %(T)d; t++) { %(bw)s }
        double t2 = cs_now();
        if (t1 - t0 < best[0]) best[0] = t1 - t0;
        if (t2 - t1 < best[1]) best[1] = t2 - t1;
    }
    printf("%%.6f %%.6f\n", best[0] * 1e3, best[1] * 1e3);
    return 0;
}
"""


def _calls(src: str, kernels: list[str], first: int) -> tuple[str, int]:
    """C statements calling each kernel over every row, each pointer argument its own buffer."""
    out, k = [], first
    for name in kernels:
        n = _params(src, name)
        out.append(f"{name}({', '.join(f'(void *)b[{k + i}]' for i in range(n))}, 0, {B});")
        k += n
    return " ".join(out), k


def pointwise_ms(src: str, T: int) -> tuple[float, float] | None:
    """(forward, backward) ms of the time loops' pointwise kernels over T steps, one thread, cache-hot."""
    fw, bw = _body(src, "seqfw_0"), _body(src, "seqbw_0")
    if fw is None or bw is None:
        return None
    fcall, k = _calls(src, _loop_calls(fw), 0)
    bcall, k = _calls(src, _loop_calls(bw), k)
    text = src + HARNESS % {"nbuf": max(k, 1), "floats": B * 8192, "T": T, "fw": fcall, "bw": bcall}
    cc = os.environ.get("CC", "gcc")
    flags = [f for f in csrc._FLAGS if f not in ("-shared", "-fPIC")] + pwgen_c._SAFE + ["-D_GNU_SOURCE"]
    with tempfile.TemporaryDirectory() as tmp:
        c, exe = Path(tmp) / "bound.c", Path(tmp) / "bound"
        c.write_text(text)
        subprocess.run([cc, *flags, "-march=native", str(c), "-o", str(exe), "-lm"], check=True)
        f, b = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    return float(f), float(b)


def prologue_ms(model: torch.nn.Module, x: torch.Tensor, reps: int = 20) -> float:
    """Forward + backward of every layer's per-sequence prologue (the derived path's ``prepare``: the
    step's work on parameters alone, such as asRNN's matrix exponentials), median ms."""
    from cellsearch.fast.derived import _trace

    runs = []
    for cell in getattr(model, "layers", []):
        tr = _trace(cell, x.shape[0])
        runs.append((tr.prologue(x), tr.params(cell)))

    def once() -> float:
        t0 = time.perf_counter()
        for run, params in runs:
            outs = [o for o in run(*params) if isinstance(o, torch.Tensor) and o.requires_grad]
            if outs:
                torch.autograd.grad(outs, params, [torch.ones_like(o) for o in outs], allow_unused=True)
        return (time.perf_counter() - t0) * 1e3

    once()
    return statistics.median(once() for _ in range(reps))


def measure(cell: str, H: int, T: int, rounds: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = build_model(cell, D, H)
    x = torch.randn(B, T, D, requires_grad=True)
    _captured.clear()
    with fast.force_derived():                     # the derived path's C source (another path may run below)
        forward_backward(model, x)
    src = next((s for s in reversed(_captured) if "void seqbw_0" in s), None)
    row: dict[str, object] = {"cell": cell, "size": f"{H} / {T}", "path": fast.plan(model.layers[0]).path}
    pw = None if src is None else pointwise_ms(src, T)
    pro = prologue_ms(model, x)
    times, _first, discarded, _kept = time_runs([model, GemmFloor(model)], x.detach(), rounds, 2)
    cell_ms, floor_ms = (statistics.median(t) for t in times)
    row.update(cell_ms=cell_ms, floor_ms=floor_ms, measured=cell_ms / floor_ms, prologue=pro, rerun=discarded)
    if pw is None:
        row.update(pw_ms=None, bound=None)
    else:
        n = torch.get_num_threads()
        pw_ms = (pw[0] + pw[1]) / n
        row.update(pw_fw=pw[0] / n, pw_bw=pw[1] / n, pw_ms=pw_ms, bound=(floor_ms + pw_ms + pro) / floor_ms)
    return row


def _fmt(v: object, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> None:
    args = sys.argv[1:]
    rounds = int(args.pop(0)) if args and args[0].isdigit() else 15
    cells = args or list(cs.list_cells())                 # every published cell
    allocator.tune()
    rows = []
    for H, T in SIZES:
        for cell in cells:
            row = measure(cell, H, T, rounds)
            rows.append(row)
            print({k: _fmt(v) for k, v in row.items()}, flush=True)
    lines = [
        "# How close to the GEMM floor the math allows (issue 17)", "",
        f"Produced by `docs/bench/pointwise_bound.py {rounds}` (see its docstring for the method). Batch {B}, "
        f"input {D}, float32, {torch.get_num_threads()} torch threads, forward + backward of `out.sum()`, "
        f"the pointwise kernels those of the cell's derived C loop; torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; glibc malloc tuned (cellsearch.allocator); "
        f"{sum(int(r['rerun']) for r in rows)} disturbed rounds re-run.", "",
        "*floor*: the cell's matrix products alone (`GemmFloor`, as in BENCH.md); *pointwise*: the step "
        "kernels of the forward and backward loops over T steps with their data in cache (ideal split over "
        "the threads); *prologue*: the per-sequence work on parameters alone, forward + backward; "
        "*bound* = (floor + pointwise + prologue) / floor: the × GEMM floor an implementation with free "
        "memory traffic, dispatch and copies would reach with this math; *measured*: the cell's × GEMM "
        "floor on its default *path*, in the same rounds as the floor. The target of issue 17 is 1.3.", "",
        "| cell | hidden / seq | path | floor ms | pointwise fw ms | pointwise bw ms | prologue ms "
        "| bound × floor | measured × floor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['size']} | {r['path']} | {_fmt(r['floor_ms'])} | "
                     f"{_fmt(r.get('pw_fw'), 3)} | {_fmt(r.get('pw_bw'), 3)} | {_fmt(r['prologue'], 3)} | "
                     f"{_fmt(r['bound'])} | {_fmt(r['measured'])} |")
    if any(r["bound"] is None for r in rows):
        lines += ["", "— : no C loop for this cell (its loop runs in Python; see `cellsearch explain`)."]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
