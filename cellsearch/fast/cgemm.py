"""Dense products in C for the CPU paths: the packed per-step GEMM of the derived path's time loop and the
once-per-sequence weight-gradient product Aᵀ·B (issue 17).

Both are C text written once with :mod:`cellsearch.fast.csrc`'s ``REAL`` / ``_SFX`` placeholders (float
``_f``, double ``_d``) around one register tile: 8 rows × two 64-byte vectors of GCC vector types (AVX-512
here), accumulated over K with the right-hand operand packed into panels of those two vectors.

- :data:`STEP` — ``cs_gemm``, ``C = A·W (+ D)`` with ``W`` packed once per call of a time loop
  (:mod:`cellsearch.fast.pwloop` includes it in each loop's library); a full panel's results leave the
  tile as vectors, the addend (a ``[rows, N]`` value or one broadcast row) added on the way.
- :data:`SEQUENCE` — ``cs_tn``, ``C (+)= Aᵀ·B`` for ``A [K, M]`` and ``B [K, N]`` with K = T·B, the
  post-loop weight gradients (``hᵀ·dA``, ``xᵀ·dA``). ``B`` is packed a panel and 256 rows at a time (the
  pack fits L1); ``A``'s block of 256 rows is packed too where a thread has enough panels to share it,
  else read as it lies; neither operand is transposed or copied whole first (oneDNN's linear copies a
  transposed input: 4 ms of the 27 ms of ur_lstm's ``hᵀ·dA`` at 256/200). The packing pass also sums
  ``B``'s columns, which is an input projection's bias gradient for free, and a second left factor (the
  projection's ``x`` beside ``h``) can share the pass over ``B``. Threads split the column panels. It is
  a small library of its own (:func:`library`: built once per machine into the private kernel cache by
  :func:`cellsearch.fast.csrc.build`, 1.4 s here); :func:`tn_parts` calls it.

Measured (2 threads, float32, T·B = 12 800, against oneDNN's linear with its copy excluded): hᵀ·dA
256 × 1024 20.1–22.7 ms against 20.8–21.8, 256 × 256 4.6–4.8 against 7.7–8.9, 128 × 128 (T·B = 6 400)
0.55 against 0.94, xᵀ·dA with the column sums 32 × 1024 4.7 against 5.0; packing A's block then took
[h x]ᵀ·dA, 288 × 1024, from 28.9 to 22.8 ms and 288 × 768 from 22.5 to 17.5 (same process, interleaved;
see docs/bench/LOOP.md).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["STEP", "SEQUENCE", "library", "build_error", "tn", "tn_parts", "steps", "row_threads",
           "sigmoid_recurrence", "packed_size"]

#: OpenMP's header, and this thread's number ``id`` of ``nt`` inside a parallel region (0 of 1 without OpenMP)
_HEAD = """#ifdef _OPENMP
#include <omp.h>
#define CS_THREAD_ID const i64 id = omp_get_thread_num(), nt = omp_get_num_threads()
#else
#define CS_THREAD_ID const i64 id = 0, nt = 1
#endif
"""

#: the register tile and the per-step packed GEMM (see the module docstring)
STEP = r"""
#define CS_VW_SFX (64 / (i64)sizeof(REAL))
#define CS_NR_SFX (2 * CS_VW_SFX)
typedef REAL cs_vec_SFX __attribute__((vector_size(64)));

/* W [K, N] (element (k, n) at W[k * sk + n * sn]) into panels [ceil(N / NR)][K][NR], zero padded */
static void cs_pack_SFX(const REAL *W, i64 sk, i64 sn, i64 K, i64 N, REAL *P) {
    const i64 np = (N + CS_NR_SFX - 1) / CS_NR_SFX;
    for (i64 p = 0; p < np; p++)
        for (i64 k = 0; k < K; k++)
            for (i64 j = 0; j < CS_NR_SFX; j++) {
                const i64 c = p * CS_NR_SFX + j;
                P[(p * K + k) * CS_NR_SFX + j] = c < N ? W[k * sk + c * sn] : (REAL)0;
            }
}

/* the tile's MR rows (acc) into C (+ D, or + C itself when add): vectors for a full panel, else nc scalars */
static inline __attribute__((always_inline)) void cs_store_SFX(const int MR, cs_vec_SFX acc[8][2], REAL *C,
        i64 ldc, const REAL *D, i64 ldd, i64 nc) {
    for (int i = 0; i < MR; i++) {
        REAL *c = C + i * ldc;
        const REAL *d = D ? D + i * ldd : 0;
        if (nc == CS_NR_SFX) {
            cs_vec_SFX v0 = acc[i][0], v1 = acc[i][1];
            if (d) {
                cs_vec_SFX d0, d1;
                memcpy(&d0, d, sizeof d0);
                memcpy(&d1, d + CS_VW_SFX, sizeof d1);
                v0 += d0;
                v1 += d1;
            }
            memcpy(c, &v0, sizeof v0);
            memcpy(c + CS_VW_SFX, &v1, sizeof v1);
        } else {
            REAL t[2 * CS_VW_SFX];
            memcpy(t, &acc[i][0], sizeof acc[i][0]);
            memcpy(t + CS_VW_SFX, &acc[i][1], sizeof acc[i][1]);
            for (i64 j = 0; j < nc; j++) c[j] = d ? d[j] + t[j] : t[j];
        }
    }
}

/* rows i < MR of A (element (i, k) at A[i * ai + k * ak]) times one panel P [K][NR] (row k at P + k * ps:
   ps = NR packed, or a row stride of B read where it lies) */
static inline __attribute__((always_inline)) void cs_tile_SFX(const int MR, i64 K, const REAL *A, i64 ai,
        i64 ak, const REAL *P, i64 ps, REAL *C, i64 ldc, const REAL *D, i64 ldd, i64 nc) {
    cs_vec_SFX acc[8][2];
    for (int i = 0; i < MR; i++) { acc[i][0] = (cs_vec_SFX){0}; acc[i][1] = (cs_vec_SFX){0}; }
    for (i64 k = 0; k < K; k++) {
        cs_vec_SFX b0, b1;
        memcpy(&b0, P + k * ps, sizeof b0);
        memcpy(&b1, P + k * ps + CS_VW_SFX, sizeof b1);
        for (int i = 0; i < MR; i++) {
            const REAL a = A[i * ai + k * ak];
            acc[i][0] += a * b0;
            acc[i][1] += a * b1;
        }
    }
    cs_store_SFX(MR, acc, C, ldc, D, ldd, nc);
}

/* the tile for every row count 1..8 (MR a constant in each case, so the rows' loops unroll) */
#define CS_TILES_SFX(mr, ...) switch (mr) { \
    case 8: cs_tile_SFX(8, __VA_ARGS__); break; case 7: cs_tile_SFX(7, __VA_ARGS__); break; \
    case 6: cs_tile_SFX(6, __VA_ARGS__); break; case 5: cs_tile_SFX(5, __VA_ARGS__); break; \
    case 4: cs_tile_SFX(4, __VA_ARGS__); break; case 3: cs_tile_SFX(3, __VA_ARGS__); break; \
    case 2: cs_tile_SFX(2, __VA_ARGS__); break; default: cs_tile_SFX(1, __VA_ARGS__); break; }

/* C[M, N] = A[M, K] W (+ D: [M, N] at row stride ldd, or one row broadcast when ldd is 0); W packed */
static void cs_gemm_SFX(i64 M, i64 N, i64 K, const REAL *A, i64 lda, const REAL *P, REAL *C, i64 ldc,
                        const REAL *D, i64 ldd) {
    const i64 np = (N + CS_NR_SFX - 1) / CS_NR_SFX;
    for (i64 m = 0; m < M; m += 8) {
        const int mr = M - m < 8 ? (int)(M - m) : 8;
        for (i64 p = 0; p < np; p++) {
            const i64 nc = N - p * CS_NR_SFX < CS_NR_SFX ? N - p * CS_NR_SFX : CS_NR_SFX;
            const REAL *d = D ? D + m * ldd + p * CS_NR_SFX : 0;
            CS_TILES_SFX(mr, K, A + m * lda, lda, 1, P + p * K * CS_NR_SFX, CS_NR_SFX, C + m * ldc + p * CS_NR_SFX, ldc,
                         d, ldd, nc)
        }
    }
}
"""

#: the once-per-sequence product Aᵀ·B (see the module docstring); needs :data:`STEP` before it
SEQUENCE = r"""
#include <stdlib.h>
#define CS_KC 256
#define CS_DIRECT_M 64

/* C[M, N] (+)= A^T B: A [K, M] at row stride lda, B [K, N] at row stride ldb, C at row stride ldc;
   acc: add to C (else overwrite); S (NULL: none): B's column sums, added likewise; A2 (NULL: none) a
   second left factor [K, M2] at row stride lda2 in the same pass over B, into the M2 rows after C's.
   Threads split B's column panels; per block of CS_KC rows of B, a thread packs each of its panels
   (summing its columns on the way) and runs every row tile of A against it. A thread with more than
   8 panels first packs the block of A (and A2) as [rows / 8][CS_KC][8], so a tile reads its A
   contiguously instead of one row of A per k (a row stride of 1 KB at hidden 256 lands every k on the
   same few L1 sets): 25 % faster at N = 768 / 1024 on 2 threads, equal at 512, slower below (fewer
   panels to share the packing: 128 x 128 0.80 against 0.54 ms). */
void cs_tn_SFX(i64 M, i64 N, i64 K, const REAL *A, i64 lda, const REAL *B, i64 ldb, REAL *C, i64 ldc,
               i64 acc, REAL *S, const REAL *A2, i64 M2, i64 lda2, i64 nth) {
    const i64 np = (N + CS_NR_SFX - 1) / CS_NR_SFX, Mt = M + (A2 ? M2 : 0), Mp = (Mt + 7) / 8 * 8;
#ifdef _OPENMP
    #pragma omp parallel num_threads((int)nth) if(nth > 1)
#endif
    {
    CS_THREAD_ID;
    const i64 p0 = np * id / nt, p1 = np * (id + 1) / nt;
    REAL pk[CS_KC * CS_NR_SFX] __attribute__((aligned(64)));
    REAL *pa = p1 - p0 > 8 ? malloc(sizeof(REAL) * CS_KC * Mp) : 0;
    for (i64 k0 = 0; k0 < K || k0 == 0; k0 += CS_KC) {
        const i64 kc = K - k0 < CS_KC ? K - k0 : CS_KC;
        const int add = acc || k0 > 0;
        if (pa)
            for (i64 k = 0; k < kc; k++) {
                const REAL *a1 = A + (k0 + k) * lda, *a2 = A2 ? A2 + (k0 + k) * lda2 : 0;
                i64 m = 0;
                for (; m + 8 <= M; m += 8)                   /* whole groups of 8: one 8-wide copy each */
                    memcpy(pa + ((m >> 3) * kc + k) * 8, a1 + m, 8 * sizeof(REAL));
                for (; m < Mp; m++)
                    pa[((m >> 3) * kc + k) * 8 + (m & 7)] = m < M ? a1[m] : m < Mt ? a2[m - M] : (REAL)0;
            }
        for (i64 p = p0; p < p1; p++) {
            const i64 n0 = p * CS_NR_SFX, nc = N - n0 < CS_NR_SFX ? N - n0 : CS_NR_SFX;
            REAL s[CS_NR_SFX];
            for (i64 j = 0; j < CS_NR_SFX; j++) s[j] = 0;
            /* at most CS_DIRECT_M rows of A (an input projection's x: d = 32), too few tiles to repay a
               pack: the tiles read a full panel of B where it lies (x^T dxp 25 % faster at d = 32) */
            const int direct = Mt <= CS_DIRECT_M && nc == CS_NR_SFX;
            const REAL *bp = direct ? B + k0 * ldb + n0 : pk;
            const i64 ps = direct ? ldb : CS_NR_SFX;
            if (direct) {
                if (S)
                    for (i64 k = 0; k < kc; k++) {
                        const REAL *b = B + (k0 + k) * ldb + n0;
                        for (i64 j = 0; j < CS_NR_SFX; j++) s[j] += b[j];
                    }
            } else
            for (i64 k = 0; k < kc; k++) {
                const REAL *b = B + (k0 + k) * ldb + n0;
                REAL *q = pk + k * CS_NR_SFX;
                if (nc == CS_NR_SFX)
                    for (i64 j = 0; j < CS_NR_SFX; j++) { q[j] = b[j]; s[j] += b[j]; }
                else
                    for (i64 j = 0; j < CS_NR_SFX; j++) { q[j] = j < nc ? b[j] : (REAL)0; s[j] += q[j]; }
            }
            if (S)
                for (i64 j = 0; j < nc; j++) S[n0 + j] = add ? S[n0 + j] + s[j] : s[j];
            /* the rows of B the next panel packs (this block's next panel, or the next block's first),
               prefetched a share per row tile: its pack then finds them in cache (cs_tn 5-8 % faster) */
            const REAL *nb = p + 1 < p1 ? B + k0 * ldb + (p + 1) * CS_NR_SFX : B + (k0 + CS_KC) * ldb + p0 * CS_NR_SFX;
            const i64 nk = p + 1 < p1 ? kc : K - k0 - CS_KC < CS_KC ? K - k0 - CS_KC : CS_KC;
            const i64 share = (nk + (Mt + 7) / 8 - 1) / ((Mt + 7) / 8);
            for (i64 m = 0; m < Mt; m += 8) {
                const int mr = Mt - m < 8 ? (int)(Mt - m) : 8;
                REAL *c = C + m * ldc + n0;
                for (i64 k = (m >> 3) * share; k < ((m >> 3) + 1) * share && k < nk; k++) {
                    __builtin_prefetch((const char *)(nb + k * ldb));
                    __builtin_prefetch((const char *)(nb + k * ldb) + 64);
                }
                const REAL *src = pa ? pa + (m >> 3) * kc * 8 : m + mr <= M ? A + k0 * lda + m
                                : A2 + k0 * lda2 + (m - M);
                const i64 ak = pa ? 8 : m + mr <= M ? lda : lda2;
                if (pa || m + mr <= M || m >= M) {          /* one expansion of the tile (compile time) */
                    CS_TILES_SFX(mr, kc, src, 1, ak, bp, ps, c, ldc, add ? c : 0, ldc, nc)
                } else {                                     /* a tile across A and A2: row by row */
                    for (int i = 0; i < mr; i++) {
                        const REAL *row = m + i < M ? A + k0 * lda + m + i : A2 + k0 * lda2 + (m + i - M);
                        cs_tile_SFX(1, kc, row, 1, m + i < M ? lda : lda2, bp, ps, c + i * ldc, ldc,
                                    add ? c + i * ldc : 0, ldc, nc);
                    }
                }
            }
        }
    }
    free(pa);
    }
}

/* A sigmoid recurrence over T steps, in place in G [T, B, n] (contiguous), rows over the threads (each row
   depends on its own row only): forward (dir 0) G_t = sigma(G_t + G_{t-1} K) (G_0 = sigma(G_0)); backward
   (dir 1, S the forward's G) G_t = (G_t + G_{t+1} K) * S_t (1 - S_t) from t = T - 1 down (the last
   without the product). K [n, n] (element (k, j) at K[k * sk + j * sn]) packed once into P. asRNN's
   fused kernel (cellsearch.fast.kernels.AdaptiveKernel): its whole time loop in one call. */
void cs_sigrec_SFX(i64 dir, i64 T, i64 B, i64 n, REAL *G, const REAL *S, const REAL *K, i64 sk, i64 sn,
                   REAL *P, i64 nth) {
    cs_pack_SFX(K, sk, sn, n, n, P);
#ifdef _OPENMP
    #pragma omp parallel num_threads((int)nth) if(nth > 1)
#endif
    {
    CS_THREAD_ID;
    const i64 r0 = B * id / nt, r1 = B * (id + 1) / nt;
    for (i64 i = 0; i < T; i++) {
        const i64 t = dir ? T - 1 - i : i;
        REAL *g = G + (t * B + r0) * n;
        if (i > 0) {
            const REAL *prev = G + ((dir ? t + 1 : t - 1) * B + r0) * n;
            cs_gemm_SFX(r1 - r0, n, n, prev, n, P, g, n, g, n);
        }
        if (dir) {
            const REAL *st = S + (t * B + r0) * n;
            for (i64 e = 0; e < (r1 - r0) * n; e++) g[e] = g[e] * (st[e] * ((REAL)1 - st[e]));
        } else
            for (i64 e = 0; e < (r1 - r0) * n; e++) g[e] = sig_SFX(g[e]);
    }
    }
}

/* T products C_t [B, N] = A_t [B, K] W, W (element (k, n) at W[k * sk + n * sn]) packed once into P:
   the products of a time loop alone, rows split over the threads as the loop splits them (the GEMM
   floor of cellsearch.bench.compare times the loops' products through it) */
void cs_steps_SFX(i64 T, i64 B, i64 N, i64 K, const REAL *A, i64 sa, i64 lda, const REAL *W, i64 sk, i64 sn,
                  REAL *C, i64 sc, i64 ldc, REAL *P, i64 nth) {
    cs_pack_SFX(W, sk, sn, K, N, P);
#ifdef _OPENMP
    #pragma omp parallel num_threads((int)nth) if(nth > 1)
#endif
    {
    CS_THREAD_ID;
    const i64 r0 = B * id / nt, r1 = B * (id + 1) / nt;
    for (i64 t = 0; t < T; t++)
        cs_gemm_SFX(r1 - r0, N, K, A + t * sa + r0 * lda, lda, P, C + t * sc + r0 * ldc, ldc, 0, 0);
    }
}
"""

_SIG = [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_int64] * 3 + [ctypes.c_int64, ctypes.c_void_p] + \
    [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
_SFX = {torch.float32: "_f", torch.float64: "_d"}
_SIGREC_SIG = [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p, ctypes.c_int64]
_STEPS_SIG = [ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + \
    [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + \
    [ctypes.c_void_p, ctypes.c_int64]


_lock = threading.Lock()
_lib: Any = False                     # False: not tried yet; None: unavailable
_error: str | None = None


def library() -> Any:
    """The library of :data:`SEQUENCE` (float and double; OpenMP where torch runs on GNU OpenMP), or None
    where no C library is built here (:func:`cellsearch.fast.csrc.disabled`, no compiler: see
    :func:`build_error`)."""
    global _lib, _error
    if _lib is not False:
        return _lib
    from . import csrc

    with _lock:
        if _lib is False:
            _lib, _error = None, csrc.disabled()
            if _error is None:
                errors: list[str] = []
                source = csrc.math_preamble() + _HEAD + csrc.instantiate(STEP + SEQUENCE)
                built = csrc.build(source, "cellsearch_gemm", csrc._FLAGS, csrc.variants(), ctypes.CDLL, errors)
                if built is None:
                    _error = "; ".join(errors) or "no C compiler found (set CC)"
                else:
                    _lib = built[0]
                    for sfx in _SFX.values():
                        fn = getattr(_lib, "cs_tn" + sfx)
                        fn.argtypes, fn.restype = _SIG, None
                        fn = getattr(_lib, "cs_steps" + sfx)
                        fn.argtypes, fn.restype = _STEPS_SIG, None
                        fn = getattr(_lib, "cs_sigrec" + sfx)
                        fn.argtypes, fn.restype = _SIGREC_SIG, None
    return _lib


def build_error() -> str | None:
    """Why :func:`library` is None (None when it is in use, or before the first attempt)."""
    return _error


def _fn(dtype: torch.dtype, name: str = "cs_tn") -> Any:
    """``cs_tn_f`` / ``cs_tn_d`` (or ``name``'s), or None (no library, other dtypes)."""
    sfx = _SFX.get(dtype)
    lib = library() if sfx is not None else None
    return None if lib is None or sfx is None else getattr(lib, name + sfx)


def steps(a: Tensor, w: Tensor, out: Tensor) -> bool:
    """``out[t] = a[t] · w`` for every t (``a`` [T, B, K] and ``out`` [T, B, N] with unit column stride,
    ``w`` [K, N], any strides) by the time loops' per-step GEMM (:data:`STEP`), ``w`` packed once, the
    rows split over torch's threads as the loops split them; False where the C library does not serve
    it (dtype, device, layout): the products of a time loop without its pointwise work."""
    fn = _fn(a.dtype, "cs_steps")
    if fn is None or a.device.type != "cpu" or any(t.dtype != a.dtype or t.device != a.device for t in (w, out)) \
            or a.dim() != 3 or out.dim() != 3 or a.stride(2) != 1 or out.stride(2) != 1 \
            or a.shape[:2] != out.shape[:2] or w.shape != (a.shape[2], out.shape[2]):
        return False
    T, B, K = a.shape
    N = int(out.shape[2])
    pack = a.new_empty(packed_size(K, N, a.element_size()))
    fn(T, B, N, K, a.data_ptr(), a.stride(0), a.stride(1), w.data_ptr(), w.stride(0), w.stride(1),
       out.data_ptr(), out.stride(0), out.stride(1), pack.data_ptr(), row_threads(B))
    return True


def sigmoid_recurrence(g: Tensor, k: Tensor, s: Tensor | None = None) -> bool:
    """asRNN's time loop in one call, in place in ``g`` [T, B, n] (contiguous): forward (``s`` None)
    ``g_t ← σ(g_t + g_{t−1}·k)``; backward (``s`` the forward's result) ``g_t ← (g_t + g_{t+1}·k) ⊙ s_t(1 −
    s_t)`` from the last step down. ``k`` [n, n], any strides. Rows split over torch's threads as the time
    loops split them. False where the C library does not serve it (dtype, device, layout)."""
    fn = _fn(g.dtype, "cs_sigrec")
    if fn is None or g.device.type != "cpu" or g.dim() != 3 or not g.is_contiguous() \
            or k.shape != (g.shape[2], g.shape[2]) or k.dtype != g.dtype or k.device != g.device \
            or (s is not None and (s.shape != g.shape or not s.is_contiguous() or s.dtype != g.dtype)):
        return False
    T, B, n = g.shape
    pack = g.new_empty(packed_size(n, n, g.element_size()))
    fn(int(s is not None), T, B, n, g.data_ptr(), None if s is None else s.data_ptr(), k.data_ptr(), k.stride(0),
       k.stride(1), pack.data_ptr(), row_threads(B))
    return True


def packed_size(K: int, N: int, itemsize: int) -> int:
    """Elements of a ``[K, N]`` factor packed into panels of two 64-byte vectors (``cs_pack``)."""
    nr = 2 * 64 // itemsize
    return K * ((N + nr - 1) // nr) * nr


def row_threads(rows: int) -> int:
    """The threads a time loop splits ``rows`` batch rows over: torch's, at least 8 rows each."""
    return max(1, min(torch.get_num_threads(), rows // 8))


def _rows(t: Tensor) -> bool:
    """A matrix whose rows are laid out one after another with unit column stride (any row stride)."""
    return t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] == 1) and t.stride(0) >= t.shape[1]


def _pieces(t: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [t] if isinstance(t, Tensor) else list(t)


def tn_parts(a_parts: Sequence[Tensor], b: Tensor | Sequence[Tensor], colsum: Tensor | None = None,
             extra: Tensor | None = None) -> Tensor | None:
    """``cat(a_parts)ᵀ · cat(b)`` ([M, N]) without the concatenations: ``a_parts`` are ``[k_i, M]`` pieces
    of ``A`` in row order, ``b`` is ``[K, N]`` or its row pieces (split anywhere); ``colsum`` (a
    contiguous ``[N]``, or None) receives ``b``'s column sums; ``extra`` (``[K, M2]``, or None) is a
    second left factor multiplied in the same pass over ``b`` (read once): its product is the M2 rows
    after the M of ``A``'s (the result is ``[M + M2, N]``). None where the C library does not serve it
    (dtype, device, layout): the caller computes it another way."""
    bs, As = _pieces(b), list(a_parts)
    if not As or not bs:
        return None
    fn = _fn(bs[0].dtype)
    if fn is None or bs[0].device.type != "cpu":
        return None
    M, N = int(As[0].shape[1]), int(bs[0].shape[1])
    K = sum(int(t.shape[0]) for t in bs)
    lefts = [*As, *([] if extra is None else [extra])]
    if sum(int(a.shape[0]) for a in As) != K or any(
            t.dtype != bs[0].dtype or t.device != bs[0].device or not _rows(t) for t in [*lefts, *bs]) or \
            any(a.shape[1] != M for a in As) or any(t.shape[1] != N for t in bs) or \
            (extra is not None and extra.shape[0] != K):
        return None
    if colsum is not None and (colsum.dtype != bs[0].dtype or not colsum.is_contiguous() or colsum.numel() != N):
        return None
    M2 = 0 if extra is None else int(extra.shape[1])
    out = bs[0].new_empty(M + M2, N)
    nth = torch.get_num_threads()
    cuts = sorted({0, K, *_cuts(As), *_cuts(bs)})
    for i, (k0, k1) in enumerate(zip(cuts, cuts[1:] or [0])):
        if k1 <= k0 and K > 0:
            continue
        a, ka = _at(As, k0)
        bb, kb = _at(bs, k0)
        fn(M, N, k1 - k0, a[ka:].data_ptr() if ka < a.shape[0] else a.data_ptr(), a.stride(0),  # type: ignore[operator]
           bb[kb:].data_ptr() if kb < bb.shape[0] else bb.data_ptr(), bb.stride(0), out.data_ptr(), N, int(i > 0),
           None if colsum is None else colsum.data_ptr(),
           None if extra is None else (extra[k0:].data_ptr() if k0 < K else extra.data_ptr()), M2,
           0 if extra is None else extra.stride(0), nth)
    return out


def _cuts(pieces: Sequence[Tensor]) -> list[int]:
    out, k = [], 0
    for t in pieces:
        k += int(t.shape[0])
        out.append(k)
    return out


def _at(pieces: Sequence[Tensor], k: int) -> tuple[Tensor, int]:
    """The piece holding row ``k`` of the stacked pieces, and the row within it."""
    for t in pieces:
        if k < t.shape[0]:
            return t, k
        k -= int(t.shape[0])
    return pieces[-1], int(pieces[-1].shape[0])


def tn(a: Tensor, b: Tensor, colsum: Tensor | None = None) -> Tensor | None:
    """``aᵀ · b`` for ``a [K, M]`` and ``b [K, N]`` (see :func:`tn_parts`)."""
    return tn_parts([a], b, colsum)
