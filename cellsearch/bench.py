"""Speed and memory of cells, measured the same way for every cell and for ``torch.nn.LSTM``.

What one *run* is: a forward pass of a whole network over x [B, T, d] (batch first) and the backward
pass of ``out.sum()`` (parameter and input gradients). Tokens per second = B·T / (seconds per run).

How a comparison is made (:func:`bench_cell`):

- the candidate and the reference (``torch.nn.LSTM`` of the same input and hidden size, batch first)
  are built in the same process, warmed up, then timed in *interleaved* runs (reference, candidate,
  candidate, reference, …), so both see the same machine load; the figure is the median of ``repeats``
  runs each and the ratio is reference seconds / candidate seconds (> 1: faster than nn.LSTM);
- on CUDA each run is timed with CUDA events; on the CPU with ``time.perf_counter``;
- peak memory of one run is measured separately for each model (:func:`peak_memory`): on CUDA
  ``torch.cuda.max_memory_allocated`` after a reset; on Linux CPUs the peak resident set size
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus the resident size just before
  the run, with the fused path's buffer pool emptied and freed memory handed back to the OS first (so
  the pool's buffers count as memory of the run); the least of three runs. Elsewhere it is reported as
  unavailable.
- the allocator in effect is recorded (:func:`allocator_setting`): glibc's malloc tunables
  (:mod:`cellsearch.allocator`, which training and ``cellsearch bench`` set unless told not to) and
  ``LD_PRELOAD``ed allocators change the results (PERFORMANCE.md); both sides always run under the same
  setting because they share the process.

:func:`measure_speed` is the single-model measurement a search can use as a ``speed`` objective.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._env import env_var
from .timing import LoadMeter, build_model, clear_grads, forward_backward, measure_speed, time_runs

__all__ = [
    "BenchResult", "LoadMeter", "measure_speed", "time_runs", "peak_memory", "bench_cell", "bench_cells",
    "build_model", "allocator_setting", "machine_info", "write_markdown", "write_chart", "write_json",
    "derived_first_use", "GemmFloor",
]



@dataclass
class BenchResult:
    """One cell at one size, paired with torch.nn.LSTM in the same process."""

    cell: str
    hidden: int
    seq: int
    batch: int
    input_size: int
    layers: int
    path: str
    ms: float
    ref_ms: float
    repeats: int
    first_call_s: float
    peak_mb: float | None = None
    ref_peak_mb: float | None = None
    reference_ms: float | None = None      # the reference loop (fast paths off), when measured
    derived_ms: float | None = None        # the derived path (cellsearch.fast.force_derived), when measured
    derived_first_s: float | None = None   # its first call in this process (trace + compile or cache load)
    floor_ms: float | None = None          # the cell's GEMMs alone (:class:`GemmFloor`), when measured
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.seq / (self.ms / 1e3)

    @property
    def ref_tokens_per_s(self) -> float:
        return self.batch * self.seq / (self.ref_ms / 1e3)

    @property
    def ratio(self) -> float:
        """Speed relative to torch.nn.LSTM (> 1: faster)."""
        return self.ref_ms / self.ms

    @property
    def reference_ratio(self) -> float | None:
        """Speed of the reference loop relative to torch.nn.LSTM (same pairing), if measured."""
        return self.ref_ms / self.reference_ms if self.reference_ms else None

    @property
    def derived_ratio(self) -> float | None:
        """Speed of the derived path relative to torch.nn.LSTM (same pairing), if measured."""
        return self.ref_ms / self.derived_ms if self.derived_ms else None

    @property
    def floor_ratio(self) -> float | None:
        """The cell's time over its GEMM floor (1: nothing but the GEMMs), if measured."""
        return self.ms / self.floor_ms if self.floor_ms else None

    @property
    def over_floor_us(self) -> float | None:
        """Microseconds per time step beyond the GEMM floor (pointwise work, dispatch, copies)."""
        return (self.ms - self.floor_ms) * 1e3 / self.seq if self.floor_ms else None

    @property
    def memory_ratio(self) -> float | None:
        if self.peak_mb is None or not self.ref_peak_mb:
            return None
        return self.peak_mb / self.ref_peak_mb


# --------------------------------------------------------------------------------------------------
# models and single runs

# --------------------------------------------------------------------------------------------------
# memory

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    from .fast.pool import POOL

    POOL.clear()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def peak_memory(model: nn.Module, x: Tensor, repeats: int = 3) -> float | None:
    """Peak memory (MB) of one forward + backward run: the least of ``repeats`` measurements.

    See the module docstring for the method; the allocator's state adds noise only upwards (a freed
    block that is not reused, a heap that grew earlier), hence the minimum.
    """
    xs = x.detach().clone().requires_grad_(True)
    clear_grads(model, xs)
    forward_backward(model, xs)                      # warm: lazily built plans, oneDNN primitives, grads allocated
    peaks = []
    for _ in range(max(1, repeats)):
        clear_grads(model, xs)
        _trim()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            base = torch.cuda.memory_allocated(x.device)
            forward_backward(model, xs)
            torch.cuda.synchronize(x.device)
            peaks.append((torch.cuda.max_memory_allocated(x.device) - base) / 2**20)
            continue
        base_kb = _status_kb("VmRSS")
        if base_kb is None or not _reset_peak_rss():
            return None
        forward_backward(model, xs)
        peak = _status_kb("VmHWM")
        if peak is None:
            return None
        peaks.append(max(0, peak - base_kb) / 1024)
    return min(peaks)


# --------------------------------------------------------------------------------------------------
# a comparison

def _path(model: nn.Module) -> str:
    layers = getattr(model, "layers", None)
    if layers is None:
        return "torch"
    from . import fast

    paths = {fast.plan(layer).path for layer in layers}
    return "+".join(sorted(paths)) if fast.is_enabled() else "reference"


def bench_cell(cell: str | Any, hidden: int = 128, seq: int = 100, batch: int = 64, input_size: int = 32,
               layers: int = 1, device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 2,
               memory: bool = True, with_reference: bool = False, seed: int = 0,
               max_load: float | None = 0.25, patience: int = 2, with_derived: bool = False) -> BenchResult:
    """Time (and optionally measure the memory of) ``cell`` against torch.nn.LSTM, interleaved.

    ``with_reference`` also times the cell with fast paths off (the reference loop), in the same rounds;
    ``with_derived`` its derived path (:func:`cellsearch.fast.force_derived`), in the same rounds, and
    the derived path's first call (tracing, and compiling or loading the compiled step graphs).
    ``max_load``: discard rounds during which other processes used more CPUs than this (None: keep all),
    running at most ``patience`` × ``repeats`` rounds.
    """
    with _derived_from_first_call():
        return _bench_cell(cell, hidden, seq, batch, input_size, layers, device, repeats, warmup, memory,
                           with_reference, seed, max_load, patience, with_derived)


@contextmanager
def _derived_from_first_call() -> Iterator[None]:
    """A cell on the derived path takes it from its first call (no reference-loop warm-up calls): the
    bench measures the steady state and reports the first call separately."""
    with env_var("CELLSEARCH_DERIVED_AFTER", "0"):
        yield


def _bench_cell(cell: str | Any, hidden: int, seq: int, batch: int, input_size: int, layers: int,
                device: str | torch.device, repeats: int, warmup: int, memory: bool, with_reference: bool,
                seed: int, max_load: float | None, patience: int, with_derived: bool) -> BenchResult:
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(cell, input_size, hidden, layers, device)
    ref = build_model("nn.LSTM", input_size, hidden, layers, device)
    x = torch.randn(batch, seq, input_size, device=device)
    path = _path(model)
    t0 = time.perf_counter()
    forward_backward(model, x.clone().requires_grad_(True))            # first call: plans, reorders, allocations
    first = time.perf_counter() - t0
    candidates: list[nn.Module] = [ref, model]
    if with_reference:
        candidates.append(_ReferenceOnly(model))
    derived_first = None
    if with_derived:
        derived = _DerivedOnly(model)
        t0 = time.perf_counter()
        forward_backward(derived, x.clone().requires_grad_(True))
        derived_first = time.perf_counter() - t0
        candidates.append(derived)
    floor = GemmFloor(model) if getattr(model, "layers", None) is not None else None
    if floor is not None:
        candidates.append(floor)
    times, _, discarded, used = time_runs(candidates, x, repeats, warmup, max_load=max_load,
                                          max_rounds=patience * repeats)
    if floor is not None:
        floor_ms = statistics.median(times.pop())
    name = cell if isinstance(cell, str) else getattr(cell, "digest", lambda: "spec")()
    result = BenchResult(name, hidden, seq, batch, input_size, layers, path, statistics.median(times[1]),
                         statistics.median(times[0]), repeats, first)
    result.floor_ms = floor_ms if floor is not None else None
    result.extra["discarded_rounds"] = discarded
    result.extra["loaded_rounds_used"] = used
    if with_reference:
        result.reference_ms = statistics.median(times[2])
    if with_derived:
        result.derived_ms = statistics.median(times[-1])
        result.derived_first_s = derived_first
    if memory:
        result.peak_mb = peak_memory(model, x)
        result.ref_peak_mb = peak_memory(ref, x)
    return result


class GemmFloor(nn.Module):
    """The matrix products a recurrent network cannot avoid, alone: what its forward + backward would
    cost with free pointwise work, dispatch and copies.

    Per recurrent layer with an input projection W [G, d] (all blocks) and recurrent matrix U [R, n]
    (the recurrent blocks; its parametrization is formed once per sequence and not counted), over x
    [B, T, d]: forward, the hoisted input GEMM [T·B, d]·Wᵀ and T recurrent GEMMs [B, n]·Uᵀ; backward, T
    GEMMs [B, R]·U for the state gradient, then the post-loop weight gradients dUᵀ = Σ_t dA_tᵀ h_t and
    dW = dXPᵀ X and the input gradient dXP·W (one large GEMM each). Deep transitions, deep input/output
    and saturation matrices are not counted. Run as a model by :func:`time_runs` (same rounds)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int, int]] = []
        for cell in getattr(model, "layers", []):
            with torch.no_grad():
                u = cell.recurrence.matrix()
            g, d = cell.weight_ih.shape
            self.shapes.append((g, d, int(u.shape[0]), int(u.shape[1])))
        self._mats: dict[tuple[Any, ...], list[tuple[Tensor, ...]]] = {}

    def _matrices(self, x: Tensor) -> list[tuple[Tensor, ...]]:
        B, T = x.shape[0], x.shape[1]
        key = (B, T, x.dtype, x.device)
        if key not in self._mats:
            def r(*shape: int) -> Tensor:
                return torch.randn(*shape, dtype=x.dtype, device=x.device)

            self._mats[key] = [(r(T * B, d), r(g, d), r(r_, n), r(T, B, n), r(T, B, r_), r(T * B, g),
                                r(T * B, g), r(B, r_), r(B, n), r(r_, n), r(g, d), r(T * B, d))
                               for g, d, r_, n in self.shapes]
        return self._mats[key]

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            for X, W, U, H, DA, XP, DXP, A, DH, DU, DW, DX in self._matrices(x):
                torch.mm(X, W.t(), out=XP)
                for t in range(H.shape[0]):
                    torch.mm(H[t], U.t(), out=A)
                for t in range(H.shape[0] - 1, -1, -1):
                    torch.mm(DA[t], U, out=DH)
                torch.mm(DA.reshape(-1, DA.shape[-1]).t(), H.reshape(-1, H.shape[-1]), out=DU)
                torch.mm(DXP.t(), X, out=DW)
                torch.mm(DXP, W, out=DX)
        return x.sum() * 0.0


class _ReferenceOnly(nn.Module):
    """Runs the wrapped model with fast paths off (the reference loop)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        from . import fast

        with fast.enabled(False):
            return self.model(x)


class _DerivedOnly(nn.Module):
    """Runs the wrapped model on the derived path (:func:`cellsearch.fast.force_derived`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        from . import fast

        with fast.force_derived():
            return self.model(x)


def derived_first_use(cell: str, hidden: int = 256, seq: int = 200, batch: int = 64, input_size: int = 32,
                      cache: str | Path | None = None, timeout: float = 600.0) -> dict[str, float]:
    """First-use cost of ``cell``'s derived path in fresh processes: ``cold`` with an empty private cache
    (the once-per-machine cost: tracing and Inductor compiling the step graphs) and ``warm`` with the
    cache that run left (tracing, compiled code loaded from the cache). Each figure is the first
    forward + backward minus the second one, in seconds. ``cache``: the cache directory to use (default
    a fresh temporary one, removed afterwards)."""
    import json
    import subprocess
    import tempfile

    code = (
        "import json, sys, time, torch\n"
        "import cellsearch as cs\n"
        "from cellsearch import fast\n"
        "torch.set_num_threads(int(sys.argv[6]))\n"
        "m = cs.create_rnn(sys.argv[1], int(sys.argv[5]), int(sys.argv[2]))\n"
        "x = torch.randn(int(sys.argv[4]), int(sys.argv[3]), int(sys.argv[5]))\n"
        "ts = []\n"
        "with fast.force_derived():\n"
        "    for _ in range(2):\n"
        "        t0 = time.perf_counter(); m(x)[0].sum().backward(); ts.append(time.perf_counter() - t0)\n"
        "    path = fast.explain(m.layers[0])\n"
        "print(json.dumps({'first': ts[0], 'second': ts[1], 'path': path}))\n"
    )
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cellsearch-bench-cache-") as tmp:
        env = {**os.environ, "CELLSEARCH_CACHE": str(cache or tmp)}
        for label in ("cold", "warm"):
            args = [sys.executable, "-c", code, cell, str(hidden), str(seq), str(batch), str(input_size),
                    str(torch.get_num_threads())]
            res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
            if res.returncode != 0:
                raise RuntimeError(f"derived first-use run failed: {res.stderr.strip()[-500:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            out[label] = row["first"] - row["second"]
            out[label + "_step_s"] = row["second"]
    return out


def bench_cells(cells: Iterable[str], sizes: Iterable[tuple[int, int]], batch: int = 64, input_size: int = 32,
                layers: int = 1, device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 2,
                memory_sizes: Iterable[tuple[int, int]] = (), reference_sizes: Iterable[tuple[int, int]] = (),
                progress: Callable[[BenchResult], None] | None = None,
                max_load: float | None = 0.25, patience: int = 2,
                previous: Sequence[BenchResult] = (),
                derived_sizes: Iterable[tuple[int, int]] = ()) -> list[BenchResult]:
    """:func:`bench_cell` for every (hidden, seq) in ``sizes`` and every cell (sizes outermost).

    ``previous``: results of an earlier run to keep instead of measuring again, when they were
    measured the same way and no loaded round had to be used (see :func:`time_runs`).
    """
    memory_sizes, reference_sizes, derived_sizes = set(memory_sizes), set(reference_sizes), set(derived_sizes)
    kept = {(r.cell, r.hidden, r.seq): r for r in previous
            if r.batch == batch and r.input_size == input_size and r.layers == layers
            and not r.extra.get("loaded_rounds_used", 0)}
    out = []
    for hidden, seq in sizes:
        for cell in cells:
            size = (hidden, seq)
            r = kept.get((cell, hidden, seq))
            if r is None or (size in memory_sizes and r.peak_mb is None) \
                    or (size in reference_sizes and r.reference_ms is None) \
                    or (size in derived_sizes and r.derived_ms is None):
                r = bench_cell(cell, hidden, seq, batch, input_size, layers, device, repeats, warmup,
                               memory=size in memory_sizes, with_reference=size in reference_sizes,
                               max_load=max_load, patience=patience, with_derived=size in derived_sizes)
            out.append(r)
            if progress is not None:
                progress(r)
    return out


# --------------------------------------------------------------------------------------------------
# the machine and the allocator

def allocator_setting() -> str:
    """The allocator in effect, in words (:func:`cellsearch.allocator.describe`)."""
    from .allocator import describe

    return describe()


def _cpu_model() -> str:
    """/proc/cpuinfo's model name, with family/model and the widest vector extension."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                    fields[key] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    vec = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    name = fields.get("model name", platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}, {vec})"


def machine_info(device: str | torch.device = "cpu", build_time: bool = False) -> dict[str, str]:
    """CPU model, cores, torch threads and version, device, allocator, which kernels the fused paths use
    (``build_time``: also time a fresh build of the C library, about a second or two)."""
    from .fast.fused import onednn_available

    device = torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "allocator": allocator_setting(),
        "oneDNN linear (fused paths' GEMMs)": "yes" if onednn_available() else "no",
        "fused paths' pointwise kernels": _pointwise_backend(build_time),
    }
    return info


def _pointwise_backend(build_time: bool) -> str:
    """Which pointwise kernels the fused paths use, and what building the C library costs here."""
    from .fast import csrc

    if csrc.library() is None:
        return f"torch ops (C library unavailable: {csrc.build_error()})"
    seconds = csrc.time_build() if build_time else None
    cost = f"a fresh build takes {seconds:.1f} s" if seconds is not None else "build time not measured"
    return f"C library, compiled once per machine and cached ({cost}; no per-cell compile)"


# --------------------------------------------------------------------------------------------------
# output

def _fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def write_markdown(results: Sequence[BenchResult], path: str | Path, info: dict[str, str] | None = None,
                   main_sizes: Sequence[tuple[int, int]] | None = None, command: str | None = None) -> Path:
    """docs/bench/BENCH.md: one table per main size, then every measured size compactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = info or machine_info()
    sizes = list(main_sizes or sorted({(r.hidden, r.seq) for r in results}))
    lines = ["# cellsearch bench", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    r0 = results[0] if results else None
    if r0 is not None:
        lines += [f"Forward + backward of `out.sum()` for a {r0.layers}-layer network, batch {r0.batch}, "
                  f"input size {r0.input_size}, float32; median of {r0.repeats} runs after warm-up, "
                  "interleaved with `torch.nn.LSTM` of the same sizes in the same process. "
                  "**× nn.LSTM** = nn.LSTM's time / the cell's time (> 1: faster).", ""]
    lines += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()] + [""]
    lines += ["Path: `native` = torch's LSTM/GRU kernel (the spec is exactly LSTM/GRU); `fused` = one "
              "whole-sequence autograd function with a hand-written backward (cellsearch.fast); "
              "`derived` = the whole-sequence function generated from the cell's own step "
              "(cellsearch.fast.derived: traced forward and backward step graphs, Inductor-compiled C++ "
              "pointwise work); `reference` = the step-by-step loop. *Reference loop ×* is the same cell "
              "with fast paths off and *derived ×* the same cell forced onto the derived path, timed in "
              "the same rounds. Peak memory: one run's peak resident-set growth (CPU) or "
              "peak allocated memory (CUDA), see cellsearch/bench.py. *× GEMM floor*: the cell's time "
              "over the time of its matrix products alone (input GEMM, one recurrent GEMM per step and "
              "direction, post-loop weight gradients; `GemmFloor` in cellsearch/bench.py), timed in the "
              "same rounds; *µs/step over floor*: what the rest costs per time step. *First call*: the first forward + "
              "backward of a new model (plan, weight reorders, first allocations; tracing and compiling "
              "for the derived path, whose own first call is *derived first s*: it compiles on first "
              "use on a machine and loads from the private cache afterwards).", ""]
    discarded = sum(r.extra.get("discarded_rounds", 0) for r in results)
    used = sum(r.extra.get("loaded_rounds_used", 0) for r in results)
    if discarded:
        lines += [f"The machine was shared: {discarded} timing rounds during which other processes kept a "
                  f"CPU busy were discarded and re-run ({used} of them had to be kept when clean rounds "
                  "ran short).", ""]
    for hidden, seq in sizes:
        rows = [r for r in results if (r.hidden, r.seq) == (hidden, seq)]
        if not rows:
            continue
        ref = statistics.median(r.ref_tokens_per_s for r in rows)
        lines += [f"## hidden {hidden}, sequence {seq} (nn.LSTM ≈ {ref:,.0f} tokens/s)", "",
                  "| cell | path | tokens/s | × nn.LSTM | reference loop × | derived × | × GEMM floor "
                  "| µs/step over floor | peak MB | × nn.LSTM memory | first call s | derived first s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r.cell} | {r.path} | {r.tokens_per_s:,.0f} | **{r.ratio:.2f}** | "
                         f"{_fmt(r.reference_ratio)} | {_fmt(r.derived_ratio)} | {_fmt(r.floor_ratio)} | "
                         f"{_fmt(r.over_floor_us, '.0f')} | {_fmt(r.peak_mb, '.0f')} | "
                         f"{_fmt(r.memory_ratio)} | {r.first_call_s:.2f} | {_fmt(r.derived_first_s)} |")
        lines.append("")
    others = sorted({(r.hidden, r.seq) for r in results} - set(sizes))
    if others:
        cells = list(dict.fromkeys(r.cell for r in results))
        head = " | ".join(f"{h}/{s}" for h, s in others)
        lines += ["## × nn.LSTM at other sizes (hidden/sequence)", "", f"| cell | {head} |",
                  "|---|" + "---:|" * len(others)]
        for c in cells:
            vals = []
            for size in others:
                match = [r for r in results if r.cell == c and (r.hidden, r.seq) == size]
                vals.append(f"{match[0].ratio:.2f}" if match else "–")
            lines.append(f"| {c} | " + " | ".join(vals) + " |")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def write_chart(results: Sequence[BenchResult], path: str | Path, seq_hidden: int | None = None,
                hidden_seq: int | None = None) -> Path | None:
    """PNG: × nn.LSTM against sequence length (at ``seq_hidden``) and hidden size (at ``hidden_seq``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = list(dict.fromkeys(r.cell for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    panels = [("seq", seq_hidden, "hidden", "sequence length"), ("hidden", hidden_seq, "seq", "hidden size")]
    cmap = plt.get_cmap("tab20")
    for ax, (xkey, fixed, fixkey, label) in zip(axes, panels):
        for i, c in enumerate(cells):
            pts = sorted((getattr(r, xkey), r.ratio) for r in results
                         if r.cell == c and (fixed is None or getattr(r, fixkey) == fixed))
            if len(pts) >= 2:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c, color=cmap(i % 20))
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_title(f"× torch.nn.LSTM vs {label}" + (f" ({fixkey} {fixed})" if fixed else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("forward+backward speed / nn.LSTM")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_json(path: str | Path) -> list[BenchResult]:
    """Results written by :func:`write_json` (an empty list when the file does not exist)."""
    import json

    path = Path(path)
    if not path.exists():
        return []
    names = {f.name for f in fields(BenchResult)}
    rows = json.loads(path.read_text()).get("results", [])
    return [BenchResult(**{k: v for k, v in row.items() if k in names}) for row in rows]


def write_json(results: Sequence[BenchResult], path: str | Path, info: dict[str, str] | None = None) -> Path:
    """All measurements as JSON (for README tables and later comparisons)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "tokens_per_s": r.tokens_per_s, "ratio": r.ratio,
             "reference_ratio": r.reference_ratio, "derived_ratio": r.derived_ratio} for r in results]
    path.write_text(json.dumps({"machine": info or machine_info(), "results": rows}, indent=1))
    return path
