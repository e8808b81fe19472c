"""The execution paths a cell can take, each selectable by name, so that every path is checked against the
float64 reference (tests/reference.py) under its own test name.

- ``reference``: the plain step loop (fast paths off: ``cellsearch.fast.enabled(False)``);
- ``native``: torch's LSTM / GRU kernels (exactly-LSTM / exactly-GRU specs);
- ``fused-c``: the whole-sequence function with the compiled C pointwise kernels (gated updates, including
  exactly-LSTM / GRU when the native kernels are reserved for CUDA);
- ``fused-torch``: the whole-sequence function with the torch-op kernels.

:func:`fast_paths_of` says, at collection time and without compiling anything, which fast paths a spec can
take; :func:`forced` selects one and checks that every layer of a model takes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

import cellsearch as cs
from cellsearch import fast
from cellsearch.fast import csrc, paths

__all__ = ["FAST_PATHS", "TOL", "assert_same", "fast_paths_of", "forced", "reference_loop", "run_both_ways", "close"]

#: fast path vs reference loop, relative to the largest value
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

FAST_PATHS = ("native", "fused-c", "fused-torch", "derived")
#: updates with compiled C pointwise kernels (PRIMITIVES.md §1, §2 families; vanilla runs on torch ops)
C_UPDATES = ("lstm", "lstm_tied", "gru", "mgu", "star")


def fast_paths_of(spec: Any, d: int = 5, n: int = 8, **depth: Any) -> list[str]:
    """The fast paths a model of ``spec`` can take (empty: it always runs the reference loop)."""
    old = paths.use_c(False)   # no compilation at collection time
    try:
        model = cs.create_rnn(spec, d, n, **depth)
        with fast.hand_first():
            found = {fast.plan(layer).path for layer in model.layers}
        default = {fast.plan(layer).path for layer in model.layers}
    finally:
        paths.use_c(old)
    update = model.layers[0].update.name
    derived = ["derived"] if default == {"derived"} else []    # the derived path preferred to a hand kernel
    if found == {"native"}:
        return ["native", "fused-c"]
    if found == {"fused"}:
        return (["fused-c", "fused-torch"] if update in C_UPDATES and model.layers[0].transition is None
                else ["fused-torch"]) + derived
    return []


def _takes(path: str, plan: Any) -> bool:
    if path == "native":
        return plan.path == "native"
    return plan.path == "fused" and (("C pointwise kernels" in plan.reason) == (path == "fused-c"))


@contextmanager
def forced(path: str, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run ``model`` on fast path ``path`` inside the block (asserting each layer's plan takes it and the
    reference loop does not run): a hand-written one (hand kernels first), or ``derived`` (generated C
    step graphs and time loop, at every size)."""
    from cellsearch.cells import ComposedCell

    def reference_fails(self: Any, *args: Any, **kw: Any) -> None:
        pytest.fail(f"{path}: the reference loop ran")

    if path == "derived":
        from cellsearch.fast import pwgen_c

        if pwgen_c.unavailable("cpu", torch.float64) is not None:
            pytest.skip(pwgen_c.unavailable("cpu", torch.float64))
        for name, value in (("CELLSEARCH_DERIVED_MIN", "0"), ("CELLSEARCH_DERIVED_AFTER", "0"),
                            ("CELLSEARCH_DERIVED_COMPILER", "c")):
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("CELLSEARCH_DERIVED_BACKEND", raising=False)
        with fast.force_derived():
            assert all(fast.plan(layer).path == "derived" for layer in model.layers)
            monkeypatch.setattr(ComposedCell, "_reference_sequence", reference_fails)
            with fast.enabled(True):
                yield
        return
    if path == "fused-c" and csrc.library() is None:
        pytest.skip(f"C kernels unavailable: {csrc.build_error()}")
    native = "always" if path == "native" else "cuda"
    for name in ("lstm", "gru"):
        monkeypatch.setitem(paths.NATIVE, name, native)
    old = paths.use_c(path == "fused-c")
    try:
        with fast.hand_first():
            plans = [fast.plan(layer) for layer in model.layers]
            assert all(_takes(path, p) for p in plans), [f"{p.path}: {p.reason}" for p in plans]
            monkeypatch.setattr(ComposedCell, "_reference_sequence", reference_fails)
            with fast.enabled(True):
                yield
    finally:
        paths.use_c(old)


@contextmanager
def reference_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fast paths off inside the block; asserts that the reference step loop ran and no fast path did."""
    from cellsearch.cells import ComposedCell

    calls: list[int] = []
    original = ComposedCell._reference_sequence
    monkeypatch.setattr(ComposedCell, "_reference_sequence",
                        lambda self, *args, **kw: calls.append(1) or original(self, *args, **kw))
    monkeypatch.setattr(fast, "plan", lambda cell: pytest.fail("a fast-path plan was consulted"))
    with fast.enabled(False):
        yield
    assert calls, "the reference loop did not run"


def run_both_ways(model: torch.nn.Module, x: torch.Tensor, state: tuple | None, on: bool):
    """Forward + backward with fast paths on/off: (outputs, final states, gradients by name)."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    st = None
    if state is not None:
        st = tuple(tuple(s.detach().clone().requires_grad_(True) for s in layer) for layer in state)
    with fast.enabled(on):
        out, final = model(x, st)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + sum((s * s).sum() for layer in final for s in layer)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    grads["x"] = x.grad
    if st is not None:
        for i, layer in enumerate(st):
            for j, s in enumerate(layer):
                grads[f"state{i}.{j}"] = s.grad
    return out.detach(), [s.detach() for layer in final for s in layer], grads


def close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    scale = max(1.0, a.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"{what}: |Δ| = {err:.3g} (scale {scale:.3g})"


def assert_same(model: torch.nn.Module, x: torch.Tensor, state: tuple | None = None) -> None:
    """The fast path and the reference loop agree on outputs, final states and every gradient."""
    tol = TOL[x.dtype]
    ref_out, ref_final, ref_grads = run_both_ways(model, x, state, False)
    out, final, grads = run_both_ways(model, x, state, True)
    close(ref_out, out, tol, "output")
    for i, (a, b) in enumerate(zip(ref_final, final)):
        close(a, b, tol, f"final state {i}")
    assert set(ref_grads) == set(grads), set(ref_grads) ^ set(grads)
    for name in ref_grads:
        close(ref_grads[name], grads[name], tol, f"gradient of {name}")


def sequential_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t ⊙ h_{t−1} + b_t one step at a time (time-major): what every scan is checked against."""
    h, out = h0, []
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out)


@pytest.fixture(autouse=True)
def hand_kernels_first() -> Iterator[None]:
    """The hand-written kernels' tests: cells with a hand-written kernel take it (on the CPU the derived
    path is otherwise preferred wherever its time loop runs in C; tests/test_pwloop.py covers that)."""
    with fast.hand_first():
        yield
