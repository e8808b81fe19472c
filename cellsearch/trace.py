"""One time step of a composed cell, traced from the primitives' own torch code into two FX graphs.

The standalone export (:mod:`cellsearch.exporter`) and the derived fast path (:mod:`cellsearch.fast.derived`)
both start here, never from a primitive's name: the step is whatever the registered primitives compute,
plugins included, and the rule that splits it into per-sequence and per-step work lives only here.
:func:`trace_init` does the same for ``cell.reset_parameters()``: the primitives' initialization as an
in-place graph.

:func:`trace_step` runs ``cell.update.step(cell.context(), xp_t, xs_t, state)`` once under
``make_fx`` (symbolic batch size, ATen ops) with every parameter of the cell as an input, then splits
the graph in two by dependence:

- ``prepare(*params, [device], [dtype]) -> consts``: the nodes that do not depend on the time step's
  inputs (recurrent matrices formed from their parametrization, a saturation's matrices, transposes):
  computed once per sequence, as :meth:`ComposedCell.context <cellsearch.cells.ComposedCell.context>`
  does;
- ``step(*consts, xp_t, [xs_t], *state) -> (h, *state)``: the rest, once per step.

Factory ops recorded with the trace's device and floating dtype get them as inputs instead, so the
graphs run on any device and in float32 or float64. No-op slices (``x[:, :]``) are dropped.

With ``generic=True`` (:func:`trace_step`, :func:`trace_init`) the hidden size is traced as a symbol too:
while tracing, every ``hidden_size`` the cell and its primitives hold is the symbolic
``bias.shape[0] // len(cell.blocks)``, so slices, chunks and init bounds become expressions of the
parameters' shapes and the graphs may run at another hidden and input size. Whether they really do is
not assumed: a primitive can still fix the size (e.g. index tables built from a Python int), and the
caller checks the graphs at another size against the cell built at that size (the exporter does).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

__all__ = ["TracedStep", "TracedInit", "TraceError", "trace_step", "trace_init", "flat_name", "eager_graph"]

_FULL = 2**62  # a slice end at or beyond this is "to the end"


class TraceError(RuntimeError):
    """The cell's step could not be traced into a graph (e.g. it branches on tensor values)."""


def eager_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with every op a primitive registered with :func:`cellsearch.registry.eager_for` replaced by
    its function (a copy; ``gm`` itself when it holds none): for a graph run eagerly with autograd, such
    as the derived path's prologue (``prepare``), never for one traced or compiled again."""
    from .registry import eager_functions

    eager = eager_functions()
    if not any(n.op == "call_function" and n.target in eager for n in gm.graph.nodes):
        return gm
    graph = copy.deepcopy(gm.graph)
    for node in graph.nodes:
        if node.op == "call_function" and node.target in eager:
            node.target = eager[node.target]
    return fx.GraphModule(gm, graph, gm.__class__.__name__)


@dataclass(frozen=True)
class TracedStep:
    """A cell's step as two graphs (see the module docstring).

    ``params``: the names (flattened, ``recurrence.weight`` → ``recurrence_weight``) of the cell
    parameters ``prepare`` takes, in order, mapped from their attribute paths in ``param_paths``;
    ``consts``: names of ``prepare``'s outputs (``step``'s leading inputs); ``inputs``: names of
    ``step``'s per-step inputs; ``device`` / ``dtype``: whether ``prepare`` takes them.
    """

    prepare: fx.GraphModule
    step: fx.GraphModule
    params: tuple[str, ...]
    param_paths: tuple[str, ...]
    consts: tuple[str, ...]
    inputs: tuple[str, ...]
    n_states: int
    short: bool
    device: bool
    dtype: bool


def flat_name(path: str) -> str:
    """``recurrence.weight`` → ``recurrence_weight``: a parameter path as one identifier."""
    return path.replace(".", "_")


@contextlib.contextmanager
def _symbolic_hidden(cell: Any, generic: bool) -> Iterator[None]:
    """While tracing: every ``hidden_size`` attribute of the cell and its modules becomes the symbol
    ``bias.shape[0] // len(cell.blocks)`` (read from the traced parameter), so the graph keeps it."""
    if not generic:
        yield
        return
    n = cell.bias.shape[0] // len(cell.blocks)
    saved = [(m, m.__dict__["hidden_size"]) for m in cell.modules() if "hidden_size" in m.__dict__]
    for m, _ in saved:
        m.__dict__["hidden_size"] = n
    try:
        yield
    finally:
        for m, value in saved:
            m.__dict__["hidden_size"] = value


class _SymbolicInit(torch.overrides.TorchFunctionMode):
    """While tracing an init with a symbolic hidden size: ``uniform_(a, b)`` / ``normal_(m, s)`` (tensor
    methods or ``nn.init``) with symbolic bounds are drawn as ``uniform_() * (b - a) + a`` /
    ``normal_() * s + m`` (the same draws; the ops take only concrete floats), and ``generator=None`` is
    dropped (the generator overloads take only concrete sizes)."""

    _DRAWS: dict[Any, tuple[str, tuple[str, str, str], tuple[float, float]]] = {
        torch.Tensor.uniform_: ("uniform", ("self", "from", "to"), (0.0, 1.0)),
        torch.Tensor.normal_: ("normal", ("self", "mean", "std"), (0.0, 1.0)),
        nn.init.uniform_: ("uniform", ("tensor", "a", "b"), (0.0, 1.0)),
        nn.init.normal_: ("normal", ("tensor", "mean", "std"), (0.0, 1.0)),
    }

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if "generator" in kwargs and kwargs["generator"] is None:
            del kwargs["generator"]
        if func not in self._DRAWS:
            return func(*args, **kwargs)
        kind, names, plain = self._DRAWS[func]
        bound = dict(zip(names, args))
        bound.update({k: kwargs.pop(k) for k in names if k in kwargs})
        target, lo, hi = bound[names[0]], bound.get(names[1], plain[0]), bound.get(names[2], plain[1])
        if not any(isinstance(v, (torch.SymFloat, torch.SymInt)) for v in (lo, hi)):
            return func(target, lo, hi, **kwargs)
        with torch.no_grad():
            getattr(target, f"{kind}_")(**kwargs)
            return target.mul_(hi - lo if kind == "uniform" else hi).add_(lo)


class _Step(nn.Module):
    """The cell's step as a module forward, so ``functional_call`` can swap its parameters for inputs."""

    def __init__(self, cell: nn.Module, generic: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.generic = generic

    def forward(self, xp_t: Tensor, xs_t: Tensor | None, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        cell: Any = self.cell
        with _symbolic_hidden(cell, self.generic):
            h, new_state = cell.update.step(cell.context(), xp_t, xs_t, tuple(state))
        return (h, *new_state)


def trace_step(cell: Any, batch: int = 3, symbolic: bool = True, generic: bool = False) -> TracedStep:
    """Trace one step of ``cell`` (a ComposedCell) and split it into ``prepare`` and ``step``.

    ``symbolic``: the batch size is a symbol (the graphs run at any batch size; the export needs this);
    otherwise the graphs are specialized to ``batch``, which traces several times faster in a fresh
    process (no symbolic-shape machinery: the derived fast path traces per batch size anyway).
    ``generic``: the hidden size is a symbol too (see the module docstring; implies ``symbolic``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    wrapper = _Step(cell, generic)
    symbolic = symbolic or generic
    paths = [k for k, _ in wrapper.named_parameters()]
    weights = [p.detach() for _, p in wrapper.named_parameters()]
    ref = cell.weight_ih
    short = cell.short != "none"
    n, width = cell.hidden_size, ref.shape[0]
    inputs = ["xp_t", *(["xs_t"] if short else []), *(f"state_{i}" for i in range(cell.update.n_states))]
    example = [ref.new_zeros(batch, width), *(ref.new_zeros(batch, n) for _ in inputs[1:])]

    def flat_step(*args: Tensor) -> tuple[Tensor, ...]:
        params = dict(zip(paths, args[: len(paths)]))
        rest = list(args[len(paths):])
        xp_t = rest.pop(0)
        xs_t = rest.pop(0) if short else None
        return torch.func.functional_call(wrapper, params, (xp_t, xs_t, tuple(rest)))

    try:
        with torch.no_grad():
            gm = make_fx(flat_step, tracing_mode="symbolic" if symbolic else "fake")(*weights, *example)
    except Exception as exc:  # the primitive's code decides; report it whole
        raise TraceError(f"{type(exc).__name__}: {exc}") from exc
    _drop_noop_slices(gm.graph)
    _inline_constants(gm)
    names = [flat_name(p.removeprefix("cell.")) for p in paths]
    return _split(gm.graph, names, paths, inputs, cell.update.n_states, short, ref)


@dataclass(frozen=True)
class TracedInit:
    """A cell's ``reset_parameters`` as a graph that initializes its parameters in place.

    ``init(*params, [on_device], [float_dtype])`` with ``params`` named as in :class:`TracedStep` (all of
    the cell's parameters, in ``named_parameters`` order). With the same RNG state it draws the same
    numbers as the cell's own initialization.
    """

    init: fx.GraphModule
    params: tuple[str, ...]
    device: bool
    dtype: bool


class _Init(nn.Module):
    def __init__(self, cell: nn.Module, generic: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.generic = generic

    def forward(self) -> tuple[()]:
        mode = _SymbolicInit() if self.generic else contextlib.nullcontext()
        with _symbolic_hidden(self.cell, self.generic), mode:
            self.cell.reset_parameters()  # type: ignore[operator]
        return ()


def trace_init(cell: Any, generic: bool = False) -> TracedInit:
    """Trace ``cell.reset_parameters()`` (the init, recurrence, saturation and gate primitives' rules).

    ``generic``: the hidden size is a symbol (see the module docstring); draws whose bounds depend on
    it are written as a standard draw scaled and shifted (equal to the cell's own to float rounding)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    wrapper = _Init(cell, generic)
    paths = [k for k, _ in wrapper.named_parameters()]
    ref = cell.weight_ih

    def flat_init(*params: Tensor) -> tuple[()]:
        return torch.func.functional_call(wrapper, dict(zip(paths, params)), ())

    try:
        with torch.random.fork_rng(devices=[]):
            gm = make_fx(flat_init, tracing_mode="symbolic" if generic else "real")(
                *[p.detach().clone() for _, p in wrapper.named_parameters()])
    except Exception as exc:  # e.g. an init that reads a tensor's value (.item()) to decide
        raise TraceError(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                         ) from exc
    _inline_constants(gm)
    names = [flat_name(p.removeprefix("cell.")) for p in paths]
    device, dtype = _factory_context(gm.graph, ref)
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for ph, name in zip(placeholders, names):
        env[ph] = graph.placeholder(name)
    dev = graph.placeholder("on_device") if device else None
    dt = graph.placeholder("float_dtype") if dtype else None
    for node in gm.graph.nodes:
        if node.op == "call_function":
            env[node] = graph.node_copy(node, lambda a: env[a])
            _retarget(env[node], ref, dev, dt)
    graph.output(())
    graph.lint()
    return TracedInit(fx.GraphModule(nn.Module(), graph, "init"), tuple(names), device, dtype)


_MAX_CONSTANT = 4096  # elements of a constant tensor written into the graph as a literal


def _inline_constants(gm: fx.GraphModule) -> None:
    """Constant tensors the trace captured (e.g. ``torch.tensor([...])`` of index positions) become
    ``torch.tensor(<literal>)`` calls, so the graph's source is self-contained."""
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        value = getattr(gm, str(node.target))
        if not isinstance(value, Tensor) or value.numel() > _MAX_CONSTANT:
            raise TraceError(f"the trace captured a constant {type(value).__name__} it cannot write out "
                             f"({getattr(value, 'shape', '')}); compute it from the inputs instead")
        with gm.graph.inserting_before(node):
            literal = gm.graph.call_function(torch.tensor, (value.tolist(),), {"dtype": value.dtype})
        node.replace_all_uses_with(literal)
        gm.graph.erase_node(node)


def _drop_noop_slices(graph: fx.Graph) -> None:
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.slice.Tensor:
            args = list(node.args) + [None] * (5 - len(node.args))
            _, _, start, end, step = args
            if start in (0, None) and (end is None or (isinstance(end, int) and end >= _FULL)) \
                    and step in (1, None):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)


def _variant_nodes(graph: fx.Graph, per_step: set[fx.Node]) -> set[fx.Node]:
    """Nodes that depend on a per-step input (the rest is loop-invariant)."""
    variant = set(per_step)
    for node in graph.nodes:
        if node.op != "placeholder" and any(a in variant for a in node.all_input_nodes):
            variant.add(node)
    for node in graph.nodes:  # a per-step in-place op on an invariant tensor: hoisting would be wrong
        schema = getattr(node.target, "_schema", None)
        if node in variant and schema is not None and schema.is_mutable:
            if any(a not in variant for a in node.all_input_nodes):
                raise TraceError(f"the step mutates a loop-invariant tensor in place ({node.target})")
    return variant


def _split(graph: fx.Graph, names: list[str], paths: list[str], inputs: list[str], n_states: int,
           short: bool, ref: Tensor) -> TracedStep:
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    param_ph, step_ph = placeholders[: len(names)], placeholders[len(names):]
    variant = _variant_nodes(graph, set(step_ph))
    (output,) = [n for n in graph.nodes if n.op == "output"]
    invariant_ops = [n for n in graph.nodes if n.op == "call_function" and n not in variant]
    users = [n for n in graph.nodes if n in variant and n.op == "call_function"] + [output]
    consts = _ordered({a for u in users for a in u.all_input_nodes if a not in variant})
    device, dtype = _factory_context(graph, ref)

    prep = fx.Graph()
    env: dict[fx.Node, Any] = {}
    used = [(ph, name, path) for ph, name, path in zip(param_ph, names, paths) if ph.users]
    for ph, name, _ in used:
        env[ph] = prep.placeholder(name)
    dev = prep.placeholder("on_device") if device else None
    dt = prep.placeholder("float_dtype") if dtype else None
    for node in invariant_ops:
        env[node] = prep.node_copy(node, lambda a: env[a])
        _retarget(env[node], ref, dev, dt)
    const_names = [env[c].name for c in consts]
    prep.output(tuple(env[c] for c in consts))

    step = fx.Graph()
    env2: dict[fx.Node, Any] = {c: step.placeholder(name) for c, name in zip(consts, const_names)}
    env2.update({ph: step.placeholder(name) for ph, name in zip(step_ph, inputs)})
    for node in graph.nodes:
        if node in variant and node.op == "call_function":
            env2[node] = step.node_copy(node, lambda a: env2[a])
            _check_no_factory(env2[node], ref)
    step.output(fx.node.map_arg(output.args[0], lambda a: env2[a]))
    for g in (prep, step):
        g.eliminate_dead_code()
        g.lint()
    root = nn.Module()
    return TracedStep(fx.GraphModule(root, prep, "prepare"), fx.GraphModule(root, step, "step"),
                      tuple(n for _, n, _ in used), tuple(p for _, _, p in used),
                      tuple(const_names), tuple(inputs), n_states, short, device, dtype)


def _ordered(nodes: set[fx.Node]) -> list[fx.Node]:
    """``nodes`` in graph order."""
    if not nodes:
        return []
    graph = next(iter(nodes)).graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    return sorted(nodes, key=order.__getitem__)


def _factory_context(graph: fx.Graph, ref: Tensor) -> tuple[bool, bool]:
    """Whether any op was recorded with the trace's device / floating dtype as a keyword."""
    device = dtype = False
    for node in graph.nodes:
        device |= node.kwargs.get("device") == ref.device
        dtype |= node.kwargs.get("dtype") == ref.dtype
    return device, dtype


def _retarget(node: fx.Node, ref: Tensor, dev: fx.Node | None, dt: fx.Node | None) -> None:
    kwargs = dict(node.kwargs)
    if dev is not None and kwargs.get("device") == ref.device:
        kwargs["device"] = dev
    if dt is not None and kwargs.get("dtype") == ref.dtype:
        kwargs["dtype"] = dt
    node.kwargs = kwargs


def _check_no_factory(node: fx.Node, ref: Tensor) -> None:
    if node.kwargs.get("device") == ref.device or node.kwargs.get("dtype") == ref.dtype:
        raise TraceError(f"the step creates a tensor with a fixed device or dtype at every step "
                         f"({node.target}); create it from an input (new_zeros, zeros_like) instead")
