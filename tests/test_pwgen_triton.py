"""The Triton back-end of the pointwise IR (cellsearch.fast.pwgen_triton), tested without a GPU.

- In Triton's interpreter (``TRITON_INTERPRET=1``, set by a fixture before any kernel module is
  imported: ``triton.jit`` reads it when it decorates) on CPU tensors: the forward and backward step
  graphs of every registered cell and of a test-local plugin primitive, lowered and run through the
  generated kernels, equal the same graphs run by torch (float64 to 1e-10, float32 to 1e-5, relative
  to the largest value: tests/fast_paths.py ``close``); every op of the IR against torch; whole
  sequences (a DerivedSequence whose step graphs are compiled by this back-end) equal the reference
  loop with all gradients.
- With Triton's real compiler, for an sm_90 target (no driver needed): the generated source of every
  registered cell compiles to a cubin, so the kernels the interpreter runs are also valid GPU code.
- The module cache: a planted file is not loaded.

The same checks on a CUDA device are in tests/test_cuda.py. No test asserts a timing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fast_paths import TOL, assert_same, close

import cellsearch as cs
from cellsearch import fast, registry
from cellsearch.fast import cache, derived, inductor, pwgen
from cellsearch.fast import pwgen_triton as pt

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    # where-selects evaluate both branches: numpy warns about the lanes that are not selected
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

B, D, N = 2, 4, 6
DTYPES = [torch.float64, torch.float32]


@pytest.fixture(scope="module", autouse=True)
def interpret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Triton's interpreter for the whole module, and a cache of its own. triton.jit reads
    TRITON_INTERPRET when it decorates: the generated modules are imported after this is set. Triton's
    own library is decorated when triton is imported, so it is imported first, in compiling mode (as
    Inductor imports it), which the real-compiler tests below need."""
    import triton  # noqa: F401

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        mp.setenv("CELLSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module", autouse=True)
def plugin_primitives() -> Iterator[None]:
    """The plugin-style JANET update and softsign saturation of tests/test_derived.py."""
    from test_derived import JanetTest, SoftsignTest

    for cls in (JanetTest, SoftsignTest):
        registry.register_primitive(cls, origin="package test_pwgen_triton")
    yield
    for cls in (JanetTest, SoftsignTest):
        registry.unregister("primitive", cls.name, cls.role)


def _plugin() -> cs.CellSpec:
    from test_derived import PLUGIN

    return PLUGIN


# ------------------------------------------------------------------------------------------------
# the step graphs of a cell, with real inputs (as derived.py builds and runs them)

def _graphs(spec: Any, dtype: torch.dtype, device: str = "cpu", batch: int = B,
            hidden: int = N) -> tuple[derived.StepGraphs, list, list]:
    """The cell's step graphs for ``batch``, its loop invariants and one step's inputs (state perturbed)."""
    torch.manual_seed(0)
    cell = cs.create_rnn(spec, D, hidden).to(dtype).to(device).layers[0]
    x = torch.randn(3, batch, D, dtype=dtype, device=device)
    with torch.no_grad():
        _, xp, xs, st = cell._recurrence_inputs(x, cell.initial_state(batch, x))
        traced = derived._trace(cell, batch)
        g = derived.derive(cell, xp[0], None if xs is None else xs[0], tuple(st), traced=traced)
        inv = list(traced.prologue(xp)(*traced.params(cell)))
    var = [xp[0].contiguous(), *((xs[0].contiguous(),) if xs is not None else ()),
           *[(s + 0.5 * torch.randn_like(s)).contiguous() for s in st]]
    return g, inv, var


def _compiled(g: derived.StepGraphs, inv: list, var: list) -> tuple[Any, Any]:
    """Forward and backward step graphs through the Triton kernels, lowered as the derived path would:
    the forward for the call's inputs, the backward for the layouts the compiled forward returns."""
    fw = pwgen.lower(g.modules["forward"], [*inv, *var])
    bw = pwgen.lower(g.modules["backward"], derived._c_layouts(g, fw.out_layouts))
    forward, backward = pt.compile_lowered([fw, bw], var[0].device)
    return forward, backward


def _same(got: Any, want: Any, tol: float, what: str) -> None:
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), f"{what} {i}"
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {i}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
            close(b, a, tol, f"{what} {i}")


def check_step_graphs(spec: Any, dtype: torch.dtype, device: str = "cpu") -> None:
    """The cell's forward and backward step graphs through Triton equal the graphs run by torch."""
    g, inv, var = _graphs(spec, dtype, device)
    forward, backward = _compiled(g, inv, var)
    tol = TOL[dtype]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = g.modules["forward"](*inv, *var)
        got = forward(*inv, *var)
        _same(got, want, tol, "forward output")
        gen = torch.Generator(device=device).manual_seed(2)
        grads = [torch.randn(t.shape, generator=gen, dtype=dtype, device=device) for t in got[: g.n_out]]
        pre = list(g.bw_pre(*inv)) if g.n_pre else []
        args = [*inv, *pre, *got[g.n_out:g.n_out + g.n_saved], *grads]
        dxp = [torch.zeros_like(var[0]) for _ in range(2)]
        want = g.modules["backward"](*args, *dxp[:1] if g.dxp_inplace else ())
        got = backward(*args, *dxp[1:] if g.dxp_inplace else ())
    _same(got, want, tol, "backward output")
    if g.dxp_inplace:
        close(dxp[0], dxp[1], tol, "dxp written in place")


# ------------------------------------------------------------------------------------------------
# every registered cell (and the plugin), step graph by step graph, in the interpreter

@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", [*cs.list_cells(), "plugin"])
def test_every_registered_cell_step_graphs_in_triton_equal_torch(name: str, dtype: torch.dtype) -> None:
    check_step_graphs(_plugin() if name == "plugin" else name, dtype)


# ------------------------------------------------------------------------------------------------
# every op of the IR against torch

def _every_op(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x > 0, y of both signs: one output per op (small arguments where a naive formula loses digits)."""
    s = y * 1e-4
    return (torch.exp(y), torch.expm1(y), torch.expm1(s), torch.log(x), torch.log1p(y.abs()), torch.log1p(s),
            torch.sqrt(x), torch.rsqrt(x), torch.abs(y), torch.sigmoid(y), torch.tanh(3 * y), torch.tanh(s),
            torch.reciprocal(x), torch.sign(y), torch.sin(y), torch.cos(y), -y, x - y, x / y,
            torch.pow(x, y), torch.pow(y, 3.0), torch.pow(y, -2.0), torch.pow(y, 1.5),
            torch.maximum(x, y), torch.minimum(x, y), torch.clamp(y, -0.5, 0.5), torch.relu(y),
            torch.where(torch.logical_or(torch.logical_and(y > 0, x < 1), torch.logical_not(y <= -1)), y, x),
            torch.where(torch.logical_or(torch.logical_or(x == y, torch.logical_and(x != 1, x >= y)), x < 0.2), x, y),
            torch.where(y > 0, y, float("-inf")), torch.where(y > 1, float("inf"), y * 0.1),
            torch.where(y > 1.5, float("nan"), y), x + 0.1 * y)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_every_op_of_the_ir_equals_torch(dtype: torch.dtype) -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 37, generator=gen, dtype=dtype) * 2 + 0.05
    y = torch.randn(5, 37, generator=gen, dtype=dtype) * 2
    y[0, :4] = torch.tensor([0.0, -1.0, 2.0, -3.0], dtype=dtype)      # pow of a negative integer power
    gm = make_fx(_every_op, tracing_mode="fake")(x, y)
    lowered = pwgen.lower(gm, [x, y])
    ops = {op.name for k in lowered.kernels for lp in k.loops for op in lp.body}
    assert ops == set(pwgen.OPS) | {"const", "load"}, set(pwgen.OPS) ^ ops
    (run,) = pt.compile_lowered([lowered], "cpu")
    want, got = _every_op(x, y), run(x, y)
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype, i
        torch.testing.assert_close(a, b, rtol=rtol, atol=0.0, equal_nan=True, msg=lambda m, i=i: f"output {i}: {m}")


# ------------------------------------------------------------------------------------------------
# whole sequences: the derived path with its step graphs compiled by this back-end

@pytest.fixture
def triton_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The derived path compiles its step graphs with pwgen_triton.compile_graph (through the hook it
    calls Inductor by, which has the same calling convention), at every size, from the first call.
    Returns the list the compiles are counted in."""
    compiled: list[int] = []

    def compile_graph(gm: Any, example_inputs: Any) -> Any:
        compiled.append(1)
        return pt.compile_graph(gm, example_inputs)

    monkeypatch.delenv("CELLSEARCH_DERIVED_BACKEND", raising=False)
    monkeypatch.setenv("CELLSEARCH_DERIVED_COMPILER", "inductor")
    monkeypatch.setenv("CELLSEARCH_DERIVED_MIN", "0")
    monkeypatch.setenv("CELLSEARCH_DERIVED_AFTER", "0")
    monkeypatch.setattr(inductor, "compile_graph", compile_graph)
    monkeypatch.setattr(inductor, "unavailable", lambda device="cpu": None)
    monkeypatch.setattr(inductor, "preload", lambda: None)
    return compiled


SEQUENCES = [("ur_lstm", torch.float64), ("ur_lstm", torch.float32), ("gru", torch.float64),
             ("plugin", torch.float64), ("mingru", torch.float32)]


@pytest.mark.parametrize("name,dtype", SEQUENCES, ids=[f"{n}-{str(d)[6:]}" for n, d in SEQUENCES])
def test_derived_sequence_with_triton_steps_equals_reference(name: str, dtype: torch.dtype,
                                                             triton_steps: list[int]) -> None:
    torch.manual_seed(0)
    model = cs.create_rnn(_plugin() if name == "plugin" else name, D, N).to(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B + 1, 4, D, generator=gen, dtype=dtype)
    state = model.initial_state(B + 1, x) if hasattr(model, "initial_state") else None
    if state is not None:
        state = tuple(tuple(0.5 * torch.randn(s.shape, generator=gen, dtype=dtype) for s in layer) for layer in state)
    with fast.force_derived():
        assert {fast.plan(layer).path for layer in model.layers} == {"derived"}
        assert_same(model, x, state)
        graphs = [g for g in fast.plan(model.layers[0]).run._graphs.values() if g.compiled]  # type: ignore[union-attr]
    assert len(graphs) == 1 and not graphs[0].bw_pending
    assert len(triton_steps) == 2                           # forward and backward step graphs



# ------------------------------------------------------------------------------------------------
# the generated source through Triton's real compiler (a GPU target, no GPU needed)

_PTR = {"float32": "*fp32", "float64": "*fp64", "bool": "*i1"}


def _signature(k: pwgen.Kernel, fn: Any) -> dict[str, str]:
    """The pointer types of a kernel's parameters (inputs, then its new outputs), by name."""
    types = [_PTR[i.dtype] for i in k.inputs] + [_PTR[o.dtype] for o in k.outputs if o.into is None]
    return dict(zip(fn.arg_names, types))


def _cubins(lowered: list[pwgen.Lowered]) -> list[str]:
    """The PTX of the graphs' kernels, compiled (to cubins) for sm_90 by Triton's compiler."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    named = [(f"pw{i}_{k.name}", k) for i, lw in enumerate(lowered) for k in lw.kernels]
    mod = pt.load(pt.source(named))
    out = []
    for name, k in named:
        fn = getattr(mod, name)
        assert isinstance(fn, triton.runtime.JITFunction), type(fn)
        compiled = triton.compile(ASTSource(fn, _signature(k, fn)), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4, "enable_fp_fusion": True})
        assert compiled.asm["cubin"]
        out.append(compiled.asm["ptx"])
    return out


def _cell_cubins(spec: Any, dtype: torch.dtype) -> list[str]:
    g, inv, var = _graphs(spec, dtype)
    fw = pwgen.lower(g.modules["forward"], [*inv, *var])
    return _cubins([fw, pwgen.lower(g.modules["backward"], derived._c_layouts(g, fw.out_layouts))])


@pytest.fixture
def compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's compiler, not its interpreter (for the kernel modules imported from now on)."""
    import triton.backends
    import triton.language as tl

    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA back-end here")
    if not isinstance(tl.sigmoid, triton.runtime.JITFunction):     # its library decorated for the interpreter
        pytest.skip("triton was imported with TRITON_INTERPRET set: its compiler cannot run in this process")
    monkeypatch.delenv("TRITON_INTERPRET")


@pytest.mark.parametrize("name", cs.list_cells())
def test_generated_kernels_compile_for_a_gpu(name: str, compiling: None) -> None:
    """Every registered cell's kernels (float32, the GPU's precision) compile with Triton's compiler
    to PTX and a cubin for sm_90 (the interpreter checks values, not that the source is valid Triton)."""
    ptx = _cell_cubins(name, torch.float32)
    assert ptx and all(".entry pw" in p and "st.global" in p for p in ptx)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_every_op_compiles_for_a_gpu(dtype: torch.dtype, compiling: None) -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    x, y = torch.rand(5, 37, dtype=dtype) + 0.1, torch.randn(5, 37, dtype=dtype)
    (ptx,) = _cubins([pwgen.lower(make_fx(_every_op, tracing_mode="fake")(x, y), [x, y])])
    assert ".entry pw0_k0" in ptx and (dtype == torch.float32 or "cvt.rn.f32.f64" not in ptx)


def test_float64_kernels_compile_in_double_precision(compiling: None) -> None:
    """A float64 kernel computes in double (its constants are not rounded through float32)."""
    ptx = "\n".join(_cell_cubins("ur_lstm", torch.float64))
    assert "ld.global" in ptx and ".f64" in ptx and "cvt.f64.f32" not in ptx and "cvt.rn.f32.f64" not in ptx


# ------------------------------------------------------------------------------------------------
# where it runs, the module cache

def test_unavailable_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pt.unavailable("cpu", torch.float64) is None and pt.interpreting()
    assert "float16" in (pt.unavailable("cpu", torch.float16) or "")
    assert "CUDA" in (pt.unavailable("mps") or "")
    gm, args = _indrnn_forward()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET" in (pt.unavailable("cpu") or "")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        pt.compile_graph(gm, args)
    if not torch.cuda.is_available():
        assert "no CUDA device" in (pt.unavailable("cuda") or "")


def test_importing_cellsearch_does_not_import_triton() -> None:
    code = ("import sys, cellsearch, cellsearch.fast, cellsearch.fast.derived, cellsearch.fast.pwgen_triton; "
            "sys.exit('triton' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def _indrnn_forward() -> tuple[Any, list[torch.Tensor]]:
    g, inv, var = _graphs("indrnn", torch.float64)
    return g.modules["forward"], [*inv, *var]


@pytest.mark.parametrize("mode", [0o666, 0o600], ids=["world-writable", "private-but-different"])
def test_a_planted_module_is_not_loaded(mode: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file at a generated module's name that others can write, or that does not hold the generated
    source, is never executed: the kernels are written anew (into a private temporary directory when
    the file is not private, with a warning) and compute the right values."""
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_fallback", {})
    monkeypatch.setattr(pt, "_modules", {})
    gm, args = _indrnn_forward()
    pt.compile_graph(gm, args)
    (path,) = (tmp_path / "cache" / "triton").glob("pw_*.py")
    marker = tmp_path / "planted-code-ran"
    planted = f"open({str(marker)!r}, 'w').close()\n" + path.read_text()
    path.unlink()
    path.write_text(planted)
    os.chmod(path, mode)
    monkeypatch.setattr(pt, "_modules", {})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run = pt.compile_graph(gm, args)
    assert not marker.exists()
    want = gm(*args)
    assert all(torch.equal(a, b) for a, b in zip(run(*args), want) if isinstance(b, torch.Tensor))
    if mode == 0o666:
        assert any(issubclass(w.category, cache.UnsafeCacheWarning) and "not loading" in str(w.message) for w in seen)
        assert path.read_text() == planted                   # left alone, not used
    else:
        assert path.read_text() != planted and cache.trusted(path)     # rewritten with the generated source


def test_triton_binary_cache_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA, Triton's compiled kernels go to <cache>/triton/bin (unless TRITON_CACHE_DIR is set); a
    tree there holding a file others can write is not used."""
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_fallback", {})
    monkeypatch.setenv("TRITON_CACHE_DIR", "/set/by/the/user")
    monkeypatch.setattr(pt, "_bin_dir_set", False)
    pt._binary_cache()
    assert os.environ["TRITON_CACHE_DIR"] == "/set/by/the/user"
    monkeypatch.delenv("TRITON_CACHE_DIR")
    pt._binary_cache()
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton" / "bin")
    planted = tmp_path / "cache" / "triton" / "bin" / "planted.cubin"
    planted.write_bytes(b"\0")
    os.chmod(planted, 0o666)
    monkeypatch.setattr(pt, "_bin_dir_set", False)
    monkeypatch.delenv("TRITON_CACHE_DIR")
    with pytest.warns(cache.UnsafeCacheWarning, match="not using the Triton cache"):
        pt._binary_cache()
    assert os.environ["TRITON_CACHE_DIR"] != str(planted.parent) and cache.untrusted_files(
        os.environ["TRITON_CACHE_DIR"]) == []
