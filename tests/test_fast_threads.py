"""The compiled C pointwise kernels split a step's batch rows over torch's threads (each thread with its own
scratch): the threaded calls give bit-for-bit the serial results, and both match the reference loop."""

from __future__ import annotations

import os

import pytest
import torch
from fast_paths import assert_same, forced, hand_kernels_first, run_both_ways  # noqa: F401  (autouse)

import cellsearch as cs
from cellsearch import fast
from cellsearch.fast import ckernels, csrc, paths

#: one spec per C family and gate form: plain, UR (r block), refined (short connection), tied, β form
CASES = ["lstm", "ur_lstm", "refined_lstm", "u_lstm", "gru", "ur_gru", "refined_gru", "mgu", "refined_mgu",
         "star", "r_lstm"]


@pytest.fixture(autouse=True)
def _two_threads():
    if csrc.library() is None:
        pytest.skip(f"C kernels unavailable: {csrc.build_error()}")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _model(name: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = cs.create_rnn(name, 6, 24, num_layers=2).to(dtype)
    return model, torch.randn(9, 7, 6, dtype=dtype)     # batch 9: the rows do not split evenly


def _state(model: torch.nn.Module, batch: int, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(1)
    return tuple(tuple(0.5 * torch.randn(batch, layer.hidden_size, generator=g, dtype=dtype)
                       for _ in range(layer.update.n_states)) for layer in model.layers)


@pytest.mark.parametrize("name", CASES)
def test_threaded_rows_equal_serial_rows_bit_for_bit(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(name, torch.float32)
    with forced("fused-c", model, monkeypatch):
        monkeypatch.setattr(ckernels, "PARALLEL_MIN", 1 << 40)        # every call serial
        serial = run_both_ways(model, x, None, True)
        monkeypatch.setattr(ckernels, "PARALLEL_MIN", 0)              # every call threaded
        threaded = run_both_ways(model, x, None, True)
    assert torch.equal(serial[0], threaded[0])
    for a, b in zip(serial[1], threaded[1]):
        assert torch.equal(a, b)
    assert serial[2].keys() == threaded[2].keys()
    for key in serial[2]:
        assert torch.equal(serial[2][key], threaded[2][key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["ur_lstm", "gru", "star", "refined_mgu"])
def test_threaded_rows_match_the_reference_loop(name: str, dtype: torch.dtype,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(name, dtype)
    monkeypatch.setattr(ckernels, "PARALLEL_MIN", 0)
    monkeypatch.setitem(paths.NATIVE, "lstm", "cuda")
    old = paths.use_c(True)
    try:
        reasons = [fast.plan(layer).reason for layer in model.layers]
        assert all("C pointwise kernels" in r for r in reasons), reasons
        assert_same(model, x)
        assert_same(model, x, _state(model, x.shape[0], dtype))
    finally:
        paths.use_c(old)


_ONE_RUNTIME = """
import json, torch
from cellsearch.fast import csrc
csrc.library()
maps = open("/proc/self/maps").read()
print(json.dumps({"threaded": csrc.threaded(), "error": csrc.build_error(),
                  "gomp": sorted({l.split()[-1] for l in maps.splitlines() if "libgomp" in l})}))
"""


def test_library_reports_whether_it_is_threaded() -> None:
    """In a fresh process that loads torch and the C kernels only (other libraries, e.g. scikit-learn, bring
    their own libgomp into a test process): a threaded build adds no second OpenMP runtime."""
    import json
    import subprocess
    import sys

    assert isinstance(csrc.threaded(), bool)
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc/self/maps to read the mapped libraries from")
    run = subprocess.run([sys.executable, "-c", _ONE_RUNTIME], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    if got["threaded"]:
        assert len(got["gomp"]) == 1, f"two OpenMP runtimes loaded: {got['gomp']}"


def test_without_gnu_openmp_the_library_is_built_serial_and_still_serves(tmp_path, monkeypatch) -> None:
    """Where torch does not run on GNU OpenMP the library is built without -fopenmp (never a second OpenMP
    runtime in the process): it reports itself serial and the C kernels still match the reference loop."""
    if not csrc._compilers():
        pytest.skip("no C compiler")
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "cache"))
    for name, value in (("_lib", False), ("_path", None), ("_error", None), ("_threaded", False)):
        monkeypatch.setattr(csrc, name, value)
    monkeypatch.setattr(csrc, "_gnu_openmp_loaded", lambda: False)
    assert csrc.library() is not None, csrc.build_error()
    assert not csrc.threaded()
    monkeypatch.setattr(ckernels, "PARALLEL_MIN", 0)      # asks for threads; the serial build ignores it
    monkeypatch.setitem(paths.NATIVE, "lstm", "cuda")
    old = paths.use_c(True)
    try:
        for name in ("ur_lstm", "gru"):
            model, x = _model(name, torch.float64)
            assert all("C pointwise kernels" in fast.plan(layer).reason for layer in model.layers)
            assert_same(model, x)
    finally:
        paths.use_c(old)
