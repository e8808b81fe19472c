"""The derived fast path: a whole-sequence function generated from the cell's own step, for any primitive.

Nothing here names a primitive. The step a cell runs in its reference loop,
``cell.update.step(cell.context(), xp_t, xs_t, state)``, is traced by
:func:`cellsearch.trace.trace_step` (the trace and loop-invariant split the standalone export writes
out; here with fake tensors at the call's batch size, so a step whose control flow depends on tensor
values cannot be traced and the cell keeps its reference loop), and from it, per (batch size, dtype,
device):

1. **hoisting**: the trace's ``prepare`` graph (every node that depends only on parameters: the
   recurrent matrices, an orthogonal matrix exponential, a saturation's matrices, transposes, …) is the
   *prologue*, run once per sequence with ordinary autograd (an op a primitive registered with
   `cellsearch.registry.eager_for` runs as the primitive's own function there: the matrix
   exponential as its n × n Taylor series, whose gradient costs 2 products per product where torch's
   exponentiates a 2n × 2n matrix; vanilla / LSTM with an orthogonal recurrence at hidden 128, T 100:
   11.9 → 6.7 ms and 39 → 23 ms a call); its ``step`` graph is a function of those
   loop invariants, the step's input projection ``xp_t`` (hoisted input GEMM, as in the reference), the
   short input ``xs_t`` and the state;
2. **joint graph**: the step graph and its vector-Jacobian product are traced together (``make_fx`` over
   ``torch.autograd.grad``, the way AOTAutograd builds its joint graph) and partitioned into a forward
   graph (the step's outputs and the few tensors the backward cannot cheaply recompute: matrix products
   and the step's inputs), a once-per-backward graph (backward nodes that depend only on loop
   invariants) and a per-step backward graph that recomputes the pointwise forward values it needs
   (fused into its loops when compiled); for the C generator, where the step multiplies by a matrix,
   it reads the transcendentals and divisions from the forward instead (the backward's costliest work:
   GRU 1.07–1.08× faster, star 1.02–1.11×, the LSTM family 1.01–1.02× at hidden 128, T 100; neutral at
   256 / 200, same process), and recomputes them where that partition does not compile to a C loop
   (sLSTM) and in a step of pointwise work alone (the scans, bound by memory: minLSTM 1.08–1.11×);
3. **post-loop weight gradients**: a gradient of a loop invariant that the backward graph computes as a
   matrix product of two per-step tensors (``dW = hᵀ·dA``: the recurrent GEMM's weight gradient) is not
   computed per step; the two factors are kept (dA straight from the dxp buffer the backward graph
   writes in place) and multiplied once after the reverse loop, as one large GEMM over all T·B rows;
   a gradient that is a sum over the batch of a per-step tensor (a bias inside the step: GRU's
   ``b_hn``) is likewise kept per step and summed once over all T·B rows after the loop;
   a gradient that adds such terms (an invariant the step uses twice: asRNN's scale d multiplies
   before U_f's product and divides after U_fᵀ's) is one such product or sum per term;
   sums of ``slice_backward`` become one ``cat`` (a compiled loop per block instead of masked loads);
4. the forward and backward step graphs are compiled — by cellsearch's own generator where it can
   express every elementwise op of both graphs (:mod:`cellsearch.fast.pwgen`: extern products + fused
   C loops, :mod:`cellsearch.fast.pwgen_c`; one library per step, in the private kernel cache; no
   Inductor import), else by Inductor (C++ loops on the CPU, in the private cache;
   :mod:`cellsearch.fast.inductor`); ``CELLSEARCH_DERIVED_COMPILER=auto|c|inductor`` chooses
   (:func:`compiler_choice`) — and run in one :class:`DerivedSequence` autograd function (no graph
   recording inside the loop). Cells whose traced steps are identical (the layers of a stack) share
   one compile;
5. the products run where they are fastest, as the fused paths run theirs: for float32 on the CPU the
   generated graphs' products by a loop invariant (:class:`_Products`: ``fused.Mat``, the weight packed
   once per sequence; in the C loop, its own packed GEMM), the post-loop products (``fused.matmul``, the
   C loop's by :func:`cellsearch.fast.cgemm.tn_parts`) and the hoisted input GEMM
   (``fused.projected``) go through oneDNN or cellsearch's C where it is available and the product large
   enough (MKL's sgemm, behind ``torch.mm``, takes a slow path on AMD CPUs); the sequence owns the input
   projection's gradients (:class:`DerivedSequence`), ∂W_ih in the same pass over ∂xp as the recurrent
   weight's;
6. on CUDA the step graphs' pointwise regions are generated Triton kernels
   (:mod:`cellsearch.fast.pwgen_triton`), and the Python time loops, forward and backward, are captured
   once per sequence shape as CUDA Graphs and replayed (:mod:`cellsearch.fast.cudagraph`: on an H200,
   ``ur_lstm`` at H = 256, T = 784, batch 128 went from 0.22× to 1.30× cuDNN's LSTM; docs/bench/GPU.md).

When it runs (measured: uncompiled graphs are slower than the reference loop, and a compile takes
seconds): where Inductor can compile (the CPU, float32/float64, a C++ compiler), for calls with at least
:data:`DERIVED_MIN` pre-activations (:data:`DERIVED_MIN_LOOP` for a cell without a hand-written kernel,
whose alternative is the reference loop; :data:`DERIVED_MIN_DEVICE` off the CPU), from the
``DERIVED_AFTER + 1``-th call of an input shape (the backward graph compiles at the first backward
pass); otherwise the reference loop runs. ``force``
(:func:`cellsearch.fast.force_derived`) drops the size and call-count conditions;
``CELLSEARCH_DERIVED_BACKEND=aten`` runs the same graphs uncompiled (tests, debugging).

Outputs and gradients equal the reference loop's (tests/test_derived.py, every registered cell and a
test-local plugin primitive, float64 to 1e-10). Limits (as the fused paths): the backward is not
itself differentiable (double backward raises), and autocast, tracing, ``torch.compile``, functorch
transforms and forward-mode AD take the reference loop (:func:`cellsearch.fast.sequence` decides).
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.autograd.function import once_differentiable

__all__ = ["Derived", "DerivationError", "derive", "DerivedSequence", "StepGraphs", "DERIVED_MIN",
           "DERIVED_MIN_LOOP", "DERIVED_MIN_DEVICE", "DERIVED_AFTER", "backend_choice", "compiler_choice",
           "min_work", "warmup_calls"]

#: the derived path runs (unless forced) when one call has at least this many pre-activations
#: (T × batch × blocks × hidden, e.g. 100 × 64 × 1 × 128 ≈ 0.8M) and the cell has a hand-written kernel
#: (which runs the smaller calls): a first use traces and compiles (0.6–2 s in a process with the C
#: library cached, 1–2 s more to build it), which the smallest runs never earn back. Measured, whole
#: trials in fresh processes (6 epochs × 50 steps, lstm + ur gate, threshold 2¹⁹ / 2¹⁴): 16 × 20 × 16
#: rows 1.50, 1.52 / 1.62, 1.69 s; T 64, batch 16, hidden 16 or 32 (65k / 131k pre-activations) equal
#: within the noise (1.9–2.6 s); mgu at the quickstart's size (410k) 3.5, 4.6 / 2.8, 3.0 s
DERIVED_MIN = 1 << 17
#: ... and where the cell has no hand-written kernel, so that the reference loop would run instead: a
#: Python loop over the steps, 2–8× slower a call (janet + ur: 25 against 3 ms at hidden 32, T 100,
#: batch 64; 4.5 against 1.3 ms at hidden 16, T 20, batch 16). A plugin cell (mgu + adaptive saturation)
#: trained for the quickstart's trial in 9.8–12.5 s with the old single threshold 2¹⁹ and 3.2–3.8 s
#: with 2¹⁴ (7.0 s with an empty kernel cache); at 20k pre-activations 2.9, 3.4 / 2.7, 2.1 s.
#: The whole quickstart study (`make run`, its cells at 205k–820k) took 55–57 s with 2¹⁹ and 32–37 s
#: with these thresholds (37.7 against 56.3 s with an empty cache)
DERIVED_MIN_LOOP = 1 << 14
#: ... both on the CPU, where they were measured; on another device (CUDA: generated Triton kernels under
#: a Python time loop, their compile not measured against these sizes) the single threshold of before
DERIVED_MIN_DEVICE = 1 << 19
#: ... and (unless forced) from its ``DERIVED_AFTER + 1``-th call with the same input shape: the first
#: calls run the reference loop, so that a shape seen a few times only (an evaluation batch, a short
#: trial) never pays for a compile
DERIVED_AFTER = 8

State = tuple[Tensor, ...]
#: an input projection's factors a sequence owns: (x [T, B, d], W_ih, b, P), P the short input's projection
#: (the refined gate's x̃ = x Pᵀ, PRIMITIVES.md §4) or None; or None ×4
_Factors = tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]

#: ops whose result must never be hoisted or replayed out of order
_IMPURE = ("rand", "bernoulli", "dropout", "normal", "multinomial", "uniform", "exponential", "poisson",
           "randint", "randperm", "cauchy", "geometric", "log_normal")


class DerivationError(RuntimeError):
    """The step cannot be derived into a fast path (the reason is the message)."""


def _target_name(node: fx.Node) -> str:
    t = node.target
    return str(getattr(t, "__name__", t))


def _is_impure(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    name = _target_name(node).lower()
    return any(w in name for w in _IMPURE) or name.endswith("_")


def _inputs_of(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _copy_graph(nodes: Sequence[fx.Node], inputs: Sequence[fx.Node], outputs: Sequence[Any],
                owner: fx.GraphModule) -> fx.GraphModule:
    """A new graph module: placeholders for ``inputs``, copies of ``nodes`` (in order), ``outputs``."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(inputs):
        env[node] = g.placeholder(f"in{i}")
        env[node].meta = dict(node.meta)
    for node in nodes:
        if node in env:
            continue
        env[node] = g.node_copy(node, lambda n: env[n])
    g.output(tuple(env[o] if isinstance(o, fx.Node) else o for o in outputs))
    g.eliminate_dead_code()
    gm = fx.GraphModule(owner, g)
    gm.recompile()
    return gm


# -------------------------------------------------------------------------------------------------
# level 1: the step as cellsearch.trace splits it (loop invariants → prepare, the rest → step)
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Traced:
    """A cell's traced step (:func:`cellsearch.trace.trace_step` at one batch size, fake tensors)
    and how to call its ``prepare`` with the cell's parameters."""

    step: Any                     # cellsearch.trace.TracedStep
    prepare: fx.GraphModule       # step.prepare as run eagerly (cellsearch.trace.eager_graph: an orthogonal
                                  # map's exponential by its n × n series, not torch's 2n × 2n gradient)

    def params(self, cell: nn.Module) -> list[Tensor]:
        named = dict(cell.named_parameters())
        return [named[p.removeprefix("cell.")] for p in self.step.param_paths]

    def prologue(self, like: Tensor) -> Callable[..., tuple[Tensor, ...]]:
        """``prepare`` with the device / dtype inputs it asks for taken from ``like``."""
        extra = [like.device] * self.step.device + [like.dtype] * self.step.dtype
        prepare = self.prepare
        if not extra:
            return prepare

        def run(*params: Tensor) -> tuple[Tensor, ...]:
            return prepare(*params, *extra)

        return run


def _trace(cell: nn.Module, batch: int) -> _Traced:
    """Trace the cell's step at batch size ``batch`` (:mod:`cellsearch.trace`, fake tensors: several
    times faster than a symbolic batch; raises DerivationError with the reason)."""
    from ..trace import TraceError, eager_graph, trace_step

    try:
        traced = trace_step(cell, batch, symbolic=False)
    except TraceError as exc:     # data-dependent control flow, unsupported ops, …
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DerivationError(f"the step could not be traced ({msg[:200]})") from exc
    for gm in (traced.prepare, traced.step):
        for node in gm.graph.nodes:
            if _is_impure(node):
                raise DerivationError(f"the step calls {_target_name(node)} (random or in-place on an input)")
    return _Traced(traced, eager_graph(traced.prepare))


# -------------------------------------------------------------------------------------------------
# level 2: the joint forward/backward graph of the step, partitioned
# -------------------------------------------------------------------------------------------------
@dataclass
class StepGraphs:
    """The graphs of one (batch size, dtype, device): see the module docstring."""

    prologue: Callable[..., Any]
    forward: Callable[..., Any]
    bw_pre: Callable[..., Any]
    backward: Callable[..., Any]
    n_inv: int                    # loop invariants (inputs of forward / backward)
    n_var: int                    # xp, [xs], state…
    n_out: int                    # h, state…
    n_saved: int
    n_pre: int
    # post-loop products: grad of invariant i = fn(mm(cat(a), cat(b))); a, b extra backward outputs (or
    # read from dxp after the loop: a_src "dxp_t", b_src "dxp")
    post: list[tuple[int, int, int, Callable[[Tensor], Tensor], str | None, str | None]] = \
        field(default_factory=list)
    n_bw_out: int = 0
    modules: dict[str, fx.GraphModule] = field(default_factory=dict)
    compiled: bool = False
    dxp_inplace: bool = False
    bw_pending: bool = False
    lock: Any = field(default_factory=threading.Lock)
    #: what compiled the step graphs ("c": cellsearch.fast.pwgen_c, "inductor"), and why not C
    compiler: str = ""
    c_note: str | None = None
    #: the step graphs' products by a loop invariant, routed through :class:`_Products` (compiled on the
    #: CPU): the inputs of the forward / backward graph they multiply by (see :func:`_route_products`)
    products: Any = None
    fw_packed: tuple[int, ...] = ()
    bw_packed: tuple[int, ...] = ()
    #: the time loops in C (:class:`cellsearch.fast.pwloop.LoopPlan`; None: the Python loop runs), and
    #: why there are none
    loop: Any = None
    loop_note: str | None = None
    #: the loops captured as CUDA Graphs (:class:`cellsearch.fast.cudagraph.Graphs`; on CUDA, created at
    #: the first sequence)
    cuda_graphs: Any = None


def _joint(step: fx.GraphModule, inv: Sequence[Tensor], var: Sequence[Tensor]) -> tuple[fx.GraphModule, int]:
    """Trace (inv, var, tangents) → (outputs…, grads of inv…, grads of var…) in real mode (the step graph
    has no control flow left)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    n_inv, n_var = len(inv), len(var)
    with torch.no_grad():
        outs = step(*inv, *var)
    n_out = len(outs)

    def joint(*args: Tensor) -> tuple[Tensor | None, ...]:
        primals = args[: n_inv + n_var]
        tangents = args[n_inv + n_var:]
        with torch.enable_grad():
            res = step(*primals)
            pairs = [(o, t) for o, t in zip(res, tangents) if isinstance(o, Tensor) and o.requires_grad]
            wrt = [p for p in primals if p.requires_grad]
            grads: Sequence[Tensor | None] = ()
            if pairs and wrt:
                grads = torch.autograd.grad([o for o, _ in pairs], wrt, [t for _, t in pairs],
                                            allow_unused=True)
        it = iter(grads)
        full = [next(it, None) if p.requires_grad else None for p in primals]
        return (*res, *full)

    prim = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in (*inv, *var)]
    tans = [torch.zeros_like(o) for o in outs]
    try:
        gm = make_fx(joint)(*prim, *tans)
    except Exception as exc:
        raise DerivationError(f"the step's backward could not be traced ({type(exc).__name__}: "
                              f"{str(exc).strip()[:160]})") from exc
    return gm, n_out


_VIEWS = {"t", "transpose", "permute", "view", "reshape", "_unsafe_view", "alias", "detach", "clone"}


def _post_loop(node: fx.Node) -> tuple[fx.Node | str, fx.Node, list[fx.Node]] | None:
    """If ``node`` is ``views(mm(a, b))``: (a, b, the view chain from mm up to node); if it is
    ``views(sum(b, [0]))`` of a matrix (a sum over the batch, e.g. the gradient of a bias inside the
    step): ("sum0" or, keeping the dimension, "sum0k", b, the chain)."""
    chain: list[fx.Node] = []
    cur = node
    while cur.op == "call_function" and _target_name(cur).split(".")[0] in _VIEWS and len(cur.args) >= 1:
        chain.append(cur)
        cur = cur.args[0]  # type: ignore[assignment]
        if not isinstance(cur, fx.Node):
            return None
    if cur.op == "call_function" and _target_name(cur).split(".")[0] == "mm" and len(cur.users) == 1:
        a, b = cur.args[0], cur.args[1]
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            return a, b, list(reversed(chain))
    if cur.op == "call_function" and cur.target is torch.ops.aten.sum.dim_IntList and len(cur.users) == 1:
        b, dims = cur.args[0], list(cur.args[1])  # type: ignore[arg-type]
        keep = bool(cur.args[2]) if len(cur.args) > 2 else bool(cur.kwargs.get("keepdim", False))
        val = b.meta.get("val") if isinstance(b, fx.Node) else None
        if isinstance(val, Tensor) and val.dim() == 2 and dims in ([0], [-2]) and "dtype" not in cur.kwargs:
            return ("sum0k" if keep else "sum0"), b, list(reversed(chain))  # type: ignore[return-value]
    return None


def _replay(chain: list[fx.Node]) -> Callable[[Tensor], Tensor]:
    """A function applying the view chain (nodes after the mm, in order) to a tensor."""
    ops = [(c.target, c.args[1:], dict(c.kwargs)) for c in chain]

    def apply(t: Tensor) -> Tensor:
        for target, args, kwargs in ops:
            t = target(t, *args, **kwargs)
        return t

    return apply


#: matrix products (:func:`_has_product`)
_PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear")
#: ops that are worth keeping from the forward instead of recomputing them in the backward
_EXPENSIVE = (*_PRODUCTS, "conv", "linalg", "matrix_exp", "solve", "sort", "topk", "cumsum", "cumprod", "scan",
              "_linear_pointwise", "embedding")


def _recomputable(node: fx.Node, keep_costly: bool = False) -> bool:
    """Whether the backward may recompute ``node`` instead of reading it from the forward; with
    ``keep_costly`` not a transcendental or a division either (:data:`cellsearch.fast.pwgen.COSTLY`)."""
    from .pwgen import COSTLY

    if node.op != "call_function":
        return False
    name = _target_name(node).split(".")[0]
    if keep_costly and name in COSTLY:
        return False
    return not any(name == e or name.startswith(e) for e in _EXPENSIVE) and not _is_impure(node)


def _ancestors(roots: Sequence[Any], stop: set[fx.Node] | None = None) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [r for r in roots if isinstance(r, fx.Node)]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if stop is None or n not in stop:
            stack.extend(_inputs_of(n))
    return seen


def _post_loop_grads(grads: list[Any], n_inv: int, dep_var: set[fx.Node]
                     ) -> tuple[list[tuple[int, fx.Node, fx.Node, list[fx.Node]]], list[Any]]:
    """Post-loop weight gradients: the gradient of an invariant that is views(mm(a, b)) with a, b per-step
    tensors becomes one GEMM after the loop; returns those and the gradient roots left for the loop."""
    post: list[tuple[int, fx.Node, fx.Node, list[fx.Node]]] = []
    grad_roots: list[Any] = list(grads)
    for i in range(n_inv):
        g = grads[i]
        found = [_post_loop(t) for t in _addends(g)] if isinstance(g, fx.Node) else [None]
        if all(f is not None and (isinstance(f[0], str) or f[0] in dep_var) and f[1] in dep_var
               and all(len(c.users) == 1 for c in f[2][:-1]) for f in found):
            post.extend((i, *f) for f in found if f is not None)     # mm's operands are matrices
            grad_roots[i] = None
    return post, grad_roots


def _addends(node: fx.Node) -> list[fx.Node]:
    """The terms of ``node`` when it is a sum ``a + b + …`` of same-shaped tensors, each used only there,
    else ``[node]``: the gradient of an invariant the step uses twice (asRNN's scale d multiplies before
    the product by U_f and divides after the one by U_fᵀ: two sums over the batch), or of a tensor whose
    column blocks were read separately (a sum of ``slice_backward``s, :func:`_slice_sums_to_cat`)."""
    if node.op != "call_function" or node.target is not torch.ops.aten.add.Tensor or node.kwargs \
            or len(node.args) != 2:
        return [node]
    val = node.meta.get("val")
    terms = []
    for a in node.args:
        aval = a.meta.get("val") if isinstance(a, fx.Node) else None
        if not (isinstance(a, fx.Node) and len(a.users) == 1 and isinstance(aval, Tensor)
                and isinstance(val, Tensor) and aval.shape == val.shape and aval.dtype == val.dtype):
            return [node]
        terms += _addends(a)
    return terms


def _recompute_cheap(bw_all: set[fx.Node], roots: list[Any], fw_set: set[fx.Node], keep_costly: bool) -> None:
    """Add to the backward every cheap forward value it reads (recomputed there instead of saved)."""
    frontier = [i for n in bw_all for i in _inputs_of(n) if i in fw_set]
    frontier += [r for r in roots if isinstance(r, fx.Node) and r in fw_set]
    while frontier:
        n = frontier.pop()
        if n in bw_all or not _recomputable(n, keep_costly):
            continue
        bw_all.add(n)
        frontier.extend(i for i in _inputs_of(n) if i in fw_set)


def _step_inputs(bw_step: list[fx.Node], roots: list[Any]) -> list[fx.Node]:
    """What the per-step backward reads from outside itself, in first-use order."""
    step_set = set(bw_step)
    used: list[fx.Node] = []
    for n in bw_step:
        for i in _inputs_of(n):
            if i not in step_set and i not in used:
                used.append(i)
    for r in roots:
        if isinstance(r, fx.Node) and r not in step_set and r not in used:
            used.append(r)
    return used


def _partition(joint: fx.GraphModule, n_inv: int, n_var: int, n_out: int, recompute: bool,
               keep_costly: bool = False) -> dict[str, Any]:
    """Split the joint graph into forward, once-per-backward and per-step backward graphs.

    ``recompute``: the backward recomputes every cheap (pointwise / view) forward value from the
    matrix products and the step's inputs instead of reading it from the forward (a compiled backward
    fuses the recomputation into its loops, and the forward writes less); otherwise the forward keeps
    every value the backward reads. ``keep_costly``: transcendentals and divisions are not cheap, the
    backward reads them from the forward (:func:`_derive`)."""
    nodes = list(joint.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    ph = [n for n in nodes if n.op == "placeholder"]
    inv_ph, var_ph, tan_ph = ph[:n_inv], ph[n_inv:n_inv + n_var], ph[n_inv + n_var:]
    inv_set = set(inv_ph)
    output = next(n for n in nodes if n.op == "output")
    outs = list(output.args[0])
    fw_outs, grads = outs[:n_out], outs[n_out:]
    fw_set = _ancestors(fw_outs)
    if any(t in fw_set for t in tan_ph):
        raise DerivationError("forward outputs depend on tangents")
    dep_var: set[fx.Node] = set(var_ph) | set(tan_ph)
    for n in nodes:
        if n.op == "call_function" and any(i in dep_var for i in _inputs_of(n)):
            dep_var.add(n)
    post, grad_roots = _post_loop_grads(grads, n_inv, dep_var)
    roots = grad_roots + [x if isinstance(x, fx.Node) else None for _, a, b, _ in post for x in (a, b)]
    bw_need = _ancestors(roots)
    bw_all = {n for n in bw_need if n not in fw_set and n.op != "placeholder"}
    if recompute:
        _recompute_cheap(bw_all, roots, fw_set, keep_costly)
    bw_step = sorted((n for n in bw_all if n in dep_var), key=order.__getitem__)
    used = _step_inputs(bw_step, roots)
    pre_used = [n for n in used if n in bw_all and n not in inv_set]          # invariant: once per backward
    saved = [n for n in used if n not in bw_all and n not in inv_set and n not in tan_ph]
    for n in saved:
        if n not in fw_set and n not in var_ph:
            raise DerivationError(f"cannot place {n.name} in the forward or the backward")
    pre_nodes = sorted((n for n in _ancestors(pre_used) if n.op != "placeholder"), key=order.__getitem__)
    fw_nodes = [n for n in nodes if n in fw_set and n.op != "placeholder"]
    fw = _copy_graph(fw_nodes, inv_ph + var_ph, fw_outs + saved, joint)
    pre = _copy_graph(pre_nodes, inv_ph, pre_used, joint)
    bw = _copy_graph(bw_step, inv_ph + pre_used + saved + tan_ph, roots, joint)
    # a factor that is the input projection's gradient (transposed or not) is read from dxp after the loop
    dxp = grads[n_inv]
    sources = []
    for _i, a, b, _chain in post:
        a_src = a if isinstance(a, str) else "dxp_t" if _transpose_of(a) is dxp and dxp is not None else None
        b_src = "dxp" if b is dxp and dxp is not None else None
        sources.append((a_src, b_src))
    return {"fw": fw, "pre": pre, "bw": bw, "n_saved": len(saved), "n_pre": len(pre_used),
            "post": post, "n_grads": len(grads), "sources": sources}


def _transpose_of(node: fx.Node) -> fx.Node | None:
    """x when ``node`` is t(x) / transpose(x, 0, 1) / permute(x, [1, 0]) of a matrix, else None."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    name = _target_name(node).split(".")[0]
    if name == "t" or (name == "transpose" and sorted(node.args[1:3]) == [0, 1]) or \
            (name == "permute" and list(node.args[1]) == [1, 0]):
        return node.args[0]
    return None


def derive(cell: nn.Module, xp: Tensor, xs: Tensor | None, state: State, compile: bool = False,
           traced: _Traced | None = None) -> StepGraphs:
    """Build the graphs of ``cell``'s step for the shapes of ``xp`` [B, ·], ``xs`` and ``state`` (one
    step's inputs); ``compile``: compile the forward and backward step graphs with Inductor.
    ``traced``: the cell's traced step when the caller has it (else it is traced here)."""
    traced = traced if traced is not None else _trace(cell, xp.shape[0])
    var = [t.detach().contiguous() for t in (xp, *((xs,) if xs is not None else ()), *state)]
    values = traced.params(cell)
    key = _structure_key(traced, values, var, compile) + (compiler_choice() if compile else "")
    shared = _SHARED.get(key)
    if shared is not None:
        return shared
    g = _derive(traced.prologue(xp), traced.step.step, values, var, compile)
    _SHARED[key] = g
    return g


#: graphs by the structure of the traced step (its code and the inputs' shapes, strides and dtypes):
#: the layers of a stack, and cells that differ only in parameter values, share one compile
_SHARED: weakref.WeakValueDictionary[str, StepGraphs] = weakref.WeakValueDictionary()


def _structure_key(traced: _Traced, values: Sequence[Tensor], var: Sequence[Tensor], compile: bool) -> str:
    """A digest of everything the derived graphs depend on (constants are literals in the code)."""
    meta = [(tuple(t.shape), t.stride(), str(t.dtype), str(t.device), t.requires_grad) for t in (*values, *var)]
    code = f"{traced.step.prepare.code}\n{traced.step.step.code}"
    return hashlib.sha256(f"{code}\n{meta!r}\n{compile}".encode()).hexdigest()


def _derive(prologue: Callable[..., Any], step: fx.GraphModule, values: Sequence[Tensor], var: list[Tensor],
            compile: bool) -> StepGraphs:
    with torch.no_grad():
        inv = list(prologue(*[v.detach() for v in values]))
    n_inv = len(inv)
    for t in inv:
        if not isinstance(t, Tensor):
            raise DerivationError("a loop invariant is not a tensor")
    joint, n_out = _joint(step, inv, var)
    if compile and not triton_device(var[0].device) and compiler_choice() != "inductor":
        # the C generator: the backward reads the forward's transcendentals and divisions instead of
        # recomputing them (:func:`_partition`'s ``keep_costly``) where the step multiplies by a matrix;
        # a step of pointwise work alone (the scans) is bound by memory, and every value it saves costs a
        # write and a read (same process, recompute / keep: minLSTM 1.08–1.11×, minGRU 1.02–1.05×,
        # RG-LRU 0.97–1.01× at 64/100 to 256/200), so it recomputes them
        kept = None
        if _has_product(step):
            g = _graphs(prologue, step, joint, n_inv, n_out, var, keep_costly=True)
            g.c_note = _compile_generated(g, inv, var)
            if g.c_note is None and g.loop is not None:
                return g
            kept = g if g.c_note is None else None
        # where that does not compile or plan a C loop (sLSTM's stabilised exponential gates), and for a
        # step without a product, the recomputing partition: the C generator, else Inductor
        g = _graphs(prologue, step, joint, n_inv, n_out, var, keep_costly=False)
        g.c_note = _compile_generated(g, inv, var)
        if g.c_note is None and (g.loop is not None or kept is None):
            return g
        if kept is not None:                 # compiled, without a C loop either way
            return kept
    else:
        g = _graphs(prologue, step, joint, n_inv, n_out, var, keep_costly=False)
        if compile and triton_device(var[0].device):        # generated Triton kernels (Inductor: CPU only here)
            why = _compile_generated(g, inv, var)
            if why is not None:
                raise RuntimeError(why)          # remembered by Derived: the reference loop runs, with the reason
            return g
    if compile:
        from .inductor import compile_graph

        g.compiler = "inductor"

        with torch.no_grad():
            g.forward = compile_graph(g.modules["forward"], [*inv, *var])
        g.compiled = True
        g.bw_pending = True      # compiled at the first backward pass (inference never pays for it)
    return g


def _has_product(step: fx.GraphModule) -> bool:
    """Whether the step graph multiplies matrices (a recurrent product, a deep transition's layers)."""
    return any(n.op == "call_function" and _target_name(n).split(".")[0] in _PRODUCTS for n in step.graph.nodes)


def _graphs(prologue: Callable[..., Any], step: fx.GraphModule, joint: fx.GraphModule, n_inv: int, n_out: int,
            var: list[Tensor], keep_costly: bool) -> StepGraphs:
    """The step graphs of one partition of the joint graph (:func:`_partition`), not compiled."""
    part = _partition(joint, n_inv, len(var), n_out, recompute=True, keep_costly=keep_costly)
    post = []
    n_grads = part["n_grads"]
    for k, ((i, _a, _b, chain), (a_src, b_src)) in enumerate(zip(part["post"], part["sources"])):
        post.append((i, n_grads + 2 * k, n_grads + 2 * k + 1, _replay(chain), a_src, b_src))
    _slice_sums_to_cat(part["bw"])
    dxp_inplace = _write_dxp_in_place(part["bw"], n_inv)
    g = StepGraphs(prologue, part["fw"], part["pre"], part["bw"], n_inv, len(var), n_out,
                   part["n_saved"], part["n_pre"], post, n_grads + 2 * len(post),
                   {"step": step, "joint": joint, "forward": part["fw"],
                    "bw_pre": part["pre"], "backward": part["bw"]})
    g.dxp_inplace = dxp_inplace
    return g


def _slice_sums_to_cat(gm: fx.GraphModule) -> int:
    """Rewrite sums of ``slice_backward`` (the gradient of a tensor whose column blocks were used
    separately, e.g. the pre-activations of the gate and candidate blocks) into one ``cat`` of the
    blocks' gradients (blocks used twice summed first; blocks that overlap, such as JANET's forget
    columns read alone by the update and with the r columns by the UR gate, cut into the segments
    between their ends, each the sum of its covering blocks' column slices). A compiled graph then
    writes each block once with a plain loop, instead of evaluating every block's expression under
    masks for every column, and the C time loop can run it. Only sums that cover the whole tensor are
    rewritten; returns how many."""
    aten = torch.ops.aten
    graph = gm.graph
    done = 0
    for node in reversed(list(graph.nodes)):
        leaves = _addends(node)
        if len(leaves) < 2 or any(lf.op != "call_function" or lf.target is not aten.slice_backward.default
                                  for lf in leaves):
            continue
        sizes, dim = leaves[0].args[1], leaves[0].args[2]
        if any(list(lf.args[1]) != list(sizes) or lf.args[2] != dim or lf.args[5] != 1 for lf in leaves):
            continue
        total = int(sizes[dim])
        blocks: dict[tuple[int, int], list[fx.Node]] = {}
        for lf in leaves:
            start, end = int(lf.args[3]), min(int(lf.args[4]), total)
            blocks.setdefault((start, end), []).append(lf)
        # column segments between every block's ends: a segment's gradient sums the pieces of the blocks
        # that cover it (overlapping blocks: a block read whole by one primitive and in part by another)
        bounds = sorted({0, total, *(e for span in blocks for e in span)})
        segments = list(zip(bounds, bounds[1:]))
        cover = {seg: [(span, lf) for span in sorted(blocks) for lf in blocks[span]
                       if span[0] <= seg[0] and seg[1] <= span[1]] for seg in segments}
        if any(not pieces for pieces in cover.values()):
            continue
        with graph.inserting_before(node):
            parts = []
            for seg in segments:
                acc: fx.Node | None = None
                for (start, stop), lf in cover[seg]:
                    gr = lf.args[0]
                    if (start, stop) != seg:
                        val = gr.meta["val"]
                        gr = graph.call_function(aten.slice.Tensor, (gr, dim, seg[0] - start, seg[1] - start))
                        gr.meta = {"val": val.narrow(dim, seg[0] - start, seg[1] - seg[0])}
                    if acc is not None:
                        gr, meta = graph.call_function(aten.add.Tensor, (acc, gr)), dict(gr.meta)
                        gr.meta = meta                  # same shape (a segment's gradient): for pwgen
                    acc = gr
                parts.append(acc)
            cat = graph.call_function(aten.cat.default, (parts, dim))
        cat.meta = dict(node.meta)
        node.replace_all_uses_with(cat)
        done += 1
    if done:
        graph.eliminate_dead_code()
        gm.recompile()
    return done


def _write_dxp_in_place(bw: fx.GraphModule, n_inv: int) -> bool:
    """Let the backward step graph write the input projection's gradient straight into the step's row
    of the whole-sequence dxp buffer (an extra last input), instead of returning it to be copied there
    (a compiled graph stores it from its fused loop: no per-step buffer, no copy)."""
    graph = bw.graph
    output = next(n for n in graph.nodes if n.op == "output")
    outs = list(output.args[0])
    node = outs[n_inv]
    if not isinstance(node, fx.Node):
        return False
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        buf = graph.placeholder("dxp_out")
    if "val" in node.meta:                    # laid out as the gradient (a row of the contiguous dxp)
        buf.meta["val"] = node.meta["val"]
    with graph.inserting_before(output):
        copy = graph.call_function(torch.ops.aten.copy_.default, (buf, node))
    copy.meta = dict(buf.meta)
    outs[n_inv] = None
    output.args = (tuple(outs),)
    bw.recompile()
    return True


def _ensure_backward(g: StepGraphs, args: Sequence[Tensor]) -> None:
    """Compile the backward step graph for ``args`` (one step's backward inputs) if still pending."""
    if not g.bw_pending:
        return
    with g.lock:
        if g.bw_pending:
            from .inductor import compile_graph

            with torch.no_grad():
                g.backward = compile_graph(g.modules["backward"], list(args))
            g.bw_pending = False


# -------------------------------------------------------------------------------------------------
# the whole-sequence function
# -------------------------------------------------------------------------------------------------
class _Tape:
    """What one forward keeps for its backward (``env``: the C loop's buffers, else ``saved`` per step;
    ``proj``: the input projection's x [T·B, d] and weight when the sequence owns it)."""

    __slots__ = ("saved", "inv", "T", "has_xs", "xp_shape", "xs_shape", "env", "leased", "proj", "graphed",
                 "__weakref__")


class DerivedSequence(torch.autograd.Function):
    """forward(graphs, n_state, xp [T, B, ·] | None, xs [T, B, ·] | None, x, w, b, p, *state, *invariants) →
    (out [T, B, n], *final state). ``x, w, b``: None, or the input projection ``xp = x wᵀ + b`` (x [T, B, d]
    contiguous; ``xp`` then computed without a graph: before the loop, or by the C loop at every step
    where ``xp`` is None, :func:`_folds`): its gradients come from the backward (∂x by the C loop at every
    step where it can, ∂W_ih in the same post-loop pass over ∂xp as the recurrent weight's gradient).
    ``p``: None, or the short input's projection (``xs = x pᵀ``, computed without a graph by the caller):
    ∂p and its share of ∂x from ∂xs in the backward."""

    @staticmethod
    def forward(ctx: Any, g: StepGraphs, n_state: int, xp: Tensor | None, xs: Tensor | None,  # type: ignore[override]
                x: Tensor | None, w: Tensor | None, b: Tensor | None, p: Tensor | None,
                *rest: Tensor) -> tuple[Tensor, ...]:
        state, inv = list(rest[:n_state]), rest[n_state:]
        keep = any(ctx.needs_input_grad)
        out, tape = _forward_loop(g, xp, xs, state, inv, keep, None if xp is not None else (x, w, b))
        if tape is not None and x is not None and w is not None:
            tape.proj = (x, w, p)
        ctx.g, ctx.tape = g, tape
        return (out, *_distinct(state, rest))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor, *dfinal: Tensor) -> tuple[Tensor | None, ...]:
        g, tape = ctx.g, ctx.tape
        if tape is None:
            raise RuntimeError("cellsearch derived sequence: backward ran twice through a graph that was not "
                               "kept; pass retain_graph=True to the first backward")
        needs = ctx.needs_input_grad
        grads = _backward_loop(g, tape, dout, list(dfinal), needs[4], needs[5] or needs[6], needs[7])
        try:
            keep = bool(torch._C._autograd._get_current_graph_task_keep_graph())
        except Exception:  # pragma: no cover - older torch: assume the graph is kept
            keep = True
        if not keep:
            ctx.tape = None
            if tape.leased:                   # the C loop's forward buffers: no backward reads them again
                from .pool import POOL

                tape.env = None
                POOL.give(*tape.leased)
                tape.leased = []
        return (None, None, *(gr if need else None for gr, need in zip(grads, needs[2:])))


def _distinct(state: list[Tensor], inputs: Sequence[Any]) -> list[Tensor]:
    """The final state, with tensors that are inputs or repeated cloned (a Function's outputs must be
    distinct new tensors)."""
    out: list[Tensor] = []
    ids = {id(t) for t in inputs if t is not None}
    for s in state:
        if id(s) in ids or any(s is o for o in out):
            s = s.clone()
        out.append(s)
    return out


def _forward_loop(g: StepGraphs, xp: Tensor | None, xs: Tensor | None, state: list[Tensor],
                  inv: Sequence[Tensor], keep: bool, proj: tuple[Any, Any, Any] | None = None
                  ) -> tuple[Tensor, _Tape | None]:
    """Run the forward step graph over T; ``state`` is updated in place (to the final state). ``xp`` None:
    the C loop computes it from ``proj`` = (x [T, B, d], W_ih, b) at every step (:func:`_folds`)."""
    if xp is None or _c_loop(g, xp, inv):
        out, env, leased = g.loop.forward(xp, xs, state, inv, keep, None if xp is not None else proj)
        if not keep:
            return out, None
        shape = xp.shape if xp is not None else (proj[0].shape[0], proj[0].shape[1], proj[1].shape[0])  # type: ignore[index]
        tape = _tape(env, [], inv, shape, xs)
        tape.leased = leased                  # back to the pool after the last backward (DerivedSequence)
        return out, tape
    graphed = _graphed_forward(g, xp, xs, state, inv, keep)
    if graphed is not None:
        return graphed
    packed = _packed(g, g.fw_packed, inv, xp.shape[1])
    try:
        return _forward_steps(g, xp, xs, state, inv, keep)
    finally:
        if packed:
            g.products.unpack(packed)


def _forward_steps(g: StepGraphs, xp: Tensor, xs: Tensor | None, state: list[Tensor],
                   inv: Sequence[Tensor], keep: bool) -> tuple[Tensor, _Tape | None]:
    T = xp.shape[0]
    xps = xp.unbind(0)
    xss = xs.unbind(0) if xs is not None else None
    n_out, fw = g.n_out, g.forward
    contiguous = g.compiled
    out: Tensor | None = None
    saved: list[tuple[Tensor, ...]] = []
    for t in range(T):
        if contiguous:
            state[:] = [s.contiguous() for s in state]
        args = (*inv, xps[t], *((xss[t],) if xss is not None else ()), *state)
        res = fw(*args)
        h = res[0]
        if out is None:
            out = h.new_empty((T, *h.shape))
        out[t] = h
        state[:] = res[1:n_out]
        if keep:
            saved.append(tuple(res[n_out:]))
    assert out is not None
    return out, _tape(None, saved, inv, xp.shape, xs) if keep else None


def _graphed_forward(g: StepGraphs, xp: Tensor, xs: Tensor | None, state: list[Tensor], inv: Sequence[Tensor],
                     keep: bool) -> tuple[Tensor, _Tape | None] | None:
    """:func:`_forward_steps` replayed from a CUDA Graph (:mod:`cellsearch.fast.cudagraph`); None where
    it is not (not CUDA, turned off, the first sequence of a shape, capture failed)."""
    from . import cudagraph

    if not cudagraph.enabled(xp.device):
        return None
    if g.cuda_graphs is None:
        with g.lock:
            if g.cuda_graphs is None:
                g.cuda_graphs = cudagraph.Graphs()

    def run(xp_: Tensor, xs_: Tensor | None, state_: list[Tensor], inv_: Sequence[Tensor], keep_: bool
            ) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        out, tape = _forward_steps(g, xp_, xs_, state_, inv_, keep_)
        return out, tape.saved if tape is not None else []

    res = g.cuda_graphs.forward(run, xp, xs, state, inv, keep)
    if res is None:
        return None
    out, final, inst = res
    state[:] = final
    if not keep:
        return out, None
    tape = _tape(None, inst.saved, inst.inv, xp.shape, xs)
    tape.graphed = inst                   # its buffers hold the saved values until the tape is freed
    cudagraph.release_on_free(tape, g.cuda_graphs, inst)
    return out, tape


def _replica(tape: _Tape) -> _Tape:
    """A copy of ``tape``'s fields, without its CUDA Graph instance."""
    out = _Tape()
    for name in _Tape.__slots__:
        if name != "__weakref__":
            setattr(out, name, getattr(tape, name))
    out.graphed = None
    return out


def _tape(env: dict[str, Tensor] | None, saved: list[tuple[Tensor, ...]], inv: Sequence[Tensor],
          xp_shape: Sequence[int], xs: Tensor | None) -> _Tape:
    tape = _Tape()
    tape.env, tape.saved, tape.inv, tape.T, tape.leased = env, saved, tuple(inv), int(xp_shape[0]), []
    tape.proj = tape.graphed = None
    tape.has_xs, tape.xp_shape = xs is not None, tuple(xp_shape)
    tape.xs_shape = xs.shape if xs is not None else None
    return tape


def _c_loop(g: StepGraphs, xp: Tensor | Sequence[int], inv: Sequence[Tensor]) -> bool:
    """Whether the C loop runs this call: planned, and the call laid out as planned (the batch, the
    invariants' shapes and strides baked into its code). ``xp``: the step inputs or their shape."""
    lp = g.loop
    shape = xp.shape if isinstance(xp, Tensor) else xp
    if lp is None or shape[1] != lp.batch or shape[0] == 0:
        return False
    return tuple((tuple(t.shape), tuple(t.stride()), t.dtype) for t in inv) == lp.inv_layouts


def _folds(g: StepGraphs, proj: _Factors, inv: Sequence[Tensor]) -> bool:
    """Whether the C loop computes the input projection ``proj`` = (x [T, B, d], w, b) at every step
    instead of reading ``x wᵀ + b`` from a buffer filled before the loop: it saves writing and reading
    back a ``[T, B, rows]`` buffer, and oneDNN's per-call weight reorder."""
    x, w, b, _p = proj
    return x is not None and w is not None and b is not None and _c_loop(g, x.shape[:2], inv) \
        and g.loop.folds(w, b, x)


def _cat(parts: list[Tensor], dim: int) -> Tensor:
    """torch.cat along ``dim`` of 2-D tensors, through the transposes when they are transposed views."""
    if not parts[0].is_contiguous() and parts[0].t().is_contiguous():
        return torch.cat([p.t() for p in parts], 1 - dim).t()
    return torch.cat(parts, dim)


def _backward_loop(g: StepGraphs, tape: _Tape, dout: Tensor, dstate: list[Tensor], need_dx: bool = False,
                   need_dw: bool = False, need_dp: bool = False) -> list[Tensor | None]:
    """The reverse loop, then the post-loop weight gradients (one large product each); returns the
    gradients of (xp, xs, x, w, b, p, *state, *invariants) (x, w, b, p: those of the input and short
    projections the sequence owns, where ``need_dx`` / ``need_dw`` / ``need_dp``)."""
    pre = g.bw_pre(*tape.inv) if g.n_pre else ()
    proj = _Proj(tape.proj, need_dx, need_dw, need_dp)
    if tape.env is not None:
        from .pool import POOL

        dxp, dxs, dstate, factors, leased, dx = g.loop.backward(
            tape.env, pre, dout, dstate, tape.xp_shape, tape.xs_shape, proj.w if proj.need_dx else None)
        proj.dx = dx
        dinv: list[Tensor | None] = [None] * g.n_inv
        _post_products(g, dxp, factors, dinv, proj)
        del factors
        POOL.give(*leased)
        return [dxp, dxs, *proj.grads(dxp, dxs), *dstate, *dinv]
    packed = _packed(g, g.bw_packed, (*tape.inv, *pre), tape.xp_shape[1])
    try:
        return _backward_steps(g, tape, pre, dout, dstate, proj)
    finally:
        if packed:
            g.products.unpack(packed)


class _Proj:
    """The input projection a sequence owns (``xp = x wᵀ + b``), in its backward: ∂W and ∂b as the
    post-loop pass computes them (:func:`_post_products`), ∂x = ∂xp·W; and the short input's projection
    ``xs = x pᵀ`` where it owns one: ∂p = ∂xsᵀ·x, ∂x += ∂xs·p."""

    def __init__(self, saved: tuple[Tensor, Tensor, Tensor | None] | None, need_dx: bool, need_dw: bool,
                 need_dp: bool = False) -> None:
        self.x, self.w, self.p = saved if saved is not None else (None, None, None)
        self.x2d = None if self.x is None else self.x.view(-1, self.x.shape[-1])        # [T·B, d]
        self.need_dx, self.need_dw = need_dx and saved is not None, need_dw and saved is not None
        self.need_dp = need_dp and self.p is not None
        self.dw: Tensor | None = None
        self.db: Tensor | None = None
        self.dx: Tensor | None = None         # computed by the C loop at every step (LoopPlan.bw_dx)

    def grads(self, dxp: Tensor, dxs: Tensor | None
              ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        from .fused import input_weight_grads, matmul

        dx, dp = self.dx, None
        if self.need_dx and dx is None:
            assert self.x2d is not None and self.w is not None
            dx = matmul(dxp.reshape(-1, dxp.shape[-1]), self.w).view(self.x.shape)  # type: ignore[union-attr]
        if self.need_dw and self.dw is None:
            assert self.x2d is not None
            self.dw, self.db = input_weight_grads(self.x2d, dxp.reshape(-1, dxp.shape[-1]), None)
        if self.p is not None and dxs is not None:
            dxs2d = dxs.view(-1, dxs.shape[-1])
            if self.need_dx and dx is not None:
                dx.view(-1, dx.shape[-1]).add_(matmul(dxs2d, self.p))
            if self.need_dp:
                dp = matmul(dxs2d.t(), self.x2d)
        return dx, self.dw, self.db, dp


def _backward_steps(g: StepGraphs, tape: _Tape, pre: Sequence[Tensor], dout: Tensor, dstate: list[Tensor],
                    proj: _Proj) -> list[Tensor | None]:
    inst = tape.graphed
    if inst is not None:          # what a captured loop keeps must not keep the tape (freeing it frees inst)
        tape = _replica(tape)

    def run(dout_: Tensor, dstate_: list[Tensor], pre_: Sequence[Tensor]) -> Any:
        return _backward_step_loop(g, tape, pre_, dout_, dstate_)

    if inst is None:
        dinv, dxp, dxs, dstate, factors = run(dout, dstate, pre)
    else:                                 # replayed from a CUDA Graph: its outputs are the instance's buffers
        dinv, dxp, dxs, dstate, factors = g.cuda_graphs.backward(inst, run, dout, dstate, pre)
        dinv, dstate = list(dinv), list(dstate)
    _post_products(g, dxp, factors, dinv, proj)
    del factors
    if inst is not None:                  # copies: what leaves the instance outlives its next replay
        dxp, dxs = dxp.clone(), None if dxs is None else dxs.clone()
        dstate = [d.clone() for d in dstate]
        dinv = [None if d is None else d.clone() for d in dinv]
    return [dxp, dxs, *proj.grads(dxp, dxs), *dstate, *dinv]


def _backward_step_loop(g: StepGraphs, tape: _Tape, pre: Sequence[Tensor], dout: Tensor, dstate: list[Tensor]
                        ) -> tuple[list[Tensor | None], Tensor, Tensor | None, list[Tensor], list[Any]]:
    """The reverse loop of :func:`_backward_steps`: (∂invariants so far, ∂xp, ∂xs, ∂initial state, the
    post-loop products' factors)."""
    inv, T = tape.inv, tape.T
    n_inv, n_var = g.n_inv, g.n_var
    dinv: list[Tensor | None] = [None] * n_inv
    owned = [False] * n_inv
    dxp = dout.new_empty(tape.xp_shape)
    dxs = dout.new_empty(tape.xs_shape) if tape.has_xs else None
    post_a: list[list[Tensor]] = [[] for _ in g.post]
    post_b: list[list[Tensor]] = [[] for _ in g.post]
    douts = dout.contiguous().unbind(0)
    n_grads = n_inv + n_var
    first_state = n_inv + 1 + (1 if tape.has_xs else 0)
    dstate = [d.contiguous() for d in dstate]
    for t in range(T - 1, -1, -1):
        args = (*inv, *pre, *tape.saved[t], douts[t], *dstate, *((dxp[t],) if g.dxp_inplace else ()))
        if g.bw_pending:
            _ensure_backward(g, args)
        res = g.backward(*args)
        for i in range(n_inv):
            gi = res[i]
            if gi is None:
                continue
            acc = dinv[i]
            if acc is None:
                dinv[i] = gi
            elif owned[i]:
                acc.add_(gi)
            else:
                dinv[i], owned[i] = acc + gi, True
        if g.dxp_inplace:
            pass
        elif res[n_inv] is None:
            dxp[t].zero_()
        else:
            dxp[t] = res[n_inv]
        if dxs is not None:
            if res[n_inv + 1] is None:
                dxs[t].zero_()
            else:
                dxs[t] = res[n_inv + 1]
        dstate = [torch.zeros_like(s) if d is None else d.contiguous() if g.compiled else d
                  for d, s in zip(res[first_state:n_grads], dstate)]
        for k, (_i, ia, ib, _f, a_src, b_src) in enumerate(g.post):
            if a_src is None:
                post_a[k].append(res[ia])
            if b_src is None:
                post_b[k].append(res[ib])
    # the lists run backwards in time; dxp and the C loop's buffers forwards
    factors = [(_cat(a[::-1], 1) if a else None, _cat(b[::-1], 0) if b else None) for a, b in zip(post_a, post_b)]
    return dinv, dxp, dxs, dstate, factors


def _post_products(g: StepGraphs, dxp: Tensor,
                   factors: Sequence[tuple[Tensor | list[Tensor] | None, Tensor | list[Tensor] | None]],
                   dinv: list[Tensor | None], proj: _Proj | None = None) -> None:
    """The post-loop weight gradients (see the module docstring, 3.) added into ``dinv``: one large
    product each, by :func:`cellsearch.fast.fused.matmul` (transposed factors by
    :func:`cellsearch.fast.cgemm.tn`, else oneDNN where faster). ``factors``: per product, its two factors
    over the whole sequence in time order (``[·, T·B]``, ``[T·B, ·]``), None where it is read from
    ``dxp``; the C loop gives them as row pieces (lists; the left one's are its transpose's), multiplied
    by :func:`cellsearch.fast.cgemm.tn_parts` without concatenating them, with ``dxp`` as the right
    factor (the product transposed where ``dxp`` is the left one). ``proj``: the input projection the
    sequence owns; its ∂W and ∂b join the first product over the whole of ``dxp`` (one pass over it,
    xᵀ·∂xp beside hᵀ·∂xp, ∂b as ∂xp's column sums)."""
    from .fused import matmul

    dxp2d = dxp.view(-1, dxp.shape[-1])
    for (i, _ia, _ib, fn, a_src, b_src), (a, b) in zip(g.post, factors):
        if b_src == "dxp":
            b = dxp2d
        assert b is not None
        if a_src in ("sum0", "sum0k"):                       # a sum over the batch: over T·B rows at once
            pieces = [b] if isinstance(b, Tensor) else b
            gi = fn(sum(p.sum(0, keepdim=a_src == "sum0k") for p in pieces))
            dinv[i] = gi if dinv[i] is None else dinv[i] + gi
            continue
        if isinstance(a, list) or isinstance(b, list) or a_src == "dxp_t":
            gi = _post_c(a if a_src != "dxp_t" else None, b, dxp2d, b_src == "dxp", proj)
            if gi is not None:
                gi = fn(gi)
                dinv[i] = gi if dinv[i] is None else dinv[i] + gi
                continue
        if a_src == "dxp_t":
            a = dxp2d.t()
        elif isinstance(a, list):
            a = (a[0] if len(a) == 1 else torch.cat(a, 0)).t()
        if isinstance(b, list):
            b = b[0] if len(b) == 1 else torch.cat(b, 0)
        assert a is not None
        gi = fn(matmul(a, b))
        dinv[i] = gi if dinv[i] is None else dinv[i] + gi


def _post_c(a: Tensor | list[Tensor] | None, b: Tensor | list[Tensor], dxp2d: Tensor, b_is_dxp: bool,
            proj: _Proj | None) -> Tensor | None:
    """One post-loop product ``a·b`` by :func:`cellsearch.fast.cgemm.tn_parts` (``a`` None: ``dxpᵀ``;
    pieces: rows of ``aᵀ``), with ``dxp`` as its right factor, the input projection's ∂W and ∂b in the
    same pass where ``proj`` still needs them; None where the C product does not serve it."""
    from .cgemm import tn_parts

    left = [dxp2d] if a is None else a if isinstance(a, list) else [a.t()]
    right = b if isinstance(b, list) else [b]
    swap = a is None and not b_is_dxp                  # dxpᵀ·h = (hᵀ·dxp)ᵀ: dxp on the right
    if swap:
        left, right = right, left
    joint = proj is not None and proj.need_dw and proj.dw is None and (b_is_dxp or swap)
    if not joint and int(left[0].shape[1]) > int(right[0].shape[1]):
        # the wider factor on the right: cs_tn splits the right factor's column panels over the threads and
        # shares the left's packed rows among them (GRU's dAᵀ·h, 3n × n: 4.4 → 4.3 ms at hidden 128,
        # T·B 6,400; a 2n × n product at hidden 256, T·B 12,800: 23.0 → 17.8 ms; docs/bench/LOOP.md)
        left, right, swap = right, left, not swap
    db = dxp2d.new_empty(dxp2d.shape[1]) if joint else None
    prod = tn_parts(left, right, db, proj.x2d if joint and proj is not None else None)
    if prod is None:
        return None
    m = int(left[0].shape[1])
    if joint and proj is not None:
        proj.dw, proj.db, prod = prod[m:].t(), db, prod[:m]
    return prod.t() if swap else prod


# -------------------------------------------------------------------------------------------------
# the runner a plan holds
# -------------------------------------------------------------------------------------------------
def backend_choice() -> str:
    """``inductor`` (default) or ``aten`` (``CELLSEARCH_DERIVED_BACKEND=aten``: the step graphs run
    uncompiled, op by op; for tests and debugging, slower than the reference loop)."""
    value = os.environ.get("CELLSEARCH_DERIVED_BACKEND", "inductor").strip().lower()
    return "aten" if value == "aten" else "inductor"


def compiler_choice() -> str:
    """What compiles the step graphs: ``auto`` (default: the generated C kernels of
    :mod:`cellsearch.fast.pwgen_c` where every step graph is supported and a C compiler works, else
    Inductor), ``c`` (the same) or ``inductor`` (``CELLSEARCH_DERIVED_COMPILER``)."""
    value = os.environ.get("CELLSEARCH_DERIVED_COMPILER", "auto").strip().lower()
    return value if value in ("c", "inductor") else "auto"


def _c_layouts(g: StepGraphs, fw_out: Sequence[Any]) -> list[Any]:
    """The backward step graph's input layouts: its placeholders' trace meta, with the tensors the
    forward saves laid out as the C forward returns them."""
    phs = [n.meta.get("val") for n in g.modules["backward"].graph.nodes if n.op == "placeholder"]
    first = g.n_inv + g.n_pre
    phs[first:first + g.n_saved] = fw_out[g.n_out:g.n_out + g.n_saved]
    return phs


def triton_device(device: torch.device | str) -> bool:
    """Whether the step graphs for ``device`` are generated as Triton kernels (CUDA devices; tests also
    route CPU tensors there, in Triton's interpreter) rather than C / Inductor C++ (the CPU)."""
    return torch.device(device).type == "cuda"


class _Products:
    """The generated step graphs' products by a loop invariant (``mm(a, w)``, ``addmm(c, a, w)``: the
    recurrent GEMM forward, its transpose backward), run through :class:`cellsearch.fast.fused.Mat`:
    oneDNN with ``w`` packed once per sequence where fused.Mat finds that faster (float32 on the CPU,
    products of at least ``ONEDNN_MIN`` multiply-adds: MKL's sgemm takes its slow path on the project's
    AMD CPUs), torch's op otherwise. The loops :meth:`pack` the invariants for one sequence; a product
    by a tensor not packed (another thread's sequence just ended, a call outside the loops) runs
    torch's op, so the result never depends on it."""

    def __init__(self) -> None:
        self._mats: dict[int, tuple[Tensor, Any]] = {}

    def pack(self, weights: Sequence[tuple[Tensor, int]]) -> list[tuple[int, Tensor]]:
        """Pack each (w, batch) (w the right operand, [in, out]); returns what :meth:`unpack` takes."""
        from .fused import Mat

        keys = []
        for w, batch in weights:
            if id(w) not in self._mats:
                self._mats[id(w)] = (w, Mat(w.t(), batch))
                keys.append((id(w), w))
        return keys

    def unpack(self, keys: Sequence[tuple[int, Tensor]]) -> None:
        for key, w in keys:
            entry = self._mats.get(key)
            if entry is not None and entry[0] is w:
                del self._mats[key]

    def mm(self, a: Tensor, w: Tensor) -> Tensor:
        entry = self._mats.get(id(w))
        if entry is None or entry[0] is not w or not entry[1].dnn:
            return torch.mm(a, w)
        return entry[1].mm(a)

    def addmm(self, c: Tensor, a: Tensor, w: Tensor) -> Tensor:
        entry = self._mats.get(id(w))
        if entry is None or entry[0] is not w or not entry[1].dnn:
            return torch.addmm(c, a, w)
        return torch.add(c, entry[1].mm(a))


def _route_products(gm: fx.GraphModule, n_fixed: int, products: _Products) -> tuple[int, ...]:
    """Rewrite ``gm``'s ``mm(a, w)`` / ``addmm(c, a, w)`` nodes whose ``w`` is one of its first
    ``n_fixed`` inputs (the loop invariants: the same tensor at every step) into calls of ``products``;
    returns those inputs' indices (the loops pack them, :meth:`_Products.pack`)."""
    aten = torch.ops.aten
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fixed = {n: i for i, n in enumerate(phs[:n_fixed])}
    routed: set[int] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.kwargs:
            continue
        if node.target is aten.mm.default and len(node.args) == 2 and node.args[1] in fixed:
            node.target = products.mm
        elif node.target is aten.addmm.default and len(node.args) == 3 and node.args[2] in fixed:
            node.target = products.addmm
        else:
            continue
        routed.add(fixed[node.args[-1]])
    if routed:
        gm.recompile()
    return tuple(sorted(routed))


def _packed(g: StepGraphs, which: tuple[int, ...], tensors: Sequence[Tensor], batch: int
            ) -> list[tuple[int, Tensor]]:
    """Pack ``tensors[i]`` for ``i`` in ``which`` (see :class:`_Products`) for products of ``batch`` rows."""
    if g.products is None or not which:
        return []
    return g.products.pack([(tensors[i], batch) for i in which])


def _compile_generated(g: StepGraphs, inv: Sequence[Tensor], var: Sequence[Tensor]) -> str | None:
    """Compile the forward and backward step graphs with the pointwise generator (:mod:`.pwgen`): C on
    the CPU (one library), Triton on CUDA (one module); returns None, or why not (the graph is not
    supported, no compiler: the caller uses Inductor on the CPU, the reference loop on CUDA)."""
    from . import pwgen, pwgen_c, pwgen_triton, pwloop

    device = var[0].device
    cuda = triton_device(device)
    why = (pwgen_triton if cuda else pwgen_c).unavailable(device, var[0].dtype)
    if why is not None:
        return why
    try:
        fw = pwgen.lower(g.modules["forward"], [*inv, *var])
        bw = pwgen.lower(g.modules["backward"], _c_layouts(g, fw.out_layouts))
        if not cuda:
            g.products = _Products()
            g.fw_packed = _route_products(fw.graph, g.n_inv, g.products)
            g.bw_packed = _route_products(bw.graph, g.n_inv + g.n_pre, g.products)
        if cuda:
            g.forward, g.backward = pwgen_triton.compile_lowered([fw, bw], device)
        else:
            (g.forward, g.backward), g.loop, g.loop_note = pwloop.build(fw, bw, g)
    except Exception as exc:          # unsupported, no compiler, or a generator bug
        return _c_reason(exc, "Triton" if cuda else "C")
    g.compiled, g.bw_pending, g.compiler = True, False, "triton" if cuda else "c"
    return None


def _c_reason(exc: Exception, generator: str = "C") -> str:
    from .pwgen import Unsupported

    kind = "" if isinstance(exc, Unsupported) else f"{type(exc).__name__}: "
    return f"the {generator} generator cannot compile the step: {kind}{str(exc).strip()[:200]}"


def _c_check(g: StepGraphs) -> str | None:
    """Why the C generator cannot compile these (uncompiled) step graphs, or None (nothing is built)."""
    from . import pwgen

    try:
        fw = pwgen.lower(g.modules["forward"])
        pwgen.lower(g.modules["backward"], _c_layouts(g, fw.out_layouts))
    except Exception as exc:
        return _c_reason(exc)
    return None


def warmup_calls() -> int:
    """:data:`DERIVED_AFTER`, or ``CELLSEARCH_DERIVED_AFTER`` when set."""
    try:
        return int(os.environ.get("CELLSEARCH_DERIVED_AFTER", DERIVED_AFTER))
    except ValueError:
        return DERIVED_AFTER


def min_work(hand: bool = True, device: torch.device | str = "cpu") -> int:
    """On the CPU :data:`DERIVED_MIN` (a cell with a hand-written kernel: ``hand``) or
    :data:`DERIVED_MIN_LOOP`, elsewhere :data:`DERIVED_MIN_DEVICE`; ``CELLSEARCH_DERIVED_MIN`` for all
    when set."""
    if torch.device(device).type != "cpu":
        default = DERIVED_MIN_DEVICE
    else:
        default = DERIVED_MIN if hand else DERIVED_MIN_LOOP
    try:
        return int(os.environ.get("CELLSEARCH_DERIVED_MIN", default))
    except ValueError:
        return default


class Derived:
    """The derived path of one cell: graphs per (shapes, dtype, device), built and compiled on first use.

    Calls return None (the caller runs the reference loop) where the derived path does not pay or
    cannot run: work below :func:`min_work` or the first :func:`warmup_calls` calls of an input shape
    (unless ``forced``), Inductor unavailable (no C++ compiler,
    not the CPU, not float32/float64) or a failed compile (remembered in ``compile_error``), because
    the uncompiled graphs run slower than the reference loop."""

    def __init__(self, forced: bool = False) -> None:
        self._graphs: dict[tuple[Any, ...], StepGraphs] = {}
        self._lock = threading.Lock()
        self.forced = forced
        self.compile_error: str | None = None
        #: why the step cannot be derived (found on first use; the plan then becomes the reference loop)
        self.failure: str | None = None
        self._seen: dict[tuple[Any, ...], int] = {}
        self._traced: _Traced | None = None
        #: why the C generator does not compile this step (found by probe, or when the step graphs are
        #: first compiled; None: it does, or unknown yet)
        self.c_note: str | None = None
        #: "" when the compiled step graphs have a C time loop, else why not (None: not compiled yet)
        self.loop_note: str | None = None
        #: (c_note, loop_note) as the plan's line was last written (cellsearch.fast.paths.settled)
        self.described: tuple[str | None, str | None] = (None, None)
        #: the plan's reason beside the description, and the device it was described for (set by
        #: cellsearch.fast.paths: the plan's line is rebuilt once ``c_note`` is known)
        self.plan_why: str = ""
        self.plan_device: Any = "cpu"
        #: a hand-written kernel's plan (cellsearch.fast.paths): it runs the calls the derived path does
        #: not take, and every call once the step graphs turn out to have no C loop (``hand_only``: why)
        self.fallback_plan: Any = None
        self.hand_only: str | None = None

    def unavailable(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
        """Why the derived path cannot run for this device and dtype (None: it can)."""
        if backend_choice() == "aten":
            return None
        from .inductor import turned_off, unavailable

        if dtype not in (torch.float32, torch.float64):
            return f"{dtype} is not compiled"
        if triton_device(device):                         # generated Triton kernels
            from .pwgen_triton import unavailable as triton_unavailable

            return self.compile_error or turned_off() or triton_unavailable(device, dtype)
        why = self.compile_error or unavailable(device)
        if why is None or self.compile_error or compiler_choice() == "inductor" or turned_off():
            return why
        from .pwgen_c import unavailable as c_unavailable

        return None if c_unavailable(device, dtype) is None else why

    def describe(self, device: torch.device | str = "cpu") -> str:
        """How it runs on ``device`` (for :func:`cellsearch.fast.explain`)."""
        if backend_choice() == "aten":
            return "uncompiled aten step graphs (CELLSEARCH_DERIVED_BACKEND=aten)"
        why = self.unavailable(device)
        if why is None and triton_device(device):
            from .cudagraph import enabled

            notes = [g.cuda_graphs.note for g in self._graphs.values() if g.cuda_graphs and g.cuda_graphs.note]
            if notes:
                loops = f"loops step by step: {notes[0]}"
            elif enabled(device):
                loops = "loops replayed as CUDA Graphs, cellsearch.fast.cudagraph"
            else:
                loops = "loops step by step: CELLSEARCH_CUDA_GRAPHS=0"
            return f"generated Triton step graphs (cellsearch.fast.pwgen_triton; {loops})"
        if why is not None:
            return f"unavailable here, so the reference loop runs: {why}"
        other = "the hand-written kernel" if self.fallback_plan is not None else "the reference loop"
        size = "" if self.forced else (f"; runs under {min_work(self.fallback_plan is not None, device):,} "
                                        f"pre-activations a sequence, and the "
                                        f"first {warmup_calls()} calls of an input shape, take {other}")
        if compiler_choice() == "inductor":
            return "Inductor C++ step graphs (CELLSEARCH_DERIVED_COMPILER=inductor)" + size
        if self.c_note is not None:
            return f"Inductor C++ step graphs ({self.c_note})" + size
        loop = "" if self.loop_note is None else "; time loop in C (cellsearch.fast.pwloop)" if \
            not self.loop_note else f"; time loop in Python ({self.loop_note})"
        return "generated C step graphs (cellsearch.fast.pwgen_c; Inductor where the C generator cannot)" + \
            loop + size

    def graphs(self, cell: Any, xp: Tensor, xs: Tensor | None, state: State, compile: bool) -> StepGraphs:
        key = (tuple(xp.shape[1:]), None if xs is None else tuple(xs.shape[1:]),
               tuple(tuple(s.shape) for s in state), xp.dtype, xp.device,
               tuple(s.dtype for s in state), compile)
        g = self._graphs.get(key)
        if g is None:
            with self._lock:
                g = self._graphs.get(key)
                if g is None:
                    self._traced = _trace(cell, xp.shape[1])
                    g = derive(cell, xp[0], None if xs is None else xs[0], state, compile=compile,
                               traced=self._traced)
                    self._graphs[key] = g
                    if g.compiler == "inductor" and g.c_note is not None:
                        self.c_note = g.c_note        # why not C, known once traced (explain shows it)
                    if g.compiler == "c":             # whether the time loop runs in C, and why not
                        self.loop_note = "" if g.loop is not None else g.loop_note or "not planned"
        return g

    def probe(self, cell: Any) -> None:
        """Derive the (uncompiled) graphs for a batch of 2 (raises DerivationError when it cannot)."""
        p = next(iter(cell.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
        device = p.device if p is not None else torch.device("cpu")
        x = torch.zeros(1, 2, cell.input_size, dtype=dtype, device=device)
        with torch.no_grad():
            _, xp, xs, state = cell._recurrence_inputs(x, cell.initial_state(2, x))
        g = self.graphs(cell, xp, xs, tuple(state), compile=False)
        if backend_choice() != "aten" and compiler_choice() != "inductor":
            self.c_note = _c_check(g)

    def __call__(self, cell: Any, x: Tensor, state: State) -> tuple[Tensor, State] | None:
        hand = self.fallback_plan
        if hand is None:
            return self._run(cell, x, state)
        from .paths import derived_ahead

        res = None if self.hand_only or not derived_ahead(hand, x.device) else self._run(cell, x, state)
        return res if res is not None else hand.run(cell, x, state)

    def _run(self, cell: Any, x: Tensor, state: State) -> tuple[Tensor, State] | None:
        if not self.forced:
            if x.shape[0] * x.shape[1] * _width(cell) < min_work(self.fallback_plan is not None, x.device):
                return None
            seen = (tuple(x.shape[1:]), x.dtype, x.device, tuple(tuple(s.shape) for s in state))
            count = self._seen.get(seen, 0)
            if count < warmup_calls():
                self._seen[seen] = count + 1
                if count == 0 and backend_choice() != "aten" and compiler_choice() == "inductor" \
                        and self.unavailable(x.device, x.dtype) is None:
                    from .inductor import preload

                    preload()             # the import overlaps the reference-loop warm-up calls
                return None
        if self.failure is not None:
            return None
        aten = backend_choice() == "aten"
        if not aten and self.unavailable(x.device, x.dtype) is not None:
            return None
        if not aten and compiler_choice() == "inductor":
            from .inductor import preload

            preload()
        xp, xs, st, proj = _recurrence_inputs(cell, x, state)
        if xp is None:                         # the graphs need its shape only (the projection waits)
            xp_like = x.new_zeros(()).expand(x.shape[0], x.shape[1], proj[1].shape[0])  # type: ignore[union-attr]
        try:
            g = self.graphs(cell, xp if xp is not None else xp_like, xs, st, compile=not aten)
        except DerivationError as exc:    # remembered: the plan becomes the reference loop, with the reason
            self.failure = str(exc)
            return None
        except Exception as exc:          # a compiler error: remember it, run the reference loop
            self.compile_error = f"compiling failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
            return None
        if self.fallback_plan is not None and g.loop is None and not triton_device(x.device):
            self.hand_only = g.loop_note or g.c_note or "the step graphs are not compiled by the C generator"
            return None
        assert self._traced is not None
        inv = g.prologue(*self._traced.params(cell))
        if xp is None and not _folds(g, proj, inv):
            xp = _project(proj[0], proj[1], proj[2])    # type: ignore[arg-type]
        if g.compiled:
            xp = xp.contiguous() if xp is not None else None
            xs = xs.contiguous() if xs is not None else None
        inputs = (xp, xs, *proj, *st, *inv)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            res = DerivedSequence.apply(g, len(st), *inputs)
            return res[0], tuple(res[1:])
        with torch.no_grad():
            now = list(st)
            out, _ = _forward_loop(g, xp, xs, now, inv, False, None if xp is not None else proj[:3])
            return out, tuple(now)


def _width(cell: Any) -> int:
    """Pre-activations per step and batch row (the input projection's width)."""
    w = getattr(cell, "weight_ih", None)
    return int(w.shape[0]) if isinstance(w, Tensor) else int(getattr(cell, "hidden_size", 1))


def _recurrence_inputs(cell: Any, x: Tensor, state: State) -> tuple[Tensor | None, Tensor | None, State, _Factors]:
    """The cell's hoisted input GEMM over every step, its short input, the state, as
    ``cell._recurrence_inputs`` gives them, and the projections' factors (None ×4, or x [T, B, d]
    contiguous, W_ih, b, P or None). For float32 on the CPU (autocast off: :mod:`cellsearch.fast` turns it
    off around the fast paths), reading the cell as the fused paths do (``weight_ih``, ``bias``,
    ``short_input``), the sequence owns the projection and its gradients (:class:`DerivedSequence`: ∂W_ih
    in the same pass over ∂xp as the recurrent weight's): the GEMM is left to the caller (None in its
    place), which runs it in the C loop (:func:`_folds`) or on oneDNN (:func:`_project`). A short input
    projected by the cell's ``weight_proj`` P (the refined gate's x̃ = P x where d ≠ n, ``short`` ``project``)
    is owned too: ``xs = x Pᵀ`` here without a graph (oneDNN: :func:`cellsearch.fast.fused.matmul`), ∂P
    and ∂x from ∂xs in the sequence's backward (through autograd, the product's forward and two backward
    products cost 1.1–1.5 ms a call at 128/100 on the project's Zen 5, with a slice's zero fill)."""
    from .fused import matmul, onednn_available

    w, b = getattr(cell, "weight_ih", None), getattr(cell, "bias", None)
    if isinstance(w, Tensor) and isinstance(b, Tensor) and x.dtype == w.dtype == b.dtype == torch.float32 \
            and x.device.type == "cpu" and w.device.type == "cpu" and not torch.is_autocast_enabled("cpu") \
            and onednn_available():
        x = x.contiguous()
        p = getattr(cell, "weight_proj", None) if getattr(cell, "short", None) == "project" else None
        if isinstance(p, Tensor) and p.dtype == x.dtype and p.device == x.device:
            with torch.no_grad():
                xs = matmul(x.view(-1, x.shape[-1]), p.t()).view(x.shape[0], x.shape[1], p.shape[0])
            return None, xs, tuple(state), (x, w, b, p)
        return None, cell.short_input(x), tuple(state), (x, w, b, None)
    _, xp, xs, st = cell._recurrence_inputs(x, state)
    return xp, xs, tuple(st), (None, None, None, None)


def _project(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``x wᵀ + b`` for x [T, B, d], without a graph (one oneDNN call: :func:`cellsearch.fast.fused.projected`)."""
    from .fused import projected

    T, B, d = x.shape
    with torch.no_grad():
        return projected(x.view(T * B, d), w, b).view(T, B, w.shape[0])
