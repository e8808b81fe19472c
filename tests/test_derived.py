"""The derived fast path (generated from a cell's own step) equals the reference loop, for every
registered cell and for a primitive defined only in this test, and the compiled-code caches are private.

Outputs, final states and the gradients of every parameter, of the input and of the initial state are
compared with the reference loop (``cellsearch.fast.enabled(False)``): float64 to 1e-10, float32 to 1e-5
(relative to the largest value). The sweep over the registry runs the derived step graphs uncompiled
(``CELLSEARCH_DERIVED_BACKEND=aten``: the same graphs and partition, executed op by op, no compile
cost); the Inductor-compiled graphs are checked on the test plugin and a few published cells, all at
one shape so that compiled artifacts are shared. No test asserts a timing.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from fast_paths import assert_same, close

import cellsearch as cs
from cellsearch import fast, registry
from cellsearch.fast import cache, csrc, inductor
from cellsearch.primitives.base import Block
from cellsearch.primitives.saturation import Saturation
from cellsearch.primitives.update import Update

B, T, D, N = 3, 5, 4, 6


# ------------------------------------------------------------------------------------------------
# a plugin-style primitive pair, defined here only (JANET update, softsign saturation)

class JanetTest(Update):
    """c' = σ(a_f)⊙c + (1 − σ(a_f − β))⊙sat(a_u),  h' = c'"""

    name = "janet_derived_test"
    gates = ("f",)
    cand_blocks = (Block("u", "cand"),)
    keep = "f"
    provides = frozenset({"keep_gate", "single_state"})
    defaults: ClassVar[dict[str, Any]] = {"beta": 1.0}

    def step(self, ctx: Any, xp: torch.Tensor, xs: torch.Tensor | None, state: tuple) -> tuple:
        (c,) = state
        a = torch.addmm(xp, c, ctx.w_hh_t)
        kn = ctx.k * ctx.n
        (f,) = ctx.gates(a[:, :kn], xs)
        u = ctx.cand(a[:, kn:], c, ctx.sat)
        c = f * c + (1.0 - torch.sigmoid(a[:, :kn] - float(self.options["beta"]))) * u
        return c, (c,)


class SoftsignTest(Saturation):
    """sat(v) = v / (1 + |v|)"""

    name = "softsign_derived_test"

    def function(self) -> Any:
        return lambda v: v / (1.0 + v.abs())


class BranchyTest(Update):
    """h' = tanh(a) if max(a) > 0 else a (control flow on values: cannot be derived)"""

    name = "branchy_derived_test"
    cand_blocks = (Block("h", "cand"),)
    provides = frozenset({"single_state"})

    def step(self, ctx: Any, xp: torch.Tensor, xs: torch.Tensor | None, state: tuple) -> tuple:
        (h,) = state
        a = torch.addmm(xp, h, ctx.w_hh_t)
        h = torch.tanh(a) if bool(a.max() > 0) else a
        return h, (h,)


PLUGIN = cs.CellSpec(update="janet_derived_test", saturation="softsign_derived_test")


@pytest.fixture(scope="module", autouse=True)
def plugin_primitives():
    for cls in (JanetTest, SoftsignTest, BranchyTest):
        registry.register_primitive(cls, origin="package test_derived")
    yield
    for cls in (JanetTest, SoftsignTest, BranchyTest):
        registry.unregister("primitive", cls.name, cls.role)


# ------------------------------------------------------------------------------------------------
# helpers

def _model(spec: Any, dtype: torch.dtype, seed: int = 0, d: int = D, n: int = N, **kw: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cs.create_rnn(spec, d, n, **kw).to(dtype)


def _inputs(model: torch.nn.Module, batch: int, dtype: torch.dtype, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, D, generator=g, dtype=dtype)
    state = model.initial_state(batch, x) if hasattr(model, "initial_state") else None
    if state is not None:
        state = tuple(tuple(0.5 * torch.randn(s.shape, generator=g, dtype=dtype) for s in layer)
                      for layer in state)
    return x, state


def _paths(model: torch.nn.Module) -> set[str]:
    return {fast.plan(layer).path for layer in model.layers}


@pytest.fixture
def aten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Derived step graphs run uncompiled, at every size."""
    monkeypatch.setenv("CELLSEARCH_DERIVED_BACKEND", "aten")
    monkeypatch.setenv("CELLSEARCH_DERIVED_MIN", "0")
    monkeypatch.setenv("CELLSEARCH_DERIVED_AFTER", "0")


def _count_reference(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    cls = type(model.layers[0])
    original = cls._reference_sequence
    monkeypatch.setattr(cls, "_reference_sequence", lambda self, x, s=None: calls.append(1) or original(self, x, s))
    return calls


# ------------------------------------------------------------------------------------------------
# every registered cell, forced onto the derived path (aten step graphs)

@pytest.mark.parametrize("name", cs.list_cells())
def test_every_registered_cell_derived_equals_reference(name: str, aten: None) -> None:
    """Each published cell, forced onto the derived path: outputs and all gradients equal the reference
    loop in float64, with a given initial state, and again after the batch size changes."""
    model = _model(name, torch.float64, num_layers=2 if name == "lstm" else None)
    with fast.force_derived():
        assert _paths(model) == {"derived"}, [fast.explain(layer) for layer in model.layers]
        for batch in (B, 2):
            x, state = _inputs(model, batch, torch.float64)
            assert_same(model, x, state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_plugin_primitive_takes_the_derived_path(dtype: torch.dtype, aten: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A primitive only registered at runtime (no hand-written kernel) takes the derived path by default
    and equals the reference loop; the batch size may change between calls; states in and out."""
    model = _model(PLUGIN, dtype)
    assert _paths(model) == {"derived"}
    assert "derived from the step" in fast.explain(model.layers[0])
    calls = _count_reference(monkeypatch, model)
    for batch in (B, 1):
        x, state = _inputs(model, batch, dtype)
        calls.clear()
        model(x)
        assert not calls
        assert_same(model, x, state)
        assert_same(model, x, None)


def test_first_calls_small_runs_and_no_compiler_take_the_reference_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the size where compiling pays, for the first calls of an input shape, or where Inductor
    cannot compile, the reference loop runs."""
    model = _model(PLUGIN, torch.float32)
    assert "take the reference loop" in fast.explain(model.layers[0])
    calls = _count_reference(monkeypatch, model)
    x, _ = _inputs(model, B, torch.float32)
    model(x)
    assert calls
    monkeypatch.setenv("CELLSEARCH_DERIVED_MIN", "0")
    monkeypatch.setenv("CELLSEARCH_DERIVED_BACKEND", "aten")
    monkeypatch.setenv("CELLSEARCH_DERIVED_AFTER", "2")
    calls.clear()
    for _ in range(3):
        model(x)
    assert len(calls) == 2                    # the third call of this shape runs derived
    monkeypatch.delenv("CELLSEARCH_DERIVED_BACKEND")
    monkeypatch.setenv("CELLSEARCH_DERIVED_COMPILE", "0")
    monkeypatch.setenv("CELLSEARCH_DERIVED_MIN", "0")
    monkeypatch.setenv("CELLSEARCH_DERIVED_AFTER", "0")
    other = _model(PLUGIN, torch.float32)
    assert "CELLSEARCH_DERIVED_COMPILE=0" in fast.explain(other.layers[0])
    calls.clear()
    other(x)
    assert calls


def test_a_cell_without_a_hand_kernel_takes_the_derived_path_from_a_smaller_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The size threshold is lower where the reference loop, not a hand-written kernel, would run instead:
    a call between the two thresholds runs a plugin cell on the derived path and ur_lstm on its kernel.
    Both are the CPU's; another device keeps the threshold of before."""
    from cellsearch.fast.derived import DERIVED_MIN, DERIVED_MIN_DEVICE, DERIVED_MIN_LOOP, min_work

    monkeypatch.delenv("CELLSEARCH_DERIVED_MIN", raising=False)
    monkeypatch.delenv("CELLSEARCH_DERIVED_BACKEND", raising=False)
    assert DERIVED_MIN_LOOP < DERIVED_MIN <= DERIVED_MIN_DEVICE
    assert min_work(False, "cuda") == min_work(True, "cuda") == DERIVED_MIN_DEVICE
    plugin, lstm = _model(PLUGIN, torch.float32, n=16), _model("ur_lstm", torch.float32, n=16)
    assert f"runs under {DERIVED_MIN_LOOP:,} pre-activations" in fast.explain(plugin.layers[0])
    assert f"runs under {DERIVED_MIN:,} pre-activations" in fast.explain(lstm.layers[0])
    monkeypatch.setenv("CELLSEARCH_DERIVED_BACKEND", "aten")
    monkeypatch.setenv("CELLSEARCH_DERIVED_AFTER", "0")
    x = torch.randn(16, 32, D)                   # 16 × 32 × 32 (plugin) and × 64 (ur_lstm) pre-activations
    for model in (plugin, lstm):
        rows = model.layers[0].weight_ih.shape[0]
        assert DERIVED_MIN_LOOP <= x.shape[0] * x.shape[1] * rows < DERIVED_MIN
    calls = _count_reference(monkeypatch, plugin)
    plugin(x)
    assert not calls and list(fast.plan(plugin.layers[0]).run._graphs)        # type: ignore[union-attr]
    lstm(x)
    assert not fast.plan(lstm.layers[0]).run._graphs                            # type: ignore[union-attr]


def test_switches_force_and_turn_off_the_derived_path(aten: None) -> None:
    plugin, lstm = _model(PLUGIN, torch.float64), _model("ur_lstm", torch.float64)
    with fast.hand_first():
        assert fast.plan(lstm.layers[0]).path == "fused"
    with fast.force_derived():
        assert fast.plan(lstm.layers[0]).path == "derived"
        assert "forced" in fast.explain(lstm.layers[0])
    with fast.force_derived(None):
        assert fast.plan(plugin.layers[0]).path == "reference"
        assert fast.plan(lstm.layers[0]).path == "fused"
    assert fast.derived_mode() == "auto"
    assert "preferred to the hand-written kernel" in fast.explain(lstm.layers[0])


def test_the_prologue_runs_the_exponential_as_its_series() -> None:
    """The traced ``prepare`` holds torch's matrix_exp (the exported module keeps it); the derived path's
    prologue calls ``orthogonal.expm`` in its place (registered with ``registry.eager_for``: the reference
    loop's function, whose gradient costs n × n products where torch's exponentiates a 2n × 2n matrix);
    values and gradients equal torch's op's to rounding (float64)."""
    from cellsearch.fast.derived import _trace
    from cellsearch.primitives.orthogonal import expm
    from cellsearch.trace import eager_graph

    model = _model(cs.CellSpec(update="gru", recurrence="orthogonal", saturation="adaptive"), torch.float64)
    cell = model.layers[0]
    traced = _trace(cell, B)
    matrix_exp = torch.ops.aten.linalg_matrix_exp.default
    targets = [n.target for n in traced.step.prepare.graph.nodes]
    assert targets.count(matrix_exp) == 2 and expm not in targets
    eager = [n.target for n in traced.prepare.graph.nodes]
    assert eager.count(expm) == 2 and matrix_exp not in eager
    assert eager_graph(traced.step.step) is traced.step.step        # nothing to replace: the graph itself
    params = traced.params(cell)
    ours = traced.prologue(params[0])(*params)
    torchs = traced.step.prepare(*params, *[params[0].device] * traced.step.device,
                                 *[params[0].dtype] * traced.step.dtype)
    g = [torch.randn(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(i)) for i, v in enumerate(ours)]
    for a, b in zip(ours, torchs):
        assert (a - b).abs().max() < 1e-13
    mine = torch.autograd.grad(sum((v * w).sum() for v, w in zip(ours, g)), params, allow_unused=True)
    theirs = torch.autograd.grad(sum((v * w).sum() for v, w in zip(torchs, g)), params, allow_unused=True)
    for a, b in zip(mine, theirs):
        assert (a is None) == (b is None) and (a is None or (a - b).abs().max() < 1e-10 * b.abs().max())


def test_a_step_with_value_dependent_control_flow_keeps_the_reference_loop(aten: None) -> None:
    model = _model(cs.CellSpec(update="branchy_derived_test"), torch.float64)
    assert fast.plan(model.layers[0]).path == "derived"        # traced when it first runs
    x, state = _inputs(model, B, torch.float64)
    out, _ = model(x, state)
    assert out.shape == (B, T, N)
    p = fast.plan(model.layers[0])
    assert p.path == "reference" and "could not be derived" in p.reason
    with fast.force_derived():
        p = fast.plan(model.layers[0])
        assert p.path == "reference" and "could not be derived" in fast.explain(model.layers[0])


# ------------------------------------------------------------------------------------------------
# compiled (Inductor) step graphs: the plugin and a representative subset of the published cells

COMPILED = [(PLUGIN, torch.float64), (PLUGIN, torch.float32), ("asrnn", torch.float32)]


@pytest.mark.parametrize("spec,dtype", COMPILED, ids=lambda s: s if isinstance(s, str) else
                         "plugin" if isinstance(s, cs.CellSpec) else str(s).split(".")[-1])
def test_compiled_derived_path_equals_reference(spec: Any, dtype: torch.dtype,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if inductor.unavailable("cpu") is not None:
        pytest.skip(inductor.unavailable("cpu"))
    monkeypatch.setenv("CELLSEARCH_DERIVED_COMPILER", "inductor")   # the C generator: tests/test_pwgen.py
    model = _model(spec, dtype)
    with fast.force_derived():
        runner = fast.plan(model.layers[0]).run
        x, state = _inputs(model, B, dtype)
        assert_same(model, x, state)
    graphs = runner._graphs.values()                       # type: ignore[union-attr]
    assert any(g.compiled for g in graphs), runner.compile_error  # type: ignore[union-attr]
    assert {g.compiler for g in graphs if g.compiled} == {"inductor"}


# ------------------------------------------------------------------------------------------------
# where the derived path does not apply, and autograd corner cases

def test_autocast_keeps_the_derived_path_in_float32(aten: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast (train.precision: bf16) the cell stays on its fast path, run in float32 with
    autocast off: the same outputs as without autocast, no reference loop."""
    model = _model(PLUGIN, torch.float32)
    calls = _count_reference(monkeypatch, model)
    x, _ = _inputs(model, B, torch.float32)
    plain = model(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x)[0]
    assert not calls and mixed.dtype == torch.float32
    assert (mixed - plain).abs().max() < 1e-6


def test_double_backward_is_refused_not_wrong(aten: None) -> None:
    model = _model(PLUGIN, torch.float64)
    x, _ = _inputs(model, B, torch.float64)
    x.requires_grad_(True)
    out, _ = model(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)


def test_no_grad_inference_and_retain_graph(aten: None) -> None:
    model = _model(PLUGIN, torch.float64)
    x, state = _inputs(model, B, torch.float64)
    with fast.enabled(False):
        ref, _ = model(x, state)
    with torch.no_grad():
        out, _ = model(x, state)
    close(ref.detach(), out, 1e-10, "no_grad output")
    out, _ = model(x, state)
    out.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out.sum().backward()
    for a, p in zip(first, model.parameters()):
        torch.testing.assert_close(a, p.grad)
    with pytest.raises(RuntimeError):
        out.sum().backward()


# ------------------------------------------------------------------------------------------------
# the private cache: planted files are never loaded

def test_private_dir_is_0700_and_tightened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "c"))
    (tmp_path / "c").mkdir(mode=0o755)
    os.chmod(tmp_path / "c", 0o755)
    d = cache.private_dir("kernels")
    assert d == tmp_path / "c" / "kernels"
    for p in (d, tmp_path / "c"):
        assert stat.S_IMODE(os.lstat(p).st_mode) == 0o700


def test_trusted_refuses_shared_files_and_links(tmp_path: Path) -> None:
    own = tmp_path / "own.so"
    own.write_bytes(b"x")
    os.chmod(own, 0o600)
    assert cache.trusted(own)
    for mode in (0o620, 0o602, 0o666):
        os.chmod(own, mode)
        assert not cache.trusted(own)
    os.chmod(own, 0o600)
    link = tmp_path / "link.so"
    link.symlink_to(own)
    assert not cache.trusted(link)
    assert cache.untrusted_files(tmp_path) == [link]


def test_a_planted_c_kernel_library_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A world-writable file at the kernel library's predictable name is not loaded: the library is built
    in a private temporary directory instead, with a warning."""
    if not csrc._compilers():
        pytest.skip("no C compiler")
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(csrc, "_lib", False)
    monkeypatch.setattr(csrc, "_path", None)
    monkeypatch.setattr(csrc, "_error", None)
    monkeypatch.setattr(cache, "_fallback", {})
    # where the library would go: build it once, then replace it by a planted, world-writable file
    assert csrc.library() is not None
    real = csrc.library_path()
    assert real is not None and real.parent == tmp_path / "cache" / "kernels"
    real.unlink()
    real.write_bytes(b"not a library: loading this would fail")
    os.chmod(real, 0o666)
    monkeypatch.setattr(csrc, "_lib", False)
    with pytest.warns(cache.UnsafeCacheWarning, match="not loading"):
        lib = csrc.library()
    assert lib is not None
    assert csrc.library_path() != real and csrc.library_path().parent != real.parent
    assert real.read_bytes().startswith(b"not a library")


def test_a_planted_file_in_the_inductor_cache_is_not_used(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_fallback", {})
    inductor._reset_cache_dir()
    try:
        d = inductor.cache_dir()
        assert d == tmp_path / "cache" / "inductor"
        inductor._reset_cache_dir()
        planted = d / "fxgraph" / "planted.py"
        planted.parent.mkdir(parents=True)
        planted.write_text("raise SystemExit('planted code ran')\n")
        os.chmod(planted, 0o666)
        with pytest.warns(cache.UnsafeCacheWarning, match="not private"):
            other = inductor.cache_dir()
        assert other != d and not str(other).startswith(str(d))
        assert stat.S_IMODE(os.lstat(other).st_mode) == 0o700
    finally:
        inductor._reset_cache_dir()


def test_a_cache_directory_of_another_owner_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache path that is a link (e.g. to a directory someone else controls) is not used."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "kernels").symlink_to(target)
    monkeypatch.setenv("CELLSEARCH_CACHE", str(tmp_path / "root"))
    monkeypatch.setattr(cache, "_fallback", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = cache.private_dir("kernels")
    assert d != tmp_path / "root" / "kernels"
    assert any(issubclass(w.category, cache.UnsafeCacheWarning) for w in caught)


def test_bench_command_has_a_derived_column(tmp_path: Path, aten: None) -> None:
    from cellsearch.bench import read_json
    from cellsearch.cli import main

    rc = main(["bench", "star", "--hidden", "8", "--seq", "4", "--batch", "3", "--repeats", "2", "--warmup", "1",
               "--threads", "1", "--derived", "--no-memory", "--max-load", "0", "--out", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "BENCH.md").read_text()
    assert "derived ×" in text and "| star | fused |" in text
    (r,) = read_json(tmp_path / "bench.json")
    assert r.derived_ms and r.derived_ms > 0 and r.derived_first_s is not None


# ------------------------------------------------------------------------------------------------
# the products on oneDNN, and the C generator's fallback reason in explain

def _c_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellsearch.fast import pwgen_c

    if pwgen_c.unavailable("cpu", torch.float32) is not None:
        pytest.skip(pwgen_c.unavailable("cpu", torch.float32))
    monkeypatch.delenv("CELLSEARCH_DERIVED_BACKEND", raising=False)
    monkeypatch.setenv("CELLSEARCH_DERIVED_COMPILER", "c")


@pytest.mark.parametrize("spec", [PLUGIN, "slstm", "dots_rnn"], ids=lambda s: s if isinstance(s, str) else "plugin")
def test_products_on_onednn_equal_reference(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 on the CPU: the generated step graphs' products by a loop invariant (the recurrent GEMM
    forward and backward), the input projection and the post-loop weight gradients go through
    cellsearch.fast.fused's oneDNN helpers (here at every size); outputs and gradients still equal the
    reference loop."""
    from cellsearch.fast import fused

    _c_compiled(monkeypatch)
    if not fused.onednn_available():
        pytest.skip("oneDNN's linear is not available here")
    monkeypatch.setattr(fused, "ONEDNN_MIN", 0)
    monkeypatch.setenv("CELLSEARCH_DERIVED_LOOP", "python")   # the C loop runs its own GEMM (test_pwloop.py)
    model = _model(spec, torch.float32, n=8)
    with fast.force_derived():
        runner = fast.plan(model.layers[0]).run
        x, state = _inputs(model, B, torch.float32)
        assert_same(model, x, state)
    graphs = [g for g in runner._graphs.values() if g.compiled]      # type: ignore[union-attr]
    assert graphs and all(g.compiler == "c" and g.fw_packed and g.bw_packed for g in graphs)
    assert all(not g.products._mats for g in graphs)                 # unpacked after each sequence


def test_explain_shows_the_c_generators_fallback_once_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that is not forced traces its step at first use: the reason the C generator does not compile
    it (Inductor does) appears in explain from then on."""
    from cellsearch.fast import derived

    if inductor.unavailable("cpu") is not None:
        pytest.skip(inductor.unavailable("cpu"))
    _c_compiled(monkeypatch)
    monkeypatch.setenv("CELLSEARCH_DERIVED_MIN", "0")
    monkeypatch.setenv("CELLSEARCH_DERIVED_AFTER", "0")
    monkeypatch.setattr(derived, "_compile_generated",
                        lambda g, inv, var: "the C generator cannot compile the step: test reason")
    model = _model(PLUGIN, torch.float32)
    assert "test reason" not in fast.explain(model.layers[0])
    x, _ = _inputs(model, B, torch.float32)
    model(x)
    line = fast.explain(model.layers[0])
    assert line.startswith("derived:") and "Inductor C++ step graphs (the C generator cannot compile the " \
        "step: test reason)" in line, line
    assert line.count("test reason") == 1
