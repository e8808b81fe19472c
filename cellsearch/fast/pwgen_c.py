"""The C back-end of :mod:`cellsearch.fast.pwgen`: a derived step graph's kernels as C99, loaded with ctypes.

Each :class:`~cellsearch.fast.pwgen.Kernel` becomes one C function: its loops, in order, each
``for r < rows: for j < width`` with the SSA body as local variables, loads and stores at the
strides baked from the graph (sizes are constants, so the inner loop vectorizes at ``-O3
-march=native``; every pointer argument is ``restrict``). The math (the vectorizable exp, σ, tanh) is
:func:`cellsearch.fast.csrc.math_preamble`, the same as the hand-written C kernels'. All the graphs of
one call of :func:`compile_graphs` (a cell's forward and backward step graphs) go into one source,
built by :func:`cellsearch.fast.csrc.build` into the private kernel cache under a key from the source
(a warm process hashes the source and loads the library: no compiler runs; a file there that is not
a private file of this user is never loaded, the library is rebuilt in a private temporary directory).

A kernel call from Python is a generated function: ``torch.empty`` for each new output, one ctypes
call with the tensors' data pointers, the outputs as a tuple. Single-threaded, like Inductor's step
graphs here (a step's [B, n] work is too small to split).
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx

from . import csrc
from .pwgen import Kernel, Loop, Lowered, Op, Unsupported, bind, layout, lower, runner

__all__ = ["unavailable", "source", "compile_graphs", "compile_lowered", "stats", "CompileError"]

_C_TYPES = {"float32": "float", "float64": "double", "bool": "unsigned char"}
#: GCC 12.2 at -O3 -march=native (and -mavx2) miscompiles a vectorized ``where(max(x, 0) <= 0, 0, y)``
#: (relu's backward: lanes of the tail and of the next row come out 0) through jump threading;
#: ``-fno-thread-jumps`` keeps the loop vectorized and correct (tests/test_pwgen.py has the case)
_SAFE = ["-fno-thread-jumps"]
_lock = threading.Lock()
#: seconds spent lowering + building (or loading) in this process, the libraries built or loaded, and
#: the graphs lowered again because their first call's layouts differed from the ones generated for
stats: dict[str, float] = {"seconds": 0.0, "libraries": 0, "relowered": 0}


class CompileError(RuntimeError):
    """The generated C source did not build (the message holds the compiler's last lines)."""


#: log and log1p the compiler can vectorize (a call into libm keeps a whole loop scalar): x = m·2^e with
#: m in [√½, √2), log m = 2·atanh(s), s = (m − 1)/(m + 1), odd series to s^23 (double) / s^11 (float);
#: log1p(z) = log(u) + (z − (u − 1))/u with u = 1 + z; expm1(x) = (u − 1)·x / log u with u = e^x for |x| < ½
#: (Kahan), else u − 1. Finite positive normal inputs to ≤ 2 ulp; 0 → −inf,
#: negative → NaN, +inf → +inf; subnormal inputs are not handled (read as a power of two too small).
_LOG = r"""
static inline double cs_log_d(double x) {
    int64_t bits;
    memcpy(&bits, &x, 8);
    int64_t e = ((bits >> 52) & 0x7ff) - 1023;
    int64_t mb = (bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL;
    double m;
    memcpy(&m, &mb, 8);
    double big = m > 1.4142135623730951 ? 1.0 : 0.0;     /* real selects only: an int one is not vectorized */
    m = m > 1.4142135623730951 ? m * 0.5 : m;
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, p = 1.0 / 23;
    p = p * s2 + 1.0 / 21; p = p * s2 + 1.0 / 19; p = p * s2 + 1.0 / 17; p = p * s2 + 1.0 / 15;
    p = p * s2 + 1.0 / 13; p = p * s2 + 1.0 / 11; p = p * s2 + 1.0 / 9; p = p * s2 + 1.0 / 7;
    p = p * s2 + 1.0 / 5; p = p * s2 + 1.0 / 3; p = p * s2 + 1.0;
    double de = (double)e + big;
    double r = de * 6.93147180369123816490e-01 + (2.0 * s * p + de * 1.90821492927058770002e-10);
    double bad = x == 0 ? -(double)INFINITY : (double)NAN;   /* flat selects: nested ones stop GCC's vectorizer */
    r = x == (double)INFINITY ? x : r;
    return x > 0 ? r : bad;
}

static inline float cs_log_f(float x) {
    int32_t bits;
    memcpy(&bits, &x, 4);
    int32_t e = ((bits >> 23) & 0xff) - 127;
    int32_t mb = (bits & 0x007fffff) | 0x3f800000;
    float m;
    memcpy(&m, &mb, 4);
    float big = m > 1.41421356f ? 1.0f : 0.0f;
    m = m > 1.41421356f ? m * 0.5f : m;
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s, p = 1.0f / 11;
    p = p * s2 + 1.0f / 9; p = p * s2 + 1.0f / 7; p = p * s2 + 1.0f / 5; p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    float fe = (float)e + big;
    float r = fe * 0.693359375f + (2.0f * s * p - fe * 2.12194440e-4f);
    float bad = x == 0 ? -(float)INFINITY : (float)NAN;   /* flat selects: nested ones stop GCC's vectorizer */
    r = x == (float)INFINITY ? x : r;
    return x > 0 ? r : bad;
}

"""

#: expm1 and log1p on top of cs_exp / cs_log (Kahan's corrections: accurate near 0, where u − 1
#: cancels), written once with csrc's REAL / _SFX placeholders; |x| < 0.5 as x² < 0.25 (no fabs/fabsf)
_KAHAN = r"""
static inline REAL cs_expm1_SFX(REAL x) {
    REAL u = cs_exp_SFX(x);
    REAL k = (u - (REAL)1) * x / cs_log_SFX(u);
    k = u == (REAL)1 ? x : k;
    return x * x < (REAL)0.25 ? k : u - (REAL)1;
}

static inline REAL cs_log1p_SFX(REAL z) {
    REAL u = (REAL)1 + z;
    REAL c = (z - (u - (REAL)1)) / u;
    c = u == 0 ? (REAL)0 : c;
    c = u == (REAL)INFINITY ? (REAL)0 : c;
    return cs_log_SFX(u) + c;
}
"""


def unavailable(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why the C generator is not used here (None: it is)."""
    if torch.device(device).type != "cpu":
        return f"the C generator runs on the CPU (not {torch.device(device).type})"
    if dtype not in (torch.float32, torch.float64):
        return f"{dtype} is not generated"
    return csrc.disabled()


# -------------------------------------------------------------------------------------------------
# C source
# -------------------------------------------------------------------------------------------------
def _literal(value: Any, real: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if math.isnan(value):
        return f"(({real})NAN)"
    if math.isinf(value):
        return f"(({real})INFINITY)" if value > 0 else f"(-({real})INFINITY)"
    return f"(({real}){float(value)!r})"


def _expr(op: Op, a: list[str], real: str, sfx: str) -> str:
    """The C expression of one SSA op (``a``: its arguments' variable names)."""
    f = "f" if sfx == "f" else ""
    unary = {"neg": "(-{0})", "exp": f"cs_exp_{sfx}({{0}})", "expm1": f"cs_expm1_{sfx}({{0}})",
             "log": f"cs_log_{sfx}({{0}})", "log1p": f"cs_log1p_{sfx}({{0}})", "sqrt": f"sqrt{f}({{0}})",
             "rsqrt": f"(({real})1 / sqrt{f}({{0}}))",
             "abs": f"fabs{f}({{0}})", "sigmoid": f"sig_{sfx}({{0}})", "tanh": f"th_{sfx}({{0}})",
             "reciprocal": f"(({real})1 / {{0}})",
             "sign": f"(({{0}} > 0 ? ({real})1 : ({real})0) - ({{0}} < 0 ? ({real})1 : ({real})0))",
             "sin": f"sin{f}({{0}})", "cos": f"cos{f}({{0}})", "logical_not": "(!{0})"}
    binary = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
              "maximum": "((({0} > {1}) | ({0} != {0})) ? {0} : {1})",      # NaN wins, as in torch
              "minimum": "((({0} < {1}) | ({0} != {0})) ? {0} : {1})",
              "pow": f"pow{f}({{0}}, {{1}})", "eq": "({0} == {1})", "ne": "({0} != {1})", "lt": "({0} < {1})",
              "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})", "logical_and": "({0} & {1})",
              "logical_or": "({0} | {1})"}
    if op.name in unary:
        return unary[op.name].format(*a)
    if op.name in binary:
        return binary[op.name].format(*a)
    if op.name == "where":
        return f"({a[0]} ? {a[1]} : {a[2]})"
    raise Unsupported(f"the C back-end has no op {op.name}")


def _index(offset: int, rs: int, cs: int) -> str:
    terms = [str(offset)] if offset else []
    terms += [f"r * {rs}"] if rs else []
    terms += [f"j * {cs}" if cs != 1 else "j"] if cs else []
    return " + ".join(terms) or "0"


def _loop(k: Kernel, lp: Loop, real: str, sfx: str) -> list[str]:
    lines = [f"    for (i64 r = r0; r < (r1 < {lp.rows} ? r1 : {lp.rows}); r++) {{",
             f"        for (i64 j = 0; j < {lp.width}; j++) {{"]
    for i, op in enumerate(lp.body):
        ctype = real if op.kind == "real" else "int"
        if op.name == "load":
            inp, off, rs, cs = op.attrs
            val = f"in{inp}[{_index(off, rs, cs)}]"
            if k.inputs[inp].dtype == "bool":
                val = f"({val} != 0)"
        elif op.name == "const":
            val = _literal(op.attrs[0], real)
        else:
            val = _expr(op, [f"v{x}" for x in op.args], real, sfx)
        lines.append(f"            const {ctype} v{i} = {val};")
    for o, col, x in lp.stores:
        out = k.outputs[o]
        dst = f"in{out.into}" if out.into is not None else f"out{o}"
        cast = "(unsigned char)" if out.dtype == "bool" else ""
        lines.append(f"            {dst}[{_index(col, out.row_stride if out.rows > 1 else 0, 1)}] = {cast}v{x};")
    return lines + ["        }", "    }"]


def _function(k: Kernel, name: str) -> str:
    real = _C_TYPES[k.dtype]
    sfx = "f" if k.dtype == "float32" else "d"
    written = {o.into for o in k.outputs if o.into is not None}
    params = [f"{'' if i in written else 'const '}{_C_TYPES[inp.dtype]} *restrict in{i}"
              for i, inp in enumerate(k.inputs)]
    params += [f"{_C_TYPES[o.dtype]} *restrict out{i}" for i, o in enumerate(k.outputs) if o.into is None]
    lines = [f"void {name}({', '.join([*params, 'i64 r0', 'i64 r1'])}) {{"]
    for lp in k.loops:
        lines += _loop(k, lp, real, sfx)
    return "\n".join([*lines, "}", ""])


def source(kernels: Sequence[tuple[str, Kernel]], extra: str = "") -> str:
    """One C99 translation unit: the math preamble, a function per (name, kernel), then ``extra``."""
    head = "#include <math.h>\n" + csrc.math_preamble() + _LOG + csrc.instantiate(_KAHAN)
    return head + "\n" + "\n".join(_function(k, name) for name, k in kernels) + extra


# -------------------------------------------------------------------------------------------------
# build, load, call
# -------------------------------------------------------------------------------------------------
def _build(src: str, names: Sequence[tuple[str, Kernel]], openmp: bool = False) -> tuple[ctypes.CDLL, bool]:
    """The library of ``src`` (built into the private kernel cache, or loaded from it), and whether it
    was built with ``-fopenmp`` (``openmp``: try that first, where torch runs on GNU OpenMP)."""
    errors: list[str] = []
    built = csrc.build(src, "cellsearch_pw", [*csrc._FLAGS, *_SAFE], csrc.variants(openmp), ctypes.CDLL, errors)
    if built is None:
        raise CompileError("; ".join(errors) or "no C compiler found (set CC)")
    lib = built[0]
    for name, k in names:
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * (len(k.inputs) + sum(o.into is None for o in k.outputs)) + \
            [ctypes.c_int64] * 2
        fn.restype = None
    return lib, "-fopenmp" in built[2]


def compile_graphs(graphs: Sequence[tuple[fx.GraphModule, Sequence[Tensor] | None]]
                   ) -> list[Callable[..., Any]]:
    """Each (step graph, example inputs or None: the layouts in its ``meta``) as a function with the
    graph's signature, its pointwise work in generated C (one library for all of them). Raises
    :class:`~cellsearch.fast.pwgen.Unsupported` or :class:`CompileError`."""
    return compile_lowered([lower(gm, ex) for gm, ex in graphs])[0]


def _checked(fn: Callable[..., Any], lw: Lowered) -> Callable[..., Any]:
    """``fn``, once the first call's tensors are seen laid out as the kernels assume (strides are baked
    into the code); if they are not, the graph is lowered and built again for the layouts it is called
    with (a private fallback: the derived path passes what it traced)."""
    chosen: list[Callable[..., Any]] = []

    def call(*args: Any) -> Any:
        if not chosen:
            same = tuple(layout(a) for a in args) == lw.in_layouts or lw.source is None
            if not same:
                stats["relowered"] += 1
            chosen.append(fn if same else compile_graphs([(lw.source, list(args))])[0])
        return chosen[0](*args)

    return call


def kernel_names(lowered: Sequence[Lowered]) -> list[list[str]]:
    """The C function name of each kernel of each graph, as :func:`compile_lowered` names them."""
    return [[f"pw{g}_{k.name}" for k in lw.kernels] for g, lw in enumerate(lowered)]


#: the row range a kernel called from Python covers (every row of every loop)
_ALL_ROWS = 1 << 62


def compile_lowered(lowered: Sequence[Lowered], extra: str = "", openmp: bool = False
                    ) -> tuple[list[Callable[..., Any]], ctypes.CDLL | None, bool]:
    """:func:`compile_graphs` for graphs already lowered (:func:`cellsearch.fast.pwgen.lower`), with
    ``extra`` C source in the same library (:mod:`cellsearch.fast.pwloop`'s time loops, which call the
    kernels); returns the functions, the library and whether it was built with OpenMP (``openmp``:
    try that first)."""
    import time

    t0 = time.perf_counter()
    named = [(name, k) for names, lw in zip(kernel_names(lowered), lowered) for name, k in zip(names, lw.kernels)]
    lib, threaded = None, False
    if named or extra:
        with _lock:
            lib, threaded = _build(source(named, extra), named, openmp)
    out = []
    it = iter(named)
    for lw in lowered:
        calls = []
        for _ in lw.kernels:
            name, k = next(it)
            calls.append(runner(k, name, lambda ops: f"fn({', '.join(o + '.data_ptr()' for o in ops)}, 0, {_ALL_ROWS})",
                                {"fn": getattr(lib, name)}))
        out.append(_checked(bind(lw, calls), lw))
    stats["seconds"] += time.perf_counter() - t0
    stats["libraries"] += 1
    return out, lib, threaded
