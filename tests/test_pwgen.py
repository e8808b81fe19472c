"""The derived path with its step graphs compiled by the C generator (cellsearch.fast.pwgen + pwgen_c)
equals the reference loop for every registered cell; graphs it cannot express fall back to Inductor with
the reason in ``fast.explain``; its kernel cache refuses a planted file.

Outputs, final states and every gradient are compared with the reference loop (tests/fast_paths.py:
float64 to 1e-10, float32 to 1e-5 relative to the largest value). No test asserts a timing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from fast_paths import assert_same
from test_derived import B, _inputs, _model

import cellsearch as cs
from cellsearch import fast, registry
from cellsearch.fast import cache, csrc, derived, inductor, pwgen, pwgen_c
from cellsearch.primitives.base import Block
from cellsearch.primitives.update import Update

needs_cc = pytest.mark.skipif(not csrc._compilers() or csrc.disabled() is not None,
                              reason="no C compiler (or CELLSEARCH_FAST_C=0)")


class ErfTest(Update):
    """h' = erf(a) (an elementwise op the C generator has no lowering for)"""

    name = "erf_pwgen_test"
    cand_blocks = (Block("h", "cand"),)
    provides = frozenset({"single_state"})

    def step(self, ctx: Any, xp: torch.Tensor, xs: torch.Tensor | None, state: tuple) -> tuple:
        (h,) = state
        h = torch.erf(torch.addmm(xp, h, ctx.w_hh_t))
        return h, (h,)


@pytest.fixture(scope="module", autouse=True)
def erf_primitive():
    registry.register_primitive(ErfTest, origin="package test_pwgen")
    yield
    registry.unregister("primitive", ErfTest.name, ErfTest.role)


@pytest.fixture
def c_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Derived step graphs compiled by the C generator, at every size, from the first call."""
    monkeypatch.delenv("CELLSEARCH_DERIVED_BACKEND", raising=False)
    monkeypatch.setenv("CELLSEARCH_DERIVED_COMPILER", "c")
    monkeypatch.setenv("CELLSEARCH_DERIVED_MIN", "0")
    monkeypatch.setenv("CELLSEARCH_DERIVED_AFTER", "0")


def _compilers(model: torch.nn.Module) -> set[str]:
    return {g.compiler for layer in model.layers for g in fast.plan(layer).run._graphs.values()  # type: ignore[union-attr]
            if g.compiled}


# ------------------------------------------------------------------------------------------------
# every registered cell, forced onto the derived path, step graphs in generated C

@needs_cc
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", cs.list_cells())
def test_every_registered_cell_in_generated_c_equals_reference(name: str, dtype: torch.dtype, c_path: None) -> None:
    model = _model(name, dtype)
    relowered = pwgen_c.stats["relowered"]
    with fast.force_derived():
        assert {fast.plan(layer).path for layer in model.layers} == {"derived"}
        assert "generated C step graphs" in fast.explain(model.layers[0]), fast.explain(model.layers[0])
        x, state = _inputs(model, B, dtype)
        assert_same(model, x, state)
        assert _compilers(model) == {"c"}
    assert pwgen_c.stats["relowered"] == relowered      # the layouts generated for are the ones met


@needs_cc
def test_batch_size_change_and_no_grad(c_path: None) -> None:
    """New graphs (and a new library) for another batch size; inference without a tape."""
    model = _model("slstm", torch.float64)
    with fast.force_derived():
        for batch in (2, 1):
            x, state = _inputs(model, batch, torch.float64)
            assert_same(model, x, state)
        x, state = _inputs(model, 2, torch.float64)
        with torch.no_grad():
            out, _ = model(x, state)
    with fast.enabled(False), torch.no_grad():
        ref, _ = model(x, state)
    assert (out - ref).abs().max() < 1e-10


# ------------------------------------------------------------------------------------------------
# the IR on its own

def _step_graphs(spec: Any) -> derived.StepGraphs:
    model = _model(spec, torch.float64)
    with fast.force_derived():
        runner = fast.plan(model.layers[0]).run
    return next(iter(runner._graphs.values()))                # type: ignore[union-attr]


def test_lowering_fuses_each_step_graph_into_kernels_around_the_products() -> None:
    """ur_lstm: one kernel per step graph; the recurrent GEMM and the backward's products stay extern,
    the gate blocks' split / concatenation become column offsets, dxp is written in place."""
    g = _step_graphs("ur_lstm")
    fw = pwgen.lower(g.modules["forward"])
    bw = pwgen.lower(g.modules["backward"], derived._c_layouts(g, fw.out_layouts))
    assert len(fw.kernels) == 1 and len(bw.kernels) == 1
    targets = {str(n.target) for n in bw.graph.graph.nodes if n.op == "call_function"}
    assert "aten.mm.default" in targets and not any("split" in t or "cat" in t or "sigmoid" in t for t in targets)
    assert any(o.into is not None for o in bw.kernels[0].outputs)                 # dxp_out written in place
    ops = {op.name for lp in bw.kernels[0].loops for op in lp.body}
    assert ops <= set(pwgen.OPS) | {"load", "const"}


def test_an_unsupported_elementwise_op_is_refused_with_the_reason() -> None:
    g = _step_graphs(cs.CellSpec(update="erf_pwgen_test"))
    with pytest.raises(pwgen.Unsupported, match="erf"):
        pwgen.lower(g.modules["forward"])
    assert "erf" in (derived._c_check(g) or "")


@needs_cc
def test_relu_backward_select_is_not_miscompiled(c_path: None) -> None:
    """where(relu(x) <= 0, 0, g) at an odd width: GCC 12 at -O3 -march=native vectorized it wrongly
    without -fno-thread-jumps (the lanes of the loop's tail came out 0)."""
    aten = torch.ops.aten

    def f(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor]:
        return (aten.threshold_backward.default(g, aten.relu.default(x), 0),)

    from torch.fx.experimental.proxy_tensor import make_fx

    x, g = torch.randn(3, 13, dtype=torch.float64), torch.randn(3, 13, dtype=torch.float64)
    gm = make_fx(f, tracing_mode="fake")(x, g)
    (fn,) = pwgen_c.compile_graphs([(gm, [x, g])])
    assert torch.equal(fn(x, g)[0], torch.where(x > 0, g, torch.zeros_like(g)))


@needs_cc
def test_a_call_with_other_strides_is_generated_again_not_misread() -> None:
    """Strides are baked into the generated code: a first call with other strides than the example's
    (here a transposed input) lowers and builds the graph again for them."""
    aten = torch.ops.aten

    def f(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        return (aten.mul.Tensor(aten.sigmoid.default(x), y),)

    from torch.fx.experimental.proxy_tensor import make_fx

    x, y = torch.randn(3, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    gm = make_fx(f, tracing_mode="fake")(x, y)
    (fn,) = pwgen_c.compile_graphs([(gm, [x, y])])
    xt = torch.randn(8, 3, dtype=torch.float64).t()
    before = pwgen_c.stats["relowered"]
    assert torch.allclose(fn(xt, y)[0], torch.sigmoid(xt) * y, rtol=0, atol=1e-15)
    assert pwgen_c.stats["relowered"] == before + 1


def test_work_that_does_not_wait_for_a_product_runs_before_it() -> None:
    """Each elementwise node joins the earliest kernel its inputs allow: tanh(x)·2 does not depend on the
    product, so it is computed before it and the kernel after the product only adds (it neither
    recomputes the tanh, a costly op, nor reads x); the results equal torch's."""
    aten = torch.ops.aten

    def f(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor]:
        y = aten.mm.default(aten.sigmoid.default(x), w)
        return (aten.add.Tensor(aten.mul.Tensor(aten.tanh.default(x), 2.0), y),)

    from torch.fx.experimental.proxy_tensor import make_fx

    x, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)
    lw = pwgen.lower(make_fx(f, tracing_mode="fake")(x, w), [x, w])
    assert len(lw.kernels) == 2
    first, second = ({op.name for lp in k.loops for op in lp.body} for k in lw.kernels)
    assert {"sigmoid", "tanh"} <= first and "tanh" not in second and "sigmoid" not in second
    assert len(lw.kernels[1].inputs) == 2                        # the product and the first kernel's value
    (fn,) = pwgen_c.compile_graphs([(make_fx(f, tracing_mode="fake")(x, w), [x, w])])
    torch.testing.assert_close(fn(x, w)[0], torch.tanh(x) * 2 + torch.sigmoid(x) @ w, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# fallback and cache

def test_unsupported_step_falls_back_to_inductor_with_the_reason(c_path: None) -> None:
    if inductor.unavailable("cpu") is not None:
        pytest.skip(inductor.unavailable("cpu"))
    model = _model(cs.CellSpec(update="erf_pwgen_test"), torch.float64)
    with fast.force_derived():
        why = fast.explain(model.layers[0])
        assert "Inductor" in why and "C generator cannot" in why and "erf" in why, why
        x, state = _inputs(model, B, torch.float64)
        assert_same(model, x, state)
        assert _compilers(model) == {"inductor"}


@needs_cc
def test_a_planted_generated_library_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A world-writable file at a generated library's name is not loaded: the library is rebuilt in a
    private temporary directory, with a warning, and computes the right values."""
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_fallback", {})
    g = _step_graphs("indrnn")
    fw = g.modules["forward"]
    args = [torch.randn(n.meta["val"].shape, dtype=torch.float64) for n in fw.graph.nodes if n.op == "placeholder"]
    pwgen_c.compile_graphs([(fw, args)])
    (built,) = (tmp_path / "cache" / "kernels").glob("cellsearch_pw_*.so")
    built.unlink()
    built.write_bytes(b"not a library: loading this would fail")
    os.chmod(built, 0o666)
    with pytest.warns(cache.UnsafeCacheWarning, match="not loading"):
        (run,) = pwgen_c.compile_graphs([(fw, args)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = fw(*args)
    got = run(*args)
    assert all(torch.equal(a, b) for a, b in zip(want, got) if isinstance(a, torch.Tensor))
    assert built.read_bytes().startswith(b"not a library")


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_generated_log_log1p_expm1_match_torch(dtype: torch.dtype) -> None:
    """The C back-end's own vectorizable log / log1p / expm1: within 4 ulp of torch on wide ranges, and
    torch's values at 0, −1, ±inf and negative arguments."""
    aten = torch.ops.aten

    def f(x: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return aten.log.default(x), aten.log1p.default(z), aten.expm1.default(y)

    from torch.fx.experimental.proxy_tensor import make_fx

    g = torch.Generator().manual_seed(0)
    top = 300 if dtype == torch.float64 else 37

    def r(n: int) -> torch.Tensor:
        return torch.rand(n, generator=g, dtype=torch.float64)

    special = [0.0, -1.0, -2.0, float("inf"), 1.0]
    x = torch.cat([10 ** ((r(4000) * 2 - 1) * top), torch.tensor(special)]).to(dtype)
    z = torch.cat([r(2000) * 2 - 0.9999, 10 ** (r(2000) * 20 - 18), torch.tensor(special)]).to(dtype)
    y = torch.cat([torch.randn(2000, generator=g, dtype=torch.float64) * 3,
                   (r(2000) - 0.5) * 10 ** (r(2000) * -15), torch.tensor([0.0, 0.5, -0.5, 30.0, -30.0])]).to(dtype)
    args = [x.view(1, -1), z.view(1, -1), y.view(1, -1)]
    gm = make_fx(f, tracing_mode="fake")(*args)
    (fn,) = pwgen_c.compile_graphs([(gm, args)])
    eps = torch.finfo(dtype).eps
    for got, want in zip(fn(*args), f(*args)):
        finite = torch.isfinite(want) & (want != 0)
        assert ((got - want).abs() / want.abs())[finite].max() < 4 * eps
        same = (got == want) | (torch.isnan(got) & torch.isnan(want))
        assert same[~finite].all()


@needs_cc
def test_generated_maximum_and_minimum_propagate_nan_as_torch() -> None:
    """max / min with a NaN on either side give NaN (torch's rule): a diverging step (a NaN through a ReLU)
    must reach the loss, where training stops, not be clamped away."""
    from torch.fx.experimental.proxy_tensor import make_fx

    aten = torch.ops.aten

    def f(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return aten.maximum.default(a, b), aten.minimum.default(a, b), aten.relu.default(a)

    nan = float("nan")
    a = torch.tensor([[nan, 1.0, nan, -2.0, 3.0, 0.0, -0.0, nan]])
    b = torch.tensor([[0.0, nan, nan, 1.0, -4.0, -0.0, 0.0, 5.0]])
    gm = make_fx(f, tracing_mode="fake")(a, b)
    (fn,) = pwgen_c.compile_graphs([(gm, [a, b])])
    for got, want in zip(fn(a, b), f(a, b)):
        assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
        assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)), (got, want)


@needs_cc
def test_the_c_path_does_not_load_inductors_compiler(tmp_path: Path) -> None:
    """A fresh process running a cell on the derived path with generated C never imports Inductor's
    compiler (torch._inductor.compile_fx); make_fx's own import of torch._inductor.config is torch's."""
    import subprocess
    import sys

    code = ("import sys, torch, cellsearch as cs\n"
            "from cellsearch import fast\n"
            "m = cs.create_rnn('janet', 4, 8)\n"
            "with fast.force_derived():\n"
            "    m(torch.randn(2, 5, 4))[0].sum().backward()\n"
            "    g = [g for g in fast.plan(m.layers[0]).run._graphs.values() if g.compiled]\n"
            "print({x.compiler for x in g}, 'torch._inductor.compile_fx' in sys.modules)\n")
    env = {**os.environ, "CELLSEARCH_DERIVED_COMPILER": "auto", "CELLSEARCH_CACHE": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "{'c'} False"
