"""The bookkeeping of the derived path's CUDA Graph loops (cellsearch.fast.cudagraph), on the CPU.

Without a GPU, a stand-in for the graph keeps what a CUDA Graph does to memory: a replay recomputes the
recorded loop from the static inputs and writes the result into the buffers the capture returned. So a
tensor handed out without a copy, a static input not refilled, or an instance replayed while another
sequence still needs its saved values shows up here as a wrong value, as it would on a GPU.
tests/test_cuda.py runs the real graphs against the step-by-step loops where a GPU is lent.
"""

from __future__ import annotations

import copy
import gc
from typing import Any

import pytest
import torch

import cellsearch as cs
from cellsearch import fast
from cellsearch.fast import cudagraph


class _Recorded:
    """A captured loop: ``replay`` runs ``fn`` again and writes its result into the first result's tensors."""

    def __init__(self, fn: Any, result: Any) -> None:
        self.fn, self.result = fn, result
        self.replays = 0

    def replay(self) -> None:
        _write(self.result, self.fn())
        self.replays += 1


def _write(dst: Any, src: Any) -> None:
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, (list, tuple)):
        assert len(dst) == len(src)
        for d, s in zip(dst, src):
            _write(d, s)


@pytest.fixture(autouse=True)
def _fresh_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step graphs derived anew in each test: cells of the same structure share them (and their captured
    loops, and a failed capture's note) process-wide."""
    import weakref

    from cellsearch.fast import derived

    monkeypatch.setattr(derived, "_SHARED", weakref.WeakValueDictionary())


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[_Recorded]:
    """CUDA Graphs stood in for on the CPU; the derived path's uncompiled step graphs (the Python loop
    that the graphs record on CUDA); returns the graphs captured."""
    graphs: list[_Recorded] = []

    def capture(inst: Any, fn: Any) -> tuple[_Recorded, Any]:
        fn()                                  # the warm-up run, as on CUDA
        g = _Recorded(fn, fn())
        graphs.append(g)
        return g, g.result

    monkeypatch.setattr(cudagraph, "_capture", capture)
    monkeypatch.setenv("CELLSEARCH_DERIVED_BACKEND", "aten")
    return graphs


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out, _ = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype, device=out.device)).sum().backward()
    return out.detach(), [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _passes(model: torch.nn.Module, xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Forward + backward of each input; two sequences in flight before one backward (each layer's loop
    holds two sequences' saved values at once); inference. Every pass's output and gradients (also used
    by tests/test_cuda.py on the device)."""
    results = [_grads(model, x) for x in xs]
    model.zero_grad(set_to_none=True)
    a, _ = model(xs[0])
    b, _ = model(xs[1])
    (a.sum() + (b * b).sum()).backward()
    results.append((torch.cat([a.detach(), b.detach()]), [p.grad.detach().clone() for p in model.parameters()]))
    with torch.no_grad():
        results.append((torch.cat([model(x)[0] for x in xs[:3]]), []))
    return results


@pytest.mark.parametrize("name", ["ur_lstm", "gru", "star", "dots_rnn", "mingru", "refined_lstm", "asrnn"])
def test_replayed_loops_equal_the_step_by_step_loops(name: str, recorded: list[_Recorded],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes of a 2-layer model with the loops replayed equal the same passes step by step, exactly
    (the same ops on the same values): outputs and gradients, each pass's read after all of them (no
    later replay overwrote what an earlier one handed out). Each layer captures its forward and backward
    loops, holds two instances while two sequences are in flight, and has them back (free) once their
    backward ran."""
    torch.manual_seed(0)
    template = cs.create_rnn(name, 5, 8, num_layers=2)
    xs = [torch.randn(7, 3, 5) for _ in range(5)]
    with fast.force_derived():
        plain = _passes(copy.deepcopy(template), xs)
        monkeypatch.setattr(cudagraph, "enabled", lambda device: True)
        model = copy.deepcopy(template)
        graphed = _passes(model, xs)
        plans = [fast.plan(layer) for layer in model.layers]
    for (out0, g0), (out1, g1) in zip(plain, graphed):
        assert torch.equal(out1, out0)
        assert len(g0) == len(g1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert all(r.replays for r in recorded)
    for p in plans:
        assert p.path == "derived", p.reason
        (loops,) = [g.cuda_graphs for g in p.run._graphs.values() if g.cuda_graphs]  # type: ignore[union-attr]
        assert loops.note is None
        trained = [k for k in loops.count if k[0]]
        (key,) = trained
        # two sequences were in flight in each layer (the layers' step graphs are alike: they share them)
        assert loops.count[key] == 2 * len(plans)
        gc.collect()
        instances = loops.free[key]
        assert len(instances) == loops.count[key]                       # all back once their backward ran
        assert any(i.bw is not None for i in instances)                 # the backward loop was captured too


def test_a_forward_without_backward_gives_its_instance_back(recorded: list[_Recorded],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward that keeps values for a backward that never comes (an evaluation with gradients on)
    holds its instance until its autograd graph is freed; then the next sequence reuses it."""
    monkeypatch.setattr(cudagraph, "enabled", lambda device: True)
    torch.manual_seed(0)
    model = cs.create_rnn("ur_lstm", 5, 8)
    x = torch.randn(6, 3, 5)
    with fast.force_derived():
        for _ in range(4):
            out, state = model(x)          # no backward
            del out, state                 # its autograd graph freed: the instance is free again
        (loops,) = [g.cuda_graphs for g in fast.plan(model.layers[0]).run._graphs.values() if g.cuda_graphs]  # type: ignore[union-attr]
    (key,) = [k for k in loops.count if k[0]]
    assert loops.count[key] == 1 and len(loops.free[key]) == 1


def test_threads_sharing_the_graphs_get_their_own_instances(recorded: list[_Recorded],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials in threads (Optuna's ``n_jobs``) whose cells share step graphs: each sequence replays an
    instance no other thread holds, so every thread's passes equal the same passes run alone (a buffer
    two threads shared would give one of them the other's values)."""
    import threading

    monkeypatch.setattr(cudagraph, "enabled", lambda device: True)
    torch.manual_seed(0)
    models = [cs.create_rnn("ur_lstm", 5, 8, num_layers=2) for _ in range(4)]
    xs = [torch.randn(3, 6, 5) for _ in range(6)]
    with fast.force_derived():
        alone = [_passes(copy.deepcopy(m), xs) for m in models]
        results: dict[int, Any] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                results[i] = _passes(models[i], xs)
            except BaseException as exc:      # re-raised below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for i, want in enumerate(alone):      # to rounding: the CPU's products split work by thread (1e-7
        for (out0, g0), (out1, g1) in zip(want, results[i]):        # apart with the graphs off too)
            torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-6)
            for a, b in zip(g0, g1):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inference_mode_and_no_grad_keep_their_own_instances(recorded: list[_Recorded],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers made under ``torch.inference_mode`` cannot be written outside it: evaluation under
    inference mode and under ``no_grad`` (same shapes) each replay instances of their own."""
    monkeypatch.setattr(cudagraph, "enabled", lambda device: True)
    torch.manual_seed(0)
    model = cs.create_rnn("gru", 5, 8)
    ref = copy.deepcopy(model)
    xs = [torch.randn(3, 6, 5) for _ in range(4)]
    with fast.force_derived():
        for modes in ("ii", "nn", "in" * 2):          # captured under inference mode first
            for x, mode in zip(xs, modes):
                with fast.enabled(False), torch.no_grad():
                    want, _ = ref(x)
                with torch.inference_mode() if mode == "i" else torch.no_grad():
                    out, _ = model(x)
                torch.testing.assert_close(out, want)
    assert any(r.replays for r in recorded)


def test_sequence_shapes_beyond_the_limit_run_step_by_step(recorded: list[_Recorded],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences of many lengths: the first MAX_SHAPES shapes are captured, the others run step by step
    (no instance, no memory kept for them), with the same results."""
    monkeypatch.setattr(cudagraph, "enabled", lambda device: True)
    monkeypatch.setattr(cudagraph, "MAX_SHAPES", 2)
    torch.manual_seed(0)
    model = cs.create_rnn("gru", 5, 8)
    ref = copy.deepcopy(model)
    with fast.force_derived():
        for T in (3, 4, 5, 3, 4, 5, 3, 4, 5):
            x = torch.randn(2, T, 5)             # batch first: sequences of T steps
            out, _ = model(x)
            with fast.enabled(False):
                want, _ = ref(x)
            torch.testing.assert_close(out, want)
        (loops,) = [g.cuda_graphs for g in fast.plan(model.layers[0]).run._graphs.values() if g.cuda_graphs]  # type: ignore[union-attr]
    assert len(loops.count) == 2 and len(loops.seen) == 3


def test_a_capture_that_fails_leaves_the_step_by_step_loop_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything the graph cannot record: the loops run step by step from then on, with the same
    results, and ``fast.explain`` gives the reason."""
    def fail(inst: Any, fn: Any) -> Any:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cudagraph, "_capture", fail)
    monkeypatch.setattr(cudagraph, "enabled", lambda device: True)
    monkeypatch.setenv("CELLSEARCH_DERIVED_BACKEND", "aten")
    torch.manual_seed(0)
    model = cs.create_rnn("gru", 5, 8)
    ref = copy.deepcopy(model)
    x = torch.randn(6, 3, 5)
    with fast.force_derived():
        outs = [_grads(model, x) for _ in range(3)]
        (loops,) = [g.cuda_graphs for g in fast.plan(model.layers[0]).run._graphs.values() if g.cuda_graphs]  # type: ignore[union-attr]
    with fast.enabled(False):
        out_ref, g_ref = _grads(ref, x)
    assert loops.note is not None and "operation not permitted" in loops.note
    for out, grads in outs:
        torch.testing.assert_close(out, out_ref)
        for a, b in zip(grads, g_ref):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name, path", [("ur_lstm", "derived"), ("star", "derived"), ("asrnn", "derived"),
                                        ("mingru", "derived"), ("rg_lru", "derived"), ("lstm", "native"),
                                        ("gru", "native"), ("dt_rnn", "derived")])
def test_plans_where_loops_replay_as_cuda_graphs(name: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA (stood in for: parameters off the CPU, graphs on) the derived path goes ahead of every
    hand-written kernel but torch's native LSTM / GRU (measured on an H200, docs/bench/GPU.md), with
    the hand kernel kept for the calls it does not take; with CELLSEARCH_CUDA_GRAPHS=0, the hand plans."""
    from cellsearch.fast import paths

    monkeypatch.setattr(paths, "_device", lambda cell: torch.device("cuda"))
    cell = cs.create_rnn(name, 5, 8).layers[0]
    for graphs, want in (("1", path), ("0", "native" if path == "native" else "fused")):
        monkeypatch.setenv("CELLSEARCH_CUDA_GRAPHS", graphs)
        p = paths.build_plan(cell)
        assert p.path == want, (graphs, p.reason)
        if want == "derived":
            assert p.run.fallback_plan.path == "fused" and "CUDA Graphs" in p.reason  # type: ignore[union-attr]
            hand = p.run.fallback_plan  # type: ignore[union-attr]
            # the same rule at each call (a cell planned on one device and run on another)
            assert paths.derived_ahead(hand, torch.device("cuda")) and \
                paths.derived_ahead(hand, torch.device("cpu")) == (not hand.first)


def test_only_cuda_is_captured_and_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not cudagraph.enabled("cpu")
    assert cudagraph.enabled("cuda")
    monkeypatch.setenv("CELLSEARCH_CUDA_GRAPHS", "0")
    assert not cudagraph.enabled("cuda:0")


def test_dense_layouts_only() -> None:
    """Static inputs copy the caller's layout; a broadcast view has no buffer of its own to copy into."""
    t = torch.randn(3, 4, 5)
    assert cudagraph._dense(t) and cudagraph._dense(t.transpose(0, 2)) and cudagraph._dense(t[:1])
    assert not cudagraph._dense(torch.zeros(3, 1).expand(3, 4)) and not cudagraph._dense(t[:, :, ::2])
