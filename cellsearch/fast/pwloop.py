"""The derived path's time loop in C: a whole sequence, forward or backward, in one call (issue 17).

The Python loop of :mod:`cellsearch.fast.derived` calls the generated step graph once per time step:
a recurrent product through torch, one ctypes call per kernel, new tensors for every output. At
hidden 128 that costs more than the step's arithmetic. This module writes the loop itself in C, in
the library of the step's kernels (:mod:`cellsearch.fast.pwgen_c`), from the same lowered step graphs:

- **values have homes**, buffers laid out once per call: a step output the backward or the next step
  reads lives in a ``[T, B, cols]`` buffer (the output ``h`` directly in the sequence output); a state
  input is the previous step's state output (the initial state at the first step); the backward's
  state gradients alternate between two ``[B, cols]`` buffers; everything else is one ``[B, cols]``
  scratch buffer; a slice is a column offset into its operand's home;
- **products by a loop invariant** (the recurrent GEMM forward, its transpose backward, a deep
  transition's layers) run in a small generated GEMM: the invariant packed once per call into
  32- (float) or 16- (double) column panels, the 8-row register tile of :mod:`cellsearch.fast.cgemm` that GCC
  vectorizes (AVX-512 here), ``addmm``'s addend added in the same pass. No call leaves the library;
- **the input projection** ``xp = x W_ihᵀ + b`` of a sequence that owns it (float32 on the CPU,
  :func:`cellsearch.fast.derived._folds`) runs at every step in the same GEMM (K = d), and so does its
  ``∂x`` in the backward once the step has written ``∂xp_t``: no ``[T, B, ·]`` buffer of it is written
  before the loop and read back, and no separate product runs after it;
- **rows are independent**: every op of a step acts on each batch row alone (checked: kernels iterate
  the batch rows, products by invariants multiply rows), so the rows are split once over torch's
  OpenMP threads and each thread runs its rows through the whole sequence with no barrier between
  steps. The result does not depend on the number of threads (each element is summed in the same
  order), and it equals the Python loop's to rounding.

What it covers (:func:`plan` says why not, and the Python loop runs): extern nodes that are routed
products (:class:`cellsearch.fast.derived._Products`), kernel calls, column slices, and the transposes
of the post-loop gradients' factors; every gradient of a loop invariant must be a post-loop product or
sum (:mod:`cellsearch.fast.derived` moves ``hᵀ·dA`` and sums over the batch, such as GRU's ``b_hn``
gradient, after the loop). A step that reads across batch rows or accumulates another gradient of an
invariant at every step (asRNN's) keeps the Python loop. ``CELLSEARCH_DERIVED_LOOP=python`` turns the
C loop off.
"""

from __future__ import annotations

import ctypes
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx

from .pool import POOL
from .pwgen import TORCH_DTYPES, Kernel, Lowered
from .pwgen_c import _C_TYPES as _C

__all__ = ["LoopPlan", "Unsupported", "plan", "loop_choice"]


class Unsupported(Exception):
    """The step graphs need the Python loop (the message says why)."""


def loop_choice() -> str:
    """``c`` (default) or ``python`` (``CELLSEARCH_DERIVED_LOOP=python``)."""
    return "python" if os.environ.get("CELLSEARCH_DERIVED_LOOP", "c").strip().lower() == "python" else "c"


# -------------------------------------------------------------------------------------------------
# homes
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Home:
    """Where a step value lives. ``kind``: ``fixed`` (``P[slot]``, the same at every step), ``seq``
    (``P[slot] + t·step``), ``pp`` (``P[slot] + (t & 1)·step``), ``shift`` (the previous step's value of
    ``of``, or ``P[slot]`` at the first step: step 0 forward, T − 1 when ``backward``); ``offset``: a
    column offset; ``rs``: the row stride (0: not a per-row value); ``cols``: the columns."""

    kind: str
    slot: str
    dtype: str
    cols: int
    rs: int
    step: int = 0
    offset: int = 0
    of: Home | None = None
    backward: bool = False

    def at(self, t: str, slots: dict[str, int]) -> str:
        """The C expression of the value's address at step ``t`` (a C expression)."""
        base = f"(({_C[self.dtype]} *)P[{slots[self.slot]}])"
        if self.kind == "fixed":
            expr = base
        elif self.kind == "seq":
            expr = f"({base} + ({t}) * {self.step})"
        elif self.kind == "pp":
            expr = f"({base} + (({t}) & 1) * {self.step})"
        else:
            assert self.of is not None
            first, prev = ("(T - 1)", f"({t}) + 1") if self.backward else ("0", f"({t}) - 1")
            expr = f"(({t}) == {first} ? {base} : {self.of.at(prev, slots)})"
        return f"({expr} + {self.offset})" if self.offset else expr

    def per_row(self) -> bool:
        return self.rs > 0


@dataclass
class Buffer:
    """A buffer the loop writes: per step (``seq``: ``[T, B, cols]``), two steps (``pp``) or one (``tmp``)."""

    kind: str
    cols: int
    dtype: str


@dataclass
class _Func:
    """One generated loop function being written."""

    name: str
    batch: int
    dtype: str = "float32"
    slots: dict[str, int] = field(default_factory=dict)
    packs: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)   # (weight slot, pack slot, K N sk sn)
    pre: list[str] = field(default_factory=list)      # C before the threads start (packs sized by kx)
    body: list[str] = field(default_factory=list)

    def slot(self, name: str) -> int:
        return self.slots.setdefault(name, len(self.slots))

    def ptr(self, home: Home, row: str = "") -> str:
        for name in (home.slot, *((home.of.slot,) if home.of is not None else ())):
            self.slot(name)
        expr = home.at("t", self.slots)
        return f"({expr} + {row} * {home.rs})" if row and home.rs else expr


def _meta(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _is_product(node: fx.Node, which: str) -> bool:
    from .derived import _Products

    return getattr(node.target, "__func__", None) is getattr(_Products, which)


def _is_kernel(node: fx.Node) -> bool:
    return "pwgen_kernel" in node.meta


# -------------------------------------------------------------------------------------------------
# a step graph into C
# -------------------------------------------------------------------------------------------------
class _Writer:
    """Writes one lowered step graph's loop body: homes for its nodes, a GEMM per product, a call per kernel."""

    def __init__(self, lw: Lowered, names: list[str], fn: _Func, dtype: str, homes: dict[fx.Node, Home],
                 buffers: dict[str, Buffer], prefix: str, fixed: dict[fx.Node, str]) -> None:
        self.lw, self.names, self.fn, self.B, self.dtype = lw, names, fn, fn.batch, dtype
        self.homes, self.buffers, self.prefix, self.fixed = homes, buffers, prefix, fixed
        self.pinned: dict[fx.Node, Home] = {}     # homes decided by the caller (outputs)
        self.outs: dict[fx.Node, list[Home]] = {}  # each kernel call's output homes

    def new(self, node: fx.Node, cols: int, dtype: str | None = None) -> Home:
        if node in self.pinned:
            return self.pinned[node]
        name = f"{self.prefix}tmp{len(self.buffers)}"
        self.buffers[name] = Buffer("tmp", cols, dtype or self.dtype)
        return Home("fixed", name, dtype or self.dtype, cols, cols)

    def rows_of(self, node: fx.Node) -> tuple[int, int]:
        """(rows, cols) of a per-step [B, cols] value, checked contiguous by rows."""
        v = _meta(node)
        if not isinstance(v, Tensor) or v.dim() != 2 or v.shape[0] != self.B or v.stride(1) != 1:
            raise Unsupported(f"{node.name} is not a [batch, columns] value with unit column stride")
        return int(v.stride(0)), int(v.shape[1])

    def walk(self) -> None:
        for node in self.lw.graph.graph.nodes:
            if node.op in ("placeholder", "output") or node in self.homes:
                continue
            if node.op != "call_function":
                raise Unsupported(f"{node.op} node {node.name}")
            if _is_kernel(node):
                self.kernel(node)
            elif node.target is operator.getitem:
                outs = self.outs.get(node.args[0])    # type: ignore[arg-type]
                if outs is None:
                    raise Unsupported(f"{node.name} indexes something other than a kernel call")
                self.homes[node] = outs[node.args[1]]  # type: ignore[index]
            elif _is_product(node, "mm") or _is_product(node, "addmm"):
                self.product(node)
            elif node.target is torch.ops.aten.slice.Tensor:
                self.slice(node)
            elif node.target is torch.ops.aten.t.default and all(u.op == "output" for u in node.users):
                continue                                # a post-loop factor: read from its operand's home
            else:
                raise Unsupported(f"extern node {getattr(node.target, '__name__', node.target)} "
                                  "(only products by loop invariants, kernels and column slices run in the C loop)")

    def slice(self, node: fx.Node) -> None:
        src = node.args[0]
        home = self.homes.get(src)  # type: ignore[arg-type]
        args = list(node.args) + [None] * (5 - len(node.args))
        dim, start, end, step = args[1] if args[1] is not None else 0, args[2] or 0, args[3], args[4] or 1
        v = _meta(src)
        if home is None or not home.per_row() or dim not in (1, -1) or step != 1 or not isinstance(v, Tensor):
            raise Unsupported(f"slice {node.name} is not a column slice of a step value")
        cols = int(v.shape[1])
        end = cols if end is None else min(int(end), cols)
        start = int(start) + cols if int(start) < 0 else int(start)
        end = end + cols if end < 0 else end
        self.homes[node] = Home(home.kind, home.slot, home.dtype, end - start, home.rs, home.step,
                                home.offset + start, home.of)

    def product(self, node: fx.Node) -> None:
        add = _is_product(node, "addmm")
        c, a, w = (node.args if add else (None, *node.args))
        ha, hc = self.homes.get(a), self.homes.get(c) if c is not None else None  # type: ignore[arg-type]
        if ha is None or not ha.per_row() or w not in self.fixed:
            raise Unsupported(f"product {node.name} is not a step value times a loop invariant")
        wv = _meta(w)
        K, N = int(wv.shape[0]), int(wv.shape[1])
        rs, cols = self.rows_of(node)
        if rs != cols:
            raise Unsupported(f"product {node.name} is not contiguous")
        lda, _ = self.rows_of(a)  # type: ignore[arg-type]
        if lda != ha.rs:
            raise Unsupported(f"{a} is not laid out as its home")
        home = self.new(node, N)
        if add:
            cv = _meta(c)
            if hc is None or not isinstance(cv, Tensor) or cv.shape[-1] != N or (cv.dim() == 2 and cv.stride(1) != 1):
                raise Unsupported(f"the addend of {node.name} is not a row or a [batch, columns] value")
            per_row = cv.dim() == 2 and cv.shape[0] == self.B
            if per_row != hc.per_row():
                raise Unsupported(f"the addend of {node.name} is not laid out as its home")
        wslot = self.fixed[w]
        pslot = f"{self.prefix}pack_{wslot}"
        if all(p[1] != pslot for p in self.fn.packs):
            self.fn.packs.append((wslot, pslot, (K, N, int(wv.stride(0)), int(wv.stride(1)))))
            self.buffers[pslot] = Buffer("pack", _packed_size(K, N, self.dtype), self.dtype)
        self.fn.slot(pslot)
        sfx = "f" if self.dtype == "float32" else "d"
        d, ldd = ("0", 0) if hc is None else (self.fn.ptr(hc, "r0" if hc.per_row() else ""), hc.rs)
        self.fn.body.append(
            f"        cs_gemm_{sfx}(r1 - r0, {N}, {K}, {self.fn.ptr(ha, 'r0')}, {ha.rs}, "
            f"(({_C[self.dtype]} *)P[{self.fn.slots[pslot]}]), {self.fn.ptr(home, 'r0')}, {home.rs}, {d}, {ldd});")
        self.homes[node] = home

    def kernel(self, node: fx.Node) -> None:
        ki = node.meta["pwgen_kernel"]
        k: Kernel = self.lw.kernels[ki]
        ins = []
        for a in node.args:
            h = self.homes.get(a)  # type: ignore[arg-type]
            if h is None:
                raise Unsupported(f"kernel {k.name} reads {a}, which has no home")
            ins.append(h)
        self._check_kernel(k, ins)
        users: dict[int, list[fx.Node]] = {}
        for u in node.users:
            if u.target is operator.getitem:
                users.setdefault(int(u.args[1]), []).append(u)    # type: ignore[arg-type]
        outs: list[Home] = []
        ptrs = [self.fn.ptr(h) for h in ins]
        for i, o in enumerate(k.outputs):
            if o.into is not None:            # written in place: only the input projection's gradient,
                if ins[o.into].slot != "dxp":     # a buffer of this step alone (never a kept value)
                    raise Unsupported(f"kernel {k.name} writes its input {o.into} in place")
                outs.append(ins[o.into])
                continue
            pinned = [self.pinned[u] for u in users.get(i, []) if u in self.pinned]
            home = pinned[0] if pinned else self.new(node, o.cols, o.dtype)
            if home.rs != o.row_stride or home.cols != o.cols:
                raise Unsupported(f"kernel {k.name}'s output {i} is not laid out as its home")
            outs.append(home)
            ptrs.append(self.fn.ptr(home))
        self.outs[node] = outs
        self.fn.body.append(f"        {self.names[ki]}({', '.join(ptrs)}, r0, r1);")

    def _check_kernel(self, k: Kernel, ins: Sequence[Home]) -> None:
        """Every loop iterates the batch rows; a step value is read at its own rows, an invariant at none."""
        for lp in k.loops:
            if lp.rows != self.B and self.B > 1:
                raise Unsupported(f"kernel {k.name} has a loop over {lp.rows} rows, not the batch's {self.B}")
            for op in lp.body:
                if op.name != "load":
                    continue
                inp, off, rs, _cs = op.attrs
                h = ins[inp]
                if (rs != h.rs) if h.per_row() else (rs != 0):
                    raise Unsupported(f"kernel {k.name} reads input {inp} across rows")
                if h.per_row() and off >= h.rs:
                    raise Unsupported(f"kernel {k.name} reads input {inp} at a row offset")
        for o in k.outputs:
            if o.rows != self.B and self.B > 1:
                raise Unsupported(f"kernel {k.name} writes an output of {o.rows} rows")


@dataclass
class LoopPlan:
    """The forward and backward loop functions of one pair of step graphs, and how to call them."""

    batch: int
    n_state: int
    fw: _Func
    bw: _Func
    fw_buffers: dict[str, Buffer]
    bw_buffers: dict[str, Buffer]
    fw_out: list[Home]               # h, state…, saved… homes (forward)
    bw_state: list[Home]             # the state gradients' homes (backward)
    factors: list[tuple[Home | None, Home | None]]    # post-loop factor homes (None: read from dxp)
    inv_layouts: tuple[Any, ...] = ()
    source: str = ""
    #: the forward that computes the input projection at every step (its function and buffers; None
    #: where its outputs would not be laid out as the plain forward's, which the backward reads)
    fold: tuple[_Func, dict[str, Buffer]] | None = None
    #: whether the backward computes the projection's ∂x at every step (∂xp has a whole-row home)
    bw_dx: bool = False
    #: whether the backward reads ∂out with its own strides (gathered a step at a time), else contiguous
    dout_strided: bool = False
    fw_fn: Any = None
    bw_fn: Any = None
    fx_fn: Any = None
    threaded: bool = False

    # ---------------------------------------------------------------------------------------------
    def bind(self, lib: Any, threaded: bool) -> None:
        self.fw_fn, self.bw_fn = getattr(lib, self.fw.name), getattr(lib, self.bw.name)
        self.fx_fn = None if self.fold is None else getattr(lib, self.fold[0].name)
        for f in (self.fw_fn, self.bw_fn, self.fx_fn):
            if f is not None:
                f.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
                f.restype = None
        self.threaded = threaded

    def folds(self, w: Tensor, b: Tensor, like: Tensor) -> bool:
        """Whether the forward can compute the projection ``x wᵀ + b`` at every step (``w`` [cols, kx]
        and ``b`` contiguous, of ``like``'s dtype and device)."""
        return self.fold is not None and w.dim() == 2 and w.is_contiguous() and b.is_contiguous() and \
            b.numel() == w.shape[0] and w.dtype == b.dtype == like.dtype and w.device == like.device

    def _threads(self) -> int:
        from .cgemm import row_threads

        return row_threads(self.batch) if self.threaded else 1

    def _alloc(self, buffers: dict[str, Buffer], env: dict[str, Tensor], T: int, like: Tensor) -> list[Tensor]:
        """The buffers, leased from :data:`cellsearch.fast.pool.POOL` (with glibc's default allocator a
        fresh ``[T, B, ·]`` buffer page-faults at every call) except the sequence output, which leaves the
        function; returns the leased ones."""
        leased = []
        for name, b in buffers.items():
            dt = TORCH_DTYPES[b.dtype]
            n = T if b.kind == "seq" else 2 if b.kind == "pp" else 1
            shape = (b.cols,) if b.kind == "pack" else (n, self.batch, b.cols)
            if name == "out":
                env[name] = torch.empty(shape, dtype=dt, device=like.device)
            else:
                env[name] = POOL.take(shape, dt, like.device)
                leased.append(env[name])
        return leased

    def _call(self, fn: Any, func: _Func, env: dict[str, Tensor], T: int, kx: int = 0) -> None:
        ptrs = (ctypes.c_void_p * max(1, len(func.slots)))()
        for name, i in func.slots.items():
            if name in env or name not in _OPTIONAL:
                ptrs[i] = env[name].data_ptr()
        fn(ptrs, T, self._threads(), kx)

    def forward(self, xp: Tensor | None, xs: Tensor | None, state: list[Tensor], inv: Sequence[Tensor],
                keep: bool, proj: tuple[Tensor, Tensor, Tensor] | None = None
                ) -> tuple[Tensor, dict[str, Tensor] | None, list[Tensor]]:
        """(the output sequence, the buffers the backward reads (None unless ``keep``), those of them
        leased from the pool: give them back once no backward will read them). ``proj``: ``(x [T, B, kx],
        w, b)`` with ``xp`` None, the projection ``x wᵀ + b`` computed at every step (:meth:`folds`)."""
        env: dict[str, Tensor] = {f"inv{i}": t for i, t in enumerate(inv)}
        func, fn, buffers, kx = self.fw, self.fw_fn, self.fw_buffers, 0
        if proj is not None:
            assert self.fold is not None and xp is None
            (func, buffers), fn = self.fold, self.fx_fn
            env["x"], env["wih"], env["bias"] = proj
            kx = int(proj[0].shape[-1])
            like = proj[0]
            env["wih_packed"] = POOL.take((_packed_size(kx, proj[1].shape[0], func.dtype),), like.dtype, like.device)
        else:
            assert xp is not None
            env["xp"] = like = xp
        T = like.shape[0]
        if xs is not None:
            env["xs"] = xs
        for j, s in enumerate(state):
            env[f"init{j}"] = s.contiguous()
        leased = self._alloc(buffers, env, T, like)
        if proj is not None:
            leased.append(env["wih_packed"])
        self._call(fn, func, env, T, kx)
        for j in range(self.n_state):                   # distinct tensors (a Function's outputs)
            state[j] = _value(self.fw_out[1 + j], env, T - 1, T).clone()
        out = env[self.fw_out[0].slot]
        seq = {name for name, b in buffers.items() if b.kind == "seq"} if keep else set()
        kept = [env[name] for name in seq if name != "out"]
        POOL.give(*[t for t in leased if not any(t is k for k in kept)])
        return out, (env if keep else None), kept

    def backward(self, env: dict[str, Tensor], pre: Sequence[Tensor], dout: Tensor, dstate: list[Tensor],
                 xp_shape: Sequence[int], xs_shape: Sequence[int] | None, wih: Tensor | None = None
                 ) -> tuple[Tensor, Tensor | None, list[Tensor], list[tuple[list[Tensor] | None, list[Tensor] | None]],
                            list[Tensor], Tensor | None]:
        """(dxp, dxs, the initial state's gradients, the post-loop factors (as row pieces, the left one of its
        transpose, see :func:`cellsearch.fast.derived._post_products`), the buffers leased from the
        pool: the factors are views of some, give them back after the post-loop products, and the
        projection's ∂x ``[T, B, kx]`` where ``wih`` ([cols, kx], contiguous) asks for it and the loop
        computes it at every step (:attr:`bw_dx`; else None))."""
        T, B = int(xp_shape[0]), int(xp_shape[1])
        env = dict(env)
        env.update({f"pre{i}": t for i, t in enumerate(pre)})
        if self.dout_strided:         # read where it lies (a batch-first output's ∂out, a sum's expanded one)
            env["dout"] = dout
            env["dout_strides"] = torch.tensor(dout.stride(), dtype=torch.int64)
        else:
            env["dout"] = dout.contiguous()
        for j, d in enumerate(dstate):
            env[f"dinit{j}"] = d.contiguous()
        env["dxp"] = dout.new_empty(xp_shape)                 # every step writes its row of dxp
        if xs_shape is not None:
            env["dxs"] = dout.new_zeros(xs_shape)
        leased = self._alloc(self.bw_buffers, env, T, dout)
        kx = 0
        if wih is not None and self.bw_dx and wih.is_contiguous() and wih.dtype == dout.dtype:
            kx = int(wih.shape[1])
            env["wihb"], env["dx"] = wih, dout.new_empty(T, B, kx)
            env["wihb_packed"] = POOL.take((_packed_size(int(wih.shape[0]), kx, self.bw.dtype),), dout.dtype,
                                           dout.device)
            leased.append(env["wihb_packed"])
        self._call(self.bw_fn, self.bw, env, T, kx)
        dstate = [_value(h, env, 0, T).clone() for h in self.bw_state]      # out of the leased buffers
        factors = [(None if a is None else _over_time(a, env, T), None if b is None else _over_time(b, env, T))
                   for a, b in self.factors]
        return env["dxp"], env.get("dxs"), dstate, factors, leased, env.get("dx")


#: slots a loop function reads only when its ``kx`` argument is not 0 (a null pointer otherwise)
_OPTIONAL = frozenset({"wihb", "wihb_packed", "dx"})


def _packed_size(K: int, N: int, dtype: str) -> int:
    """Elements of a ``[K, N]`` factor packed into panels (:func:`cellsearch.fast.cgemm.packed_size`)."""
    from .cgemm import packed_size

    return packed_size(K, N, TORCH_DTYPES[dtype].itemsize)


def _value(home: Home, env: dict[str, Tensor], t: int, T: int) -> Tensor:
    """The [B, cols] value of a per-row ``home`` at step ``t`` (after the loop)."""
    if home.kind == "shift":
        if t == (T - 1 if home.backward else 0):
            buf = env[home.slot]                                  # the initial value, [B, cols]
        else:
            assert home.of is not None
            return _value(home.of, env, t + 1 if home.backward else t - 1, T)
    else:                                                         # [steps, B, ·] buffers
        buf = env[home.slot][t if home.kind == "seq" else t & 1 if home.kind == "pp" else 0]
    return buf[:, home.offset:home.offset + home.cols]


def _over_time(home: Home, env: dict[str, Tensor], T: int) -> list[Tensor]:
    """The value of ``home`` at every step, time-ordered, as the row pieces of one [T·B, cols] matrix
    (views: a shifted home's initial value, then its source's first T − 1 steps)."""
    if home.kind == "seq":
        buf = env[home.slot]
        buf = buf.reshape(T, buf.shape[-2], -1)[:, :, home.offset:home.offset + home.cols]
        return [buf.reshape(-1, home.cols)]
    if home.kind == "shift" and not home.backward and home.of is not None and home.of.kind == "seq":
        init = env[home.slot]
        init = init.reshape(init.shape[-2], -1)[:, home.offset:home.offset + home.cols]
        rest = _over_time(home.of, env, T)[0]
        return [init, rest[: rest.shape[0] - init.shape[0]]] if T > 1 else [init]
    raise AssertionError("planned factors are sequences")     # plan() refuses the rest


# -------------------------------------------------------------------------------------------------
# planning
# -------------------------------------------------------------------------------------------------
def plan(fw: Lowered, bw: Lowered, names: list[list[str]], g: Any, tag: str) -> LoopPlan:
    """The C loops of the lowered forward / backward step graphs of ``g`` (a
    :class:`cellsearch.fast.derived.StepGraphs`), kernels named ``names``; raises :class:`Unsupported`."""
    fphs = [n for n in fw.graph.graph.nodes if n.op == "placeholder"]
    bphs = [n for n in bw.graph.graph.nodes if n.op == "placeholder"]
    n_inv, n_var, n_out = g.n_inv, g.n_var, g.n_out
    has_xs = n_var - n_out == 1
    n_state = n_out - 1
    xp = _meta(fphs[n_inv])
    if not isinstance(xp, Tensor) or xp.dim() != 2:
        raise Unsupported("the step input is not [batch, columns]")
    B, dtype = int(xp.shape[0]), _IR_DTYPES.get(xp.dtype)
    if dtype not in ("float32", "float64"):
        raise Unsupported(f"{xp.dtype} steps")
    fwf, fbuf, fw_out = _forward(fw, names[0], fphs, g, dtype, B, f"seqfw_{tag}", fold=False)
    fxf, fxbuf, fx_out = _forward(fw, names[0], fphs, g, dtype, B, f"seqfwx_{tag}", fold=True)
    fold = (fxf, fxbuf) if fx_out == fw_out else None

    # the backward
    bwf = _Func(f"seqbw_{tag}", B, dtype)
    bbuf: dict[str, Buffer] = {}
    bhomes: dict[fx.Node, Home] = {}
    n_pre = g.n_pre
    fixed = {}
    for i, n in enumerate(bphs[:n_inv]):
        bhomes[n] = _fixed(n, f"inv{i}", dtype)
        fixed[n] = f"inv{i}"
    for i, n in enumerate(bphs[n_inv:n_inv + n_pre]):
        bhomes[n] = _fixed(n, f"pre{i}", dtype)
        fixed[n] = f"pre{i}"
    k0 = n_inv + n_pre
    saved = bphs[k0:k0 + g.n_saved]
    for n, h in zip(saved, fw_out[n_out:]):
        bhomes[n] = h  # type: ignore[assignment]
    dout = bphs[k0 + g.n_saved]
    bhomes[dout] = _seq(dout, "dout", B)
    dst = bphs[k0 + g.n_saved + 1:k0 + g.n_saved + 1 + n_state]
    if g.dxp_inplace:
        bhomes[bphs[-1]] = _seq(bphs[-1], "dxp", B)
    bout_node = next(n for n in bw.graph.graph.nodes if n.op == "output")
    bouts = list(bout_node.args[0])
    # the post-loop products' factors the loop keeps (None: read from dxp, or a sum), and whether transposed
    post_nodes: list[tuple[fx.Node | None, bool]] = []
    for (_i, ia, ib, _fn, a_src, b_src) in g.post:
        for idx, src, transposed in ((ia, a_src, True), (ib, b_src, False)):
            post_nodes.append((bouts[idx] if src is None else None, transposed))
    strided = not any(n is dout or (n is not None and n.target is torch.ops.aten.t.default and n.args[0] is dout)
                      for n, _t in post_nodes)
    if strided:       # ∂out_t gathered at each step into a [B, cols] block: ∂out is read where it lies
        dh = bhomes[dout]
        bhomes[dout] = Home("fixed", "doutt", dh.dtype, dh.cols, dh.cols)
        bbuf["doutt"] = Buffer("tmp", dh.cols, dh.dtype)
        bwf.body.append(_gather(bwf, "doutt", "dout", "dout_strides", dh.cols))
    bw_w = _Writer(bw, names[1], bwf, dtype, bhomes, bbuf, "b", fixed)
    n_grads = n_inv + n_var
    if any(o is not None for o in bouts[:n_inv]):
        raise Unsupported("a loop invariant's gradient is computed at every step (not a post-loop product)")
    dxp_o = bouts[n_inv]
    if not g.dxp_inplace:
        if not isinstance(dxp_o, fx.Node) or dxp_o.op == "placeholder":
            raise Unsupported("the input projection's gradient is not a value the step computes")
        _rs, cols = bw_w.rows_of(dxp_o)
        bw_w.pinned[dxp_o] = Home("seq", "dxp", _dtype(dxp_o), cols, cols, B * cols)
    elif dxp_o is not None:
        raise Unsupported("the input projection's gradient is returned and written in place")
    if has_xs:
        dxs_o = bouts[n_inv + 1]
        if isinstance(dxs_o, fx.Node):
            if dxs_o.op == "placeholder":
                raise Unsupported("the short input's gradient is a step input")
            _rs, cols = bw_w.rows_of(dxs_o)
            bw_w.pinned[dxs_o] = Home("seq", "dxs", _dtype(dxs_o), cols, cols, B * cols)
    first_state = n_inv + 1 + has_xs
    bw_state: list[Home] = []
    for j, o in enumerate(bouts[first_state:n_grads]):
        if not isinstance(o, fx.Node) or o.op == "placeholder" or o in bw_w.pinned:
            raise Unsupported(f"state gradient {j} is not a new value of the step")
        _rs, cols = bw_w.rows_of(o)
        slot = f"bpp{j}"
        bbuf[slot] = Buffer("pp", cols, _dtype(o))
        h = Home("pp", slot, _dtype(o), cols, cols, B * cols)
        bw_w.pinned[o] = h
        bw_state.append(h)
        rs_in, cols_in = bw_w.rows_of(dst[j])
        if rs_in != cols_in or cols_in != cols:
            raise Unsupported(f"state gradient {j} is not contiguous")
        bhomes[dst[j]] = Home("shift", f"dinit{j}", h.dtype, cols, cols, of=h, backward=True)
    factors: list[tuple[Home | None, Home | None]] = []
    for node, transposed in post_nodes:
        if node is None:
            continue
        base = node.args[0] if node.target is torch.ops.aten.t.default else None
        if transposed != (base is not None):
            raise Unsupported("a post-loop factor is not laid out as the Python loop's")
        target = base if base is not None else node
        if target.op != "placeholder" and target not in bw_w.pinned:
            _rs, cols = bw_w.rows_of(target)
            slot = f"bseq{len(bbuf)}"
            bbuf[slot] = Buffer("seq", cols, _dtype(target))
            bw_w.pinned[target] = Home("seq", slot, _dtype(target), cols, cols, B * cols)
    bw_w.walk()
    for n, h in bw_w.pinned.items():
        if bhomes.get(n) != h:
            raise Unsupported(f"output {n.name} was not written where the loop keeps it")
    it = iter(post_nodes)
    for _ in g.post:
        pair = []
        for _side in range(2):
            node, _t = next(it)
            if node is None:
                pair.append(None)
                continue
            target = node.args[0] if node.target is torch.ops.aten.t.default else node
            h = bhomes[target]
            if not (h.kind == "seq" or (h.kind == "shift" and not h.backward and h.of is not None
                                        and h.of.kind == "seq")):
                raise Unsupported("a post-loop factor is not kept over the sequence")
            pair.append(h)
        factors.append((pair[0], pair[1]))
    dxp_home = bhomes[bphs[-1]] if g.dxp_inplace else bw_w.pinned[dxp_o]
    if dxp_home.kind == "seq" and dxp_home.offset == 0 and dxp_home.rs == dxp_home.cols:
        # the projection's ∂x_t = ∂xp_t W_ih once the step has written ∂xp_t (kx: 0, none)
        N = dxp_home.cols
        _projection_product(bwf, "wihb", ("kx", "1", str(N), "kx"), "kx", str(N), bwf.ptr(dxp_home, "r0"), str(N),
                            _rows_at(bwf, "dx", "kx"), "kx", None)
        bw_dx = True
    else:
        bw_dx = False
    bwf.body = _loop_text(bwf, "for (i64 t = T - 1; t >= 0; t--)")
    funcs = [fwf, bwf, *([] if fold is None else [fold[0]])]
    source = "\n".join(_function(f, dtype) for f in funcs)
    inv_layouts = tuple((tuple(v.shape), tuple(v.stride()), v.dtype) for n in fphs[:n_inv] for v in [_meta(n)])
    return LoopPlan(B, n_state, fwf, bwf, fbuf, bbuf, fw_out, bw_state, factors, inv_layouts, source,
                    fold=fold, bw_dx=bw_dx, dout_strided=strided)


def _forward(fw: Lowered, knames: list[str], fphs: list[fx.Node], g: Any, dtype: str, B: int, name: str,
             fold: bool) -> tuple[_Func, dict[str, Buffer], list[Home]]:
    """The forward loop function, its buffers and its outputs' homes. ``fold``: the step input ``xp`` is
    computed at every step from the sequence's ``x`` (``[T, B, kx]``, ``kx`` the function's argument), the
    projection's weight ``[cols, kx]`` and bias, into a scratch row block (into a ``[T, B, cols]`` buffer
    of the loop's where the backward reads ``xp``), instead of read from a ``[T, B, cols]`` buffer filled
    before the loop (:meth:`LoopPlan.forward`'s ``proj``)."""
    n_inv, n_out = g.n_inv, g.n_out
    has_xs = g.n_var - n_out == 1
    fwf = _Func(name, B, dtype)
    fbuf: dict[str, Buffer] = {}
    homes: dict[fx.Node, Home] = {}
    for i, n in enumerate(fphs[:n_inv]):
        homes[n] = _fixed(n, f"inv{i}", dtype)
    step_in = fphs[n_inv:n_inv + 1 + has_xs]
    for n, slot in zip(step_in, ("xp", "xs")):
        homes[n] = _seq(n, slot, B)
    out_node = next(n for n in fw.graph.graph.nodes if n.op == "output")
    outs = list(out_node.args[0])
    # outputs: h into the sequence output, every other output node into a [T, B, cols] buffer
    w = _Writer(fw, knames, fwf, dtype, homes, fbuf, "", {n: f"inv{i}" for i, n in enumerate(fphs[:n_inv])})
    for i, o in enumerate(outs):
        if i < n_out and (not isinstance(o, fx.Node) or o.op == "placeholder"):
            raise Unsupported("the step output or a state output is a step input")
        if not isinstance(o, fx.Node) or o in w.pinned or o.op == "placeholder":
            continue
        _rs, cols = w.rows_of(o)
        slot = "out" if i == 0 else f"seq{len(fbuf)}"
        fbuf[slot] = Buffer("seq", cols, _dtype(o))
        w.pinned[o] = Home("seq", slot, _dtype(o), cols, cols, B * cols)
    if fold:                              # xp_t = x_t W_ihᵀ + b, a GEMM of K = kx at each step, into
        home = homes[step_in[0]]          # one scratch block (a [T, B, cols] buffer if the backward reads it)
        if any(o is step_in[0] for o in outs):
            fbuf["xp"] = Buffer("seq", home.cols, dtype)
        else:
            home = homes[step_in[0]] = Home("fixed", "xpt", dtype, home.cols, home.cols)
            fbuf["xpt"] = Buffer("tmp", home.cols, dtype)
        cols = str(home.cols)
        _projection_product(fwf, "wih", ("1", "kx", "kx", cols), cols, "kx", _rows_at(fwf, "x", "kx"), "kx",
                            fwf.ptr(home, "r0"), cols, "bias")
    # state inputs: the previous step's state outputs
    for j, n in enumerate(fphs[n_inv + 1 + has_xs:]):
        prev = outs[1 + j]
        if not isinstance(prev, fx.Node) or prev not in w.pinned:
            raise Unsupported(f"state {j} is not a value the step computes")
        ph = w.pinned[prev]
        rs, cols = w.rows_of(n)
        if rs != cols or cols != ph.cols:
            raise Unsupported(f"state {j} is not contiguous")
        homes[n] = Home("shift", f"init{j}", ph.dtype, cols, cols, of=ph)
    w.walk()
    for n, h in w.pinned.items():
        if homes.get(n) != h:
            raise Unsupported(f"output {n.name} was not written where the loop keeps it")
    if not all(isinstance(o, fx.Node) for o in outs):
        raise Unsupported("the forward returns a constant")
    fw_out = [homes[o] for o in outs]
    fwf.body = _loop_text(fwf, "for (i64 t = 0; t < T; t++)")
    return fwf, fbuf, fw_out


def _projection_product(fn: _Func, weight: str, pack: tuple[str, str, str, str], N: str, K: str, a: str, lda: str,
                        c: str, ldc: str, bias: str | None) -> None:
    """The input projection's product at every step, by its weight (slot ``weight``, packed before the
    threads start: ``pack`` = the C of ``sk, sn, K, N``): ``c = a·W (+ the row bias)``, ``a`` and ``c``
    C addresses of this thread's rows. Without a bias it is ∂x, computed only where the function's
    ``kx`` is not 0."""
    real, sfx = _C[fn.dtype], "f" if fn.dtype == "float32" else "d"
    guard = "if (kx) " if bias is None else ""
    packed = f"(({real} *)P[{fn.slot(weight + '_packed')}])"
    fn.pre.append(f"    {guard}cs_pack_{sfx}((({real} *)P[{fn.slot(weight)}]), {', '.join(pack)}, {packed});")
    d = "0" if bias is None else f"(({real} *)P[{fn.slot(bias)}])"
    fn.body.append(f"        {guard}cs_gemm_{sfx}(r1 - r0, {N}, {K}, {a}, {lda}, {packed}, {c}, {ldc}, {d}, 0);")


def _gather(fn: _Func, into: str, src: str, strides: str, cols: int) -> str:
    """C that copies this thread's rows of step t of ``src`` (a ``[T, B, cols]`` tensor with any strides,
    in elements, at ``strides``: an int64 ``[3]``; an expanded ∂out has 0s) into the ``[B, cols]`` block
    ``into``: the whole of ∂out is never copied before the loop, and the block stays in cache."""
    real = _C[fn.dtype]
    d, s_, st = (f"P[{fn.slot(name)}]" for name in (into, src, strides))
    return (f"        {{ const i64 *ds = (const i64 *){st}; const {real} *src = (const {real} *){s_} + t * ds[0]; "
            f"{real} *dst = ({real} *){d};\n"
            f"          if (ds[2] == 1) for (i64 r = r0; r < r1; r++) "
            f"memcpy(dst + r * {cols}, src + r * ds[1], {cols} * sizeof({real}));\n"
            f"          else for (i64 r = r0; r < r1; r++) for (i64 j = 0; j < {cols}; j++) "
            f"dst[r * {cols} + j] = src[r * ds[1] + j * ds[2]]; }}")


def _rows_at(fn: _Func, slot: str, cols: str) -> str:
    """The C address of this thread's rows at step t of the ``[T, B, cols]`` buffer in ``slot``."""
    return f"((({_C[fn.dtype]} *)P[{fn.slot(slot)}]) + (t * {fn.batch} + r0) * {cols})"


#: torch dtypes -> the IR's names (pwgen.TORCH_DTYPES inverted)
_IR_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}


def _dtype(node: fx.Node) -> str:
    return _IR_DTYPES[_meta(node).dtype]


def _fixed(node: fx.Node, slot: str, dtype: str) -> Home:
    v = _meta(node)
    cols = int(v.shape[-1]) if isinstance(v, Tensor) and v.dim() else 1
    return Home("fixed", slot, _dtype(node) if isinstance(v, Tensor) else dtype, cols, 0)


def _seq(node: fx.Node, slot: str, B: int) -> Home:
    v = _meta(node)
    if not isinstance(v, Tensor) or v.dim() != 2 or v.shape[0] != B or v.stride() != (v.shape[1], 1):
        raise Unsupported(f"step input {node.name} is not a contiguous [batch, columns] slice")
    cols = int(v.shape[1])
    return Home("seq", slot, _dtype(node), cols, cols, B * cols)


def _loop_text(fn: _Func, loop: str) -> list[str]:
    return [f"    {loop} {{", *fn.body, "    }"]


def _function(fn: _Func, dtype: str) -> str:
    real, sfx = _C[dtype], "f" if dtype == "float32" else "d"
    packs = [f"    cs_pack_{sfx}(({real} *)P[{fn.slot(w)}], {sk}, {sn}, {K}, {N}, ({real} *)P[{fn.slot(p)}]);"
             for w, p, (K, N, sk, sn) in fn.packs]
    return "\n".join([
        f"void {fn.name}(void *const *P, i64 T, i64 nth, i64 kx) {{",
        "    (void)kx;",
        *packs,
        *fn.pre,
        "#ifdef _OPENMP",
        "    #pragma omp parallel num_threads((int)nth)",
        "#endif",
        "    {",
        "    CS_THREAD_ID;",
        f"    const i64 r0 = {fn.batch} * id / nt, r1 = {fn.batch} * (id + 1) / nt;",
        *fn.body,
        "    }",
        "}",
        ""])


def source_head() -> str:
    """The C the loops need beside the kernels' preamble: OpenMP's header and the packed GEMM."""
    from . import cgemm, csrc

    return "\n" + cgemm._HEAD + csrc.instantiate(cgemm.STEP)


def build(fw: Lowered, bw: Lowered, g: Any) -> tuple[list[Callable[..., Any]], LoopPlan | None, str | None]:
    """Compile the lowered step graphs (:func:`cellsearch.fast.pwgen_c.compile_lowered`) with their C
    loops in the same library where :func:`plan` allows; returns the step functions, the loop plan (or
    None) and why there is none."""
    from . import pwgen_c

    names = pwgen_c.kernel_names([fw, bw])
    lp: LoopPlan | None = None
    why: str | None = None
    if loop_choice() == "python":
        why = "CELLSEARCH_DERIVED_LOOP=python"
    else:
        try:
            lp = plan(fw, bw, names, g, "0")
        except Unsupported as exc:
            why = str(exc)
    extra = "" if lp is None else source_head() + lp.source
    calls, lib, threaded = pwgen_c.compile_lowered([fw, bw], extra, openmp=lp is not None)
    if lp is not None:
        lp.bind(lib, threaded)
    return calls, lp, why

