"""The C products of :mod:`cellsearch.fast.cgemm` against torch: Aᵀ·B (the post-loop weight gradients) and
the per-step products of a time loop alone (the GEMM floor's)."""

from __future__ import annotations

import pytest
import torch

from cellsearch.fast import cgemm, fused

pytestmark = pytest.mark.skipif(cgemm.library() is None, reason="no C compiler: the C product is not built")


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    tol = 1e-4 if got.dtype == torch.float32 else 1e-11
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max().clamp_min(1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (7, 33, 5), (8, 32, 256), (13, 70, 257), (40, 16, 600),
                                   (129, 250, 513), (3, 17, 0)])
def test_tn_equals_torch(dtype: torch.dtype, M: int, N: int, K: int) -> None:
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    a = torch.randn(K, M, generator=g, dtype=dtype)
    b = torch.randn(K, N, generator=g, dtype=dtype)
    s = torch.full((N,), float("nan"), dtype=dtype)
    out = cgemm.tn(a, b, s)
    assert out is not None
    _close(out, a.t() @ b)
    _close(s, b.sum(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tn_reads_strided_rows_and_pieces(dtype: torch.dtype) -> None:
    """Row strides wider than the columns (a column slice of a wider buffer), and A in pieces."""
    g = torch.Generator().manual_seed(3)
    wide_a = torch.randn(700, 50, generator=g, dtype=dtype)
    wide_b = torch.randn(700, 90, generator=g, dtype=dtype)
    a, b = wide_a[:, 5:40], wide_b[:, 10:75]
    pieces = [a[:64], a[64:300], a[300:]]
    out = cgemm.tn_parts(pieces, b)
    assert out is not None
    _close(out, a.t() @ b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [70, 1100], ids=["A as it lies", "A packed"])
def test_tn_pieces_on_both_sides_and_a_second_left_factor(dtype: torch.dtype, N: int) -> None:
    """A and B split at different rows; a second left factor (the input projection's x beside h; here a
    row tile spans both) and B's column sums (its bias gradient) in the same pass; with few column
    panels per thread A is read as it lies, with many its blocks are packed first."""
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(500, 20, generator=g, dtype=dtype), torch.randn(500, N, generator=g, dtype=dtype)
    x = torch.randn(500, 9, generator=g, dtype=dtype)
    s = torch.empty(N, dtype=dtype)
    threads = torch.get_num_threads()
    out = cgemm.tn_parts([a[:64], a[64:]], [b[:300], b[300:450], b[450:]], s, x)
    assert out is not None
    _close(out, torch.cat([a, x], 1).t() @ b)
    _close(s, b.sum(0))
    for nth in (1, 2, 3):                       # any split of the panels gives the same bits
        torch.set_num_threads(nth)
        try:
            again = cgemm.tn_parts([a[:64], a[64:]], [b[:300], b[300:450], b[450:]], None, x)
        finally:
            torch.set_num_threads(threads)
        assert again is not None and torch.equal(again, out)


def test_tn_refuses_what_it_does_not_serve() -> None:
    a, b = torch.randn(10, 4), torch.randn(10, 6)
    assert cgemm.tn(a.t().contiguous().t(), b) is None          # columns not unit-strided
    assert cgemm.tn(a, b.half()) is None                          # dtype
    assert cgemm.tn_parts([a[:3], a[3:]], b[:9]) is None          # rows do not add up
    assert cgemm.tn(a, b, torch.empty(5)) is None                 # column sums of the wrong size


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,B,K,N", [(1, 1, 1, 1), (3, 11, 37, 45), (2, 64, 128, 512), (4, 9, 300, 33)])
def test_steps_equal_torch(dtype: torch.dtype, T: int, B: int, K: int, N: int) -> None:
    """out[t] = a[t]·w for every t: w transposed or not, out a column slice of a wider buffer."""
    g = torch.Generator().manual_seed(T + B + K + N)
    a = torch.randn(T, B, K, generator=g, dtype=dtype)
    for w in (torch.randn(K, N, generator=g, dtype=dtype), torch.randn(N, K, generator=g, dtype=dtype).t()):
        wide = torch.full((T, B, N + 5), float("nan"), dtype=dtype)
        assert cgemm.steps(a, w, wide[:, :, 2:N + 2])
        _close(wide[:, :, 2:N + 2], a @ w)
        assert wide[:, :, :2].isnan().all() and wide[:, :, N + 2:].isnan().all()


def test_steps_refuse_what_they_do_not_serve() -> None:
    a, w, out = torch.randn(2, 3, 4), torch.randn(4, 5), torch.empty(2, 3, 5)
    assert not cgemm.steps(a.half(), w.half(), out.half())                   # dtype
    assert not cgemm.steps(a, w[:3], out)                                    # shapes
    assert not cgemm.steps(a.transpose(1, 2).contiguous().transpose(1, 2), w, out)   # columns not unit-strided
    assert not cgemm.steps(a, w.double(), out)                                # mixed dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,B,n", [(1, 3, 5), (7, 11, 37), (5, 64, 128)])
def test_the_sigmoid_recurrence_equals_its_loop(dtype: torch.dtype, T: int, B: int, n: int) -> None:
    """asRNN's loop: forward g_t = σ(g_t + g_{t−1}·k), backward g_t = (g_t + g_{t+1}·k) ⊙ s_t(1 − s_t), k
    transposed or not."""
    gen = torch.Generator().manual_seed(T * 100 + n)
    g0 = torch.randn(T, B, n, generator=gen, dtype=dtype)
    for k in (torch.randn(n, n, generator=gen, dtype=dtype) / n ** 0.5,
              (torch.randn(n, n, generator=gen, dtype=dtype) / n ** 0.5).t()):
        want = g0.clone()
        for t in range(T):
            if t > 0:
                want[t] += want[t - 1] @ k
            want[t] = torch.sigmoid(want[t])
        got = g0.clone()
        assert cgemm.sigmoid_recurrence(got, k)
        _close(got, want)
        d0 = torch.randn(T, B, n, generator=gen, dtype=dtype)
        dwant = d0.clone()
        for t in range(T - 1, -1, -1):
            if t + 1 < T:
                dwant[t] += dwant[t + 1] @ k
            dwant[t] *= want[t] * (1 - want[t])
        dgot = d0.clone()
        assert cgemm.sigmoid_recurrence(dgot, k, want)
        _close(dgot, dwant)
    assert not cgemm.sigmoid_recurrence(torch.randn(T, n, B, dtype=dtype).transpose(1, 2), k)   # not contiguous
    assert not cgemm.sigmoid_recurrence(g0, k[:-1])                       # shapes


def test_matmul_routes_a_transposed_left_factor_to_the_c_product() -> None:
    """fused.matmul's hᵀ·dA (a transposed view) and the input projection's weight gradients equal torch's;
    a transposed left factor with more rows than the right one has columns runs the other way round (the
    C product splits the result's columns over the threads)."""
    g = torch.Generator().manual_seed(5)
    h, da = torch.randn(3000, 96, generator=g), torch.randn(3000, 200, generator=g)
    _close(fused.matmul(h.t(), da), h.t() @ da)
    x = torch.randn(3000, 12, generator=g)
    narrow = fused.matmul(da.t(), x)          # 200 rows by 12 columns: computed as (xᵀ·da)ᵀ, a transposed view
    _close(narrow, da.t() @ x)
    assert narrow.t().is_contiguous() and not narrow.is_contiguous()
    dw, db = fused.input_weight_grads(x, da, None)
    _close(dw, da.t() @ x)
    _close(db, da.sum(0))
