"""The standalone module's source: the cell's step and initialization derived by :mod:`cellsearch.trace`
(no primitive is named here), the time loop, the depth arrangement, the model and its loader."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from ..spec import CELL_ROLES, CellSpec
from .errors import ExportError
from .templates import INPUT_CHECK, LOADER, SCAN
from .weights import _lr_groups

__all__ = ["generate_source", "module_name", "cell_doc"]

# names the generated graph code may use, and the line that defines each in the exported module
_GRAPH_GLOBALS = {"torch": None, "device": "from torch import device", "inf": 'inf = float("inf")',
                  "nan": 'nan = float("nan")'}


def module_name(model: Any, published: str | None = None) -> str:
    """A Python module name for the export: ``published`` (the published cell's name, or a grid variant's
    label) made an identifier, or one built from the spec."""
    if published:
        base = published
    else:
        cell, depth = model.spec.cell, model.spec.depth
        parts = [cell.update]
        plain = CellSpec()  # a role at its default is left out of the name
        parts += [getattr(cell, role) for role in CELL_ROLES[1:] if getattr(cell, role) != getattr(plain, role)]
        parts += [{"deep": "dt", "deep_shortcut": "dts"}.get(depth.transition, "")]
        base = "_".join(p for p in parts if p)
    name = re.sub(r"\W", "_", base).strip("_") or "cell"
    return name if name[0].isalpha() else f"cell_{name}"


@dataclass
class _CellCode:
    """One generated cell class: its name, source, and the graph functions it calls (empty when it
    shares an earlier class's functions); ``sizes``: how the class takes other sizes (for the card)."""

    cls: str
    source: str
    functions: str
    init_function: str
    imports: set[str]
    suffix: str
    sizes: dict[str, Any]
    graphs: str


def _graph_function(gm: Any, name: str) -> tuple[str, set[str]]:
    """The source of an FX graph as a module-level function ``name``, and the globals it needs."""
    code = gm.graph.python_code(root_module="self")
    src = re.sub(r"def forward\(self,? ?", f"def {name}(", code.src, count=1)
    src = re.sub(r";  [\w, =]+ = None$", "", src, flags=re.M)  # FX's early frees: noise in source
    src = "\n".join(line.rstrip() for line in src.strip("\n").splitlines())
    used = {g for g in code.globals if re.search(rf"\b{re.escape(g)}\b(?! = )", src)}
    unknown = used - set(_GRAPH_GLOBALS)
    if unknown:
        raise ExportError(f"export: the traced step uses {sorted(unknown)}, which the standalone module "
                          "cannot define")
    return src, {g for g in used if _GRAPH_GLOBALS[g]}


def _trace(cell: Any, generic: bool = False) -> Any:
    from ..trace import TraceError, trace_step

    try:
        return trace_step(cell, generic=generic)
    except TraceError as exc:
        prims = ", ".join(f"{role} {getattr(cell, role).name!r}" for role in ("update", "gate", "saturation"))
        raise ExportError(f"export: the step of the cell ({prims}) could not be traced into a graph: "
                          f"{exc}") from None


@dataclass
class _Derived:
    """The traced step and init of one cell class; ``generic``: they were checked to hold at another
    size (then ``shapes`` gives every parameter's shape as an expression of d and n)."""

    step: Any
    init: Any
    generic: bool
    shapes: dict[str, str]
    sizes: dict[str, Any]


def _derive(cell: Any, factory: Any, try_generic: bool = True) -> _Derived:
    """Trace the cell with a symbolic hidden size and check the graphs at another size against the cell
    built there (``factory(d, n)``). Where that check fails, the same graphs still hold at the cell's own
    size (they were traced there), and the module refuses other sizes, saying why; where the symbolic
    trace itself fails (or ``try_generic`` is off), the cell is traced at its own size. The global RNG is
    left as it was (building cells draws from it)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return _derive_inner(cell, factory, try_generic)


def _derive_inner(cell: Any, factory: Any, try_generic: bool) -> _Derived:
    from ..trace import TraceError, trace_init

    d, n = cell.input_size, cell.hidden_size
    d2, n2 = _other_size(cell)
    step = init = None
    reason = "not tried: an earlier layer of the same cell holds at its own size only"
    if try_generic:
        try:
            step, other = _trace(cell, generic=True), factory(d2, n2)
            reason = _check_step_at(step, other, d2, n2)  # before the init's trace: a fixed step skips it
            if not reason:
                init = trace_init(cell, generic=True)
                reason = _check_init_at(init, other, n2)
            if not reason:
                return _Derived(step, init, True, _shape_exprs(cell, factory),
                                {"generic": True, "checked_at": {"input_size": d2, "hidden_size": n2},
                                 "input_equals_hidden": cell.short == "identity"})
        except (TraceError, ExportError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            reason = _first_line(exc)
    if step is None:
        step = _trace(cell)
    if init is None:
        try:
            init = trace_init(cell)
        except TraceError:
            init = None
    shapes = {path: _literal(t) for path, t in _tensors(cell)}
    return _Derived(step, init, False, shapes,
                    {"generic": False, "fixed": {"input_size": d, "hidden_size": n}, "reason": reason})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _other_size(cell: Any) -> tuple[int, int]:
    """A second (input, hidden) size that keeps the cell's short-input mode (x̃ = x needs d = n)."""
    n2, d2 = cell.hidden_size + 3, cell.input_size + 2
    if cell.short == "identity":
        return n2, n2
    return (d2 + 1 if d2 == n2 else d2), n2


def _tensors(cell: Any) -> list[tuple[str, Any]]:
    return [*cell.named_parameters(), *cell.named_buffers()]


def _literal(t: Any) -> str:
    return ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "")


def _check_step_at(step: Any, cell: Any, d: int, n: int) -> str:
    """'' if the generic step graphs equal ``cell`` (built at input size d, hidden size n) on one step with
    random input and state, else what differed."""
    import torch

    params = dict(cell.named_parameters())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        xp = torch.randn(3, cell.weight_ih.shape[0], generator=gen)
        xs = cell.short_input(torch.randn(3, d, generator=gen)) if step.short else None
        state = tuple(torch.randn(3, n, generator=gen) for _ in range(step.n_states))
        args = [params[p.removeprefix("cell.")] for p in step.param_paths]
        consts = step.prepare(*args, *([xp.device] if step.device else []), *([xp.dtype] if step.dtype else []))
        got = step.step(*consts, xp, *([xs] if step.short else []), *state)
        h, new = cell.update.step(cell.context(), xp, xs, state)
        diff = max(float((a - b).abs().max()) for a, b in zip(got, (h, *new)))
    if not diff < 1e-5:
        return f"the step traced with a symbolic size differs at hidden size {n} by {diff:.3g}"
    return ""


def _check_init_at(init: Any, cell: Any, n: int) -> str:
    """'' if the generic init graph draws what ``cell.reset_parameters()`` draws from the same seed."""
    import torch

    ref = cell.weight_ih
    mine = [p.detach().clone() for _, p in cell.named_parameters()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        init.init(*mine, *([ref.device] if init.device else []), *([ref.dtype] if init.dtype else []))
        torch.manual_seed(0)
        cell.reset_parameters()
    diff = max(float((a - b.detach()).abs().max()) for a, (_, b) in zip(mine, cell.named_parameters()))
    if not diff < 1e-5:
        return f"the initialization traced with a symbolic size differs at hidden size {n} by {diff:.3g}"
    return ""


def _shape_exprs(cell: Any, factory: Any) -> dict[str, str]:
    """Every parameter's and buffer's shape as an expression of d (input size) and n (hidden size),
    fitted over cells built at several sizes (c₀ + c₁d + c₂n + c₃n², halves allowed) and checked at
    every one of them."""

    if cell.short == "identity":
        points = [(n, n) for n in (5, 6, 7, 9, 10)]
    else:
        points = [(3, 5), (4, 6), (6, 5), (3, 7), (7, 9), (5, 10)]
    cells = [factory(d, n) for d, n in points]
    out = {}
    for path, t in _tensors(cell):
        dims = []
        for i in range(t.dim()):
            values = [dict(_tensors(c))[path].shape[i] for c in cells]
            dims.append(_fit(values, points, cell.short == "identity"))
        out[path] = ", ".join(dims) + ("," if t.dim() == 1 else "")
    return out


def _fit(values: list[int], points: list[tuple[int, int]], square: bool) -> str:
    import torch

    rows = [[1, d, n, n * n] for d, n in points]
    basis = torch.tensor(rows, dtype=torch.float64)[:, [0, 2, 3] if square else [0, 1, 2, 3]]
    sol = torch.linalg.lstsq(basis, torch.tensor(values, dtype=torch.float64)[:, None]).solution[:, 0]
    coef = [round(2 * float(c)) for c in sol]
    if square:
        coef.insert(1, 0)
    if any(sum(c * b for c, b in zip(coef, row)) != 2 * v for row, v in zip(rows, values)):
        raise ExportError(f"export: a parameter shape {values} at sizes {points} is not a polynomial of the sizes")
    return _poly(coef)


def _poly(coef: list[int]) -> str:
    """c₀ + c₁d + c₂n + c₃n², every c halved, as Python source."""
    half = any(c % 2 for c in coef)
    coef = coef if half else [c // 2 for c in coef]
    terms = []
    for c, sym in zip(coef, ("", "d", "n", "n * n")):
        if c == 0:
            continue
        mag = abs(c)
        text = sym if sym and mag == 1 else (f"{mag} * {sym}" if sym else str(mag))
        terms.append(("- " if c < 0 else "+ ") + text)
    expr = " ".join(terms).removeprefix("+ ") or "0"
    expr = expr if not expr.startswith("- ") else "-" + expr[2:]
    return f"({expr}) // 2" if half else expr


def _cell_code(cell: Any, cls: str, suffix: str, doc: list[str], earlier: list[_CellCode],
               factory: Any) -> _CellCode:
    derived = _derive(cell, factory, all(c.sizes["generic"] for c in earlier))
    traced = derived.step
    prepare, imports = _graph_function(traced.prepare, f"_prepare{suffix}")
    step, more = _graph_function(traced.step, f"_step{suffix}")
    functions = (f"# {cls}'s step, derived from the primitives' torch code by cellsearch.trace (ATen ops)\n"
                 f"{prepare}\n\n\n{step}\n")
    graphs, step_suffix = functions, suffix
    for other in earlier:  # the same step as an earlier class (only an input width differs): share it
        if other.graphs == _renamed(functions, suffix, other.suffix, cls, other.cls):
            functions, step_suffix = "", other.suffix
    functions += ("\n\n" if functions else "") + _loop_function(traced, step_suffix, suffix)
    init_fn, init_lines, init_imports = _init_code(derived.init, cls, suffix)
    init = ["super().__init__()", *_size_check(cell, derived), "d, n = input_size, hidden_size",
            "self.input_size, self.hidden_size = d, n"]
    for path, _ in cell.named_parameters():
        init.append(f"self.{_flat(path)} = nn.Parameter(torch.empty({derived.shapes[path]}))")
    for path, b in cell.named_buffers():
        init.append(f"self.register_buffer({_flat(path)!r}, torch.zeros({derived.shapes[path]}, dtype={b.dtype}))")
    init.append("self.reset_parameters()")
    args = ", ".join(f"self.{p}" for p in traced.params)
    body = (
        f"class {cls}(nn.Module):\n"
        '    """' + doc[0] + "\n\n" + _indent(doc[1:], 1).rstrip() + "\n\n"
        + _indent(_param_doc(cell, derived), 1) + "\n\n"
        "    forward(x [T, B, d], state) -> (out [T, B, n], state): time-major, one step per loop turn.\n"
        '    """\n\n'
        f"    def __init__(self, input_size: int = {cell.input_size}, hidden_size: int = {cell.hidden_size}"
        ") -> None:\n" + _indent(init, 2) + "\n\n"
        "    def reset_parameters(self) -> None:\n" + _indent(init_lines, 2) + "\n\n"
        "    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:\n"
        + _indent([
            "xp = F.linear(x, self.weight_ih, self.bias)  # every block's W x + b, all steps at once",
            f"xs = {_short_source(cell.short)}",
            f"out = _recurrence{suffix}({_tuple_source(args, len(traced.params))}, xp, xs, state, "
            "self.weight_ih.dtype)",
            "return out[0], out[1]"], 2) + "\n"
    )
    return _CellCode(cls, body, functions, init_fn, imports | more | init_imports, step_suffix,
                     derived.sizes, graphs if step_suffix == suffix else "")


def _tuple_source(args: str, count: int) -> str:
    return f"({args},)" if count == 1 else f"({args})"


def _size_check(cell: Any, derived: _Derived) -> list[str]:
    if not derived.generic:
        d, n = cell.input_size, cell.hidden_size
        why = derived.sizes["reason"].replace('"', "'")
        return [f"if (input_size, hidden_size) != ({d}, {n}):",
                f'    raise ValueError(f"{{type(self).__name__}}: derived for input_size={d}, hidden_size={n} '
                f'only, got {{input_size}}, {{hidden_size}} (at another size: {why})")']
    if cell.short == "identity":
        return ["if input_size != hidden_size:",
                '    raise ValueError(f"{type(self).__name__}: x̃ = x needs input_size == hidden_size, got '
                '{input_size}, {hidden_size}")']
    return []


def _short_source(short: str) -> str:
    return {"none": "None", "identity": "x", "project": "F.linear(x, self.weight_proj)  # x̃ = P x"}[short]


def _param_doc(cell: Any, derived: _Derived) -> list[str]:
    """The parameters by their attribute names, with shapes (n = hidden_size, d = input_size) and the
    gate-block order of ``weight_ih`` / ``bias``."""
    blocks = ", ".join(f"{b.name} [{_rows(i)}]" for i, b in enumerate(cell.blocks))
    lines = ["Parameters (d = input_size, n = hidden_size):", ""]
    for path, _ in _tensors(cell):
        lines.append(f"- {_flat(path)} [{derived.shapes[path].rstrip(',')}]")
    lines += ["", f"Rows of weight_ih and bias, by gate block (n rows each): {blocks}.", "", *_symbols(cell)]
    return lines


def _symbols(cell: Any) -> list[str]:
    """The formulas' symbols by the parameter names above."""
    names = [_flat(p) for p, _ in cell.named_parameters()]
    rec = [n for n in names if n.startswith("recurrence_")]
    out = ["Symbols: W = weight_ih, b = bias"]
    if rec:
        out.append(f"U = the recurrent matrices formed from {', '.join(rec)} in _prepare (rows by block, as W)")
    if cell.short == "project":
        out.append("P = weight_proj (x̃ = P x)")
    hidden = sorted({n.rsplit("_", 1)[0] for n in names if n.startswith("transition_layers_")})
    if hidden:  # z_1 = φ(candidate pre-activation); z_j = φ(W_j z_{j-1} + b_j), j = 2..L
        out.append("in the deep-transition formula, W_1 h + U x + b_1 is the candidate block of U h + W x + b "
                   "as named here, and W_j, b_j (j = 2..L) = "
                   + ", ".join(f"{base}_weight, {base}_bias" for base in hidden))
    if "transition_shortcut_weight" in names:
        out.append("W_s = transition_shortcut_weight")
    return _wrap("; ".join(out) + ".")


def _wrap(text: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def _rows(i: int) -> str:
    lo = "0" if i == 0 else ("n" if i == 1 else f"{i}n")
    hi = "n" if i == 0 else f"{i + 1}n"
    return f"{lo}:{hi}"


def _init_code(traced: Any, cls: str, suffix: str) -> tuple[str, list[str], set[str]]:
    """``_init<suffix>`` (the cell's own initialization, traced) and the body of ``reset_parameters``;
    where the init could not be traced, a body that says so (the weights then come only from ``load()``)."""
    if traced is None:
        return "", ['"""Not derived: the cell\'s initialization could not be traced; parameters start at',
                    'zero, load() gives the trained weights."""', "with torch.no_grad():",
                    "    for p in self.parameters():", "        p.zero_()"], set()
    src, imports = _graph_function(traced.init, f"_init{suffix}")
    args = [f"self.{p}" for p in traced.params]
    args += ["self.weight_ih.device"] if traced.device else []
    args += ["self.weight_ih.dtype"] if traced.dtype else []
    lines = ['"""The cell\'s own initialization (its init, recurrence and gate primitives), as cellsearch',
             'draws it: the same draws for the same torch RNG state."""', "with torch.no_grad():",
             f"    _init{suffix}({', '.join(args)})"]
    return f"# {cls}'s initialization, derived from its primitives by cellsearch.trace\n{src}\n", lines, imports


def _renamed(functions: str, suffix: str, other: str, cls: str, other_cls: str) -> str:
    out = functions.replace(f"def _prepare{suffix}(", f"def _prepare{other}(")
    out = out.replace(f"def _step{suffix}(", f"def _step{other}(")
    return out.replace(f"# {cls}'s step", f"# {other_cls}'s step", 1)


def _flat(path: str) -> str:
    from ..trace import flat_name

    return flat_name(path)


def _loop_function(traced: Any, step_suffix: str, suffix: str) -> str:
    """``_recurrence<suffix>``: the loop over time, a leaf for torch.fx (``torch.fx.wrap``). Under autocast
    the recurrence runs with it off in the parameters' dtype (as cellsearch's cells do); under
    torch.export it is a scan, which keeps T (and batch) symbolic; otherwise a plain loop."""
    extra = (["xp.device"] if traced.device else []) + (["dtype"] if traced.dtype else [])
    loop = "for xp_t, xs_t in zip(xp.unbind(0), xs.unbind(0)):" if traced.short else "for xp_t in xp.unbind(0):"
    step_args = "*consts, xp_t, xs_t, *state" if traced.short else "*consts, xp_t, *state"
    inputs = "(xp, xs)" if traced.short else "(xp,)"
    lines = [
        '"""The loop over time: xp = W x + b [T, B, ·] and the short input xs for every step, precomputed;',
        'returns (out [T, B, n], final state)."""',
        "if torch.is_autocast_enabled(xp.device.type):  # bf16/fp16 input GEMM, recurrence in the weights' dtype",
        "    with torch.autocast(xp.device.type, enabled=False):",
        "        xs = None if xs is None else xs.to(dtype)",
        f"        return _recurrence{suffix}(params, xp.to(dtype), xs, tuple(s.to(dtype) for s in state), dtype)",
        f"consts = _prepare{step_suffix}(*params{''.join(', ' + e for e in extra)})  # once per sequence",
        "if torch.compiler.is_exporting():  # torch.export: a scan keeps T (and batch) symbolic",
        f"    return _scan(_step{step_suffix}, consts, {inputs}, tuple(state))",
        "outs = []",
        loop,
        f"    out = _step{step_suffix}({step_args})",
        "    outs.append(out[0])",
        "    state = out[1:]",
        "return torch.stack(outs), tuple(state)",
    ]
    return ("@torch.fx.wrap\n"
            f"def _recurrence{suffix}(params: tuple[Tensor, ...], xp: Tensor, xs: Tensor | None, "
            "state: tuple[Tensor, ...],\n"
            f"{' ' * (16 + len(suffix))}dtype: torch.dtype) -> tuple[Tensor, tuple[Tensor, ...]]:\n"
            + _indent(lines, 1) + "\n")


def _indent(lines: list[str], level: int) -> str:
    pad = "    " * level
    return "\n".join(pad + line if line else "" for line in lines)


class _Size(int):
    """A size that the export writes by its name (``input_size``, ``n``), so the generated ``Model`` takes
    other sizes; a part computed from sizes by arithmetic is written as the number it came to."""

    def __new__(cls, value: int, name: str) -> _Size:
        obj = super().__new__(cls, value)
        obj.label = name
        return obj

    def __repr__(self) -> str:
        return self.label


def _stack_parts(spec: Any) -> dict[str, list[Any]]:
    """The depth primitives' parts around the exported layers, their sizes written by name."""
    from ..depth import stack_parts

    return stack_parts(spec.depth, _Size(spec.input_size, "input_size"), _Size(spec.hidden_size, "n"))


def _depth_source(parts: dict[str, list[Any]]) -> str:
    """The depth arrangement and the classes of the parts it runs, as cellsearch defines them (their
    source, written once beside their primitives: torch only)."""
    import inspect

    from ..primitives.depth import arrange

    classes = list(dict.fromkeys(p.cls for ps in parts.values() for p in ps))
    return "".join("\n\n" + inspect.getsource(obj) for obj in [*classes, arrange])


def _layer_calls(classes: list[str]) -> list[str]:
    return [f"{c}(first, n)" if i == 0 else f"{c}(n, n)" for i, c in enumerate(classes)]


def _model_source(spec: Any, readout: str, classes: list[str], n_states: int, parts: dict[str, list[Any]]) -> str:
    depth = spec.depth
    init = [
        "super().__init__()",
        "self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size",
        "n = hidden_size",
        *[f"self.{p.attribute} = {p.call_source()}" for p in parts["input"]],
        f"first = {'n' if parts['input'] else 'input_size'}",
        f"self.layers = nn.ModuleList([{', '.join(_layer_calls(classes))}])",
        *[f"self.{p.attribute} = {p.call_source()}" for p in parts["join"] + parts["output"]],
        "self.head = nn.Linear(n, output_size)",
    ]
    stages = {k: "[" + ", ".join(f"self.{p.attribute}" for p in ps) + "]" for k, ps in parts.items()}
    zeros = ", ".join(["x.new_zeros(batch, self.hidden_size)"] * n_states)
    shape = "[batch, output_size]" if readout == "last" else "[batch, time, output_size]"
    fwd = [
        f'"""x [batch, time, input_size] → (y {shape}, state): one state tuple per layer, each tensor',
        '[batch, hidden_size]; ``state=None`` starts from zeros."""',
        "_check_input(x, self.input_size)",
        "batch = x.shape[0]",
        "if state is None:",
        f"    state = tuple(({zeros},) for _ in self.layers)",
        f"seq, finals = arrange(x.transpose(0, 1), state, list(self.layers), {stages['input']},",
        f"                      {stages['join']}, {stages['output']})",
        "out = seq.transpose(0, 1)",
    ]
    if readout == "last":
        fwd.append("out = out[:, -1]  # the top layer's last step")
    fwd.append("return self.head(out), finals")
    what = "the top layer's last step" if readout == "last" else "every step of the top layer"
    return (
        "class Model(nn.Module):\n"
        f'    """{depth.layers} layer(s) of {classes[0]} (arranged by `arrange`), then a linear head on {what}.\n\n'
        f"    Model() has the exported sizes (input_size={spec.input_size}, hidden_size={spec.hidden_size}, "
        f"output_size={spec.output_size}),\n"
        "    with the cell's own initialization; `load()` fills it with the trained weights. Other sizes give\n"
        "    a fresh model of the same cell to train from scratch (use `param_groups` for the optimizer).\n"
        + "".join(f"    {p.attribute}: {_first_line(p.cls)}\n" for ps in parts.values() for p in ps)
        + '    """\n\n'
        f"    def __init__(self, input_size: int = {spec.input_size}, hidden_size: int = {spec.hidden_size}, "
        f"output_size: int = {spec.output_size}) -> None:\n" + _indent(init, 2) + "\n\n"
        "    def forward(self, x: Tensor, state: tuple[tuple[Tensor, ...], ...] | None = None\n"
        "                ) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:\n" + _indent(fwd, 2) + "\n"
    )


def _first_line(obj: Any) -> str:
    return (obj.__doc__ or obj.__name__).strip().splitlines()[0]


def _cell_doc(spec: Any, published: str | None) -> list[str]:
    from ..primitives.base import formula_of
    from ..registry import get_cell_card, get_primitive

    if published:
        try:
            card = get_cell_card(published)
            return [f"{published}: {card.formula}", *card.equations.splitlines()]
        except LookupError:
            pass
    lines = []
    for role in CELL_ROLES:
        name = getattr(spec.cell, role)
        lines.append(f"{role} {name}: {formula_of(get_primitive(role, name))}")
    return lines


def _cells_code(model: Any, doc: list[str]) -> tuple[list[str], list[_CellCode]]:
    """One generated class per distinct layer (the first layer's input width may differ): the class
    name of every layer, and the classes."""
    from ..cells import ComposedCell

    depth = model.spec.depth
    classes: list[str] = []
    codes: list[_CellCode] = []
    seen: dict[tuple, str] = {}

    def factory(d: int, n: int) -> Any:
        return ComposedCell(model.spec.cell, d, n, depth.transition, depth.transition_layers)

    for cell in model.rnn.layers:
        key = tuple((k, tuple(p.shape)) for k, p in cell.state_dict().items())
        # a class derived for any size serves every layer with the same parameters and short input
        kind = (cell.short, tuple(cell.state_dict()))
        if key not in seen and kind in seen and codes[[c.cls for c in codes].index(seen[kind])].sizes["generic"]:
            seen[key] = seen[kind]
        if key not in seen:
            i = len(codes)
            cls = "Cell" if i == 0 else f"Cell{i + 1}"
            codes.append(_cell_code(cell, cls, "" if i == 0 else f"_{i + 1}", doc, codes, factory))
            seen[key] = seen[kind] = cls
        classes.append(seen[key])
    return classes, codes


def generate_source(model: Any, name: str | None = None, published: str | None = None,
                    weights_sha256: str = "", report: dict[str, Any] | None = None) -> str:
    """Python source (torch only) of a standalone module equivalent to ``model`` (a SequenceModel);
    ``load()`` checks the weights file beside it against ``weights_sha256``. ``report``, when given,
    receives how each cell class takes other sizes (``{"sizes": {class: ...}}``) for the card."""
    spec = model.spec
    name = name or module_name(model, published)
    classes, codes = _cells_code(model, _cell_doc(spec, published))
    if report is not None:
        report["sizes"] = {c.cls: c.sizes for c in codes}
    imports = sorted({line for c in codes for g in c.imports for line in [_GRAPH_GLOBALS[g]]})
    header = (
        f'"""{name}: a recurrent model exported by cellsearch.\n\n'
        "Standalone: imports torch only. `load()` builds the model and loads the trained weights beside "
        "this file;\n`Model(input_size, hidden_size, output_size)` builds a fresh one to train from scratch.\n\n"
        "    import " + name + " as m\n"
        "    model = m.load()\n"
        f"    y, state = model(torch.randn(4, 20, {spec.input_size}))   # [batch, time, input_size]\n"
        "    fresh = m.Model(hidden_size=64)\n"
        "    opt = torch.optim.Adam(m.param_groups(fresh, lr=1e-3))\n\n"
        "Spec:\n\n" + _indent(yaml.safe_dump(spec.to_dict(), sort_keys=False).splitlines(), 1) + '\n"""\n\n'
        "from __future__ import annotations\n\nimport hashlib\nimport json\nimport struct\nfrom pathlib import Path\n\n"
        "import torch\nimport torch.fx\nimport torch.nn.functional as F\nfrom torch import Tensor, nn\n"
        + "".join(f"{line}\n" for line in imports if line.startswith("from "))
        + "\n" + "".join(f"{line}\n" for line in imports if not line.startswith("from "))
        + f"WEIGHTS_SHA256 = {weights_sha256!r}  # of the .safetensors file beside this module\n"
        f"LR_SCALES = {_lr_groups(model)!r}  # parameter -> learning-rate scale its primitive asks for\n"
    )
    parts = [header, INPUT_CHECK]
    for code in codes:
        parts += ["\n\n" + f for f in (code.functions, code.init_function) if f] + ["\n\n" + code.source]
    n_states = model.rnn.layers[0].update.n_states
    stack = _stack_parts(spec)
    parts += [SCAN, _depth_source(stack), "\n\n" + _model_source(spec, model.readout, classes, n_states, stack),
              "\n" + LOADER]
    return "".join(parts)


cell_doc = _cell_doc
