"""The pointwise IR of a derived step graph: extern nodes run by torch, and kernels over 2-D tensors.

A forward or backward step graph of :mod:`cellsearch.fast.derived` (an ``fx.GraphModule`` of aten ops
with ``meta["val"]`` on its nodes) is split by :func:`lower` into

- **extern nodes**, left in the graph and run by torch: ``mm`` / ``addmm`` / ``bmm``, reductions
  (``sum``), transposes, anything that is not elementwise; and
- **kernels**: regions of elementwise work, each node in the earliest region its inputs allow (the
  first one after every extern node it depends on; no cycle through an extern node), each one
  :class:`Kernel` that a back-end (:mod:`cellsearch.fast.pwgen_c` for C, :mod:`cellsearch.fast.pwgen_triton`
  for GPUs) turns into one call.

:func:`bind` then gives the rewritten graph (extern nodes + one call per kernel) as a Python callable
with the step graph's signature. Any elementwise op this module cannot express (an unknown aten op
tagged ``pointwise``, a region output of an unsupported dtype, a tensor of more than two dimensions in
a region, …) raises :class:`Unsupported` with the reason: the caller keeps the graph as it is (the
derived path compiles it with Inductor instead).

Contract of a :class:`Kernel` (what an emitter must implement; nothing here is C-specific):

- ``dtype``: ``"float32"`` or ``"float64"``, the type of every real value of the kernel.
- ``inputs``: tensors, in call order, each an :class:`Input` (``dtype``: the tensor's dtype,
  ``"float32"``, ``"float64"`` or ``"bool"``; the emitter reads it through the strides baked into
  each load, see below). An input may be written (``Output.into``) but then nothing else reads it.
- ``outputs``: :class:`Output` tensors of shape ``(rows, cols)`` and ``dtype`` (the kernel's, or
  ``"bool"``: a mask another kernel or an extern node reads), freshly allocated and contiguous
  (row stride ``cols``), except where ``into`` is an input index: that input is written in place and
  is the output (its row stride is ``Output.row_stride``). The call returns a tuple of every output
  in order.
- ``loops``: each :class:`Loop` is a 2-D iteration ``for r < rows: for j < width`` (``j`` the
  innermost, contiguous index: vectorize it); its ``body`` is SSA: ``body[i]`` is an :class:`Op`
  whose ``args`` are indices of earlier ops of the same loop. Loops are independent (values are not
  shared between loops) and may run in any order. ``stores``: ``(output, column offset, op index)``:
  ``out[r * row_stride + offset + j] = body[op]``.
- ops (``Op.name``, aten op names; ``kind`` ``"real"`` or ``"bool"``):

  - ``load``: ``attrs = (input, offset, row_stride, col_stride)``: element
    ``input[offset + r * row_stride + j * col_stride]`` (strides in elements; 0 broadcasts);
  - ``const``: ``attrs = (value,)``, a Python float (real) or bool;
  - real → real: ``neg exp expm1 log log1p sqrt rsqrt abs sigmoid tanh reciprocal sign sin cos``;
  - (real, real) → real: ``add sub mul div maximum minimum pow``;
  - (real, real) → bool: ``eq ne lt le gt ge``; bool → bool: ``logical_not``; (bool, bool) → bool:
    ``logical_and logical_or``;
  - ``where`` (bool, real, real) → real.

  Real arithmetic is in ``dtype``; results must match torch's to rounding (the tests compare with the
  reference loop to 1e-10 in float64).

Layout facts the lowering relies on: a region value is at most 2-D; a 1-D value of width ``w``
broadcasts over rows as ``[1, w]``; slices, splits and concatenations along the last dimension are
column offsets (a split or slice of an elementwise value is the elementwise value of the split
operands: nothing is materialized in between); the strides of the step graph's inputs are those of
its ``meta`` (or of the example inputs given to :func:`lower`), as for Inductor's compiled graphs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx

__all__ = ["Unsupported", "Input", "Output", "Op", "Loop", "Kernel", "Lowered", "lower", "bind", "describe", "layout",
           "runner", "OPS", "TORCH_DTYPES"]

#: the IR's elementwise ops by arity and kinds (see the module docstring)
OPS: dict[str, tuple[str, ...]] = {
    **{n: ("real",) for n in ("neg", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "abs", "sigmoid",
                              "tanh", "reciprocal", "sign", "sin", "cos")},
    **{n: ("real", "real") for n in ("add", "sub", "mul", "div", "maximum", "minimum", "pow",
                                     "eq", "ne", "lt", "le", "gt", "ge")},
    "logical_not": ("bool",), "logical_and": ("bool", "bool"), "logical_or": ("bool", "bool"),
    "where": ("bool", "real", "real"),
}
_BOOL_OUT = {"eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or"}
_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bool: "bool"}
#: the IR's dtype names -> torch dtypes
TORCH_DTYPES = {v: k for k, v in _DTYPES.items()}



class Unsupported(Exception):
    """The graph has elementwise work this IR cannot express (the message says which)."""


@dataclass(frozen=True)
class Input:
    """A kernel argument tensor (read through the strides of the loads)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Output:
    """A kernel result of shape (rows, cols) and ``dtype`` (the kernel's, or ``"bool"`` for a mask);
    ``into``: the input written in place (None: a new tensor)."""

    rows: int
    cols: int
    row_stride: int
    dtype: str
    shape: tuple[int, ...]        # the tensor's shape (rows * cols elements; ``(rows, cols)`` or 1-D / 0-D)
    into: int | None = None


@dataclass(frozen=True)
class Op:
    """One SSA value: ``name`` (load, const or an op of :data:`OPS`), ``args`` (earlier op indices)."""

    name: str
    args: tuple[int, ...] = ()
    attrs: tuple[Any, ...] = ()
    kind: str = "real"


@dataclass(frozen=True)
class Loop:
    """``for r < rows: for j < width: body; stores`` (stores: (output, column offset, op index))."""

    rows: int
    width: int
    body: tuple[Op, ...]
    stores: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Kernel:
    """One region of elementwise work: inputs, outputs and loops (contract: the module docstring)."""

    name: str
    dtype: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    loops: tuple[Loop, ...]

    def n_ops(self) -> int:
        return sum(len(lp.body) for lp in self.loops)


@dataclass
class Lowered:
    """A step graph rewritten into extern nodes and kernel calls (see :func:`bind`)."""

    graph: fx.GraphModule
    kernels: list[Kernel]
    #: per kernel, how many of its outputs the graph reads (the rest are in-place writes)
    visible: list[int] = field(default_factory=list)
    #: the graph's outputs as meta tensors (shapes and strides as the rewritten graph returns them)
    out_layouts: tuple[Any, ...] = ()
    #: the layouts the kernels were generated for (:func:`layout` of each input) and the graph lowered
    in_layouts: tuple[Any, ...] = ()
    source: fx.GraphModule | None = None


def layout(t: Any) -> Any:
    """What generated code assumes of an input: dtype, sizes and the strides of dimensions longer than 1."""
    if not isinstance(t, Tensor):
        return None
    return (t.dtype, tuple((int(n), int(s) if n > 1 else 0) for n, s in zip(t.shape, t.stride())))


# -------------------------------------------------------------------------------------------------
# expressions over one column index j, hash-consed (a common subexpression is one value)
# -------------------------------------------------------------------------------------------------
class _Exprs:
    """Expressions ``(name, args, attrs, kind)`` by id; children always have smaller ids."""

    def __init__(self) -> None:
        self.nodes: list[tuple[str, tuple[int, ...], tuple[Any, ...], str]] = []
        self.index: dict[tuple[Any, ...], int] = {}
        self.varies: list[bool] = []            # depends on the column index j
        self._shifted: dict[tuple[int, int], int] = {}

    def make(self, name: str, args: tuple[int, ...] = (), attrs: tuple[Any, ...] = (), kind: str = "real") -> int:
        key = (name, args, attrs, kind)
        i = self.index.get(key)
        if i is None:
            i = len(self.nodes)
            self.nodes.append(key)
            self.index[key] = i
            self.varies.append((name == "load" and attrs[3] != 0) or any(self.varies[a] for a in args))
        return i

    def const(self, value: Any) -> int:
        if isinstance(value, bool):
            return self.make("const", (), (value,), "bool")
        return self.make("const", (), (float(value),), "real")

    def kind(self, e: int) -> str:
        return self.nodes[e][3]

    def op(self, name: str, *args: int) -> int:
        want = OPS[name]
        kinds = tuple(self.kind(a) for a in args)
        if kinds != want:
            raise Unsupported(f"{name} of {kinds} values (expects {want})")
        return self.make(name, tuple(args), (), "bool" if name in _BOOL_OUT else "real")

    def shift(self, e: int, d: int) -> int:
        """The expression of column j + d."""
        if d == 0 or not self.varies[e]:
            return e
        got = self._shifted.get((e, d))
        if got is None:
            name, args, attrs, kind = self.nodes[e]
            if name == "load":
                inp, off, rs, cs = attrs
                got = self.make("load", (), (inp, off + d * cs, rs, cs), kind)
            else:
                got = self.make(name, tuple(self.shift(a, d) for a in args), attrs, kind)
            self._shifted[(e, d)] = got
        return got


@dataclass(frozen=True)
class _Val:
    """A region value of shape (rows, cols): column segments ``(start, end, expr)`` covering
    [0, cols), the expr giving column start + j; or ``bcast``: one expr for every column."""

    rows: int
    cols: int
    segs: tuple[tuple[int, int, int], ...] = ()
    bcast: int | None = None

    def window(self, ex: _Exprs, s: int, e: int) -> list[tuple[int, int, int]]:
        """The segments of columns [s, e), re-based to start at 0."""
        if self.bcast is not None:
            return [(0, e - s, self.bcast)]
        out = []
        for a, b, x in self.segs:
            lo, hi = max(a, s), min(b, e)
            if lo < hi:
                out.append((lo - s, hi - s, ex.shift(x, lo - a)))
        return out

    def at(self, ex: _Exprs, s: int, e: int) -> int:
        """The one expression of columns [s, e) (which lie inside one segment)."""
        (seg,) = self.window(ex, s, e)
        return seg[2]

    def reshaped(self, rows: int, cols: int) -> _Val:
        return _Val(rows, cols, self.segs, self.bcast)


def _shape2(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of a tensor of at most two dimensions (a 1-D tensor is one broadcast row)."""
    dims = [int(s) for s in shape]
    if len(dims) > 2:
        raise Unsupported(f"a {len(dims)}-D tensor in an elementwise region")
    dims = [1] * (2 - len(dims)) + dims
    return dims[0], dims[1]


def _input_val(ex: _Exprs, k: int, t: Any) -> _Val:
    """The value of kernel input ``k`` (a tensor or its meta: shape, stride)."""
    rows, cols = _shape2(t.shape)
    stride = [int(s) for s in t.stride()]
    stride = [0] * (2 - len(stride)) + stride
    rs = stride[0] if rows > 1 else 0
    cs = stride[1] if cols > 1 else 0
    load = ex.make("load", (), (k, 0, rs, cs), "bool" if t.dtype == torch.bool else "real")
    if cols == 1:
        return _Val(rows, 1, bcast=load)
    return _Val(rows, cols, ((0, cols, load),))


def _elementwise(ex: _Exprs, name: str, vals: Sequence[_Val], rows: int, cols: int) -> _Val:
    """``name`` applied to broadcast operands: one expression per run of columns where no operand
    changes segment."""
    wide = [v for v in vals if v.bcast is None]
    if any(v.cols != cols for v in wide):
        raise Unsupported(f"{name}: operands of widths {[v.cols for v in vals]} for {cols} columns")
    if not wide:
        return _Val(rows, cols, bcast=ex.op(name, *(v.bcast for v in vals)))  # type: ignore[misc]
    cuts = sorted({c for v in wide for a, b, _ in v.segs for c in (a, b)})
    segs = tuple((s, e, ex.op(name, *(v.at(ex, s, e) for v in vals))) for s, e in zip(cuts, cuts[1:]))
    return _Val(rows, cols, segs)


def _cat(ex: _Exprs, parts: Sequence[_Val], rows: int, cols: int) -> _Val:
    segs: list[tuple[int, int, int]] = []
    off = 0
    for p in parts:
        segs += [(a + off, b + off, x) for a, b, x in p.window(ex, 0, p.cols)]
        off += p.cols
    if off != cols:
        raise Unsupported(f"cat of {off} columns into {cols}")
    return _Val(rows, cols, tuple(segs))


# -------------------------------------------------------------------------------------------------
# aten ops → IR (one recipe per aten op name; in-place forms use the functional recipe)
# -------------------------------------------------------------------------------------------------
def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _dim(node: fx.Node, i: int = 1) -> int:
    """The op's ``dim`` argument, made non-negative against its input's rank."""
    d = int(_arg(node, i, "dim", 0))
    src = node.args[0]
    nd = src[0].meta["val"].dim() if isinstance(src, (list, tuple)) else src.meta["val"].dim()  # type: ignore[union-attr]
    return d + nd if d < 0 else d


def _last_dim(node: fx.Node, i: int = 1) -> bool:
    src = node.args[0]
    first = src[0] if isinstance(src, (list, tuple)) else src
    return isinstance(first, fx.Node) and _dim(node, i) == first.meta["val"].dim() - 1


def _keeps_layout(node: fx.Node) -> bool:
    """A view / expand whose result is read element for element like its input (columns unchanged,
    rows unchanged or broadcast)."""
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return False
    (r0, c0), (r1, c1) = _shape2(src.meta["val"].shape), _shape2(node.meta["val"].shape)
    return (c1 == c0 or c0 == 1) and (r1 == r0 or r0 == 1)


def _scaled(r: _Region, node: fx.Node, v: Any, alpha: Any) -> Any:
    return v if alpha in (None, 1) else r.ew(node, "mul", v, alpha)


def _pow(r: _Region, n: fx.Node, a: tuple) -> _Val:
    x, p = a[0], a[1]
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        if p == 1:
            return r.v(x).reshaped(*_shape2(n.meta["val"].shape))
        if p == 2:
            return r.ew(n, "mul", x, x)
        if p == 0.5:
            return r.ew(n, "sqrt", x)
        if p == -1:
            return r.ew(n, "reciprocal", x)
    return r.ew(n, "pow", x, p)


def _clamp(r: _Region, n: fx.Node, lo: Any, hi: Any) -> _Val:
    v: Any = n.args[0]
    if lo is not None:
        v = r.ew(n, "maximum", v, lo)
    if hi is not None:
        v = r.ew(n, "minimum", v, hi)
    return r.v(v).reshaped(*_shape2(n.meta["val"].shape))


def _const_like(r: _Region, n: fx.Node, value: Any) -> _Val:
    rows, cols = _shape2(n.meta["val"].shape)
    return _Val(rows, cols, bcast=r.ex.const(value if n.meta["val"].dtype == torch.bool else float(value)))


def _slice(r: _Region, n: fx.Node, a: tuple) -> _Val:
    x = r.v(a[0])
    start, end = _arg(n, 2, "start", None), _arg(n, 3, "end", None)
    start = 0 if start is None else int(start)
    end = x.cols if end is None else int(end)
    start, end = (s + x.cols if s < 0 else s for s in (start, end))
    start, end = min(start, x.cols), min(max(end, start), x.cols)
    rows, cols = _shape2(n.meta["val"].shape)
    if x.bcast is not None:
        return _Val(rows, cols, bcast=x.bcast)
    return _Val(rows, cols, tuple(x.window(r.ex, start, end)))


def _split(r: _Region, n: fx.Node, a: tuple) -> list[_Val]:
    x = r.v(a[0])
    sizes = a[1]
    if isinstance(sizes, int):
        sizes = [min(sizes, x.cols - s) for s in range(0, x.cols, sizes)]
    out, off = [], 0
    for size in map(int, sizes):
        if x.bcast is not None:
            out.append(_Val(x.rows, size, bcast=x.bcast))
        else:
            out.append(_Val(x.rows, size, tuple(x.window(r.ex, off, off + size))))
        off += size
    return out


def _log_sigmoid(r: _Region, n: fx.Node, a: tuple) -> list[_Val]:
    """(log σ(x), z = e^−|x|) as torch's CPU kernel computes them: min(x, 0) − log1p(z); z is the buffer
    log_sigmoid_backward reads."""
    z = r.ew(n, "exp", r.ew(n, "neg", r.ew(n, "abs", a[0])))
    return [r.ew(n, "sub", r.ew(n, "minimum", a[0], 0.0), r.ew(n, "log1p", z)), z]


def _log_sigmoid_backward(r: _Region, n: fx.Node, a: tuple) -> _Val:
    """grad · (max_deriv − sign · z / (1 + z)), max_deriv = [x < 0], sign = ±1 (torch's CPU kernel)."""
    g, x, z = a
    neg = r.ew(n, "lt", x, 0.0)
    frac = r.ew(n, "div", z, r.ew(n, "add", z, 1.0))
    inner = r.ew(n, "sub", r.ew(n, "where", neg, 1.0, 0.0), r.ew(n, "mul", r.ew(n, "where", neg, 1.0, -1.0), frac))
    return r.ew(n, "mul", g, inner)


Recipe = Callable[["_Region", fx.Node, tuple], Any]
_UNARY = ("neg", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "abs", "sigmoid", "tanh", "reciprocal",
          "sign", "sin", "cos", "logical_not")
_BINARY = ("mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
           "logical_or")
_RECIPES: dict[str, Recipe] = {
    **{name: (lambda nm: lambda r, n, a: r.ew(n, nm, a[0]))(name) for name in _UNARY},
    **{name: (lambda nm: lambda r, n, a: r.ew(n, nm, a[0], a[1]))(name) for name in _BINARY},
    "sgn": lambda r, n, a: r.ew(n, "sign", a[0]),
    "add": lambda r, n, a: r.ew(n, "add", a[0], _scaled(r, n, a[1], _arg(n, 2, "alpha"))),
    "sub": lambda r, n, a: r.ew(n, "sub", a[0], _scaled(r, n, a[1], _arg(n, 2, "alpha"))),
    "rsub": lambda r, n, a: r.ew(n, "sub", a[1], _scaled(r, n, a[0], _arg(n, 2, "alpha"))),
    "pow": _pow,
    "relu": lambda r, n, a: r.ew(n, "maximum", a[0], 0.0),
    "clamp": lambda r, n, a: _clamp(r, n, _arg(n, 1, "min"), _arg(n, 2, "max")),
    "clamp_min": lambda r, n, a: _clamp(r, n, a[1], None),
    "clamp_max": lambda r, n, a: _clamp(r, n, None, a[1]),
    "sigmoid_backward": lambda r, n, a: r.ew(n, "mul", a[0], r.ew(n, "mul", a[1], r.ew(n, "sub", 1.0, a[1]))),
    "tanh_backward": lambda r, n, a: r.ew(n, "mul", a[0], r.ew(n, "sub", 1.0, r.ew(n, "mul", a[1], a[1]))),
    "threshold_backward": lambda r, n, a: r.ew(n, "where", r.ew(n, "le", a[1], a[2]), 0.0, a[0]),
    "lerp": lambda r, n, a: r.ew(n, "add", a[0], r.ew(n, "mul", a[2], r.ew(n, "sub", a[1], a[0]))),
    "addcmul": lambda r, n, a: r.ew(n, "add", a[0], _scaled(r, n, r.ew(n, "mul", a[1], a[2]), _arg(n, 3, "value"))),
    "addcdiv": lambda r, n, a: r.ew(n, "add", a[0], _scaled(r, n, r.ew(n, "div", a[1], a[2]), _arg(n, 3, "value"))),
    "where": lambda r, n, a: r.ew(n, "where", a[0], a[1], a[2]),
    "masked_fill": lambda r, n, a: r.ew(n, "where", a[1], a[2], a[0]),
    "fill": lambda r, n, a: _const_like(r, n, a[1]),
    "zeros_like": lambda r, n, a: _const_like(r, n, 0),
    "ones_like": lambda r, n, a: _const_like(r, n, 1),
    "empty_like": lambda r, n, a: _const_like(r, n, 0),     # undefined values: any will do
    "full_like": lambda r, n, a: _const_like(r, n, a[1]),
    **{name: lambda r, n, a: r.v(a[0]).reshaped(*_shape2(n.meta["val"].shape))
       for name in ("detach", "alias", "clone", "lift_fresh_copy", "view", "_unsafe_view", "reshape", "expand",
                    "unsqueeze", "squeeze")},
    "slice": _slice,
    "split": _split,
    "split_with_sizes": _split,
    "log_sigmoid_forward": _log_sigmoid,
    "log_sigmoid_backward": _log_sigmoid_backward,
    "cat": lambda r, n, a: _cat(r.ex, [r.v(p) for p in a[0]], *_shape2(n.meta["val"].shape)),
    "copy": lambda r, n, a: r.copy(a[0], a[1]),
}
#: extra conditions of some recipes (beyond two-dimensional float / bool tensors)
_CHECKS: dict[str, Callable[[fx.Node], bool]] = {
    "slice": lambda n: _last_dim(n) and _arg(n, 4, "step", 1) == 1,
    "split": lambda n: _last_dim(n, 2), "split_with_sizes": lambda n: _last_dim(n, 2),
    "cat": lambda n: _last_dim(n) and n.meta["val"].dim() == 2,
    "div": lambda n: n.kwargs.get("rounding_mode") is None,
    **{name: _keeps_layout for name in ("view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze")},
    "copy": lambda n: isinstance(n.args[0], fx.Node) and n.args[0].op == "placeholder"
    and len(n.args[0].users) == 1 and not n.users
    and tuple(n.args[0].meta["val"].shape) == tuple(n.meta["val"].shape),
}


def _op_name(node: fx.Node) -> str:
    """The aten op's base name (``aten.add.Tensor`` → ``add``; ``getitem`` for tuple indexing)."""
    if node.target is operator.getitem:
        return "getitem"
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t._opname
    return str(getattr(t, "__name__", t))


def _recipe_name(node: fx.Node) -> str | None:
    name = _op_name(node)
    if name in _RECIPES:
        return name
    if name.endswith("_") and name[:-1] in _RECIPES:
        return name[:-1]
    return None


def _tensors_ok(node: fx.Node) -> bool:
    """The node's value and tensor arguments: at most 2-D, float32 / float64 / bool."""
    vals = [node.meta.get("val")]
    for a in node.args:
        for x in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(x, fx.Node):
                vals.append(x.meta.get("val"))
    flat = [t for v in vals for t in (v if isinstance(v, (list, tuple)) else (v,))]
    return all(isinstance(t, Tensor) and t.dim() <= 2 and t.dtype in _DTYPES for t in flat)


def _region_ok(node: fx.Node) -> bool:
    """Whether ``node`` can be part of a kernel."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        src = node.args[0]
        return isinstance(src, fx.Node) and _op_name(src) in _MULTI and _region_ok(src)
    name = _recipe_name(node)
    if name is None or not _tensors_ok(node):
        return False
    if name != _op_name(node) and name != "copy":      # in place: only on a value nothing else reads
        a0 = node.args[0]
        if not (isinstance(a0, fx.Node) and a0.op != "placeholder" and len(a0.users) == 1):
            return False
    check = _CHECKS.get(name)
    if check is not None and not check(node):
        return False
    val = node.meta["val"]
    if isinstance(val, Tensor) and val.dtype == torch.bool:     # a mask stays inside the kernel
        return all(_region_ok(u) for u in node.users)
    return True


#: recipes with several results (read through getitem)
_MULTI = ("split", "split_with_sizes", "log_sigmoid_forward")


def _computes(node: fx.Node) -> bool:
    name = _recipe_name(node) if node.op == "call_function" and node.target is not operator.getitem else None
    return name is not None and name not in ("detach", "alias", "view", "_unsafe_view", "reshape", "expand",
                                             "unsqueeze", "squeeze", "slice", "split", "split_with_sizes")


# -------------------------------------------------------------------------------------------------
# one region → one Kernel
# -------------------------------------------------------------------------------------------------
class _Region:
    """Lowers the nodes of one region (a fused sub-graph) into expressions."""

    def __init__(self) -> None:
        self.ex = _Exprs()
        self.env: dict[fx.Node, Any] = {}
        self.inputs: list[tuple[Input, Any]] = []
        self.copies: list[tuple[int, _Val]] = []
        self.ph: dict[fx.Node, int] = {}

    def v(self, a: Any) -> _Val:
        if isinstance(a, _Val):
            return a
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (bool, int, float)):
            return _Val(1, 1, bcast=self.ex.const(a if isinstance(a, bool) else float(a)))
        raise Unsupported(f"an argument {a!r} of an elementwise op")

    def ew(self, node: fx.Node, name: str, *args: Any) -> _Val:
        val = node.meta["val"]
        rows, cols = _shape2((val[0] if isinstance(val, (list, tuple)) else val).shape)
        return _elementwise(self.ex, name, [self.v(a) for a in args], rows, cols)

    def copy(self, dst: fx.Node, src: Any) -> _Val:
        val = self.v(src)
        self.copies.append((self.ph[dst], val))
        return val

    def node(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            t = node.meta.get("val")
            if not isinstance(t, Tensor) or t.dtype not in _DTYPES:
                raise Unsupported(f"kernel input {node.name} is not a float or bool tensor")
            k = len(self.inputs)
            self.ph[node] = k
            self.inputs.append((Input(_DTYPES[t.dtype], tuple(t.shape)), t))
            return _input_val(self.ex, k, t)
        if node.target is operator.getitem:
            return self.env[node.args[0]][node.args[1]]   # type: ignore[index]
        name = _recipe_name(node)
        assert name is not None
        return _RECIPES[name](self, node, tuple(node.args))

    def kernel(self, name: str, dtype: str, outs: Sequence[fx.Node]) -> Kernel:
        for inp, _t in self.inputs:
            if inp.dtype not in (dtype, "bool"):
                raise Unsupported(f"a {inp.dtype} input in a {dtype} graph")
        outputs: list[Output] = []
        values: list[_Val] = []
        copies = list(self.copies)
        for o in outs:
            val = self.env[o]
            into = next((k for k, v in copies if v is val), None)
            copies = [(k, v) for k, v in copies if k != into]
            outputs.append(self._output(o.meta["val"].shape, _DTYPES[o.meta["val"].dtype], into))
            values.append(val)
        for k, val in copies:
            outputs.append(self._output(self.inputs[k][0].shape, self.inputs[k][0].dtype, k))
            values.append(val)
        return Kernel(name, dtype, tuple(i for i, _ in self.inputs), tuple(outputs), self._loops(outputs, values))

    def _output(self, shape: Sequence[int], dtype: str, into: int | None) -> Output:
        rows, cols = _shape2(shape)
        if into is None:
            return Output(rows, cols, cols, dtype, tuple(int(s) for s in shape))
        t = self.inputs[into][1]
        stride = [0] * (2 - t.dim()) + [int(s) for s in t.stride()]
        if _shape2(t.shape) != (rows, cols) or (cols > 1 and stride[1] != 1):
            raise Unsupported("an in-place write into an input of another layout")
        return Output(rows, cols, stride[0], dtype, tuple(int(s) for s in shape), into)

    def _loops(self, outputs: Sequence[Output], values: Sequence[_Val]) -> tuple[Loop, ...]:
        """Stores grouped into one loop per (rows, width); each loop's body the expressions its stores
        reach, in id order (children first)."""
        groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for o, (out, val) in enumerate(zip(outputs, values)):
            for s, e, x in val.window(self.ex, 0, out.cols):
                if (self.ex.kind(x) == "bool") != (out.dtype == "bool"):
                    raise Unsupported(f"a {self.ex.kind(x)} value stored as {out.dtype}")
                groups.setdefault((out.rows, e - s), []).append((o, s, x))
        loops = []
        for (rows, width), stores in groups.items():
            reach: set[int] = set()
            stack = [x for _, _, x in stores]
            while stack:
                e = stack.pop()
                if e not in reach:
                    reach.add(e)
                    stack.extend(self.ex.nodes[e][1])
            order = sorted(reach)
            local = {e: i for i, e in enumerate(order)}
            body = tuple(Op(nm, tuple(local[a] for a in args), attrs, kind)
                         for nm, args, attrs, kind in (self.ex.nodes[e] for e in order))
            loops.append(Loop(rows, width, body, tuple((o, s, local[x]) for o, s, x in stores)))
        return tuple(loops)


def _lower_region(sub: fx.GraphModule, name: str, dtype: str, layouts: Sequence[Any]) -> tuple[Kernel, int]:
    """The kernel of one fused region (its inputs laid out as ``layouts``: meta tensors), and how many
    outputs the graph reads."""
    r = _Region()
    outs: Sequence[fx.Node] = ()
    phs = iter(layouts)
    for node in sub.graph.nodes:
        if node.op == "placeholder":
            node.meta["val"] = next(phs)
        if node.op == "output":
            outs = node.args[0]
        else:
            r.env[node] = r.node(node)
    return r.kernel(name, dtype, outs), len(outs)


def _meta(t: Any) -> Any:
    if isinstance(t, Tensor):
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    if isinstance(t, (list, tuple)):
        return type(t)(_meta(x) for x in t)
    return t


def _lower_regions(fused: fx.GraphModule, dtype: str) -> tuple[list[Kernel], list[int], tuple[Any, ...]]:
    """Lower every region (``pw_*`` call) in graph order and rewrite it into a kernel call. The layouts
    are propagated with meta tensors: extern nodes run on them, a kernel's new outputs are contiguous
    (so a kernel reading another's output reads it as written, whatever the original graph's strides)."""
    kernels: list[Kernel] = []
    visible: list[int] = []
    env: dict[fx.Node, Any] = {}
    outs: Any = ()
    for node in list(fused.graph.nodes):
        if node.op == "placeholder":
            env[node] = _meta(node.meta.get("val"))
        elif node.op == "get_attr":
            obj: Any = fused
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            env[node] = _meta(obj)
        elif node.op == "call_module" and str(node.target).startswith("pw_"):
            layouts = [env[a] for a in node.args]
            kernel, n_vis = _lower_region(fused.get_submodule(node.target), f"k{len(kernels)}", dtype, layouts)
            with fused.graph.inserting_before(node):
                call = fused.graph.call_function(_unbound, tuple(node.args))
            call.meta["pwgen_kernel"] = len(kernels)
            node.replace_all_uses_with(call)
            fused.graph.erase_node(node)
            delattr(fused, str(node.target))
            env[call] = tuple(torch.empty(o.shape, dtype=TORCH_DTYPES[o.dtype], device="meta")
                              if o.into is None else layouts[o.into] for o in kernel.outputs)
            kernels.append(kernel)
            visible.append(n_vis)
        elif node.op == "call_function":
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: env[a])
            env[node] = node.target(*args, **kwargs)
        elif node.op == "output":
            outs = fx.node.map_arg(node.args[0], lambda a: env[a])
    return kernels, visible, tuple(outs) if isinstance(outs, (list, tuple)) else (outs,)


# -------------------------------------------------------------------------------------------------
# the graph: partition, lower, rewrite
# -------------------------------------------------------------------------------------------------
def _unbound(*args: Any) -> tuple[Tensor, ...]:
    raise RuntimeError("cellsearch pwgen: a kernel call that no back-end has bound")


def _copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm``'s graph (nodes and their meta dicts copied, values shared)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = g.graph_copy(gm.graph, env)
    g.output(out)
    return fx.GraphModule(gm, g)


def _graph_dtype(gm: fx.GraphModule) -> str:
    kinds = {t.dtype for n in gm.graph.nodes if n.op == "placeholder"
             for t in [n.meta.get("val")] if isinstance(t, Tensor) and t.is_floating_point()}
    if len(kinds) != 1 or next(iter(kinds)) not in (torch.float32, torch.float64):
        raise Unsupported(f"inputs of dtypes {sorted(map(str, kinds))} (one of float32 / float64 expected)")
    return _DTYPES[next(iter(kinds))]


def _refuse_unsupported_pointwise(gm: fx.GraphModule) -> None:
    """Raise when an op torch tags elementwise cannot be part of a kernel (it would run op by op)."""
    for node in gm.graph.nodes:
        t = node.target
        if node.op == "call_function" and isinstance(t, torch._ops.OpOverload) \
                and torch.Tag.pointwise in t.tags and not _region_ok(node):
            why = "no lowering" if _recipe_name(node) is None else "its tensors' shapes or dtypes"
            raise Unsupported(f"elementwise {t} ({why})")


#: a value one kernel reads from another is recomputed from the producer's inputs when it takes at most
#: this many nodes of the producer, none of them costly (Inductor recomputes pointwise values across its
#: kernels the same way)
RECOMPUTE_MAX = 24


#: ops a value is not recomputed through (a transcendental or a division costs more than the store and
#: load of passing the value between kernels)
COSTLY = frozenset({"exp", "exp2", "expm1", "log", "log2", "log1p", "sigmoid", "tanh", "softplus",
                    "log_sigmoid_forward", "pow", "sqrt", "rsqrt", "div", "reciprocal", "erf", "sin", "cos",
                    "atan", "atan2", "silu", "gelu", "elu", "logit"})


def _cone(n: fx.Node, group: dict[fx.Node, Any]) -> list[fx.Node] | None:
    """The nodes of ``group`` that ``n`` is computed from (itself included), or None when there are too
    many or one of them writes in place (copying it would write twice)."""
    seen: set[fx.Node] = set()
    stack = [n]
    while stack:
        m = stack.pop()
        if m in seen or m not in group:
            continue
        seen.add(m)
        if len(seen) > RECOMPUTE_MAX or _op_name(m).endswith("_") or _op_name(m) in COSTLY:
            return None
        stack.extend(m.all_input_nodes)
    return list(seen)


def _copy_before(graph: fx.Graph, nodes: Sequence[fx.Node], before: fx.Node) -> dict[fx.Node, fx.Node]:
    """Copies of ``nodes`` (in graph order, reading each other's copies) inserted before ``before``."""
    pos = {m: k for k, m in enumerate(graph.nodes)}
    env: dict[fx.Node, fx.Node] = {}
    with graph.inserting_before(before):
        for m in sorted(nodes, key=pos.__getitem__):
            env[m] = graph.node_copy(m, lambda a: env.get(a, a))
    return env


def _recompute_across(graph: fx.Graph, groups: list[dict[fx.Node, Any]]) -> None:
    """Where a region reads a value another region computes (the second kernel after an extern product
    reading what the first one wrote), copy the nodes that value comes from into the reading region when
    they are few and cheap (no transcendental or division: :data:`COSTLY`): the first kernel no longer
    writes it (unless an extern node reads it too) and the second one computes it from the first one's
    inputs instead of reading it back. No cycle can appear: the copies read only
    values the original already depended on."""
    owner = {n: i for i, g in enumerate(groups) for n in g}
    for i, group in enumerate(groups):
        for user in [u for u in graph.nodes if u in group]:
            for n in user.all_input_nodes:
                j = owner.get(n)
                cone = _cone(n, groups[j]) if j is not None and j != i else None
                if cone is None:
                    continue
                env = _copy_before(graph, cone, user)
                for m in env.values():
                    group[m] = None
                    owner[m] = i
                user.replace_input_with(n, env[n])


def _earliest(graph: fx.Graph) -> list[dict[fx.Node, Any]]:
    """The regions (kernels) of a step graph: each node that can be part of a kernel joins the earliest
    one its inputs allow, the first one after every extern node (a product) it depends on. A backward
    step computes everything that does not wait for its recurrent product before that product, so the
    kernel after it is only what reads the product's result (before, torch's capability-based
    partitioner grouped the nodes by connectivity and left, e.g., STAR's and GRU's gate gradients and the
    input gradient's copies to the second kernel, which recomputed their gates: STAR's backward pointwise
    work went from 14.3 to 7.9 ms at hidden 256, sequence 200, one thread). Each group is convex: a path
    between two nodes of a group passes only nodes of the same level."""
    level: dict[fx.Node, int] = {}     # region nodes: their group; other nodes: the first group after them
    region: set[fx.Node] = set()
    groups: dict[int, dict[fx.Node, Any]] = {}
    for n in graph.nodes:
        if n.op in ("placeholder", "get_attr", "output"):
            level[n] = 0
            continue
        if _region_ok(n):
            lv = max((level.get(a, 0) for a in n.all_input_nodes), default=0)
            region.add(n)
            groups.setdefault(lv, {})[n] = None
        else:
            lv = max((level.get(a, 0) + (a in region) for a in n.all_input_nodes), default=0)
        level[n] = lv
    return [g for _, g in sorted(groups.items()) if any(_computes(n) for n in g)]


def lower(gm: fx.GraphModule, example_inputs: Sequence[Tensor] | None = None) -> Lowered:
    """``gm`` (a step graph: aten ops, ``meta["val"]`` on its nodes) as extern nodes and kernels; the
    inputs' layouts (shapes, strides, dtypes) from ``example_inputs`` where given (tensors, meta
    tensors included; None: the placeholder's ``meta``). Raises :class:`Unsupported`."""
    from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

    work = _copy(gm)
    phs = [n for n in work.graph.nodes if n.op == "placeholder"]
    for node, t in zip(phs, example_inputs or ()):
        if isinstance(t, Tensor):
            node.meta["val"] = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    dtype = _graph_dtype(work)
    _refuse_unsupported_pointwise(work)
    groups = _earliest(work.graph)
    _recompute_across(work.graph, groups)
    fused = fuse_by_partitions(work, groups, prefix="pw_", always_return_tuple=True)
    kernels, visible, out_layouts = _lower_regions(fused, dtype)
    fused.graph.lint()
    fused.recompile()
    ins = tuple(layout(n.meta.get("val")) for n in phs)
    return Lowered(fused, kernels, visible, out_layouts, ins, gm)


def bind(lowered: Lowered, calls: Sequence[Callable[..., tuple[Tensor, ...]]]) -> Callable[..., Any]:
    """The rewritten graph as a function of the step graph's inputs, kernel ``i`` run by ``calls[i]``
    (a back-end's callable: the kernel's input tensors → the tuple of its outputs)."""
    gm = _copy(lowered.graph)
    for node in gm.graph.nodes:
        if "pwgen_kernel" in node.meta:
            node.target = calls[node.meta["pwgen_kernel"]]
    gm.recompile()
    return gm.forward


def describe(lowered: Lowered) -> str:
    """One line: how many kernels, ops and extern nodes."""
    extern = sum(1 for n in lowered.graph.graph.nodes
                 if n.op == "call_function" and "pwgen_kernel" not in n.meta and n.target is not operator.getitem)
    ops = sum(k.n_ops() for k in lowered.kernels)
    return f"{len(lowered.kernels)} kernel(s) of {ops} op(s), {extern} extern node(s)"


def runner(k: Kernel, name: str, call: Callable[[list[str]], str], scope: dict[str, Any],
           device: str = "") -> Callable[..., tuple[Tensor, ...]]:
    """A generated Python function ``name`` of the kernel's input tensors (``a0, a1, …``; generated, so
    a call is a few lines of bytecode): allocates each new output (``empty(shape, dtype=…<device>)``),
    runs the statement ``call(operands)`` (the inputs' names, then the new outputs'), returns every
    output, in order, as a tuple. ``scope``: the names the statement uses (the back-end's kernel)."""
    args = [f"a{i}" for i in range(len(k.inputs))]
    operands, lines, rets = list(args), [], []
    scope = {**scope, "empty": torch.empty, "__name__": __name__}
    for i, o in enumerate(k.outputs):
        if o.into is None:
            scope[f"T{i}"] = TORCH_DTYPES[o.dtype]
            lines.append(f"    o{i} = empty({o.shape!r}, dtype=T{i}{device})")
            operands.append(f"o{i}")
            rets.append(f"o{i}")
        else:
            rets.append(f"a{o.into}")
    code = "\n".join([f"def {name}({', '.join(args)}):", *lines, f"    {call(operands)}",
                      f"    return ({', '.join(rets)},)"])
    exec(compile(code, f"<cellsearch pwgen {name}>", "exec"), scope)
    return scope[name]
