"""The compiled forms of the parallel scan (cellsearch.fast.scan_c): the plain linear-recurrence kernel
and the minGRU / minLSTM kernels with the gate math fused, against the sequential loop (|Δ| < 1e-5 in
float32, float64 to the fast-path tolerance), forward and backward, T from 1 to 4096 including T not a
power of two, on one thread and split over threads by rows and by columns; which cells take them; and
the private cache they are built into. No test asserts a timing."""

from __future__ import annotations

import os
import shutil
import stat
import warnings
from collections.abc import Iterator

import pytest
import torch
from fast_paths import assert_same, close, run_both_ways, sequential_scan

import cellsearch as cs
from cellsearch import CellSpec, fast
from cellsearch.fast import scan, scan_c
from cellsearch.fast.cache import UnsafeCacheWarning

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler: the compiled scan is not built (torch forms run)")


@pytest.fixture
def threads() -> Iterator[None]:
    """Three torch threads (the kernels split their work the same way): uneven row and column splits."""
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(old)


def test_library_builds_here() -> None:
    assert scan_c.library() is not None, scan_c.build_error()
    path = scan_c.library_path()
    assert path is not None and stat.S_IMODE(os.stat(path).st_mode) & 0o022 == 0
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("steps,batch,n", [(1, 3, 5), (5, 2, 3), (999, 16, 17), (4096, 1, 20), (4096, 4, 20)])
def test_plain_kernel_equals_sequential_loop(steps: int, batch: int, n: int, dtype: torch.dtype,
                                             threads: None) -> None:
    """scan_forward / scan_backward directly: h, ∂a, ∂b, ∂h0; (999, 16, 17) splits rows over threads,
    (4096, 1, 20) columns (n not a multiple of the 16-wide column blocks)."""
    g = torch.Generator().manual_seed(steps + n)
    a = torch.rand(steps, batch, n, generator=g, dtype=dtype)
    b = torch.randn(steps, batch, n, generator=g, dtype=dtype)
    h0 = torch.randn(batch, n, generator=g, dtype=dtype)
    w = torch.randn(steps, batch, n, generator=g, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    (sequential_scan(*leaves) * w).sum().backward()
    h = scan_c.scan_forward(a, b, h0)
    ga, gb, gh0 = scan_c.scan_backward(a, h, h0, w)
    assert (h - sequential_scan(a, b, h0)).abs().max().item() < 1e-5
    for name, want, got in zip(("da", "db", "dh0"), [t.grad for t in leaves], (ga, gb, gh0)):
        assert (want - got).abs().max().item() < 1e-5, name


FUSED = {
    "mingru": CellSpec(update="mingru", saturation="g", recurrence="none"),
    "mingru+identity": CellSpec(update="mingru", saturation="identity", recurrence="none"),
    "minlstm": CellSpec(update="minlstm", saturation="g", recurrence="none"),
    "minlstm+identity": CellSpec(update="minlstm", saturation="identity", recurrence="none"),
}


@pytest.mark.parametrize("name", FUSED)
def test_fused_kernels_are_chosen(name: str) -> None:
    """The fused scan is the hand-written plan (on the CPU the fallback of the derived path's C loop, which
    takes the calls it runs)."""
    model = cs.create_rnn(FUSED[name], 4, 6)
    plan = fast.plan(model.layers[0])
    if plan.path == "derived":
        plan = plan.run.fallback_plan
    reason = plan.reason
    assert reason.startswith("parallel scan of h_t") and "gates/" in reason and "fused" in reason


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", FUSED)
def test_fused_cells_equal_reference_loop(name: str, dtype: torch.dtype) -> None:
    """Outputs, final states and every gradient (weights, biases, input, initial states) of a 2-layer
    stack on the fused kernels equal the reference loop's, at T = 1, 2 and 37 (serial calls)."""
    torch.manual_seed(3)
    model = cs.create_rnn(FUSED[name], 5, 6, num_layers=2).to(dtype)
    for p in model.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    for steps in (1, 2, 37):
        x = torch.randn(3, steps, 5, dtype=dtype)
        state = tuple((0.5 * torch.randn(3, 6, dtype=dtype),) for _ in model.layers)
        assert_same(model, x, state)


@pytest.mark.parametrize("steps,batch", [(1000, 16), (4096, 1), (2047, 2)])
@pytest.mark.parametrize("name", ["mingru", "minlstm+identity"])
def test_fused_cells_long_sequences_over_threads(name: str, steps: int, batch: int, threads: None) -> None:
    """Long sequences against the reference loop, rows split over 3 threads (B = 16) or columns (B = 1 and
    2, n = 40: not a multiple of the 16-wide blocks). float64: everything to 1e-10. float32: outputs, final
    state and ∂x to 1e-5 (relative to the largest value); the weight and bias gradients are then torch's
    GEMM and sum over the B·T rows of ∂(W x + b), whose float32 rounding depends on the row order (the
    fused path keeps the batch-first order, the loop sums step by step), so they are checked in float64."""
    torch.manual_seed(steps)
    model = cs.create_rnn(FUSED[name], 3, 40)
    x = torch.randn(batch, steps, 3)
    assert_same(model.double(), x.double(), None)
    model.float()
    ref, got = run_both_ways(model, x, None, False), run_both_ways(model, x, None, True)
    close(ref[0], got[0], 1e-5, "output")
    close(ref[1][0][0], got[1][0][0], 1e-5, "final state")
    close(ref[2]["x"], got[2]["x"], 1e-5, "gradient of x")


def test_time_major_input_and_the_torch_fallback() -> None:
    """A cell called directly with a contiguous time-major x (the projection is not a transposed view),
    and the fused runner with the compiled forms off (it runs the torch-op scan): both equal the loop."""
    torch.manual_seed(0)
    cell = cs.create_rnn("minlstm", 4, 8).double().layers[0]
    x = torch.randn(50, 3, 4, dtype=torch.float64)
    with fast.enabled(False):
        want = cell.forward_sequence(x)[0]
    close(want, cell.forward_sequence(x)[0], 1e-12, "time-major")
    model = cs.create_rnn("mingru", 4, 8).double()
    scan.use_compiled(False)
    try:
        assert_same(model, torch.randn(2, 30, 4, dtype=torch.float64), None)
    finally:
        scan.use_compiled(True)


@pytest.mark.parametrize("spec,why", [
    (CellSpec(update="mingru", gate="refined", saturation="identity", recurrence="none"), "plain sigmoid gate"),
    (CellSpec(update="mingru", gate="ur", saturation="g", recurrence="none"), "plain sigmoid gate"),
    (CellSpec(update="mingru", saturation="tanh", recurrence="none"), "identity or g only"),
])
def test_fused_kernel_declines_other_gates_and_saturations(spec: CellSpec, why: str) -> None:
    """The fused kernel says why; the generic scan serves the cell instead and equals the loop."""
    cell = cs.create_cell(spec, 3, 4)
    offer = scan.mingru(cell)
    assert isinstance(offer, str) and why in offer
    model = cs.create_rnn(spec, 3, 4).double()
    assert "gates/" not in fast.plan(model.layers[0]).reason
    assert_same(model, torch.randn(2, 20, 3, dtype=torch.float64), None)


def test_a_planted_library_is_not_loaded(tmp_path, monkeypatch) -> None:
    """A file at the cache name that others can write is never loaded: the library is rebuilt in a
    private temporary directory, with a warning."""
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr(scan_c, "_lib", False)
    assert scan_c.library() is not None
    built = scan_c.library_path()
    assert built is not None and tmp_path in built.parents
    os.chmod(built, 0o666)
    monkeypatch.setattr(scan_c, "_lib", False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert scan_c.library() is not None
    assert any(issubclass(w.category, UnsafeCacheWarning) for w in seen)
    assert scan_c.library_path() != built and tmp_path not in scan_c.library_path().parents


def test_disabled_library_declines_with_the_reason(monkeypatch) -> None:
    monkeypatch.setenv("CELLSEARCH_FAST_C", "0")
    monkeypatch.setattr(scan_c, "_lib", False)
    assert scan_c.library() is None and "CELLSEARCH_FAST_C=0" in (scan_c.build_error() or "")
    cell = cs.create_rnn("mingru", 3, 4).layers[0]
    assert "unavailable" in scan.mingru(cell)
    assert isinstance(scan.linear(cell), fast.paths.Plan)
    monkeypatch.setattr(scan_c, "_lib", False)
