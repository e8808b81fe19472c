"""The standalone module's source: the cell's step and initialization derived by :mod:`cellsearch.trace`
(no primitive is named here), the time loop, the depth arrangement, the model and its loader."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from ..spec import CELL_ROLES, CellSpec
from .errors import ExportError
from .templates import LOADER, SCAN
from .weights import _lr_groups

__all__ = ["generate_source", "module_name", "cell_doc"]

# names the generated graph code may use, and the line that defines each in the exported module
_GRAPH_GLOBALS = {"torch": None, "device": "from torch import device", "inf": 'inf = float("inf")',
                  "nan": 'nan = float("nan")'}


def module_name(model: Any, published: str | None = None) -> str:
    """A Python module name for the export: the published cell's name, or one built from the spec."""
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
    shares an earlier class's functions)."""

    cls: str
    source: str
    functions: str
    init_function: str
    imports: set[str]
    suffix: str


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


def _trace(cell: Any) -> Any:
    from ..trace import TraceError, trace_step

    try:
        return trace_step(cell)
    except TraceError as exc:
        prims = ", ".join(f"{role} {getattr(cell, role).name!r}" for role in ("update", "gate", "saturation"))
        raise ExportError(f"export: the step of the cell ({prims}) could not be traced into a graph: "
                          f"{exc}") from None


def _cell_code(cell: Any, cls: str, suffix: str, doc: list[str], earlier: list[_CellCode]) -> _CellCode:
    traced = _trace(cell)
    prepare, imports = _graph_function(traced.prepare, f"_prepare{suffix}")
    step, more = _graph_function(traced.step, f"_step{suffix}")
    functions = (f"# {cls}'s step, derived from the primitives' torch code by cellsearch.trace (ATen ops)\n"
                 f"{prepare}\n\n\n{step}\n")
    step_suffix = suffix
    for other in earlier:  # the same step as an earlier class (only an input width differs): share it
        if other.functions and other.functions == _renamed(functions, suffix, other.suffix, cls, other.cls):
            functions, step_suffix = "", other.suffix
    init_fn, init_lines, init_imports = _init_code(cell, cls, suffix)
    init = ["super().__init__()", f"self.input_size, self.hidden_size = {cell.input_size}, {cell.hidden_size}"]
    for path, p in cell.named_parameters():
        init.append(f"self.{_flat(path)} = nn.Parameter(torch.zeros({_shape(p)}))")
    for path, b in cell.named_buffers():
        init.append(f"self.register_buffer({_flat(path)!r}, torch.zeros({_shape(b)}, dtype={b.dtype}))")
    init.append("self.reset_parameters()")
    body = (
        f"class {cls}(nn.Module):\n"
        '    """' + doc[0] + "\n\n" + _indent(doc[1:], 1).rstrip() + "\n\n"
        "    forward(x [T, B, d], state) -> (out [T, B, n], state); time-major, one step per loop turn.\n"
        '    """\n\n'
        "    def __init__(self) -> None:\n" + _indent(init, 2) + "\n\n"
        "    def reset_parameters(self) -> None:\n" + _indent(init_lines, 2) + "\n\n"
        "    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:\n"
        + _indent(_forward_lines(cell.short), 2) + "\n\n"
        "    def recurrence(self, xp: Tensor, xs: Tensor | None, state: tuple[Tensor, ...]"
        ") -> tuple[Tensor, tuple[Tensor, ...]]:\n"
        '        """The loop over time: xp = W x + b for every step, precomputed."""\n'
        + _indent(_recurrence_lines(traced, step_suffix), 2) + "\n"
    )
    return _CellCode(cls, body, functions, init_fn, imports | more | init_imports, step_suffix)


def _init_code(cell: Any, cls: str, suffix: str) -> tuple[str, list[str], set[str]]:
    """``_init<suffix>`` (the cell's own initialization, traced) and the body of ``reset_parameters``;
    where the init cannot be traced, a body that says so (the weights then come only from ``load()``)."""
    from ..trace import TraceError, trace_init

    try:
        traced = trace_init(cell)
    except TraceError as exc:
        reason = str(exc).replace('"', "'")[:200]
        return "", [f'"""Not derived: the cell\'s initialization could not be traced ({reason}).',
                    "", 'Parameters start at zero; load() gives the trained weights."""'], set()
    src, imports = _graph_function(traced.init, f"_init{suffix}")
    args = [f"self.{p}" for p in traced.params]
    args += ["self.weight_ih.device"] if traced.device else []
    args += ["self.weight_ih.dtype"] if traced.dtype else []
    lines = ['"""The cell\'s own initialization (its init, recurrence and gate primitives), as cellsearch',
             'draws it: same numbers for the same torch RNG state."""', "with torch.no_grad():",
             f"    _init{suffix}({', '.join(args)})"]
    return f"# {cls}'s initialization, derived from its primitives by cellsearch.trace\n{src}\n", lines, imports


def _renamed(functions: str, suffix: str, other: str, cls: str, other_cls: str) -> str:
    out = functions.replace(f"def _prepare{suffix}(", f"def _prepare{other}(")
    out = out.replace(f"def _step{suffix}(", f"def _step{other}(")
    return out.replace(f"# {cls}'s step", f"# {other_cls}'s step", 1)


def _flat(path: str) -> str:
    from ..trace import flat_name

    return flat_name(path)


def _shape(t: Any) -> str:
    return ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "")


def _forward_lines(short: str) -> list[str]:
    """Cell.forward: the hoisted input GEMM and the short input x̃; under autocast the recurrence runs
    with it off, in the parameters' dtype (as cellsearch's own cells do)."""
    xs = {"none": "None", "identity": "x", "project": "F.linear(x, self.weight_proj)"}[short]
    return [
        "xp = F.linear(x, self.weight_ih, self.bias)",
        f"xs = {xs}",
        "if torch.is_autocast_enabled(x.device.type):  # bf16/fp16 input GEMM, float32 recurrence",
        "    with torch.autocast(x.device.type, enabled=False):",
        "        dt = self.weight_ih.dtype",
        "        xs = None if xs is None else xs.to(dt)",
        "        return self.recurrence(xp.to(dt), xs, tuple(s.to(dt) for s in state))",
        "return self.recurrence(xp, xs, state)",
    ]


def _recurrence_lines(traced: Any, suffix: str) -> list[str]:
    args = [f"self.{p}" for p in traced.params]
    args += ["xp.device"] if traced.device else []
    args += ["self.weight_ih.dtype"] if traced.dtype else []
    loop = "for xp_t, xs_t in zip(xp.unbind(0), xs.unbind(0)):" if traced.short else "for xp_t in xp.unbind(0):"
    step_args = "*consts, xp_t, xs_t, *state" if traced.short else "*consts, xp_t, *state"
    inputs = "(xp, xs)" if traced.short else "(xp,)"
    return [
        f"consts = _prepare{suffix}({', '.join(args)})  # once per sequence",
        "if torch.compiler.is_exporting():  # torch.export: a scan keeps T (and batch) symbolic",
        f"    return _scan(_step{suffix}, consts, {inputs}, state)",
        "outs = []",
        loop,
        f"    out = _step{suffix}({step_args})",
        "    outs.append(out[0])",
        "    state = out[1:]",
        "return torch.stack(outs), tuple(state)",
    ]


def _indent(lines: list[str], level: int) -> str:
    pad = "    " * level
    return "\n".join(pad + line if line else "" for line in lines)


def _depth_source() -> str:
    """The depth arrangement and its modules, as cellsearch defines them (their source, written once in
    :mod:`cellsearch.primitives.depth`: torch only)."""
    import inspect

    from ..primitives.depth import DeepMLP, arrange

    return "\n\n" + inspect.getsource(DeepMLP) + "\n\n" + inspect.getsource(arrange)


def _model_source(spec: Any, readout: str, classes: list[str], n_states: int) -> str:
    depth, n = spec.depth, spec.hidden_size
    init = [
        "super().__init__()",
        "n = HIDDEN_SIZE",
        f"self.input_mlp = DeepMLP(INPUT_SIZE, n, {depth.input_layers})" if depth.input_layers
        else "self.input_mlp = None",
        f"self.layers = nn.ModuleList([{', '.join(f'{c}()' for c in classes)}])",
        f"self.dropout = nn.Dropout({depth.dropout!r})" if depth.dropout > 0 and depth.layers > 1
        else "self.dropout = None",
        f"self.output_mlp = DeepMLP(n, n, {depth.output_layers})" if depth.output_layers
        else "self.output_mlp = None",
        f"self.residual = {bool(depth.residual)!r}",
        "self.head = nn.Linear(n, OUTPUT_SIZE)",
    ]
    zeros = ", ".join(["x.new_zeros(batch, HIDDEN_SIZE)"] * n_states)
    fwd = [
        '"""x [B, T, d] → (y, state): y [B, out] (readout last) or [B, T, out] (readout all)."""',
        "if x.dim() != 3 or x.shape[-1] != INPUT_SIZE:",
        '    raise ValueError(f"expected input [batch, time, {INPUT_SIZE}], got shape {tuple(x.shape)}")',
        "if x.shape[1] == 0:",
        '    raise ValueError("expected at least one time step, got an input with T = 0")',
        "batch = x.shape[0]",
        "if state is None:",
        f"    state = tuple(({zeros},) for _ in range(NUM_LAYERS))",
        "seq, finals = arrange(x.transpose(0, 1), state, list(self.layers), self.input_mlp, self.output_mlp,",
        "                      self.dropout, self.residual)",
        "out = seq.transpose(0, 1)",
    ]
    if readout == "last":
        fwd.append("out = out[:, -1]")
    fwd.append("return self.head(out), finals")
    return (
        "class Model(nn.Module):\n"
        f'    """{readout!r} readout over {depth.layers} layer(s) of Cell, hidden size {n} (the arrangement: '
        '`arrange`)."""\n\n'
        "    def __init__(self) -> None:\n" + _indent(init, 2) + "\n\n"
        "    def forward(self, x: Tensor, state: tuple[tuple[Tensor, ...], ...] | None = None\n"
        "                ) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:\n" + _indent(fwd, 2) + "\n"
    )


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
    for role in ("update", "gate", "init", "saturation", "recurrence"):
        name = getattr(spec.cell, role)
        lines.append(f"{role} {name}: {formula_of(get_primitive(role, name))}")
    return lines


def _cells_code(model: Any, doc: list[str]) -> tuple[list[str], list[_CellCode]]:
    """One generated class per distinct layer (the first layer's input width may differ): the class
    name of every layer, and the classes."""
    classes: list[str] = []
    codes: list[_CellCode] = []
    seen: dict[tuple, str] = {}
    for cell in model.rnn.layers:
        key = tuple((k, tuple(p.shape)) for k, p in cell.state_dict().items())
        if key not in seen:
            i = len(codes)
            cls = "Cell" if i == 0 else f"Cell{i + 1}"
            codes.append(_cell_code(cell, cls, "" if i == 0 else f"_{i + 1}", doc, codes))
            seen[key] = cls
        classes.append(seen[key])
    return classes, codes


def generate_source(model: Any, name: str | None = None, published: str | None = None,
                    weights_sha256: str = "") -> str:
    """Python source (torch only) of a standalone module equivalent to ``model`` (a SequenceModel);
    ``load()`` checks the weights file beside it against ``weights_sha256``."""
    spec = model.spec
    name = name or module_name(model, published)
    classes, codes = _cells_code(model, _cell_doc(spec, published))
    imports = sorted({line for c in codes for g in c.imports for line in [_GRAPH_GLOBALS[g]]})
    header = (
        f'"""{name}: a recurrent model exported by cellsearch.\n\n'
        "Standalone: imports torch only. `load()` builds the model and loads the weights beside this "
        "file.\n\n"
        "    import " + name + " as m\n"
        "    model = m.load()\n"
        f"    y, state = model(torch.randn(4, 20, {spec.input_size}))   # [batch, time, features]\n\n"
        "Spec:\n\n" + _indent(yaml.safe_dump(spec.to_dict(), sort_keys=False).splitlines(), 1) + '\n"""\n\n'
        "from __future__ import annotations\n\nimport hashlib\nimport json\nimport struct\nfrom pathlib import Path\n"
        "from typing import Any\n\n"
        "import torch\nimport torch.nn.functional as F\nfrom torch import Tensor, nn\n"
        + "".join(f"{line}\n" for line in imports if line.startswith("from "))
        + "\n" + "".join(f"{line}\n" for line in imports if not line.startswith("from "))
        + f"INPUT_SIZE = {spec.input_size}\nHIDDEN_SIZE = {spec.hidden_size}\n"
        f"OUTPUT_SIZE = {spec.output_size}\nNUM_LAYERS = {spec.depth.layers}\n"
        f"WEIGHTS_SHA256 = {weights_sha256!r}  # of the .safetensors file beside this module\n"
        f"LR_SCALES = {_lr_groups(model)!r}  # parameter -> learning-rate scale its primitive asks for\n"
    )
    parts = [header]
    for code in codes:
        parts += ["\n\n" + f for f in (code.functions, code.init_function) if f] + ["\n\n" + code.source]
    n_states = model.rnn.layers[0].update.n_states
    parts += [SCAN, _depth_source(), "\n\n" + _model_source(spec, model.readout, classes, n_states), "\n" + LOADER]
    return "".join(parts)


cell_doc = _cell_doc
