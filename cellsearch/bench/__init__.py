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

from ..timing import LoadMeter, build_model, measure_speed, time_runs
from .compare import GemmFloor, bench_cell, bench_cells, derived_first_use
from .machine import allocator_setting, machine_info
from .memory import peak_memory
from .report import read_json, write_chart, write_json, write_markdown
from .result import BenchResult

__all__ = [
    "BenchResult", "LoadMeter", "measure_speed", "time_runs", "peak_memory", "bench_cell", "bench_cells",
    "build_model", "allocator_setting", "machine_info", "write_markdown", "write_chart", "write_json",
    "read_json", "derived_first_use", "GemmFloor",
]
