"""The per-step products on oneDNN with packed weights (:class:`cellsearch.fast.fused.Mat` above
``ONEDNN_MIN``; the suite's small models stay below it, so it is lowered to 0 here): outputs and every
gradient match the reference loop, on the C kernels and the torch-op kernels."""

from __future__ import annotations

import pytest
import torch
from fast_paths import assert_same, hand_kernels_first  # noqa: F401  (autouse)

import cellsearch as cs
from cellsearch.fast import csrc, fused, paths

#: every family with a per-step product: C families and gate forms, and the torch-op-only families
CASES = ["lstm", "ur_lstm", "refined_lstm", "u_lstm", "gru", "ur_gru", "mgu", "refined_mgu", "star", "vanilla",
         "asrnn", "dts_rnn"]


@pytest.fixture(autouse=True)
def _onednn_everywhere(monkeypatch: pytest.MonkeyPatch):
    if not fused.onednn_available():
        pytest.skip("oneDNN linear unavailable")
    monkeypatch.setattr(fused, "ONEDNN_MIN", 0)
    monkeypatch.setitem(paths.NATIVE, "lstm", "cuda")


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "torch"])
@pytest.mark.parametrize("name", CASES)
def test_packed_onednn_products_match_the_reference(name: str, use_c: bool) -> None:
    if use_c and csrc.library() is None:
        pytest.skip(f"C kernels unavailable: {csrc.build_error()}")
    if not use_c and name in ("lstm", "gru"):
        pytest.skip("exactly LSTM / GRU without the C kernels run torch's native kernels")
    torch.manual_seed(0)
    model = cs.create_rnn(name, 5, 12, num_layers=2)
    old = paths.use_c(use_c)
    try:
        assert all(cs.fast.plan(layer).path == "fused" for layer in model.layers)
        assert_same(model, torch.randn(7, 6, 5))
    finally:
        paths.use_c(old)


@pytest.mark.parametrize("rows", [1, 9, 64])
def test_packed_product_equals_plain_product_on_strided_rows(rows: int) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 16, generator=g)
    wide = torch.randn(rows, 40, generator=g)
    x = wide[:, 3:19]                                   # a strided view, as a block of dA[t] is
    mat = fused.Mat(w, 64)
    assert mat.dnn
    torch.testing.assert_close(mat.mm(x), x @ w.t(), rtol=1e-5, atol=1e-5)
    acc = torch.randn(rows, 48, generator=g)
    torch.testing.assert_close(mat.addmm(acc, x, torch.empty_like(acc)), acc + x @ w.t(), rtol=1e-5, atol=1e-5)


def test_chunked_input_projection_equals_addmm() -> None:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1000, 7, generator=g), torch.randn(8192, 7, generator=g), torch.randn(8192, generator=g)
    out = torch.full((1000, 8192), float("nan"))
    fused.project(x, w, b, out)                            # 256-row chunks (the last one short)
    torch.testing.assert_close(out, torch.addmm(b, x, w.t()), rtol=1e-5, atol=1e-5)
