"""What only a GPU can show (issues 10 and 15), marked ``cuda``: skipped where torch sees no CUDA device.

``CELLSEARCH_TEST_DEVICE=cpu`` runs the same tests on the CPU, which checks their logic on machines
without a GPU; ``CELLSEARCH_TEST_DEVICE=cuda:1`` picks a device. ``scripts/gpu_check.py`` runs these and
the GPU benchmarks in one go when a GPU is lent (they passed on an H200 on 2026-12-04, docs/bench/GPU.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import cellsearch as cs
from cellsearch import fast

DEVICE = os.environ.get("CELLSEARCH_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.xdist_group("cuda"),
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device"),
]

TASK = {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32}


@pytest.fixture(autouse=True)
def _exact_matmuls() -> Any:
    """Full float32 products (TF32 off) while comparing against the float64 reference."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out, _ = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1], device=out.device, dtype=out.dtype)).sum().backward()
    return out.detach(), [p.grad.detach() for p in model.parameters() if p.grad is not None]


def _against_reference(name: str, then: Callable[[torch.nn.Module], None] = lambda model: None) -> None:
    """Cell ``name`` (2 layers) in float32 on DEVICE, fast paths forced as far as they go, against the
    float64 reference loop on the CPU: output and weight gradients; ``then(model)`` runs inside the forced
    block after the pass (checks of the plan)."""
    torch.manual_seed(0)
    ref = cs.create_rnn(name, 5, 16, num_layers=2).double()
    dev = cs.create_rnn(name, 5, 16, num_layers=2)
    dev.load_state_dict(ref.state_dict())
    dev = dev.float().to(DEVICE)
    x = torch.randn(12, 4, 5, dtype=torch.float64)
    with fast.enabled(False):
        out_ref, g_ref = _grads(ref, x)
    with fast.force_derived():
        out_dev, g_dev = _grads(dev, x.float().to(DEVICE))
        then(dev)
    scale = out_ref.abs().max().item() + 1e-12
    assert (out_dev.double().cpu() - out_ref).abs().max().item() < 1e-4 * scale, fast.explain(dev.layers[0])
    assert len(g_dev) == len(g_ref)
    for a, b in zip(g_dev, g_ref):
        assert (a.double().cpu() - b).abs().max().item() < 1e-3 * (b.abs().max().item() + 1e-6)


@pytest.mark.parametrize("name", cs.list_cells())
def test_every_registered_cell_on_the_device_equals_the_float64_reference(name: str) -> None:
    """Whatever path a cell takes on the device (cuDNN, fused, derived, reference), its output and weight
    gradients in float32 equal the float64 reference loop on the CPU."""
    _against_reference(name)


def _study(tmp_path: Path, name: str, train: dict[str, Any], cells: list[str]) -> Any:
    from cellsearch.search import run_study

    raw = {
        "name": name, "task": dict(TASK), "cells": cells, "model": {"hidden_size": 8}, "objective": "val_mse",
        "train": {"epochs": 2, "steps_per_epoch": 5, "batch_size": 16, "threads": 1, "device": DEVICE, **train},
        "search": {"backend": "optuna", "sampler": "random", "n_trials": len(cells), "seed": 0, "pruner": "none"},
        "storage": f"sqlite:///{tmp_path / (name + '.db')}",
    }
    return run_study(raw, display="quiet")


def test_precision_bf16_and_fp16_studies_run_on_the_device_near_fp32(tmp_path: Path) -> None:
    """``train.precision`` on the device: the same parity with fp32 as the CPU test
    (tests/test_checkpoints.py::test_precision_bf16_and_fp16_train_on_the_cpu_near_fp32)."""
    values = {}
    for precision in ("fp32", "bf16", "fp16"):
        result = _study(tmp_path, f"p_{precision}", {"precision": precision}, ["ur_lstm"])
        assert result.n_complete == 1
        values[precision] = result.trials[0].values[0]
    assert abs(values["bf16"] - values["fp32"]) < 0.02 and abs(values["fp16"] - values["fp32"]) < 0.05


def test_prefetched_pinned_batches_give_the_same_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches made ahead, page-locked and copied asynchronously: the run of plain synchronous copies."""
    from cellsearch.api import resolve
    from cellsearch.tasks import make_task
    from cellsearch.tasks.prefetch import ENV
    from cellsearch.train import resolve_model_spec, train

    cell, depth = resolve("gru")
    spec = resolve_model_spec(cell, depth, make_task(TASK), hidden_size=8)
    config = {"epochs": 2, "steps_per_epoch": 4, "batch_size": 16, "threads": 1, "progress": False,
              "device": DEVICE}
    runs = []
    for flag in ("0", "1"):
        monkeypatch.setenv(ENV, flag)
        runs.append(train(spec, TASK, config).history)
    plain = [[{k: v for k, v in e.items() if k != "seconds"} for e in h] for h in runs]
    assert plain[0] == pytest.approx(plain[1]) if DEVICE.startswith("cuda") else plain[0] == plain[1]


def test_a_resumed_run_on_the_device_ends_near_the_uninterrupted_one(tmp_path: Path) -> None:
    """Checkpoints on the device: stopped while reporting epoch 3 (its checkpoint already written), resumed
    at epoch 4 (GPU kernels need not be bitwise reproducible, so the end is compared to a tolerance)."""
    from cellsearch.api import resolve
    from cellsearch.tasks import make_task
    from cellsearch.train import resolve_model_spec, train

    class Stop(Exception):
        pass

    def stop_at_3(epoch: int, metrics: dict) -> None:
        if epoch == 3:
            raise Stop

    cell, depth = resolve("ur_lstm")
    spec = resolve_model_spec(cell, depth, make_task(TASK), hidden_size=8)
    config = {"epochs": 4, "steps_per_epoch": 3, "batch_size": 16, "threads": 1, "progress": False,
              "device": DEVICE}
    whole = train(spec, TASK, config)
    with pytest.raises(Stop):
        train(spec, TASK, config, callback=stop_at_3, checkpoint=tmp_path / "run.pt")
    resumed = train(spec, TASK, config, checkpoint=tmp_path / "run.pt")
    assert resumed.extra == {"resumed_from_epoch": 3}
    assert resumed.final["val_loss"] == pytest.approx(whole.final["val_loss"], rel=1e-3)


def test_bench_runs_on_the_device_against_nn_lstm(tmp_path: Path) -> None:
    """``cellsearch bench --device``: synchronized timing of a composed cell against nn.LSTM (cuDNN)."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cellsearch.cli", "bench", "ur_lstm", "gru", "--device", DEVICE, "--hidden", "32",
           "--seq", "20", "--repeats", "2", "--warmup", "1", "--max-load", "0", "--no-memory", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["device"].startswith(DEVICE.split(":")[0])
    assert {r["cell"] for r in report["results"]} == {"ur_lstm", "gru"}
    assert all(r["tokens_per_s"] > 0 and r["ratio"] > 0 for r in report["results"])


# ------------------------------------------------------------------------------------------------
# the derived path's step graphs as generated Triton kernels (cellsearch.fast.pwgen_triton)

@pytest.fixture
def triton_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The derived path's step graphs compiled by pwgen_triton on DEVICE, at every size, from the first
    call, as the derived path chooses on CUDA (``derived.triton_device``); on the CPU that choice is
    made for CPU tensors too, run in Triton's interpreter (triton itself imported first in compiling
    mode). Returns the list the builds are counted in."""
    pytest.importorskip("triton")
    from cellsearch.fast import derived, pwgen_triton

    compiled: list[int] = []
    for name, value in (("CELLSEARCH_DERIVED_MIN", "0"), ("CELLSEARCH_DERIVED_AFTER", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CELLSEARCH_DERIVED_BACKEND", raising=False)
    monkeypatch.delenv("CELLSEARCH_DERIVED_COMPILER", raising=False)
    if not DEVICE.startswith("cuda"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setattr(derived, "triton_device", lambda device: True)
    build = pwgen_triton.compile_lowered

    def counted(lowered: Any, device: Any = "cuda") -> Any:
        compiled.extend(1 for _ in lowered)
        return build(lowered, device)

    monkeypatch.setattr(pwgen_triton, "compile_lowered", counted)
    return compiled


@pytest.mark.filterwarnings("ignore::RuntimeWarning")       # the interpreter's numpy, on the CPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", cs.list_cells())
def test_every_registered_cell_step_graphs_as_triton_kernels_on_the_device(name: str, dtype: torch.dtype,
                                                                         triton_steps: list[int]) -> None:
    """Forward and backward step graphs, lowered and run as Triton kernels on the device, equal the same
    graphs run by torch on the device (float64 to 1e-10, float32 to 1e-5)."""
    from test_pwgen_triton import check_step_graphs

    check_step_graphs(name, dtype, DEVICE)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", cs.list_cells())
def test_derived_path_with_triton_kernels_on_the_device_equals_the_float64_reference(
        name: str, triton_steps: list[int]) -> None:
    """Every registered cell on the derived path with its step graphs as Triton kernels on the device:
    output and weight gradients in float32 equal the float64 reference loop on the CPU."""

    def on_triton(model: torch.nn.Module) -> None:
        assert {fast.plan(layer).path for layer in model.layers} == {"derived"}
        errors = {fast.plan(layer).run.compile_error for layer in model.layers}   # type: ignore[union-attr]
        assert errors == {None} and len(triton_steps) >= 2, (errors, triton_steps)
        assert "generated Triton step graphs" in fast.explain(model.layers[0])

    _against_reference(name, on_triton)


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="counts CUDA kernel launches")
def test_a_step_is_a_few_launches(triton_steps: list[int]) -> None:
    """ur_lstm at H = 256, B = 128: each step graph launches one Triton kernel per pointwise region and
    its GEMMs, nothing else (docs/bench/GPU.md). A GEMM may be three kernels: addmm copies its addend
    into the output first, and cuBLAS splits a product of this shape over k (the product and a reduction;
    seen on an H200, torch 2.11)."""
    from test_pwgen_triton import _compiled, _graphs
    from torch.profiler import ProfilerActivity, profile

    from cellsearch.fast import pwgen

    g, inv, var = _graphs("ur_lstm", torch.float32, DEVICE, batch=128, hidden=256)
    forward, backward = _compiled(g, inv, var)
    with torch.no_grad():
        saved = forward(*inv, *var)
        pre = list(g.bw_pre(*inv)) if g.n_pre else []
        bw_args = [*inv, *pre, *saved[g.n_out:g.n_out + g.n_saved],
                   *[torch.ones_like(t) for t in saved[:g.n_out]]]
        bw_args += [torch.empty_like(var[0])] if g.dxp_inplace else []
        for run, args, part in ((forward, [*inv, *var], "forward"), (backward, bw_args, "backward")):
            run(*args)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                run(*args)
                torch.cuda.synchronize()
            names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
            lowered = pwgen.lower(g.modules[part])
            gemms = sum(1 for n in lowered.graph.graph.nodes
                        if str(n.target) in ("aten.mm.default", "aten.addmm.default", "aten.bmm.default"))
            ours = [n for n in names if n.startswith("pw")]
            assert len(ours) == len(lowered.kernels), names
            assert len(names) <= len(ours) + 3 * gemms, names


# ------------------------------------------------------------------------------------------------
# the derived path's loops replayed as CUDA Graphs (cellsearch.fast.cudagraph)

@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="CUDA Graphs need a CUDA device")
@pytest.mark.parametrize("name", ["ur_lstm", "gru", "star", "asrnn", "dots_rnn", "indrnn"])
def test_derived_loops_replayed_as_cuda_graphs_equal_the_step_by_step_loops(
        name: str, triton_steps: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Six passes of a 2-layer model on the derived path with its loops captured and replayed as CUDA
    Graphs (forward + backward, two sequences in flight at once, inference) equal the same passes step
    by step (CELLSEARCH_CUDA_GRAPHS=0): outputs and gradients, each read after all passes (no replay
    overwrote what an earlier one handed out); the loops were captured (no failure note) and two
    sequences in flight held two instances."""
    import copy

    from test_cudagraph import _passes

    torch.manual_seed(0)
    template = cs.create_rnn(name, 5, 16, num_layers=2).to(DEVICE)
    xs = [torch.randn(12, 4, 5, device=DEVICE) for _ in range(6)]
    runs = {}
    for graphs in ("0", "1"):
        monkeypatch.setenv("CELLSEARCH_CUDA_GRAPHS", graphs)
        model = copy.deepcopy(template)
        with fast.force_derived():
            runs[graphs] = _passes(model, xs)
            plans = [fast.plan(layer) for layer in model.layers]
        if graphs == "1":
            for p in plans:
                assert p.path == "derived", p.reason
                loops = [g.cuda_graphs for g in p.run._graphs.values() if g.cuda_graphs]  # type: ignore[union-attr]
                assert loops and all(lp.note is None for lp in loops), [lp.note for lp in loops]
                assert max(n for lp in loops for n in lp.count.values()) >= 2, [lp.count for lp in loops]
    for (out0, g0), (out1, g1) in zip(runs["0"], runs["1"]):
        torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-6)
        assert len(g0) == len(g1)
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
