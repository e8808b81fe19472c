"""The derived path's time loops on CUDA, captured once as CUDA Graphs and replayed.

On a GPU the derived path's step is a few launches (a GEMM and one generated Triton kernel per pointwise
region, :mod:`cellsearch.fast.pwgen_triton`), but each step also pays the Python that issues them: the
fx graph's call, Triton's launcher, torch's dispatch. Measured on an H200 (docs/bench/GPU.md; ``ur_lstm``
at H = 256, T = 784, batch 128), the derived path then took 144 ms for a forward + backward against
cuDNN's 32 ms: ~180 µs a step for work the GPU finishes in a few tens of µs. A CUDA Graph records the
kernels of the whole loop once and replays them with one call, so the Python runs once a sequence shape
instead of once a step.

One :class:`Captured` holds a loop's graphs and the buffers they read and write: the static inputs, the
forward's saved values and the outputs. A replay overwrites them, so an instance serves one sequence at a
time:

- a forward that keeps its values for a backward holds its instance until its tape is freed (after the
  backward, or with its autograd graph: :func:`weakref.finalize`);
- a second sequence of the same shapes meanwhile (another layer with the same graphs, a model called
  twice before one backward) gets an instance of its own, up to :data:`MAX_INSTANCES` per shape and
  :data:`MAX_SHAPES` shapes; beyond that the loop runs step by step;
- a capture that fails leaves every loop of the graph set step by step, the reason in ``note``
  (:func:`cellsearch.fast.explain` shows it);
- every tensor handed back to the caller (outputs, final state, gradients) is a copy, never a buffer a
  later replay overwrites.

The first sequence of each shape runs step by step (it compiles and autotunes what the graph then
records); the backward is captured at its second pass for the same reason. ``CELLSEARCH_CUDA_GRAPHS=0``
turns capture off.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Captured", "Graphs", "MAX_INSTANCES", "MAX_SHAPES", "enabled", "release_on_free"]

#: instances (captured loops with their buffers) per sequence shape and graph set; each holds the
#: memory of one sequence's forward values
MAX_INSTANCES = 4
#: sequence shapes captured per graph set (sequences of many lengths would otherwise keep the memory of
#: every length); other shapes run step by step
MAX_SHAPES = 8


def enabled(device: torch.device | str) -> bool:
    """Whether loops on ``device`` are captured: CUDA, unless ``CELLSEARCH_CUDA_GRAPHS=0``."""
    if torch.device(device).type != "cuda":
        return False
    return os.environ.get("CELLSEARCH_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")


def _dense(t: Tensor | None) -> bool:
    """Whether ``t``'s elements fill its memory once each (any order of dimensions; a broadcast view
    does not): a buffer of the same layout can hold a copy of it."""
    if t is None:
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _layout(t: Tensor | None) -> Any:
    return None if t is None else (tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


def _static(t: Tensor | None) -> Tensor | None:
    """A buffer of ``t``'s shape and layout holding its values (a graph's static input)."""
    if t is None:
        return None
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def _fill(dst: Sequence[Tensor | None], src: Sequence[Tensor | None]) -> None:
    for d, s in zip(dst, src):
        if d is not None and s is not None and d is not s:
            d.copy_(s)


class Captured:
    """One captured forward loop (and, from its second backward on, its backward loop) with the
    buffers they read and write."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.pool: Any = None                       # the graphs' memory pool, and the stream they are
        self.stream: Any = None                     # warmed up and captured on (:func:`_capture`)
        self.fw: Any = None
        self.inputs: list[Tensor | None] = []       # xp, xs, *state, *inv
        self.inv: list[Tensor] = []
        self.out: Tensor | None = None
        self.final: list[Tensor] = []
        self.saved: list[tuple[Tensor, ...]] = []
        self.bw: Any = None
        self.bw_inputs: list[Tensor] = []           # dout, *dstate, *pre
        self.bw_result: Any = None
        self.bw_warm = False                        # its backward ran once step by step


class Graphs:
    """The captured loops of one :class:`cellsearch.fast.derived.StepGraphs`, by sequence shape."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: dict[Any, list[Captured]] = {}
        self.count: dict[Any, int] = {}
        self.seen: set[Any] = set()
        #: why capturing failed (the loops then run step by step), None while it works
        self.note: str | None = None

    def _take(self, key: Any) -> tuple[Captured | None, bool]:
        """(a free instance or None, whether to capture a new one)."""
        with self.lock:
            if self.note is not None:
                return None, False
            if key not in self.seen:             # the first sequence of a shape runs step by step
                self.seen.add(key)
                return None, False
            if key not in self.count and len(self.count) >= MAX_SHAPES:
                return None, False
            free = self.free.get(key)
            if free:
                return free.pop(), False
            if self.count.get(key, 0) >= MAX_INSTANCES:
                return None, False
            self.count[key] = self.count.get(key, 0) + 1
            return None, True

    def give(self, inst: Captured) -> None:
        with self.lock:
            self.free.setdefault(inst.key, []).append(inst)

    def _failed(self, what: str, exc: BaseException, key: Any = None) -> None:
        """Every loop of this graph set step by step from now on, with the reason; ``key``: the shape whose
        new instance was not captured."""
        with self.lock:
            if key is not None:
                self.count[key] -= 1
            self.note = f"capturing the {what} loop as a CUDA Graph failed: {type(exc).__name__}: " \
                        f"{str(exc).strip()[:200]}"

    def forward(self, run: Callable[..., Any], xp: Tensor, xs: Tensor | None, state: list[Tensor],
                inv: Sequence[Tensor], keep: bool) -> tuple[Tensor, list[Tensor], Captured] | None:
        """The forward loop ``run(xp, xs, state, inv, keep) -> (out, saved)`` (``state`` updated in place
        to the final state) replayed from a captured graph: (out, final state, instance), the instance's
        ``saved`` holding the values its backward reads; the caller hands it back with :meth:`give` once
        no backward will read them. None: run the loop step by step."""
        if not all(map(_dense, (xp, xs, *state, *inv))):
            return None                   # a broadcast view: no buffer of the same layout to copy it into
        # buffers made under torch.inference_mode cannot be written outside it: its own instances
        key = (keep, torch.is_inference_mode_enabled(), _layout(xp), _layout(xs), tuple(map(_layout, state)),
               tuple(map(_layout, inv)))
        inst, new = self._take(key)
        if inst is None and not new:
            return None
        if inst is None:
            inst = Captured(key)
            try:
                self._capture_forward(inst, run, xp, xs, state, inv, keep)
            except Exception as exc:      # anything the graph cannot record: step by step from now on
                self._failed("forward", exc, key)
                return None
        else:
            _fill(inst.inputs, [xp, xs, *state, *inv])
        assert inst.fw is not None and inst.out is not None
        inst.fw.replay()
        out, final = inst.out.clone(), [s.clone() for s in inst.final]
        if not keep:
            self.give(inst)
        return out, final, inst

    def _capture_forward(self, inst: Captured, run: Callable[..., Any], xp: Tensor, xs: Tensor | None,
                         state: list[Tensor], inv: Sequence[Tensor], keep: bool) -> None:
        inst.inputs = [_static(t) for t in (xp, xs, *state, *inv)]
        s_xp, s_xs = inst.inputs[0], inst.inputs[1]
        n = len(state)
        s_state = [t for t in inst.inputs[2:2 + n] if t is not None]
        s_inv = [t for t in inst.inputs[2 + n:] if t is not None]

        def loop() -> tuple[Tensor, list[tuple[Tensor, ...]], list[Tensor]]:
            now = list(s_state)
            out, saved = run(s_xp, s_xs, now, s_inv, keep)
            return out, saved, now

        inst.fw, (inst.out, inst.saved, inst.final) = _capture(inst, loop)
        inst.inv = s_inv

    def backward(self, inst: Captured, run: Callable[..., Any], dout: Tensor, dstate: Sequence[Tensor],
                 pre: Sequence[Tensor]) -> Any:
        """The backward loop ``run(dout, dstate, pre)`` over ``inst``'s saved values: step by step at its
        first pass, captured at its second and replayed from then on. Returns ``run``'s result; where
        replayed, its tensors are the instance's own buffers, and the caller copies what outlives the
        instance."""
        if inst.bw is None and not inst.bw_warm or self.note is not None:
            inst.bw_warm = True
            return run(dout, list(dstate), list(pre))
        if inst.bw is None:
            inst.bw_inputs = [_static(t.contiguous()) for t in (dout, *dstate, *pre)]  # type: ignore[misc]
            n = len(dstate)
            s_in = inst.bw_inputs

            def loop() -> Any:
                return run(s_in[0], list(s_in[1:1 + n]), list(s_in[1 + n:]))

            try:
                graph, result = _capture(inst, loop)
            except Exception as exc:
                self._failed("backward", exc)
                return run(dout, list(dstate), list(pre))
            inst.bw, inst.bw_result = graph, result
        else:
            _fill(inst.bw_inputs, [dout, *dstate, *pre])
        inst.bw.replay()
        return inst.bw_result


def _capture(inst: Captured, fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``fn()`` captured as a CUDA Graph in ``inst``'s pool (returns the graph and ``fn``'s result, whose
    tensors each replay overwrites), after one run on the capture stream (what a first call on a stream
    sets up, a cuBLAS workspace say, must not happen inside the capture). ``fn`` reads the static inputs
    alone and changes nothing outside its result."""
    if inst.pool is None:
        inst.pool, inst.stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream()
    stream = inst.stream
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=inst.pool, stream=stream, capture_error_mode="thread_local"):
        result = fn()
    return graph, result


def release_on_free(owner: Any, graphs: Graphs, inst: Captured) -> None:
    """Hand ``inst`` back to ``graphs`` once ``owner`` (the tape that reads its saved values) is freed."""
    weakref.finalize(owner, graphs.give, inst)
