"""A small C library of fused per-step pointwise kernels, compiled on first use and loaded with ctypes.

Why: inside the fused loops every torch op on a [B, n] slice costs 2–10 µs, mostly dispatch, and an
LSTM-type step needs 10–25 of them in each direction; one C call per step and direction does the same
pointwise work in a single pass over the row (PERFORMANCE.md: "closing that gap needs fewer, fused
pointwise kernels per step"). The GEMMs stay in torch (oneDNN / MKL).

How: :data:`SOURCE` is plain C99 (no torch headers, no Python headers), written once with ``REAL`` /
``_SFX`` placeholders and instantiated for float and double. :func:`library` compiles it with the
system C compiler (``$CC``, then cc, gcc, clang) at ``-O3 -march=native`` into a cache directory
(``$CELLSEARCH_CACHE`` or ``~/.cache/cellsearch``, a directory private to the user: see
:mod:`cellsearch.fast.cache`; the file name carries a digest of the source, the compiler, the flags and
the CPU), which takes about a second once per machine; a concurrent build is harmless (atomic rename).
A library file there that is not the user's own, or that others can write, is never loaded (a warning,
and the library is built in a private temporary directory instead). When there is no compiler or the
build fails, :func:`library` returns None and the fused loops use torch ops instead
(``CELLSEARCH_FAST_C=0`` forces that).

Transcendentals: exp is a branch-free Cody–Waite reduction with a degree-6 (float, ≤ 1 ulp) or Padé
(double, ≤ 2 ulp) approximation that the compiler vectorizes; σ(x) = 1/(1 + e^−x),
tanh(x) = 1 − 2/(1 + e^{2x}) (absolute error ≤ 2e-7 in float, ≤ 5e-16 in double).

Every kernel computes true gradients (no scale conventions): ``dA`` holds ∂L/∂(pre-activation).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SOURCE", "math_preamble", "instantiate", "Args", "library", "build", "variants", "disabled", "build_error",
           "library_path", "time_build", "threaded"]

_INCLUDES = r"""
#include <stdint.h>
#include <string.h>
typedef long long i64;

"""

_STRUCT = r"""typedef struct {
    i64 T, B, n, rs;      /* time steps, batch, hidden, row stride of G / dA / dHP (elements) */
    i64 k, ng;            /* gate blocks in the layout (with UR's r); effective gates (update order) */
    i64 pos[4];           /* layout block of effective gate g */
    i64 ur, ur_r, ur_pol; /* effective gate refined by UR (-1 none), layout block of r, polarity */
    i64 ref_mode;         /* refined short connection: 0 none, 1 mul, 2 add */
    i64 ref_mask;         /* bit g: effective gate g is refined */
    i64 tied, tanh_sat;   /* LSTM input gate tied to 1 - f; saturation tanh (else identity) */
    i64 cand;             /* layout block of the candidate */
    i64 beta_on;          /* STAR's code form: h = sat((1 - k) h + k_b z), k_b = sigma(a_k + beta) */
    double beta_c;        /* e^beta: k_b = k c / (1 + k (c - 1)) */
    void *G, *dA, *dHP, *C, *TC, *c0, *h0, *Y, *XS, *dXS, *Q, *FH, *bhn, *dc, *dhd, *scratch;
    i64 nthreads;         /* threads over the batch rows of a step (built with OpenMP; 1: serial) */
    i64 scr_stride;       /* elements of scratch per thread */
} cs_args;
"""

#: the vectorizable exp (cs_exp_f / cs_exp_d)
_EXP = r"""
static inline float cs_exp_f(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float r = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float f = x - r * 0.693359375f;
    f = f + r * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * f + 1.3981999507E-3f;
    p = p * f + 8.3334519073E-3f;
    p = p * f + 4.1665795894E-2f;
    p = p * f + 1.6666665459E-1f;
    p = p * f + 5.0000001201E-1f;
    p = p * (f * f) + f + 1.0f;
    int32_t bits = ((int32_t)r + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
}

static inline double cs_exp_d(double x) {
    x = x < -708.0 ? -708.0 : x;
    x = x > 709.0 ? 709.0 : x;
    double r = (x * 1.4426950408889634073599 + 6755399441055744.0) - 6755399441055744.0;
    double f = x - r * 6.93145751953125E-1;
    f = f - r * 1.42860682030941723212E-6;
    double xx = f * f;
    double px = f * ((1.26177193074810590878E-4 * xx + 3.02994407707441961300E-2) * xx
                     + 9.99999999999999999910E-1);
    double q = ((3.00198505138664455042E-6 * xx + 2.52448340349684104192E-3) * xx
                + 2.27265548208155028766E-1) * xx + 2.00000000000000000009E0;
    double e = 1.0 + 2.0 * (px / (q - px));
    int64_t bits = ((int64_t)r + 1023) << 52;
    double s;
    memcpy(&s, &bits, 8);
    return e * s;
}
"""

_HEADER = _INCLUDES + _STRUCT + _EXP

#: Batch rows of a step split over threads when the library is built with OpenMP (torch's own runtime:
#: the library's libgomp dependency resolves to the copy torch has loaded, so the GEMMs and these loops
#: share one thread pool); each thread has its own scratch.
_PAR = r"""
#ifdef _OPENMP
#include <omp.h>
#define CS_PAR _Pragma("omp parallel for schedule(static) num_threads(a->nthreads) if(a->nthreads > 1)")
#define CS_TID ((i64)omp_get_thread_num())
#else
#define CS_PAR
#define CS_TID ((i64)0)
#endif
"""

#: sigmoid and tanh on top of cs_exp, written once with the REAL / _SFX placeholders
_ACT = r"""
static inline REAL sig_SFX(REAL x) { return (REAL)1 / ((REAL)1 + cs_exp_SFX(-x)); }
static inline REAL th_SFX(REAL x) { return (REAL)1 - (REAL)2 / ((REAL)1 + cs_exp_SFX((REAL)2 * x)); }
"""

_BODY = _ACT + r"""
/* out[j] = act(x[j] + y[j]) (y may be NULL); act 0: sigmoid, 1: tanh, 2: identity */
static void act_SFX(REAL *restrict x, const REAL *restrict y, i64 m, int act) {
    if (y) {
        if (act == 0) for (i64 j = 0; j < m; j++) x[j] = sig_SFX(x[j] + y[j]);
        else if (act == 1) for (i64 j = 0; j < m; j++) x[j] = th_SFX(x[j] + y[j]);
        else for (i64 j = 0; j < m; j++) x[j] = x[j] + y[j];
    } else {
        if (act == 0) for (i64 j = 0; j < m; j++) x[j] = sig_SFX(x[j]);
        else if (act == 1) for (i64 j = 0; j < m; j++) x[j] = th_SFX(x[j]);
    }
}

/* effective gates of one row (row holds the sigmoid outputs): E[g] -> values (row or scratch) */
static void gates_fwd_SFX(const cs_args *a, REAL *row, const REAL *xs, REAL *scr, REAL **E) {
    i64 n = a->n;
    for (i64 g = 0; g < a->ng; g++) {
        REAL *restrict s = row + a->pos[g] * n;
        REAL *restrict out = scr + g * n;
        if (g == a->ur) {
            const REAL *restrict r = row + a->ur_r * n;
            REAL p = (REAL)a->ur_pol;
            for (i64 j = 0; j < n; j++)
                out[j] = s[j] + p * ((REAL)2 * r[j] - (REAL)1) * s[j] * ((REAL)1 - s[j]);
            E[g] = out;
        } else if ((a->ref_mask >> g) & 1) {
            if (a->ref_mode == 1) for (i64 j = 0; j < n; j++) out[j] = s[j] * xs[j];
            else for (i64 j = 0; j < n; j++) out[j] = s[j] + xs[j];
            E[g] = out;
        } else {
            E[g] = s;
        }
    }
}

/* dE[g] = dL/d(effective gate g) -> dL/d(pre-activation) of every gate block in drow; dxs accumulated */
static void gates_bwd_SFX(const cs_args *a, const REAL *row, REAL *drow, const REAL *xs, REAL *dxs,
                          const REAL *dE) {
    i64 n = a->n;
    if (a->ref_mode && dxs) memset(dxs, 0, (size_t)n * sizeof(REAL));
    for (i64 g = 0; g < a->ng; g++) {
        const REAL *restrict s = row + a->pos[g] * n;
        REAL *restrict ds = drow + a->pos[g] * n;
        const REAL *restrict de = dE + g * n;
        if (g == a->ur) {
            const REAL *restrict r = row + a->ur_r * n;
            REAL *restrict dr = drow + a->ur_r * n;
            REAL p = (REAL)a->ur_pol;
            for (i64 j = 0; j < n; j++) {
                REAL f = s[j], w = f * ((REAL)1 - f), rr = r[j];
                ds[j] = de[j] * ((REAL)1 + p * ((REAL)2 * rr - (REAL)1) * ((REAL)1 - (REAL)2 * f)) * w;
                dr[j] = de[j] * (REAL)2 * p * w * rr * ((REAL)1 - rr);
            }
        } else if ((a->ref_mask >> g) & 1) {
            if (a->ref_mode == 1) {
                for (i64 j = 0; j < n; j++) {
                    ds[j] = de[j] * xs[j] * s[j] * ((REAL)1 - s[j]);
                    dxs[j] += de[j] * s[j];
                }
            } else {
                for (i64 j = 0; j < n; j++) {
                    ds[j] = de[j] * s[j] * ((REAL)1 - s[j]);
                    dxs[j] += de[j];
                }
            }
        } else {
            for (i64 j = 0; j < n; j++) ds[j] = de[j] * s[j] * ((REAL)1 - s[j]);
        }
    }
}

#define ROW(p, t, b, stride) ((REAL *)(p) + ((t) * a->B + (b)) * (stride))

/* Inner loops with two or more streams written live in these helpers: GCC honours restrict on function
   parameters (kept through inlining), not on block-scope pointers, and without it leaves such loops
   scalar (scalar exp, ~10x slower per element). Every pointer of a call addresses a distinct buffer. */
static inline void lstm_bwd_tied_SFX(i64 n, const REAL *restrict u, const REAL *restrict cp,
                                     const REAL *restrict f, REAL *restrict dc, REAL *restrict df,
                                     REAL *restrict du) {
    for (i64 j = 0; j < n; j++) {
        df[j] = dc[j] * (cp[j] - u[j]);
        du[j] = dc[j] * ((REAL)1 - f[j]) * ((REAL)1 - u[j] * u[j]);
        dc[j] *= f[j];
    }
}

static inline void lstm_bwd_full_SFX(i64 n, const REAL *restrict u, const REAL *restrict cp,
                                     const REAL *restrict f, const REAL *restrict i, REAL *restrict dc,
                                     REAL *restrict di, REAL *restrict df, REAL *restrict du) {
    for (i64 j = 0; j < n; j++) {
        di[j] = dc[j] * u[j];
        df[j] = dc[j] * cp[j];
        du[j] = dc[j] * i[j] * ((REAL)1 - u[j] * u[j]);
        dc[j] *= f[j];
    }
}

static inline void gru_fwd_row_SFX(i64 n, int ts, const REAL *restrict hq, const REAL *restrict bhn,
                                   const REAL *restrict r, const REAL *restrict z,
                                   const REAL *restrict hprev, REAL *restrict q, REAL *restrict hh,
                                   REAL *restrict y) {
    for (i64 j = 0; j < n; j++) {
        REAL qj = hq[j] + bhn[j], pre = hh[j] + r[j] * qj;
        REAL v = ts ? th_SFX(pre) : pre;
        q[j] = qj;
        hh[j] = v;
        y[j] = v + z[j] * (hprev[j] - v);
    }
}

static inline void gru_bwd_row_SFX(i64 n, int ts, const REAL *restrict dh0, const REAL *restrict r,
                                   const REAL *restrict z, const REAL *restrict hh, const REAL *restrict q,
                                   const REAL *restrict hprev, REAL *restrict dhd, REAL *restrict dpre,
                                   REAL *restrict dq, REAL *restrict dr, REAL *restrict dz) {
    for (i64 j = 0; j < n; j++) {
        REAL dh = dh0[j] + dhd[j], h = hh[j];
        REAL d = dh * ((REAL)1 - z[j]);
        d = ts ? d * ((REAL)1 - h * h) : d;
        dpre[j] = d;
        dz[j] = dh * (hprev[j] - h);
        dhd[j] = dh * z[j];
        dq[j] = d * r[j];
        dr[j] = d * q[j];
    }
}

static inline void mgu_bwd2_row_SFX(i64 n, const REAL *restrict dh, const REAL *restrict hh,
                                    const REAL *restrict hprev, const REAL *restrict dfh,
                                    const REAL *restrict f, REAL *restrict df, REAL *restrict dhd) {
    for (i64 j = 0; j < n; j++) {
        df[j] = dh[j] * (hh[j] - hprev[j]) + dfh[j] * hprev[j];
        dhd[j] = dh[j] * ((REAL)1 - f[j]) + dfh[j] * f[j];
    }
}

static inline void star_bwd_row_SFX(i64 n, int ts, const REAL *restrict dh0, const REAL *restrict y,
                                    const REAL *restrict k, const REAL *restrict z, const REAL *restrict hprev,
                                    REAL *restrict dhd, REAL *restrict dk, REAL *restrict dz) {
    for (i64 j = 0; j < n; j++) {
        REAL dv = dh0[j] + dhd[j];
        dv = ts ? dv * ((REAL)1 - y[j] * y[j]) : dv;
        dk[j] = dv * (z[j] - hprev[j]);
        dz[j] = dv * k[j] * ((REAL)1 - z[j] * z[j]);
        dhd[j] = dv * ((REAL)1 - k[j]);
    }
}

static inline void star_bwd_beta_SFX(i64 n, int ts, REAL c, const REAL *restrict dh0, const REAL *restrict y,
                                     const REAL *restrict k, const REAL *restrict z,
                                     const REAL *restrict hprev, REAL *restrict dhd, REAL *restrict da,
                                     REAL *restrict dz) {
    for (i64 j = 0; j < n; j++) {
        REAL dv = dh0[j] + dhd[j];
        dv = ts ? dv * ((REAL)1 - y[j] * y[j]) : dv;
        REAL kj = k[j], kb = kj * c / ((REAL)1 + kj * (c - (REAL)1));
        da[j] = dv * (kb * ((REAL)1 - kb) * z[j] - kj * ((REAL)1 - kj) * hprev[j]);
        dz[j] = dv * kb * ((REAL)1 - z[j] * z[j]);
        dhd[j] = dv * ((REAL)1 - kj);
    }
}

static inline void star_fwd_beta_SFX(i64 n, int ts, REAL c, const REAL *restrict k, const REAL *restrict z,
                                     const REAL *restrict hprev, REAL *restrict y) {
    for (i64 j = 0; j < n; j++) {
        REAL kb = k[j] * c / ((REAL)1 + k[j] * (c - (REAL)1));
        REAL v = ((REAL)1 - k[j]) * hprev[j] + kb * z[j];
        y[j] = ts ? th_SFX(v) : v;
    }
}

/* ---- LSTM: blocks [gates..., u]; c = f c' + i u (tied: u + f (c' - u)); h = o sat(c) ---- */
void lstm_fwd_SFX(const cs_args *a, i64 t, const REAL *hp, i64 hp_rs) {
    i64 n = a->n, kn = a->k * n;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride;
        REAL *row = ROW(a->G, t, b, a->rs);
        const REAL *hrow = hp ? hp + b * hp_rs : 0;
        act_SFX(row, hrow, kn, 0);
        act_SFX(row + kn, hrow ? hrow + kn : 0, n, 1);
        REAL *E[4];
        gates_fwd_SFX(a, row, a->XS ? ROW(a->XS, t, b, n) : 0, scr, E);
        const REAL *restrict u = row + kn;
        const REAL *restrict cp = t ? ROW(a->C, t - 1, b, n) : (REAL *)a->c0 + b * n;
        REAL *restrict c = ROW(a->C, t, b, n);
        REAL *restrict y = ROW(a->Y, t, b, n);
        const REAL *restrict f = E[a->tied ? 0 : 1], *restrict o = E[a->tied ? 1 : 2];
        if (a->tied) {
            for (i64 j = 0; j < n; j++) c[j] = u[j] + f[j] * (cp[j] - u[j]);
        } else {
            const REAL *restrict i = E[0];
            for (i64 j = 0; j < n; j++) c[j] = f[j] * cp[j] + i[j] * u[j];
        }
        if (a->tanh_sat) {
            REAL *restrict tc = ROW(a->TC, t, b, n);
            for (i64 j = 0; j < n; j++) { REAL v = th_SFX(c[j]); tc[j] = v; y[j] = o[j] * v; }
        } else {
            for (i64 j = 0; j < n; j++) y[j] = o[j] * c[j];
        }
    }
}

void lstm_bwd_SFX(const cs_args *a, i64 t, const REAL *dh_all) {
    i64 n = a->n, kn = a->k * n, ng = a->ng;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride, *dE = scr + ng * n;
        REAL *row = ROW(a->G, t, b, a->rs), *drow = ROW(a->dA, t, b, a->rs);
        const REAL *xs = a->XS ? ROW(a->XS, t, b, n) : 0;
        REAL *E[4];
        gates_fwd_SFX(a, row, xs, scr, E);
        const REAL *restrict dh = dh_all + b * n;
        REAL *restrict dc = (REAL *)a->dc + b * n;
        const REAL *restrict u = row + kn;
        REAL *restrict du = drow + kn;
        const REAL *restrict cp = t ? ROW(a->C, t - 1, b, n) : (REAL *)a->c0 + b * n;
        const REAL *restrict c = ROW(a->C, t, b, n);
        const REAL *restrict f = E[a->tied ? 0 : 1], *restrict o = E[a->tied ? 1 : 2];
        REAL *restrict df = dE + (a->tied ? 0 : 1) * n, *restrict dout = dE + (a->tied ? 1 : 2) * n;
        if (a->tanh_sat) {
            const REAL *restrict tc = ROW(a->TC, t, b, n);
            for (i64 j = 0; j < n; j++) {
                dout[j] = dh[j] * tc[j];
                dc[j] += dh[j] * o[j] * ((REAL)1 - tc[j] * tc[j]);
            }
        } else {
            for (i64 j = 0; j < n; j++) { dout[j] = dh[j] * c[j]; dc[j] += dh[j] * o[j]; }
        }
        if (a->tied) lstm_bwd_tied_SFX(n, u, cp, f, dc, df, du);
        else lstm_bwd_full_SFX(n, u, cp, f, E[0], dc, dE, df, du);
        gates_bwd_SFX(a, row, drow, xs, a->dXS ? ROW(a->dXS, t, b, n) : 0, dE);
    }
}

/* ---- GRU: blocks [gates (r, z, ...), h]; q = U_h h + b_hn; hh = sat(x_h + r q); h = hh + z (h'-hh) */
void gru_fwd_SFX(const cs_args *a, i64 t, const REAL *hp, i64 hp_rs) {
    i64 n = a->n, kn = a->k * n, c0 = a->cand * n;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride;
        REAL *row = ROW(a->G, t, b, a->rs);
        const REAL *hrow = hp + b * hp_rs;
        act_SFX(row, hrow, kn, 0);
        REAL *E[4];
        gates_fwd_SFX(a, row, a->XS ? ROW(a->XS, t, b, n) : 0, scr, E);
        const REAL *restrict r = E[0], *restrict z = E[1];
        const REAL *restrict hq = hrow + c0, *restrict bhn = (REAL *)a->bhn;
        const REAL *restrict hprev = t ? ROW(a->Y, t - 1, b, n) : (REAL *)a->h0 + b * n;
        REAL *restrict q = ROW(a->Q, t, b, n), *restrict hh = row + c0, *restrict y = ROW(a->Y, t, b, n);
        gru_fwd_row_SFX(n, (int)a->tanh_sat, hq, bhn, r, z, hprev, q, hh, y);
    }
}

void gru_bwd_SFX(const cs_args *a, i64 t, const REAL *dh_all) {
    i64 n = a->n, c0 = a->cand * n, ng = a->ng, kn = a->k * n;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride, *dE = scr + ng * n;
        REAL *row = ROW(a->G, t, b, a->rs), *drow = ROW(a->dA, t, b, a->rs);
        REAL *dhrow = ROW(a->dHP, t, b, a->rs);
        const REAL *xs = a->XS ? ROW(a->XS, t, b, n) : 0;
        REAL *E[4];
        gates_fwd_SFX(a, row, xs, scr, E);
        const REAL *restrict r = E[0], *restrict z = E[1];
        const REAL *restrict dh0 = dh_all + b * n, *restrict hh = row + c0, *restrict q = ROW(a->Q, t, b, n);
        const REAL *restrict hprev = t ? ROW(a->Y, t - 1, b, n) : (REAL *)a->h0 + b * n;
        REAL *restrict dhd = (REAL *)a->dhd + b * n, *restrict dpre = drow + c0, *restrict dq = dhrow + c0;
        REAL *restrict dr = dE, *restrict dz = dE + n;
        gru_bwd_row_SFX(n, (int)a->tanh_sat, dh0, r, z, hh, q, hprev, dhd, dpre, dq, dr, dz);
        gates_bwd_SFX(a, row, drow, xs, a->dXS ? ROW(a->dXS, t, b, n) : 0, dE);
        memcpy(dhrow, drow, (size_t)kn * sizeof(REAL));
    }
}

/* ---- MGU: blocks [gates (f, ...), h]; two phases around the second GEMM ---- */
void mgu_fwd1_SFX(const cs_args *a, i64 t, const REAL *hp, i64 hp_rs) {
    i64 n = a->n, kn = a->k * n;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride;
        REAL *row = ROW(a->G, t, b, a->rs);
        act_SFX(row, hp ? hp + b * hp_rs : 0, kn, 0);
        REAL *E[4];
        gates_fwd_SFX(a, row, a->XS ? ROW(a->XS, t, b, n) : 0, scr, E);
        const REAL *restrict f = E[0];
        const REAL *restrict hprev = t ? ROW(a->Y, t - 1, b, n) : (REAL *)a->h0 + b * n;
        REAL *restrict fh = ROW(a->FH, t, b, n);
        for (i64 j = 0; j < n; j++) fh[j] = f[j] * hprev[j];
    }
}

void mgu_fwd2_SFX(const cs_args *a, i64 t, const REAL *hp, i64 hp_rs) {
    i64 n = a->n, c0 = a->cand * n;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride;
        REAL *row = ROW(a->G, t, b, a->rs);
        act_SFX(row + c0, hp ? hp + b * hp_rs : 0, n, a->tanh_sat ? 1 : 2);
        REAL *E[4];
        gates_fwd_SFX(a, row, a->XS ? ROW(a->XS, t, b, n) : 0, scr, E);
        const REAL *restrict f = E[0], *restrict hh = row + c0;
        const REAL *restrict hprev = t ? ROW(a->Y, t - 1, b, n) : (REAL *)a->h0 + b * n;
        REAL *restrict y = ROW(a->Y, t, b, n);
        for (i64 j = 0; j < n; j++) y[j] = hprev[j] + f[j] * (hh[j] - hprev[j]);
    }
}

/* phase A: dh = dh_all + dhd (kept in dc); dpre of the candidate */
void mgu_bwd1_SFX(const cs_args *a, i64 t, const REAL *dh_all) {
    i64 n = a->n, c0 = a->cand * n;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride;
        REAL *row = ROW(a->G, t, b, a->rs), *drow = ROW(a->dA, t, b, a->rs);
        REAL *E[4];
        gates_fwd_SFX(a, row, a->XS ? ROW(a->XS, t, b, n) : 0, scr, E);
        const REAL *restrict f = E[0], *restrict hh = row + c0, *restrict dh0 = dh_all + b * n;
        const REAL *restrict dhd = (REAL *)a->dhd + b * n;
        REAL *restrict dh = (REAL *)a->dc + b * n, *restrict dpre = drow + c0;
        for (i64 j = 0; j < n; j++) {
            dh[j] = dh0[j] + dhd[j];
            REAL d = dh[j] * f[j];
            dpre[j] = a->tanh_sat ? d * ((REAL)1 - hh[j] * hh[j]) : d;
        }
    }
}

/* phase B: dfh = dpre U_h (from torch); gate gradient and the direct path to h_{t-1} */
void mgu_bwd2_SFX(const cs_args *a, i64 t, const REAL *dfh_all) {
    i64 n = a->n, c0 = a->cand * n, ng = a->ng;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride, *dE = scr + ng * n;
        REAL *row = ROW(a->G, t, b, a->rs), *drow = ROW(a->dA, t, b, a->rs);
        const REAL *xs = a->XS ? ROW(a->XS, t, b, n) : 0;
        REAL *E[4];
        gates_fwd_SFX(a, row, xs, scr, E);
        const REAL *restrict f = E[0], *restrict hh = row + c0, *restrict dfh = dfh_all + b * n;
        const REAL *restrict dh = (REAL *)a->dc + b * n;
        const REAL *restrict hprev = t ? ROW(a->Y, t - 1, b, n) : (REAL *)a->h0 + b * n;
        REAL *restrict dhd = (REAL *)a->dhd + b * n, *restrict df = dE;
        mgu_bwd2_row_SFX(n, dh, hh, hprev, dfh, f, df, dhd);
        gates_bwd_SFX(a, row, drow, xs, a->dXS ? ROW(a->dXS, t, b, n) : 0, dE);
    }
}

/* ---- STAR: blocks [gates (k, ...), z]; z = tanh(W_z x + b_z); h = sat(h' + k (z - h')) ---- */
void star_fwd_SFX(const cs_args *a, i64 t, const REAL *hp, i64 hp_rs) {
    i64 n = a->n, kn = a->k * n, c0 = a->cand * n;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride;
        REAL *row = ROW(a->G, t, b, a->rs);
        act_SFX(row, hp ? hp + b * hp_rs : 0, kn, 0);
        act_SFX(row + c0, 0, n, 1);
        REAL *E[4];
        gates_fwd_SFX(a, row, a->XS ? ROW(a->XS, t, b, n) : 0, scr, E);
        const REAL *restrict k = E[0], *restrict z = row + c0;
        const REAL *restrict hprev = t ? ROW(a->Y, t - 1, b, n) : (REAL *)a->h0 + b * n;
        REAL *restrict y = ROW(a->Y, t, b, n);
        if (a->beta_on) {
            star_fwd_beta_SFX(n, (int)a->tanh_sat, (REAL)a->beta_c, k, z, hprev, y);
        } else if (a->tanh_sat)
            for (i64 j = 0; j < n; j++) y[j] = th_SFX(hprev[j] + k[j] * (z[j] - hprev[j]));
        else for (i64 j = 0; j < n; j++) y[j] = hprev[j] + k[j] * (z[j] - hprev[j]);
    }
}

void star_bwd_SFX(const cs_args *a, i64 t, const REAL *dh_all) {
    i64 n = a->n, c0 = a->cand * n, ng = a->ng;
    CS_PAR
    for (i64 b = 0; b < a->B; b++) {
        REAL *scr = (REAL *)a->scratch + CS_TID * a->scr_stride, *dE = scr + ng * n;
        REAL *row = ROW(a->G, t, b, a->rs), *drow = ROW(a->dA, t, b, a->rs);
        const REAL *xs = a->XS ? ROW(a->XS, t, b, n) : 0;
        REAL *E[4];
        gates_fwd_SFX(a, row, xs, scr, E);
        const REAL *restrict k = E[0], *restrict z = row + c0, *restrict dh0 = dh_all + b * n;
        const REAL *restrict y = ROW(a->Y, t, b, n);
        const REAL *restrict hprev = t ? ROW(a->Y, t - 1, b, n) : (REAL *)a->h0 + b * n;
        REAL *restrict dhd = (REAL *)a->dhd + b * n, *restrict dz = drow + c0, *restrict dk = dE;
        if (a->beta_on) {   /* the plain sigmoid gate only: the gate's pre-activation gradient directly */
            star_bwd_beta_SFX(n, (int)a->tanh_sat, (REAL)a->beta_c, dh0, y, k, z, hprev, dhd,
                              drow + a->pos[0] * n, dz);
            continue;
        }
        star_bwd_row_SFX(n, (int)a->tanh_sat, dh0, y, k, z, hprev, dhd, dk, dz);
        gates_bwd_SFX(a, row, drow, xs, a->dXS ? ROW(a->dXS, t, b, n) : 0, dE);
    }
}

#undef ROW
"""

def instantiate(text: str) -> str:
    """C text written with the ``REAL`` / ``_SFX`` placeholders, for float (``_f``) then double (``_d``)."""
    return text.replace("REAL", "float").replace("_SFX", "_f") + text.replace("REAL", "double").replace("_SFX", "_d")


def math_preamble() -> str:
    """The C99 math every generated kernel may use: ``<stdint.h>``, ``<string.h>``, ``i64``, the vectorizable
    ``cs_exp_f`` / ``cs_exp_d`` and ``sig_f`` / ``th_f`` / ``sig_d`` / ``th_d`` (σ and tanh on top of them;
    accuracy: the module docstring), all ``static inline``. Used by the generated pointwise kernels of
    :mod:`cellsearch.fast.pwgen_c`."""
    return _INCLUDES + _EXP + instantiate(_ACT)


#: The whole C source: the header, then the body for float (``_f``) and for double (``_d``).
SOURCE = _HEADER + _PAR + instantiate(_BODY)

FUNCTIONS = ("lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "mgu_fwd1", "mgu_fwd2", "mgu_bwd1", "mgu_bwd2",
             "star_fwd", "star_bwd")

_P = ctypes.c_void_p
_I = ctypes.c_int64


class Args(ctypes.Structure):
    """Mirror of the C ``cs_args`` struct (sizes, layout flags and buffer pointers of one call)."""

    _fields_ = [("T", _I), ("B", _I), ("n", _I), ("rs", _I), ("k", _I), ("ng", _I), ("pos", _I * 4),
                ("ur", _I), ("ur_r", _I), ("ur_pol", _I), ("ref_mode", _I), ("ref_mask", _I),
                ("tied", _I), ("tanh_sat", _I), ("cand", _I), ("beta_on", _I), ("beta_c", ctypes.c_double)] + [
        (name, _P) for name in ("G", "dA", "dHP", "C", "TC", "c0", "h0", "Y", "XS", "dXS", "Q", "FH", "bhn",
                                "dc", "dhd", "scratch")] + [("nthreads", _I), ("scr_stride", _I)]


#: every C build's flags (the hand kernels, the generated step kernels and loops, cellsearch.fast.cgemm).
#: ``-std=c99`` alone turns GCC's contraction of ``a * b + c`` off (ISO C mode): each product and sum
#: is then two instructions, no fused multiply-add; ``-ffp-contract=fast`` turns it back on (the GEMM
#: tiles 18–26 % faster on this Zen 5, 1 and 2 threads, same process; ur_lstm 256/200 0.87 → 1.13×
#: nn.LSTM). Each element's arithmetic is the same whichever thread computes it.
_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c99", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None | bool = False     # False: not tried yet
_error: str | None = None
_path: Path | None = None
_threaded = False


def threaded() -> bool:
    """Whether the loaded library splits a step's batch rows over torch's OpenMP threads (built with
    ``-fopenmp``; without it every call runs on one thread)."""
    return _threaded


def library_path() -> Path | None:
    """Where the loaded library lives (None when it is not in use)."""
    return _path


def time_build() -> float | None:
    """Seconds a fresh build of the library takes here (into a temporary directory), or None."""
    import time

    for cc in _compilers():
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            if _compile(cc, _FLAGS + ["-march=native", "-fopenmp"], Path(tmp) / "probe.so") is None:
                return time.perf_counter() - t0
    return None


def build_error() -> str | None:
    """Why the C library is not in use (None when it is, or before the first attempt)."""
    return _error


def _cache_dir() -> Path:
    """The private kernel cache (:func:`cellsearch.fast.cache.private_dir`: 0700, the user's own)."""
    from .cache import private_dir

    return private_dir("kernels")


def _loadable(path: Path) -> Path:
    """``path`` when it is missing or trusted (the user's own file, writable by nobody else); otherwise a
    path in a fresh private directory (the library is rebuilt there), with a warning: a file planted
    at the predictable name is never loaded."""
    from .cache import UnsafeCacheWarning, fresh_private_dir, trusted

    if not os.path.lexists(path) or trusted(path):
        return path
    import warnings

    warnings.warn(f"cellsearch: not loading {path}: it is not a regular file of this user writable only "
                  f"by them; building the C kernels in a private temporary directory instead",
                  UnsafeCacheWarning, stacklevel=3)
    return fresh_private_dir("kernels") / path.name


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _gnu_openmp_loaded() -> bool:
    """Whether torch runs on GNU OpenMP here (its libgomp is mapped): only then is the library built with
    ``-fopenmp``, so that its libgomp dependency resolves to that same runtime (one thread pool)."""
    try:
        with open("/proc/self/maps") as fh:
            return any("libgomp" in line for line in fh)
    except OSError:
        return False


def _compilers() -> list[str]:
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    names += ["cc", "gcc", "clang"]
    return [p for p in dict.fromkeys(shutil.which(n) or "" for n in names) if p]


def _compile(cc: str, flags: list[str], out: Path, source: str | None = None,
             name: str = "cellsearch_fast.c") -> str | None:
    """Compile ``source`` (default :data:`SOURCE`) into ``out`` atomically; the error text, or None on
    success. The compiled scan (:mod:`cellsearch.fast.scan_c`) builds its own source through it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, lib = Path(tmp) / name, Path(tmp) / out.name
        src.write_text(SOURCE if source is None else source)
        try:
            res = subprocess.run([cc, *flags, "-o", str(lib), str(src)], capture_output=True, text=True,
                                 timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if res.returncode != 0:
            return (res.stderr or res.stdout).strip()[-2000:]
        os.chmod(lib, 0o700)          # private whatever the umask (a group-writable file is not loaded)
        os.replace(lib, out)
    return None


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name in FUNCTIONS:
        for sfx in ("_f", "_d"):
            fn = getattr(lib, name + sfx)
            fn.argtypes = [ctypes.POINTER(Args), _I, _P, _I][: 4 if "fwd" in name else 3]
            fn.restype = None
    return lib


def disabled() -> str | None:
    """Why no compiled library is built in this process (``CELLSEARCH_FAST_C=0``, Windows), or None."""
    if os.environ.get("CELLSEARCH_FAST_C", "1").strip().lower() in ("0", "false", "no", "off"):
        return "disabled by CELLSEARCH_FAST_C=0"
    if sys.platform == "win32":
        return "not built on Windows"
    return None


def variants(openmp: bool = True) -> list[list[str]]:
    """The flag variants :func:`build` tries in order: native code with OpenMP where torch runs on GNU
    OpenMP (and ``openmp``), native code, then the compiler's defaults."""
    return ([["-march=native", "-fopenmp"]] if openmp and _gnu_openmp_loaded() else []) + [["-march=native"], []]


def build(source: str, prefix: str, flags: list[str], variants: list[list[str]], load: Callable[[Path], Any],
          errors: list[str]) -> tuple[Any, Path, list[str]] | None:
    """``source`` built into the private cache (``<prefix>_<key>.so``, the key from the source, compiler,
    flags and CPU) by the first compiler and flag variant that works, or the cached build reused; a file
    that is not a private file of this user is never loaded. Returns (``load(path)``, path, the variant),
    or None with the reasons appended to ``errors``. Used by these kernels and the compiled scan."""
    from .cache import trusted

    for cc in _compilers():
        for extra in variants:
            every = flags + extra
            key = hashlib.sha256("\0".join([source, cc, *every, _cpu_signature()]).encode()).hexdigest()[:16]
            path = _loadable(_cache_dir() / f"{prefix}_{key}.so")
            try:
                if not path.exists():
                    err = _compile(cc, every, path, source, f"{prefix}.c")
                    if err is not None:
                        errors.append(f"{cc} {' '.join(extra)}: {err.splitlines()[-1] if err else err}")
                        continue
                if not trusted(path):
                    errors.append(f"{path}: not a private file of this user (not loaded)")
                    continue
                return load(path), path, extra
            except OSError as exc:
                errors.append(f"{cc}: {exc}")
    return None


def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use, then cached on disk), or None if unavailable."""
    global _lib, _error, _path, _threaded
    if _lib is not False:
        return _lib  # type: ignore[return-value]
    with _lock:
        if _lib is not False:
            return _lib  # type: ignore[return-value]
        _lib, _error = None, disabled()
        if _error is not None:
            return None
        if not _compilers():
            _error = "no C compiler found (set CC)"
            return None
        errors: list[str] = []
        built = build(SOURCE, "cellsearch_fast", _FLAGS, variants(), _load, errors)
        if built is None:
            _error = "; ".join(errors) or "build failed"
            return None
        _lib, _path, extra = built
        _threaded = "-fopenmp" in extra
        return _lib
