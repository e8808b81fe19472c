"""Comparisons: a cell against torch.nn.LSTM (interleaved, same process), its reference loop, its derived
path, its GEMM floor; the first use of the derived path."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._env import env_var
from ..timing import build_model, forward_backward, time_runs
from .memory import peak_memory
from .result import BenchResult

__all__ = ["bench_cell", "bench_cells", "GemmFloor", "derived_first_use"]


def _path(model: nn.Module) -> str:
    layers = getattr(model, "layers", None)
    if layers is None:
        return "torch"
    from .. import fast

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
    t0 = time.perf_counter()
    forward_backward(model, x.clone().requires_grad_(True))            # first call: plans, reorders, allocations
    first = time.perf_counter() - t0
    path = _path(model)                                  # as settled by the first call (a derived plan may
                                                         # hand its cell back to the hand-written kernel)
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
    [dW; db] = [X 1]ᵀ dXP and the input gradient dXP·W (one large GEMM each). A deep transition's layers
    (Pascanu et al. DT / DT(S)) add, per layer V [out, in], one GEMM per step in each direction and a
    post-loop weight gradient; its shortcut W_s [n, n] multiplies h_{t−1} too, so it joins U's rows (as
    the fused kernel stacks them). Every other linear map of the network (deep input / output MLPs) runs
    over all T·B rows at once: forward, input gradient and weight gradient, one large GEMM each. A
    saturation's matrices fold into the one step product (asRNN's fused loop), but its map P = U_f D_f⁻¹
    of every step's output is counted as such a linear map over all rows (h = y P, ∂h Pᵀ, the ∂P
    reduction); the matrix exponentials forming its orthogonal matrices are not. So is a refined gate's
    projected short input x̃ = P x (d ≠ n).
    Each product runs on the fastest engine the fast paths have, so the floor is what they could reach
    with free pointwise work: where the C product library is built (:mod:`cellsearch.fast.cgemm`), the
    derived path's C loop's own products, laid out as it runs them (:func:`_floor_layer_c`: the
    projection and ∂x at every step, ∂W_ih joining the recurrent weight's pass where the loop joins
    them: :func:`_joins_projection`); else the
    fused paths' (:class:`cellsearch.fast.fused.Mat`, ``project`` and ``matmul``: oneDNN with packed
    weights for float32 on the CPU where it is faster, else ``torch.mm``). Run as a model by
    :func:`time_runs` (same rounds)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int, int, tuple[tuple[int, int], ...]]] = []
        for cell in getattr(model, "layers", []):
            with torch.no_grad():
                u = cell.recurrence.matrix()
            g, d = cell.weight_ih.shape
            # a recurrence that provides "no_recurrence" (the parallel scans' cells) has no recurrent product
            rows = 0 if "no_recurrence" in getattr(cell.recurrence, "provides", ()) else int(u.shape[0])
            steps: tuple[tuple[int, int], ...] = ()
            tr = getattr(cell, "transition", None)
            if tr is not None:
                steps = tuple(tuple(layer.weight.shape) for layer in tr.layers)
                rows += 0 if tr.shortcut is None else int(tr.shortcut.weight.shape[0])
            self.shapes.append((g, d, rows, int(u.shape[1]), steps))
        self.mlps = [tuple(m.weight.shape) for name, m in model.named_modules()
                     if isinstance(m, nn.Linear) and not name.startswith("layers.")]
        # an adaptive saturation (asRNN) maps every step's tanh output through P = U_f D_f⁻¹ [n, n]: over
        # all T·B rows at once, forward (h = y P), input gradient and weight gradient, as a linear map
        self.mlps += [(int(cell.hidden_size),) * 2 for cell in getattr(model, "layers", [])
                      if callable(getattr(getattr(cell, "saturation", None), "orthogonal", None))]
        # a refined gate's short input x̃ = P x (d ≠ n, PRIMITIVES.md §4) is a linear map over all rows too
        self.mlps += [tuple(cell.weight_proj.shape) for cell in getattr(model, "layers", [])
                      if isinstance(getattr(cell, "weight_proj", None), Tensor)]
        #: per layer, whether ∂W_ih joins the recurrent weight's post-loop pass (see :func:`_joins_projection`)
        self.joint = [_joins_projection(cell) for cell in getattr(model, "layers", [])]
        self._mats: dict[tuple[Any, ...], tuple[list[tuple[Tensor, ...]], list[tuple[Tensor, ...]]]] = {}

    def _matrices(self, x: Tensor) -> tuple[list[tuple[Tensor, ...]], list[tuple[Tensor, ...]]]:
        B, T = x.shape[0], x.shape[1]
        key = (B, T, x.dtype, x.device)
        if key not in self._mats:
            def r(*shape: int) -> Tensor:
                return torch.randn(*shape, dtype=x.dtype, device=x.device)

            mats = []
            for g, d, r_, n, steps in self.shapes:
                X = r(T * B, d)
                wide = max(g, d, r_, n, *(max(o, i) for o, i in steps))
                mats.append((X, r(g, d), r(g), r(r_, n), r(T, B, n), r(T, B, r_), r(T * B, g), r(T * B, g),
                             torch.cat([X.t(), X.new_ones(1, T * B)]), r(T, B, wide),
                             *(r(o, i) for o, i in steps), *(r(T, B, max(o, i)) for o, i in steps)))
            mlps = [(r(o, i), r(T * B, i), r(T * B, o)) for o, i in self.mlps]
            self._mats[key] = (mats, mlps)
        return self._mats[key]

    def forward(self, x: Tensor) -> Tensor:
        mats, mlps = self._matrices(x)
        with torch.no_grad():
            for (X, W, b, U, H, DA, XP, DXP, X1t, S, *trans), joint in zip(mats, self.joint):
                if not _floor_layer_c(x.shape[0], X, W, U, H, DA, DXP, S, trans, joint is not False):
                    _floor_layer(x.shape[0], X, W, b, U, H, DA, XP, DXP, X1t, trans)
            for V, IN, OUT in mlps:
                _floor_mlp(V, IN, OUT)
        return x.sum() * 0.0


def _floor_layer(B: int, X: Tensor, W: Tensor, b: Tensor, U: Tensor, H: Tensor, DA: Tensor, XP: Tensor,
                 DXP: Tensor, X1t: Tensor, trans: list[Tensor]) -> None:
    """One recurrent layer's products (see :class:`GemmFloor`); ``trans``: the transition layers' weights
    followed by one [T, B, ≥ width] work buffer each."""
    from ..fast.fused import Mat, matmul, project

    weights, bufs = trans[:len(trans) // 2], trans[len(trans) // 2:]
    project(X, W, b, XP)
    recurrent = U.shape[0] > 0
    fwd, back = (Mat(U, B), Mat(U.t(), B)) if recurrent else (None, None)
    steps_f = [Mat(v, B) for v in weights]
    steps_b = [Mat(v.t(), B) for v in weights]
    for t in range(H.shape[0]):
        if fwd is not None:
            fwd.mm(H[t])
        for v, mat, z in zip(weights, steps_f, bufs):
            mat.mm(z[t, :, :v.shape[1]])
    for t in range(H.shape[0] - 1, -1, -1):
        for v, mat, z in zip(weights, steps_b, bufs):
            mat.mm(z[t, :, :v.shape[0]])
        if back is not None:
            back.mm(DA[t])
    if recurrent:
        matmul(H.reshape(-1, H.shape[-1]).t(), DA.reshape(-1, DA.shape[-1]))
    for v, z in zip(weights, bufs):
        flat = z.reshape(-1, z.shape[-1])
        matmul(flat[:, :v.shape[1]].t(), flat[:, :v.shape[0]])
    matmul(X1t, DXP)
    matmul(DXP, W)


def _joins_projection(cell: Any) -> bool | None:
    """Whether the derived path's C loop computes ``cell``'s ∂W_ih in the recurrent weight's post-loop pass
    (that product's right factor is ∂xp itself: the LSTM family, not GRU's r⊙(U h) or MGU's U(f⊙h), whose
    ``hᵀ·∂A`` has another right factor), read from the cell's derived step graphs; None where it has
    none with a C loop (another path, or not run yet: the shapes decide, as for the fused paths)."""
    from .. import fast

    plan = fast.plan(cell)
    graphs = getattr(plan.run, "_graphs", {}) if plan.path == "derived" else {}
    for g in list(graphs.values()):
        if g.loop is not None:
            return any(b_src == "dxp" or a_src == "dxp_t" for *_, a_src, b_src in g.post)
    return None


def _floor_layer_c(B: int, X: Tensor, W: Tensor, U: Tensor, H: Tensor, DA: Tensor, DXP: Tensor, S: Tensor,
                   trans: list[Tensor], joint: bool = True) -> bool:
    """One recurrent layer's products on the engine of the derived path's C loop
    (:mod:`cellsearch.fast.cgemm`), as the loop runs them: the input projection and ∂x at every step
    (K = d), the recurrent and transition products at every step (:func:`~cellsearch.fast.cgemm.steps`),
    the post-loop weight gradients by ``cs_tn`` (∂W_ih, ∂b in the pass over ∂xp that gives the
    recurrent weight's where it spans all of ∂xp and ``joint``: the LSTM family's, as the loop does).
    False where the library does not serve it (the oneDNN floor of :func:`_floor_layer` is measured
    instead)."""
    from ..fast import cgemm

    T, d = H.shape[0], X.shape[1]
    weights, bufs = trans[:len(trans) // 2], trans[len(trans) // 2:]
    xs, dxp = X.view(T, B, d), DXP.view(T, B, -1)
    if not cgemm.steps(xs, W.t(), S[:, :, :W.shape[0]]):
        return False
    recurrent = U.shape[0] > 0
    if recurrent:
        cgemm.steps(H, U.t(), S[:, :, :U.shape[0]])
    for v, z in zip(weights, bufs):
        cgemm.steps(z[:, :, :v.shape[1]], v.t(), S[:, :, :v.shape[0]])
    for v, z in zip(weights, bufs):
        cgemm.steps(z[:, :, :v.shape[0]], v, S[:, :, :v.shape[1]])
    if recurrent:
        cgemm.steps(DA, U, S[:, :, :U.shape[1]])
    cgemm.steps(dxp, W, S[:, :, :d])
    h2d, colsum = H.reshape(-1, H.shape[-1]), DXP.new_empty(DXP.shape[1])
    for v, z in zip(weights, bufs):
        flat = z.reshape(-1, z.shape[-1])
        cgemm.tn(flat[:, :v.shape[1]], flat[:, :v.shape[0]])
    if recurrent and joint and DA.shape[-1] == DXP.shape[1]:
        cgemm.tn_parts([h2d], DXP, colsum, X)
    else:
        if recurrent:
            cgemm.tn(h2d, DA.reshape(-1, DA.shape[-1]))
        cgemm.tn(X, DXP, colsum)
    return True


def _floor_mlp(V: Tensor, IN: Tensor, OUT: Tensor) -> None:
    """A linear map over all T·B rows: forward, input gradient, weight gradient."""
    from ..fast.fused import matmul

    matmul(IN, V.t())
    matmul(OUT, V)
    matmul(OUT.t(), IN)


class _ReferenceOnly(nn.Module):
    """Runs the wrapped model with fast paths off (the reference loop)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        from .. import fast

        with fast.enabled(False):
            return self.model(x)


class _DerivedOnly(nn.Module):
    """Runs the wrapped model on the derived path (:func:`cellsearch.fast.force_derived`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        from .. import fast

        with fast.force_derived():
            return self.model(x)


def derived_first_use(cell: str, hidden: int = 256, seq: int = 200, batch: int = 64, input_size: int = 32,
                      cache: str | Path | None = None, timeout: float = 600.0,
                      compiler: str | None = None) -> dict[str, float]:
    """First-use cost of ``cell``'s derived path in fresh processes: ``cold`` with an empty private cache
    (the once-per-machine cost: tracing and compiling the step graphs) and ``warm`` with the cache that
    run left (tracing, compiled code loaded from the cache). Each figure is the first forward +
    backward minus the second one, in seconds; ``dynamo`` is 1.0 when the warm run imported
    ``torch._dynamo``. ``cache``: the cache directory to use (default a fresh temporary one, removed
    afterwards); ``compiler``: ``CELLSEARCH_DERIVED_COMPILER`` for the runs (auto | c | inductor;
    default: as set here)."""
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
        "print(json.dumps({'first': ts[0], 'second': ts[1], 'path': path,\n"
        "                  'dynamo': 'torch._dynamo' in sys.modules}))\n"
    )
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cellsearch-bench-cache-") as tmp:
        env = {**os.environ, "CELLSEARCH_CACHE": str(cache or tmp)}
        if compiler is not None:
            env["CELLSEARCH_DERIVED_COMPILER"] = compiler
        for label in ("cold", "warm"):
            args = [sys.executable, "-c", code, cell, str(hidden), str(seq), str(batch), str(input_size),
                    str(torch.get_num_threads())]
            res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
            if res.returncode != 0:
                raise RuntimeError(f"derived first-use run failed: {res.stderr.strip()[-500:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            out[label] = row["first"] - row["second"]
            out[label + "_step_s"] = row["second"]
            out["dynamo"] = float(row["dynamo"])
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
