"""The compiled linear-recurrence kernels of the parallel scan (:mod:`cellsearch.fast.scan`): the whole
sequence in one forward pass and one reverse pass, on the CPU, float32 and float64.

Why: the torch-op forms of the scan (chunked, log-space) make 10–20 passes over [T, B, n] tensors and
hundreds of small ops per call; on a CPU h_t = a_t⊙h_{t−1} + b_t is memory-bound, so the fastest solve
is the recurrence itself, read once and written once, vectorised over the n units of a row and split
over threads by rows (or by columns when B is smaller than the thread count). Profiled at T = 2000,
B = 16, n = 256 (docs/bench/MODERN.md), the torch-op scan spent ~65 % of its time in ``mul`` /
``addcmul`` of the chunk loops; these kernels replace all of them.

Kernels (``REAL`` float or double; ``x`` stands for the rows of the input projection W x + b):

- ``scan_fwd``: h_t = a_t⊙h_{t−1} + b_t from h_0, a, b [T, B, n].
- ``scan_bwd``: with g_t = ∂ℓ/∂h_t + a_{t+1}⊙g_{t+1} in one reverse pass: ∂b_t = g_t,
  ∂a_t = g_t⊙h_{t−1}, ∂h_0 = a_1⊙g_1 (the carry a_{t+1}⊙g_{t+1} lives in the ∂h_0 buffer).
- ``fused_fwd`` / ``fused_bwd``: the same with the gate math of minGRU or minLSTM (sigmoid gates from
  the input only; candidate through the identity or minGRU's g) computed on the fly from the rows of x,
  so nothing but h is written forward and nothing but ∂x backward (the gates are recomputed).
  minGRU (x rows [z, h̃]): a = 1 − σ(x_z), b = σ(x_z)⊙s(x_h). minLSTM (rows [f, i, h̃]):
  f = σ(x_f), i = σ(x_i), a = f/(f + i), b = i/(f + i)⊙s(x_h).

Threads: ``pthread`` workers, one per torch thread (each a disjoint slice of rows or columns; no
synchronisation inside a call), one thread below :data:`SERIAL` elements. exp is the vectorisable
Cody–Waite exp of :mod:`cellsearch.fast.csrc` (its header is compiled in, not copied).

Build and safety: the same as the pointwise kernels' library — compiled with the system C compiler into
the private per-user cache (:func:`cellsearch.fast.cache.private_dir`: 0700, the user's own), under a
name that carries a digest of the source, compiler, flags and CPU; a file there that is not the user's
own or that others can write is never loaded (csrc's ``_loadable``: rebuilt in a private temporary
directory, with a warning). No compiler, a failed build, or ``CELLSEARCH_FAST_C=0``: :func:`library`
returns None and the scan runs on torch ops.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch
from torch import Tensor

from . import csrc

__all__ = ["SOURCE", "library", "build_error", "scan_forward", "scan_backward", "fused_forward",
           "fused_backward", "available", "library_path", "KINDS", "SATS", "SERIAL"]

#: the fused gate forms: minGRU (1 gate block) and minLSTM (2 gate blocks, normalized)
KINDS = {"mingru": 1, "minlstm": 2}
#: the candidate's saturation inside the fused kernels
SATS = {"identity": 0, "g": 1}
#: below this many elements (T·B·n) a call runs on one thread
SERIAL = 1 << 16

_STRUCT = r"""
#include <pthread.h>
typedef struct {
    i64 T, B, n;                 /* steps, rows, units */
    i64 sxt, sxb, sht, shb, sgt, sgb; /* fused forms: strides (elements) over t and b of x and dx, h, dL/dh */
    i64 kind, sat;               /* 0 plain (a, b given), 1 minGRU, 2 minLSTM; 0 identity, 1 g */
    i64 b0, b1, j0, j1;          /* this worker's rows and columns */
    const void *a, *b, *x, *h0, *gh;
    void *h, *ga, *gb, *gx, *gh0;
} sc_args;
"""

_BODY = r"""

static inline REAL sg_SFX(REAL v) { return (REAL)1 / ((REAL)1 + cs_exp_SFX(-v)); }
/* minGRU's g: v + 1/2 (v >= 0), sigmoid(v) (v < 0); its derivative 1 or s(1 - s) */
static inline REAL gs_SFX(REAL v, i64 sat) {
    if (!sat) return v;
    REAL s = sg_SFX(v);
    return v >= (REAL)0 ? v + (REAL)0.5 : s;
}
/* g and its derivative from one sigmoid */
static inline void gsd_SFX(REAL v, i64 sat, REAL *cand, REAL *dcand) {
    if (!sat) { *cand = v; *dcand = (REAL)1; return; }
    REAL s = sg_SFX(v), pos = v >= (REAL)0;
    *cand = pos ? v + (REAL)0.5 : s;
    *dcand = pos ? (REAL)1 : s * ((REAL)1 - s);
}

#define AT(p, t, b) ((p) + ((t) * c->B + (b)) * c->n)
#define XT(p, t, b) ((p) + (t) * c->sxt + (b) * c->sxb)
#define HT(p, t, b) ((p) + (t) * c->sht + (b) * c->shb)
#define GT(p, t, b) ((p) + (t) * c->sgt + (b) * c->sgb)

static inline void srow_SFX(i64 j0, i64 j1, const REAL *restrict a, const REAL *restrict bb,
                            const REAL *restrict hp, REAL *restrict h) {
    for (i64 j = j0; j < j1; j++) h[j] = a[j] * hp[j] + bb[j];
}

static inline void sbrow_SFX(i64 j0, i64 j1, const REAL *restrict a, const REAL *restrict hp,
                             const REAL *restrict gh, REAL *restrict car, REAL *restrict ga, REAL *restrict gb) {
    for (i64 j = j0; j < j1; j++) {
        REAL g = gh[j] + car[j];
        gb[j] = g;
        ga[j] = g * hp[j];
        car[j] = a[j] * g;
    }
}

static void *scan_fwd_w_SFX(void *arg) {
    const sc_args *c = (const sc_args *)arg;
    const REAL *A = (const REAL *)c->a, *Bv = (const REAL *)c->b, *H0 = (const REAL *)c->h0;
    REAL *H = (REAL *)c->h;
    for (i64 t = 0; t < c->T; t++)
        for (i64 b = c->b0; b < c->b1; b++) {
            const REAL *hp = t ? AT(H, t - 1, b) : H0 + b * c->n;
            srow_SFX(c->j0, c->j1, AT(A, t, b), AT(Bv, t, b), hp, AT(H, t, b));
        }
    return 0;
}

static void *scan_bwd_w_SFX(void *arg) {
    const sc_args *c = (const sc_args *)arg;
    const REAL *A = (const REAL *)c->a, *H = (const REAL *)c->h, *H0 = (const REAL *)c->h0;
    const REAL *GH = (const REAL *)c->gh;
    REAL *GA = (REAL *)c->ga, *GB = (REAL *)c->gb, *CAR = (REAL *)c->gh0;
    for (i64 b = c->b0; b < c->b1; b++)
        for (i64 j = c->j0; j < c->j1; j++) CAR[b * c->n + j] = 0;
    for (i64 t = c->T - 1; t >= 0; t--)
        for (i64 b = c->b0; b < c->b1; b++) {
            const REAL *hp = t ? AT(H, t - 1, b) : H0 + b * c->n;
            sbrow_SFX(c->j0, c->j1, AT(A, t, b), hp, AT(GH, t, b), CAR + b * c->n, AT(GA, t, b), AT(GB, t, b));
        }
    return 0;
}

/* one row of the fused forms, forward: x the row of the input projection, hp = h_{t-1}; kind and sat
   are compile-time constants at every call site (so the j loop vectorises) */
static inline void frow_SFX(i64 kind, i64 sat, i64 n, i64 j0, i64 j1, const REAL *restrict x,
                            const REAL *restrict hp, REAL *restrict h) {
    if (kind == 1) {
        for (i64 j = j0; j < j1; j++) {
            REAL z = sg_SFX(x[j]);
            h[j] = ((REAL)1 - z) * hp[j] + z * gs_SFX(x[n + j], sat);
        }
    } else {
        for (i64 j = j0; j < j1; j++) {
            REAL f = sg_SFX(x[j]), i = sg_SFX(x[n + j]), r = (REAL)1 / (f + i);
            h[j] = f * r * hp[j] + i * r * gs_SFX(x[2 * n + j], sat);
        }
    }
}

/* one row backward: car holds a_{t+1} g_{t+1} on entry and a_t g_t on exit; gx the row of dL/dx */
static inline void brow_SFX(i64 kind, i64 sat, i64 n, i64 j0, i64 j1, const REAL *restrict x,
                            const REAL *restrict hp, const REAL *restrict gh, REAL *restrict car,
                            REAL *restrict gx) {
    if (kind == 1) {
        for (i64 j = j0; j < j1; j++) {
            REAL g = gh[j] + car[j], z = sg_SFX(x[j]), cand, dcand;
            gsd_SFX(x[n + j], sat, &cand, &dcand);
            gx[j] = g * (cand - hp[j]) * z * ((REAL)1 - z);   /* db/dz = cand, da/dz = -1 */
            gx[n + j] = g * z * dcand;
            car[j] = g * ((REAL)1 - z);
        }
    } else {
        for (i64 j = j0; j < j1; j++) {
            REAL g = gh[j] + car[j], f = sg_SFX(x[j]), i = sg_SFX(x[n + j]), cand, dcand;
            gsd_SFX(x[2 * n + j], sat, &cand, &dcand);
            REAL q = (REAL)1 / (f + i), r = g * (hp[j] - cand) * q * q;  /* da = g hp, db = g */
            gx[j] = r * i * f * ((REAL)1 - f);          /* d(f/s)/df = i/s^2, d(i c/s)/df = -i c/s^2 */
            gx[n + j] = -r * f * i * ((REAL)1 - i);
            gx[2 * n + j] = g * i * q * dcand;
            car[j] = g * f * q;
        }
    }
}

#define FORMS(call) \
    if (c->kind == 1 && c->sat) call(1, 1); else if (c->kind == 1) call(1, 0); \
    else if (c->sat) call(2, 1); else call(2, 0)

/* one (t, b) row of each fused pass */
static inline void fwd_at_SFX(const sc_args *c, i64 t, i64 b) {
    const REAL *X = (const REAL *)c->x, *H0 = (const REAL *)c->h0;
    REAL *H = (REAL *)c->h;
    const REAL *x = XT(X, t, b), *hp = t ? HT(H, t - 1, b) : H0 + b * c->n;
    REAL *h = HT(H, t, b);
#define F(k, s) frow_SFX(k, s, c->n, c->j0, c->j1, x, hp, h)
    FORMS(F);
#undef F
}

static inline void bwd_at_SFX(const sc_args *c, i64 t, i64 b) {
    const REAL *X = (const REAL *)c->x, *H = (const REAL *)c->h, *H0 = (const REAL *)c->h0;
    const REAL *GH = (const REAL *)c->gh;
    REAL *GX = (REAL *)c->gx, *CAR = (REAL *)c->gh0;
    const REAL *x = XT(X, t, b), *gh = GT(GH, t, b), *hp = t ? HT(H, t - 1, b) : H0 + b * c->n;
    REAL *gx = XT(GX, t, b), *car = CAR + b * c->n;
#define F(k, s) brow_SFX(k, s, c->n, c->j0, c->j1, x, hp, gh, car, gx)
    FORMS(F);
#undef F
}

/* batch-major storage (x seen time-major over a batch-first buffer): each row's sequence is contiguous,
   so b outer, t inner streams through memory; time-major storage: t outer, b inner */
static void *fused_fwd_w_SFX(void *arg) {
    const sc_args *c = (const sc_args *)arg;
    if (c->sxb > c->sxt) {
        for (i64 b = c->b0; b < c->b1; b++)
            for (i64 t = 0; t < c->T; t++) fwd_at_SFX(c, t, b);
    } else {
        for (i64 t = 0; t < c->T; t++)
            for (i64 b = c->b0; b < c->b1; b++) fwd_at_SFX(c, t, b);
    }
    return 0;
}

static void *fused_bwd_w_SFX(void *arg) {
    const sc_args *c = (const sc_args *)arg;
    REAL *CAR = (REAL *)c->gh0;
    for (i64 b = c->b0; b < c->b1; b++)
        for (i64 j = c->j0; j < c->j1; j++) CAR[b * c->n + j] = 0;
    if (c->sxb > c->sxt) {
        for (i64 b = c->b0; b < c->b1; b++)
            for (i64 t = c->T - 1; t >= 0; t--) bwd_at_SFX(c, t, b);
    } else {
        for (i64 t = c->T - 1; t >= 0; t--)
            for (i64 b = c->b0; b < c->b1; b++) bwd_at_SFX(c, t, b);
    }
    return 0;
}

#undef FORMS
#undef AT
#undef XT
#undef HT
#undef GT

/* run fn over nt workers: rows split when B >= nt, else columns (in multiples of 16) */
static void spread_SFX(void *(*fn)(void *), const sc_args *c, i64 nt) {
    if (nt > 64) nt = 64;
    if (nt < 1) nt = 1;
    sc_args parts[64];
    pthread_t tid[64];
    int started[64];
    i64 rows = c->B >= nt;
    for (i64 w = 0; w < nt; w++) {
        parts[w] = *c;
        if (rows) {
            parts[w].b0 = c->B * w / nt; parts[w].b1 = c->B * (w + 1) / nt;
            parts[w].j0 = 0; parts[w].j1 = c->n;
        } else {
            i64 blocks = (c->n + 15) / 16, lo = blocks * w / nt * 16, hi = blocks * (w + 1) / nt * 16;
            parts[w].b0 = 0; parts[w].b1 = c->B;
            parts[w].j0 = lo < c->n ? lo : c->n; parts[w].j1 = hi < c->n ? hi : c->n;
        }
    }
    for (i64 w = 1; w < nt; w++) started[w] = pthread_create(&tid[w], 0, fn, &parts[w]) == 0;
    fn(&parts[0]);
    for (i64 w = 1; w < nt; w++) {
        if (started[w]) pthread_join(tid[w], 0);
        else fn(&parts[w]);
    }
}

void scan_fwd_SFX(const sc_args *c, i64 nt) { spread_SFX(scan_fwd_w_SFX, c, nt); }
void scan_bwd_SFX(const sc_args *c, i64 nt) { spread_SFX(scan_bwd_w_SFX, c, nt); }
void fused_fwd_SFX(const sc_args *c, i64 nt) { spread_SFX(fused_fwd_w_SFX, c, nt); }
void fused_bwd_SFX(const sc_args *c, i64 nt) { spread_SFX(fused_bwd_w_SFX, c, nt); }
"""


def _source() -> str:
    header = csrc._HEADER  # the typedefs and the vectorisable exp of the pointwise kernels
    return (header + _STRUCT + _BODY.replace("REAL", "float").replace("_SFX", "_f")
            + _BODY.replace("REAL", "double").replace("_SFX", "_d"))


#: the whole C source (csrc's header, then the body for float and for double)
SOURCE = _source()
FUNCTIONS = ("scan_fwd", "scan_bwd", "fused_fwd", "fused_bwd")
_FLAGS = [*csrc._FLAGS, "-pthread"]

_P, _I = ctypes.c_void_p, ctypes.c_int64


class Args(ctypes.Structure):
    """Mirror of the C ``sc_args`` struct."""

    _fields_ = [(k, _I) for k in ("T", "B", "n", "sxt", "sxb", "sht", "shb", "sgt", "sgb", "kind", "sat", "b0", "b1",
                                  "j0", "j1")] + [
        (k, _P) for k in ("a", "b", "x", "h0", "gh", "h", "ga", "gb", "gx", "gh0")]


_lock = threading.Lock()
_lib: ctypes.CDLL | None | bool = False     # False: not tried yet
_error: str | None = None
_path: Path | None = None


def library_path() -> Path | None:
    """Where the loaded library lives (None when it is not in use)."""
    return _path


def build_error() -> str | None:
    """Why the compiled scan is not in use (None when it is, or before the first attempt)."""
    return _error


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name in FUNCTIONS:
        for sfx in ("_f", "_d"):
            fn = getattr(lib, name + sfx)
            fn.argtypes, fn.restype = [ctypes.POINTER(Args), _I], None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled scan kernels (built on first use, then cached on disk), or None if unavailable."""
    global _lib, _error, _path
    if _lib is not False:
        return _lib  # type: ignore[return-value]
    with _lock:
        if _lib is not False:
            return _lib  # type: ignore[return-value]
        _lib, _error = None, csrc.disabled()
        if _error is not None:
            return None
        errors: list[str] = []
        built = csrc.build(SOURCE, "cellsearch_scan", _FLAGS, [["-march=native"], []], _load, errors)
        if built is None:
            _error = "; ".join(errors) or "no C compiler found (set CC)"
            return None
        _lib, _path, _ = built
        return _lib


_SFX = {torch.float32: "_f", torch.float64: "_d"}


def available(*tensors: Tensor) -> bool:
    """Whether the compiled kernels serve these tensors (CPU, float32/float64, one dtype, library built)."""
    dtype = tensors[0].dtype
    return (dtype in _SFX and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
            and library() is not None)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _call(name: str, dtype: torch.dtype, shape: tuple[int, int, int], strides: tuple[int, ...], kind: int,
          sat: int, **tensors: Tensor | None) -> None:
    steps, batch, n = shape
    c = Args(T=steps, B=batch, n=n, **dict(zip(_STRIDES, strides)), kind=kind, sat=sat, b0=0,
             b1=batch, j0=0, j1=n, **{k: _ptr(v) for k, v in tensors.items()})
    threads = 1 if steps * batch * n < SERIAL else torch.get_num_threads()
    getattr(library(), name + _SFX[dtype])(ctypes.byref(c), threads)


_PLAIN = (0,) * 6
_STRIDES = ("sxt", "sxb", "sht", "shb", "sgt", "sgb")


def scan_forward(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h [T, B, n] of h_t = a_t⊙h_{t−1} + b_t (a, b [T, B, n]; h0 [B, n])."""
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    h = torch.empty_like(a, memory_format=torch.contiguous_format)
    _call("scan_fwd", a.dtype, tuple(a.shape), _PLAIN, 0, 0, a=a, b=b, h0=h0, h=h)  # type: ignore[arg-type]
    return h


def scan_backward(a: Tensor, h: Tensor, h0: Tensor, grad_h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(∂a, ∂b, ∂h0) from ∂ℓ/∂h in one reverse pass."""
    a, h, h0, grad_h = a.contiguous(), h.contiguous(), h0.contiguous(), grad_h.contiguous()
    ga, gb = (torch.empty_like(a, memory_format=torch.contiguous_format) for _ in range(2))
    gh0 = torch.empty_like(h0)
    _call("scan_bwd", a.dtype, tuple(a.shape), _PLAIN, 0, 0, a=a, h=h, h0=h0, gh=grad_h,  # type: ignore[arg-type]
          ga=ga, gb=gb, gh0=gh0)
    return ga, gb, gh0


def _rows(t: Tensor) -> Tensor:
    """``t`` [T, B, m] with unit stride along m (a copy only when it has none)."""
    return t if t.stride(2) == 1 else t.contiguous()


def fused_forward(kind: str, sat: str, x: Tensor, h0: Tensor) -> Tensor:
    """h [T, B, n] of minGRU / minLSTM from the input projection x [T, B, (k + 1)·n] (gates, candidate).
    x may be a batch-first buffer seen time-major (strides are passed); h is laid out the same way."""
    x, h0 = _rows(x), h0.contiguous()
    steps, batch, n = x.shape[0], x.shape[1], h0.shape[1]
    if x.stride(1) > x.stride(0):       # batch-major storage: keep it (no transposing copies)
        h = x.new_empty(batch, steps, n).transpose(0, 1)
    else:
        h = x.new_empty(steps, batch, n)
    strides = (x.stride(0), x.stride(1), h.stride(0), h.stride(1), 0, 0)
    _call("fused_fwd", x.dtype, (steps, batch, n), strides, KINDS[kind], SATS[sat], x=x, h0=h0, h=h)
    return h


def fused_backward(kind: str, sat: str, x: Tensor, h: Tensor, h0: Tensor, grad_h: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """(∂x, ∂h0) of :func:`fused_forward` from ∂ℓ/∂h, the gates recomputed from x (∂x laid out as x)."""
    x, h0, grad_h = _rows(x), h0.contiguous(), _rows(grad_h)
    gx, gh0 = torch.empty_like(x), torch.empty_like(h0)
    if gx.stride() != x.stride():
        raise ValueError("fused scan: x must be dense (strides preserved by empty_like)")
    strides = (x.stride(0), x.stride(1), h.stride(0), h.stride(1), grad_h.stride(0), grad_h.stride(1))
    _call("fused_bwd", x.dtype, tuple(h.shape), strides, KINDS[kind], SATS[sat],  # type: ignore[arg-type]
          x=x, h=h, h0=h0, gh=grad_h, gx=gx, gh0=gh0)
    return gx, gh0
