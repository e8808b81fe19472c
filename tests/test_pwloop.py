"""The derived path's time loop in C (cellsearch.fast.pwloop) equals the reference loop and the Python
loop, for every registered cell it serves, whatever the number of threads; what it does not serve keeps
the Python loop with the reason.

Outputs, final states and every gradient are compared with the reference loop (tests/fast_paths.py:
float64 to 1e-10, float32 to 1e-5 relative to the largest value). No test asserts a timing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fast_paths import assert_same, run_both_ways
from test_derived import _inputs, _model
from test_pwgen import c_path, needs_cc  # noqa: F401  (c_path: a fixture)

import cellsearch as cs
from cellsearch import fast, registry
from cellsearch.fast import pwloop
from cellsearch.primitives.saturation import Saturation

#: published cells whose step graphs the C loop must serve (a regression in planning fails here)
SERVED = ("janet", "indrnn", "ur_lstm", "u_lstm", "r_lstm", "refined_lstm", "star", "slstm", "mgu",
          "refined_mgu", "vanilla", "gru", "ur_gru", "refined_gru", "dt_rnn", "dts_rnn", "dots_rnn")


@pytest.fixture
def c_loop(c_path: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811  (the fixture)
    """test_pwgen's ``c_path`` (generated C step graphs at every size, from the first call), C loops on."""
    monkeypatch.delenv("CELLSEARCH_DERIVED_LOOP", raising=False)


def _graphs(model: torch.nn.Module) -> list[Any]:
    return [g for layer in model.layers for g in fast.plan(layer).run._graphs.values()  # type: ignore[union-attr]
            if g.compiled]


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", cs.list_cells())
def test_every_registered_cell_with_the_c_loop_equals_reference(name: str, dtype: torch.dtype, c_loop: None) -> None:
    """Batch 11 (rows split 8 + 3 inside the GEMM's blocks; two threads where torch has them), hidden 6."""
    model = _model(name, dtype, n=6)
    with fast.force_derived():
        x, state = _inputs(model, 11, dtype)
        assert_same(model, x, state)
        graphs = _graphs(model)
    if name in SERVED:
        assert graphs and all(g.loop is not None for g in graphs), [g.loop_note for g in graphs]
    for g in graphs:
        assert (g.loop is None) == bool(g.loop_note), g.loop_note


@needs_cc
@pytest.mark.parametrize("name", ["ur_lstm", "slstm", "star"])
def test_threads_do_not_change_the_result(name: str, c_loop: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are split over the loop's threads (1, 2, 4 here; torch's own ops keep their threads); each
    element is summed in the same order whatever the split, so the results are identical."""
    model = _model(name, torch.float32, n=20)
    x, state = _inputs(model, 37, torch.float32)
    results = []
    for n in (1, 2, 4):
        monkeypatch.setattr(pwloop.LoopPlan, "_threads", lambda self, n=n: n)
        with fast.force_derived():
            results.append(run_both_ways(model, x, state, True))
            assert all(g.loop is not None for g in _graphs(model))
    (out, final, grads), *rest = results
    for o, f, g in rest:
        assert torch.equal(out, o)
        assert all(torch.equal(a, b) for a, b in zip(final, f))
        assert all(torch.equal(grads[k], g[k]) for k in grads)


@needs_cc
def test_the_python_loop_switch_and_a_layout_change_keep_results(c_loop: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """CELLSEARCH_DERIVED_LOOP=python plans no C loop (with the reason); invariants laid out otherwise than
    planned take the Python loop for that call; both equal the reference."""
    monkeypatch.setenv("CELLSEARCH_DERIVED_LOOP", "python")
    model = _model("janet", torch.float64, n=7)
    with fast.force_derived():
        x, state = _inputs(model, 5, torch.float64)
        assert_same(model, x, state)
        (g,) = _graphs(model)
        assert "time loop in Python (CELLSEARCH_DERIVED_LOOP=python)" in fast.explain(model.layers[0])
    assert g.loop is None and "CELLSEARCH_DERIVED_LOOP=python" in g.loop_note

    monkeypatch.delenv("CELLSEARCH_DERIVED_LOOP")
    model = _model("ur_lstm", torch.float64, n=9)
    with fast.force_derived():
        x, state = _inputs(model, 5, torch.float64)
        assert_same(model, x, state)
        (g,) = _graphs(model)
        assert g.loop is not None
        called: list[int] = []
        original = g.loop.forward
        monkeypatch.setattr(g.loop, "forward", lambda *a: called.append(1) or original(*a))
        monkeypatch.setattr(g.loop, "inv_layouts", ())
        assert_same(model, x, state)
    assert not called


class TemperatureTest(Saturation):
    """sat(v) = tanh(β v) with one learnable β: a scalar invariant, whose gradient sums a step value over
    every element (neither a product of two step values nor a sum over the batch rows)"""

    name = "temperature_pwloop_test"

    def bind(self, hidden_size: int) -> None:
        super().bind(hidden_size)
        self.beta = torch.nn.Parameter(torch.ones(()))

    def reset_parameters(self) -> None:
        self.beta.data.fill_(0.7)

    def function(self) -> Any:
        beta = self.beta
        return lambda v: torch.tanh(v * beta)


@pytest.fixture
def temperature() -> Iterator[str]:
    registry.register_primitive(TemperatureTest, origin="package test_pwloop")
    yield TemperatureTest.name
    registry.unregister("primitive", TemperatureTest.name, "saturation")


@needs_cc
def test_a_per_step_invariant_gradient_keeps_the_python_loop_with_the_reason(c_loop: None, temperature: str) -> None:
    """A step with a gradient of a loop invariant that the loop cannot move after it (a scalar's: a sum
    over every element of a step value) runs in the Python loop."""
    model = _model(cs.CellSpec(update="vanilla", saturation=temperature), torch.float64, n=5)
    with fast.force_derived():
        x, state = _inputs(model, 4, torch.float64)
        assert_same(model, x, state)
        (g,) = _graphs(model)
    assert g.loop is None and "gradient is computed at every step" in g.loop_note


@needs_cc
def test_an_invariant_used_twice_has_its_gradient_terms_after_the_loop(c_loop: None) -> None:
    """asRNN's scale d multiplies before the product by U_f and divides after the one by U_fᵀ: its gradient
    adds two sums over the batch, each summed once over all T·B rows after the loop, and the C loop runs."""
    model = _model("asrnn", torch.float64, n=5)
    with fast.force_derived():
        x, state = _inputs(model, 4, torch.float64)
        assert_same(model, x, state)
        (g,) = _graphs(model)
    assert g.loop is not None, g.loop_note
    sums = [entry[0] for entry in g.post if entry[4] in ("sum0", "sum0k")]
    assert len(sums) == 2 and sums[0] == sums[1], g.post


@needs_cc
def test_a_sum_over_the_batch_moves_after_the_loop(c_loop: None) -> None:
    """GRU's b_hn gradient, Σ_b of a step value, is summed once over all T·B rows after the loop."""
    model = _model("gru", torch.float64, n=5)
    with fast.force_derived():
        x, state = _inputs(model, 4, torch.float64)
        assert_same(model, x, state)
        (g,) = _graphs(model)
    assert g.loop is not None and any(entry[4] in ("sum0", "sum0k") for entry in g.post)


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_overlapping_column_blocks_keep_the_c_loop(dtype: torch.dtype, c_loop: None) -> None:
    """JANET with the UR gate: the update reads the forget columns alone and the gate reads them with its
    r columns, so the gradients of overlapping column blocks of xp add up; they are cut into segments
    (one cat of sums of column slices) and the step runs in the C loop (it ran in Python)."""
    model = _model(cs.CellSpec(update="janet", gate="ur"), dtype, n=6)
    with fast.force_derived():
        x, state = _inputs(model, 11, dtype)
        assert_same(model, x, state)
        graphs = _graphs(model)
    assert graphs and all(g.loop is not None for g in graphs), [g.loop_note for g in graphs]


@needs_cc
def test_retain_graph_backward_twice_through_the_c_tape(c_loop: None) -> None:
    model = _model("slstm", torch.float64, n=6)
    x, _ = _inputs(model, 4, torch.float64)
    with fast.force_derived():
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        (g,) = _graphs(model)
        assert g.loop is not None
        first = torch.autograd.grad(out.sum(), list(model.parameters()), retain_graph=True)
        second = torch.autograd.grad(out.sum(), list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ------------------------------------------------------------------------------------------------
# the default plan: the derived path before a hand-written kernel where its loop runs in C

@needs_cc
def test_the_derived_c_loop_is_preferred_to_the_hand_kernel(c_loop: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """star has a hand-written fused kernel; by default the derived path runs it (its time loop in C),
    the hand kernel takes the calls the derived path does not (here: below the size threshold)."""
    model = _model("star", torch.float64, n=7)
    p = fast.plan(model.layers[0])
    assert p.path == "derived" and "preferred to the hand-written kernel" in p.reason, p.reason
    x, state = _inputs(model, 5, torch.float64)
    assert_same(model, x, state)
    (g,) = _graphs(model)
    assert g.loop is not None
    assert fast.plan(model.layers[0]).path == "derived"
    assert "time loop in C" in fast.explain(model.layers[0])

    calls: list[int] = []
    small = _model("star", torch.float64, n=7)
    runner = fast.plan(small.layers[0]).run
    hand = runner.fallback_plan  # type: ignore[union-attr]
    counted = dataclasses.replace(hand, run=lambda *a: calls.append(1) or hand.run(*a))
    monkeypatch.setattr(runner, "fallback_plan", counted)
    monkeypatch.setenv("CELLSEARCH_DERIVED_MIN", str(1 << 30))
    assert_same(small, x, state)
    assert calls and not runner._graphs  # type: ignore[union-attr]
    with fast.hand_first():
        assert fast.plan(_model("star", torch.float64).layers[0]).path == "fused"


@needs_cc
def test_a_cell_the_c_loop_does_not_serve_goes_back_to_its_hand_kernel(c_loop: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Where its first derived call finds no C loop (here: the planner refuses), the plan settles on the
    cell's hand-written kernel, with the reason."""
    def refuse(*args: Any) -> Any:
        raise pwloop.Unsupported("refused by the test")

    monkeypatch.setattr(pwloop, "plan", refuse)
    model = _model("star", torch.float64, n=3)          # a size no other test compiles (graphs are shared)
    assert fast.plan(model.layers[0]).path == "derived"
    x, state = _inputs(model, 4, torch.float64)
    assert_same(model, x, state)
    p = fast.plan(model.layers[0])
    assert p.path == "fused" and "time loop does not run in C" in p.reason, p.reason
    assert "refused by the test" in p.reason


def test_a_hand_kernel_that_does_less_arithmetic_stays_ahead_of_the_derived_path() -> None:
    """asRNN's kernel folds U, U_f and d into one n × n product a step (the step has three): the plan
    keeps it first although the derived path's time loop runs in C for asRNN."""
    model = _model("asrnn", torch.float32, n=5)
    p = fast.plan(model.layers[0])
    assert p.path == "fused" and "ahead of the derived path" in p.reason, p.reason
    with fast.force_derived():
        assert fast.plan(model.layers[0]).path == "derived"


@needs_cc
def test_pooled_buffers_go_back_and_what_leaves_the_loop_stays_intact(c_loop: None) -> None:
    """The loops' buffers are leased from the fast paths' pool and given back after the backward; the
    output, final states and gradients that leave them are never pooled, so a second call overwrites
    nothing the first returned, and computes the same."""
    from cellsearch.fast.pool import POOL

    model = _model("ur_lstm", torch.float32, n=16)
    x, state = _inputs(model, 9, torch.float32)
    with fast.force_derived():
        out1, final1, grads1 = run_both_ways(model, x, state, True)
        copies = out1.clone(), [s.clone() for s in final1], {k: v.clone() for k, v in grads1.items()}
        assert POOL._bytes > 0
        out2, final2, grads2 = run_both_ways(model, x, state, True)
    assert torch.equal(out1, copies[0]) and all(torch.equal(a, b) for a, b in zip(final1, copies[1]))
    assert all(torch.equal(grads1[k], copies[2][k]) for k in grads1)
    assert torch.equal(out1, out2) and all(torch.equal(grads2[k], grads1[k]) for k in grads1)


def test_ur_gru_takes_the_derived_path() -> None:
    """ur_gru kept its hand-written GRU kernel while that measured faster (an earlier session); since the
    backward kernels compute what does not wait for the product before it, the derived path measures
    faster (make bench, 3 Dec 2026 evening: 0.87–0.99× nn.LSTM against the hand kernel's 0.71–0.84×) and
    it takes the derived path like every other gated cell its C loop serves."""
    assert fast.plan(_model("ur_gru", torch.float32).layers[0]).path == "derived"
    assert fast.plan(_model("refined_gru", torch.float32).layers[0]).path == "derived"


@needs_cc
@pytest.mark.parametrize("name", ["gru", "lstm", "star", "mingru", "minlstm"])
def test_the_c_backward_reads_the_forwards_transcendentals_where_the_step_multiplies(name: str,
                                                                                     c_loop: None) -> None:
    """With the C generator the backward step of a step with a matrix product reads σ / tanh / divisions
    from the forward instead of recomputing them (derived._partition's ``keep_costly``): no such op in
    its graph. A step of pointwise work alone (the scans: no recurrent matrix) is bound by memory and
    recomputes them. The results equal the reference loop's either way. sLSTM, whose kept partition the
    generator does not serve, falls back to the recomputing one and keeps its C loop (SERVED, above)."""
    from cellsearch.fast import derived
    from cellsearch.fast.pwgen import COSTLY

    model = _model(name, torch.float32, n=6)
    with fast.force_derived():
        x, state = _inputs(model, 11, torch.float32)
        assert_same(model, x, state)
        graphs = _graphs(model)
    assert graphs and all(g.loop is not None for g in graphs)
    for g in graphs:
        ops = {derived._target_name(n).split(".")[0] for n in g.modules["backward"].graph.nodes
               if n.op == "call_function"}
        multiplies = derived._has_product(g.modules["step"])
        assert multiplies == (name not in ("mingru", "minlstm"))
        assert bool(ops & COSTLY) != multiplies, ops & COSTLY


@needs_cc
def test_the_gemm_floor_joins_the_projection_where_the_loop_does(c_loop: None) -> None:
    """The floor's post-loop products mirror the loop's: ∂W_ih in the recurrent weight's pass where that
    pass is over ∂xp itself (ur_lstm), a pass of its own where the recurrent product's right factor is
    another (GRU: r⊙(U h)); read from the derived graphs once they exist."""
    from cellsearch.bench import GemmFloor

    joint = {}
    for name in ("ur_lstm", "gru"):
        model = _model(name, torch.float32, n=6)
        assert GemmFloor(model).joint == [None]                 # not run yet: the shapes decide
        with fast.force_derived():
            x, state = _inputs(model, 11, torch.float32)
            model(x, state)[0].sum().backward()
            joint[name] = GemmFloor(model).joint
            GemmFloor(model)(x)
    assert joint == {"ur_lstm": [True], "gru": [False]}


def test_the_scans_yield_to_the_c_loop() -> None:
    """minGRU, minLSTM and RG-LRU take the derived path's C loop on the CPU where it runs (it folds the
    projection into the loop, fuses the coefficients' math and skips the product with the zero recurrent
    matrix: faster than the scans at every bench size, scan.py's docstring); the scan keeps the calls the
    loop does not take."""
    for name in ("rg_lru", "mingru", "minlstm"):
        plan = fast.plan(_model(name, torch.float32).layers[0])
        assert plan.path == "derived" and "parallel scan" in plan.reason, name
        assert plan.run is not None and plan.run.fallback_plan.path == "fused"


@needs_cc
@pytest.mark.parametrize("name", ["ur_lstm", "star", "gru", "refined_mgu"])
@pytest.mark.parametrize("trained", ["all", "x only", "weights only"])
@pytest.mark.parametrize("fold", [True, False], ids=["in the loop", "before the loop"])
def test_the_sequence_owned_input_projection_gradients(name: str, trained: str, fold: bool, c_loop: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 on the CPU: the sequence computes xp = x W_ihᵀ + b itself (in the C loop at every step, a
    [T, B, ·] buffer only where the backward reads xp: star, gru; or before the loop where the loop
    cannot), ∂x in the C loop at every step, ∂W_ih and ∂b after the loop (∂W_ih in the same pass over ∂xp
    as the recurrent weight's where that one is over all of ∂xp: ur_lstm; a pass of its own otherwise:
    star, gru); refined_mgu (d ≠ n) also owns its short input's projection x̃ = x Pᵀ (computed before the
    loop, ∂P and ∂x's share from ∂x̃ after it); whichever of them are asked for equal the reference loop's,
    the others stay None."""
    if not fold:
        monkeypatch.setattr(pwloop.LoopPlan, "folds", lambda self, w, b, like: False)
    ran: list[tuple[str, bool]] = []
    forward, backward = pwloop.LoopPlan.forward, pwloop.LoopPlan.backward

    def fw(self: pwloop.LoopPlan, xp: Any, *args: Any, **kw: Any) -> Any:
        ran.append(("xp in the loop", xp is None))
        return forward(self, xp, *args, **kw)

    def bw(self: pwloop.LoopPlan, *args: Any, **kw: Any) -> Any:
        res = backward(self, *args, **kw)
        ran.append(("dx in the loop", res[-1] is not None))
        return res

    monkeypatch.setattr(pwloop.LoopPlan, "forward", fw)
    monkeypatch.setattr(pwloop.LoopPlan, "backward", bw)
    model = _model(name, torch.float32, n=6)
    with fast.force_derived():
        x, state = _inputs(model, 11, torch.float32)
        grads = []
        for on in (True, False):
            model.zero_grad(set_to_none=True)
            for p in model.parameters():
                p.requires_grad_(trained != "x only")
            xx = x.detach().clone().requires_grad_(trained != "weights only")
            with fast.enabled(on):
                out, _final = model(xx, None)
            (out * torch.linspace(-1.0, 1.0, out.numel()).view_as(out)).sum().backward()
            grads.append({"x": xx.grad, **{k: p.grad for k, p in model.named_parameters()}})
    n = len(model.layers)
    assert ran == [("xp in the loop", fold)] * n + [("dx in the loop", trained != "weights only")] * n
    with fast.force_derived(), torch.no_grad():           # inference: the same forward, nothing kept
        outs = []
        for on in (True, False):
            with fast.enabled(on):
                outs.append(model(x, None)[0])
    assert ran[-1] == ("xp in the loop", fold)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for k, ref in grads[1].items():
        got = grads[0][k]
        assert (got is None) == (ref is None), k
        if ref is not None:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max().clamp_min(1)))
    for p in model.parameters():
        p.requires_grad_(True)


@needs_cc
@pytest.mark.parametrize("loss", ["sum", "last", "columns"])
@pytest.mark.parametrize("name", ["gru", "ur_lstm", "mingru"])
def test_the_c_backward_reads_the_output_gradient_where_it_lies(name: str, loss: str, c_loop: None) -> None:
    """The loop gathers ∂out a step at a time from the gradient autograd hands it, whatever its strides,
    instead of copying it whole first: a sum's expanded gradient (every stride 0), the batch-first
    gradient of the last step alone (a readout), and one whose columns are not adjacent. Gradients equal
    the reference loop's (float64)."""
    model = _model(name, torch.float64, n=7)
    x, _ = _inputs(model, 5, torch.float64)
    B, T, n = x.shape[0], x.shape[1], 7
    g = torch.Generator().manual_seed(3)
    w = torch.randn(n, B, T, generator=g, dtype=torch.float64).permute(1, 2, 0)   # [B, T, n], column stride B·T

    def grads(on: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        with fast.enabled(on), fast.force_derived():
            out, _final = model(xx)
        value = out.sum() if loss == "sum" else (out[:, -1] ** 2).sum() if loss == "last" else (out * w).sum()
        value.backward()
        return {"x": xx.grad, **{k: p.grad for k, p in model.named_parameters() if p.grad is not None}}

    ref, got = grads(False), grads(True)
    with fast.force_derived():
        graphs = _graphs(model)
    assert graphs and all(g.loop is not None and g.loop.dout_strided for g in graphs)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-10, msg=k)
