"""Export a trained model as standalone PyTorch source + safetensors weights (torch.fx ``to_folder`` style).

``export_model(model, out_dir)`` writes into ``out_dir``:

- ``<cell>.py`` — imports torch only (never cellsearch): the cell's step as two functions derived from the
  registered primitives' own torch code (:mod:`cellsearch.trace`: ``_prepare`` once per sequence,
  ``_step`` once per time step, in ATen ops), a ``Cell`` class (hoisted input GEMM and the time loop), a
  ``Model`` class (deep input → stacked cells with residual / dropout → deep output → readout → linear
  head) and ``load(weights_path=None) -> nn.Module`` that builds the model and loads the weights beside
  the file (a small safetensors reader is included, so not even the ``safetensors`` package is needed);
- ``<cell>.safetensors`` — the weights (no pickle);
- ``spec.yaml`` — the ModelSpec, readout, task, study, trial, metrics, versions, weights digest;
- ``MODEL_CARD.md`` — what it is, how it was found, how to use it.

No primitive is named here: any registered primitive, a plugin's included, exports through the trace of
its step. The generated forward performs the same tensor operations, in the same order, as the
framework's :class:`~cellsearch.model.SequenceModel`, so outputs agree to float rounding (|Δ| < 1e-6)
and the module passes ``torch.export.export``. Generated source is the durable artefact: it stays
loadable across cellsearch versions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cli import UserError

__all__ = ["ExportError", "export", "export_model", "export_state_dict", "generate_source", "module_name"]

# weights outside the cells keep their names; a cell's weights become layers.<i>.<path with _ for .>
_MODEL_RENAMES = [
    (r"^rnn\.(input_mlp|output_mlp)\.(.+)$", r"\1.\2"),
    (r"^head\.(weight|bias)$", r"head.\1"),
]
_CELL_KEY = re.compile(r"^rnn\.layers\.(\d+)\.(.+)$")
# names the generated graph code may use, and the line that defines each in the exported module
_GRAPH_GLOBALS = {"torch": None, "device": "from torch import device", "inf": 'inf = float("inf")',
                  "nan": 'nan = float("nan")'}


class ExportError(UserError):
    """A model that cannot be exported (e.g. a primitive whose step cannot be traced into a graph)."""


# ------------------------------------------------------------------------------------------------
# Weights


def export_state_dict(model: Any) -> dict[str, Any]:
    """The model's weights under the exported module's names (contiguous CPU copies)."""
    out = {}
    for key, value in model.state_dict().items():
        new = _rename(key)
        if new is None:
            raise ExportError(f"export: weight {key!r} has no place in the generated module")
        out[new] = value.detach().to("cpu").contiguous().clone()
    return out


def _rename(key: str) -> str | None:
    from .trace import flat_name

    match = _CELL_KEY.match(key)
    if match:
        return f"layers.{match.group(1)}.{flat_name(match.group(2))}"
    for pattern, repl in _MODEL_RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


# ------------------------------------------------------------------------------------------------
# Code generation


def module_name(model: Any, published: str | None = None) -> str:
    """A Python module name for the export: the published cell's name, or one built from the spec."""
    if published:
        base = published
    else:
        cell, depth = model.spec.cell, model.spec.depth
        parts = [cell.update]
        parts += [
            getattr(cell, role)
            for role, default in (
                ("gate", "sigmoid"),
                ("init", "default"),
                ("saturation", "tanh"),
                ("recurrence", "free"),
            )
            if getattr(cell, role) != default
        ]
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
    from .trace import TraceError, trace_step

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
    from .trace import TraceError, trace_init

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
    from .trace import flat_name

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


_SCAN = '''

def _scan(step, consts: tuple, inputs: tuple[Tensor, ...], state: tuple[Tensor, ...]
          ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The time loop as torch's scan (used under torch.export; eager runs the plain loop, the same math)."""
    from torch._higher_order_ops.scan import scan

    consts = tuple(c.clone() if isinstance(c, Tensor) else c for c in consts)  # scan refuses aliased inputs

    def combine(carry: tuple[Tensor, ...], x: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
        out = step(*consts, *x, *carry)
        return tuple(s.clone() for s in out[1:]), out[0].clone()

    final, outs = scan(combine, tuple(state), inputs)
    return outs, tuple(final)
'''

_LOADER = '''
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Read a .safetensors file (8-byte header length, JSON header, raw little-endian data); no pickle."""
    data = Path(path).read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]
    out = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        dtype = _DTYPES[meta["dtype"]]
        raw = bytearray(body[start:end])
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[key] = flat.reshape(meta["shape"]).clone()
    return out


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """Optimizer parameter groups: every parameter at ``lr`` times its scale in LR_SCALES (1 if absent)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        groups.setdefault(LR_SCALES.get(name, 1.0), []).append(p)
    return [{"params": params, "lr": lr * scale} for scale, params in groups.items()]


def load(weights_path: str | Path | None = None, device: str | torch.device = "cpu") -> Model:
    """Build the model and load its weights (default: the .safetensors file beside this module, whose
    sha256 must equal WEIGHTS_SHA256: a changed or truncated file is refused)."""
    path = Path(weights_path) if weights_path is not None else Path(__file__).with_suffix(".safetensors")
    if weights_path is None and WEIGHTS_SHA256:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise ValueError(f"{path}: sha256 {digest[:16]}… is not the exported weights' "
                             f"{WEIGHTS_SHA256[:16]}… (the file was changed or truncated)")
    model = Model()
    model.load_state_dict(read_safetensors(path), strict=True)
    return model.to(device).eval()
'''


def _model_source(spec: Any, readout: str, classes: list[str], n_states: int) -> str:
    depth, n = spec.depth, spec.hidden_size
    init = ["super().__init__()", "n = HIDDEN_SIZE"]
    fwd = [
        '"""x [B, T, d] → (y, state): y [B, out] (readout last) or [B, T, out] (readout all)."""',
        "if x.dim() != 3 or x.shape[-1] != INPUT_SIZE:",
        '    raise ValueError(f"expected input [batch, time, {INPUT_SIZE}], got shape {tuple(x.shape)}")',
        "if x.shape[1] == 0:",
        '    raise ValueError("expected at least one time step, got an input with T = 0")',
        "seq = x.transpose(0, 1)  # time-major",
    ]
    if depth.input_layers:
        mods = ", ".join(
            f"nn.Linear({'INPUT_SIZE' if i == 0 else 'n'}, n), nn.Tanh()" for i in range(depth.input_layers)
        )
        init.append(f"self.input_mlp = nn.Sequential({mods})  # deep input")
        fwd.append("seq = self.input_mlp(seq)")
    init.append(f"self.layers = nn.ModuleList([{', '.join(f'{c}()' for c in classes)}])")
    if depth.dropout > 0 and depth.layers > 1:
        init.append(f"self.dropout = nn.Dropout({depth.dropout!r})  # between stacked layers")
    if depth.output_layers:
        mods = ", ".join("nn.Linear(n, n), nn.Tanh()" for _ in range(depth.output_layers))
        init.append(f"self.output_mlp = nn.Sequential({mods})  # deep output")
    init.append("self.head = nn.Linear(n, OUTPUT_SIZE)")
    zeros = ", ".join(["seq.new_zeros(batch, HIDDEN_SIZE)"] * n_states)
    fwd += [
        "batch = x.shape[0]",
        "if state is None:",
        f"    state = tuple(({zeros},) for _ in range(NUM_LAYERS))",
    ]
    for i in range(len(classes)):
        fwd.append(f"out, s{i} = self.layers[{i}](seq, state[{i}])")
        if depth.residual:
            fwd.append("out = out + seq if out.shape == seq.shape else out  # residual")
        last = i == len(classes) - 1
        fwd.append("seq = self.dropout(out)" if depth.dropout > 0 and not last else "seq = out")
    if depth.output_layers:
        fwd.append("seq = self.output_mlp(seq)")
    fwd.append("out = seq.transpose(0, 1)")
    if readout == "last":
        fwd.append("out = out[:, -1]")
    finals = ", ".join(f"s{i}" for i in range(len(classes)))
    finals = f"({finals},)" if len(classes) == 1 else f"({finals})"
    fwd.append(f"return self.head(out), {finals}")
    return (
        "class Model(nn.Module):\n"
        f'    """{readout!r} readout over {depth.layers} layer(s) of Cell, hidden size {n}."""\n\n'
        "    def __init__(self) -> None:\n" + _indent(init, 2) + "\n\n"
        "    def forward(self, x: Tensor, state: tuple[tuple[Tensor, ...], ...] | None = None\n"
        "                ) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:\n" + _indent(fwd, 2) + "\n"
    )


def _cell_doc(spec: Any, published: str | None) -> list[str]:
    from .primitives.base import formula_of
    from .registry import get_cell_card, get_primitive

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
        "from __future__ import annotations\n\nimport hashlib\nimport json\nimport struct\nfrom pathlib import Path\n\n"
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
    parts += [_SCAN, "\n\n" + _model_source(spec, model.readout, classes, model.rnn.layers[0].update.n_states),
              "\n" + _LOADER]
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# Writing an export folder


def _versions() -> dict[str, str]:
    import torch

    from . import __version__

    out = {"cellsearch": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import optuna

        out["optuna"] = optuna.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def export_model(
    model: Any,
    out_dir: str | Path,
    name: str | None = None,
    published: str | None = None,
    meta: Mapping[str, Any] | None = None,
    force: bool = False,
    check: bool = True,
) -> Path:
    """Write ``<name>.py``, ``<name>.safetensors``, ``spec.yaml``, ``MODEL_CARD.md``; return the .py path.

    The files are written into a temporary folder beside ``out_dir`` and moved into place at the end, so
    a failure (a full disk, an untraceable cell) leaves no partial export. A non-empty ``out_dir`` is
    refused unless ``force`` (then it is replaced whole). With ``check`` the written module is imported
    and checked before it is moved into place (:func:`check_export`: parity with ``model``, torch.export
    with dynamic batch and time, TorchScript, torch.fx); the results go into spec.yaml and the card."""
    out = _check_target(Path(out_dir), force)
    name = name or module_name(model, published)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_export(model, tmp, name, published, dict(meta or {}), check)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / f"{name}.py"


def _check_target(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ExportError(f"export: {out} is a file; --out takes a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"export: {out} is not empty; choose an empty or new folder, or pass --force "
                          "(force=True) to replace it")
    return out


def _write_export(model: Any, folder: Path, name: str, published: str | None, meta: dict[str, Any],
                  check: bool) -> None:
    from safetensors.torch import save_file

    weights = folder / f"{name}.safetensors"
    save_file(export_state_dict(model), str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / f"{name}.py").write_text(generate_source(model, name, published, digest), encoding="utf-8")
    if check:
        meta = {**meta, "checks": check_export(folder / f"{name}.py", model)}
    if isinstance(meta.get("task"), Mapping) and "task_description" not in meta:
        meta["task_description"] = _describe_task(meta["task"])
    info = json.loads(json.dumps(_spec_info(model, name, published, digest, meta), default=str))
    (folder / "spec.yaml").write_text(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (folder / "MODEL_CARD.md").write_text(_model_card(model, name, published, info), encoding="utf-8")
    mode = 0o666 & ~_umask()
    for path in folder.iterdir():  # one mode for every file (safetensors writes its own 0600 otherwise)
        path.chmod(mode)
    folder.chmod(0o777 & ~_umask())


def _describe_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Data summary, metric and memoryless baseline of a task, read from its class (no data is loaded)."""
    from .registry import get_task

    try:
        cls = get_task(str(task.get("name")))
    except LookupError:
        return {}
    doc = (cls.__doc__ or "").strip().splitlines()
    baseline = getattr(cls, "baseline", None)
    return {"summary": doc[0] if doc else "", "metric": getattr(cls, "metric", None),
            "direction": getattr(cls, "metric_direction", "minimize"),
            "baseline": float(baseline) if isinstance(baseline, (int, float)) else None}


CHECK_SHAPES = ((3, 7), (5, 33), (1, 1))  # (batch, time) the export is checked at; exported at (4, 20)


def check_export(py: Path, model: Any) -> dict[str, Any]:
    """Import the written module and check it against ``model`` (a SequenceModel): eager outputs at
    :data:`CHECK_SHAPES`, ``torch.export.export`` with dynamic batch and time (outputs at the same
    shapes), ``torch.jit.script`` and ``torch.fx.symbolic_trace``. Returns what ran and what came out;
    an eager mismatch is an :class:`ExportError` (the module would be wrong)."""
    import torch

    module, exported = _import_module(py), None
    try:
        exported = module.load()
        inputs = [torch.randn(b, t, model.spec.input_size) for b, t in CHECK_SHAPES]
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            want = [model(x.to(device))[0].cpu() for x in inputs]
            eager = max(float((exported(x)[0] - w).abs().max()) for x, w in zip(inputs, want))
        model.train(was_training)
        if not eager < 1e-5:
            raise ExportError(f"export: the generated module differs from the model by {eager:.3g}")
        shapes = [list(s) for s in CHECK_SHAPES]
        return {"eager": {"shapes": shapes, "max_abs_diff": eager},
                "torch.export": _check_torch_export(exported, inputs, want, model.spec.input_size),
                "torch.jit.script": _attempt(lambda: torch.jit.script(exported)),
                "torch.fx.symbolic_trace": _attempt(lambda: torch.fx.symbolic_trace(exported))}
    finally:
        import sys

        sys.modules.pop(module.__name__, None)


def _check_torch_export(exported: Any, inputs: list[Any], want: list[Any], d: int) -> dict[str, Any]:
    import torch
    from torch.export import Dim

    try:
        program = torch.export.export(exported, (torch.randn(4, 20, d),),
                                      dynamic_shapes=({0: Dim("batch"), 1: Dim("time")},))
        with torch.no_grad():
            diff = max(float((program.module()(x)[0] - w).abs().max()) for x, w in zip(inputs, want))
    except Exception as exc:  # reported in the card, not fatal: the eager module is still right
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": diff < 1e-5, "dynamic": ["batch", "time"], "max_abs_diff": diff}


def _attempt(fn: Any) -> dict[str, Any]:
    try:
        fn()
    except Exception as exc:
        return {"ok": False, "error": _first_line(exc)}
    return {"ok": True}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _import_module(py: Path) -> Any:
    """Import a written module under a private name (torch.export's tracer needs it in sys.modules)."""
    import importlib.util
    import sys

    name = f"_cellsearch_export_check_{os.getpid()}_{py.stem}"
    spec = importlib.util.spec_from_file_location(name, py)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old ``out`` (force) is removed only after the move."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _spec_info(model: Any, name: str, published: str | None, digest: str, meta: dict[str, Any]) -> dict:
    from .api import count_parameters

    return {
        "name": name,
        "published_cell": published,
        "model": model.spec.to_dict(),
        "readout": model.readout,
        "digest": model.spec.digest(),
        "parameters": count_parameters(model),
        "files": {"module": f"{name}.py", "weights": f"{name}.safetensors", "weights_sha256": digest},
        **meta,
        "versions": _versions(),
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _model_card(model: Any, name: str, published: str | None, info: Mapping[str, Any]) -> str:
    """MODEL_CARD.md in the Hugging Face / "Model Cards for Model Reporting" layout."""
    lines = [f"# {name}", "", f"A recurrent model ({info['parameters']:,} parameters) exported by cellsearch "
             f"{info['versions']['cellsearch']}: standalone PyTorch source (`{name}.py`, torch only) and "
             f"safetensors weights.", ""]
    for title, body in (("Model details", _card_details(model, published, info)),
                        ("Task and data", _card_task(info)), ("How it was found", _card_search(info)),
                        ("How to use it", _card_usage(model, name)), ("Checks run at export", _card_checks(info)),
                        ("Intended use", _card_intended()), ("Limitations", _card_limitations(model, info)),
                        ("License", ["MIT, as cellsearch's generated code. The weights are yours; they carry "
                                     "the terms of the data they were trained on."]),
                        ("Citation", _card_citation(published, info))):
        lines += [f"## {title}", "", *body, ""]
    return "\n".join(lines)


def _card_details(model: Any, published: str | None, info: Mapping[str, Any]) -> list[str]:
    spec = model.spec
    lines = ["```", *_cell_doc(spec, published), "```", "",
             f"- hidden size {spec.hidden_size}, {spec.depth.layers} layer(s), depth {spec.depth.to_dict()}",
             f"- input size {spec.input_size}, output size {spec.output_size}, readout `{model.readout}` "
             "(`last`: the top layer's last step; `all`: every step)",
             f"- spec digest `{info['digest']}`; weights sha256 `{info['files']['weights_sha256']}` "
             "(checked by `load()`)"]
    lines += [f"- {line}" for line in _gate_layout(model)]
    groups = _lr_groups(model)
    if groups:
        lines.append(f"- per-parameter learning-rate scales (use `param_groups(model, lr)`): {groups}")
    return lines


def _gate_layout(model: Any) -> list[str]:
    """The row blocks of each cell's ``weight_ih`` / ``bias`` (and recurrent matrix), in order."""
    cell = model.rnn.layers[0]
    n = cell.hidden_size
    blocks = ", ".join(f"{b.name} [{i * n}:{(i + 1) * n}]" for i, b in enumerate(cell.blocks))
    return [f"gate-block order of `weight_ih` / `bias` rows (each block n = {n} rows): {blocks}"]


def _lr_groups(model: Any) -> dict[str, float]:
    """Exported parameter name -> learning-rate scale, for every parameter whose scale is not 1 (the
    rule is :func:`cellsearch.api.parameter_groups`'s)."""
    from .api import parameter_groups

    names = {id(p): _rename(k) for k, p in model.named_parameters()}
    return {names[id(p)]: g["lr_scale"] for g in parameter_groups(model, 1.0) if g["lr_scale"] != 1.0
            for p in g["params"]}


def _card_task(info: Mapping[str, Any]) -> list[str]:
    task = info.get("task")
    if not task:
        return ["Exported directly from a model, not from a study: the task is not recorded."]
    desc = info.get("task_description") or {}
    name = task.get("name") if isinstance(task, Mapping) else task
    lines = [f"- task `{name}`, options {({k: v for k, v in task.items() if k != 'name'})}"
             if isinstance(task, Mapping) else f"- task `{name}`"]
    if desc.get("summary"):
        lines.append(f"- data: {desc['summary']}")
    if desc.get("metric"):
        lines.append(f"- metric `{desc['metric']}` ({desc.get('direction', 'minimize')})")
    if desc.get("baseline") is not None:
        lines.append(f"- memoryless baseline of the metric: {desc['baseline']:.4g} (what a model that "
                     "ignores the sequence scores: compare the metrics below with it)")
    return lines


def _card_search(info: Mapping[str, Any]) -> list[str]:
    if not info.get("study"):
        return ["Exported directly from a model (no study)."]
    return [f"- study `{info['study']}`, trial {info.get('trial')} (state {info.get('state', '?')})",
            f"- objective {info.get('objective')}; values {info.get('values')}",
            f"- metrics: {info.get('metrics')}",
            f"- search: {info.get('search')}",
            f"- training config: {info.get('train')}"]


def _card_usage(model: Any, name: str) -> list[str]:
    return ["```python", "import torch", f"import {name}", "",
            f"model = {name}.load()            # trained weights from {name}.safetensors beside the module",
            f"y, state = model(torch.randn(8, 50, {model.spec.input_size}))   # [batch, time, features]",
            f"fresh = {name}.Model()          # the same architecture with the cell's own initialization",
            f"opt = torch.optim.Adam({name}.param_groups(fresh, lr=1e-3))  # keeps per-parameter lr scales",
            "```"]


def _card_checks(info: Mapping[str, Any]) -> list[str]:
    checks = info.get("checks")
    if not checks:
        return ["No checks were run at export (`check=False`)."]
    eager = checks["eager"]
    lines = [f"- eager: outputs equal cellsearch's model at (batch, time) {eager['shapes']}, max |Δ| = "
             f"{eager['max_abs_diff']:.2g}"]
    for key in ("torch.export", "torch.jit.script", "torch.fx.symbolic_trace"):
        result = checks[key]
        if result.get("ok"):
            extra = (f" with dynamic {' and '.join(result['dynamic'])}, outputs at the same shapes max |Δ| = "
                     f"{result['max_abs_diff']:.2g}") if "dynamic" in result else ""
            lines.append(f"- `{key}`: passed{extra}")
        else:
            lines.append(f"- `{key}`: not supported here ({result.get('error', 'outputs differ')})")
    return lines


def _card_intended() -> list[str]:
    return ["Research on recurrent cells: a cell found (or reproduced) by a cellsearch study, shipped so it "
            "can be evaluated, compared, fine-tuned or trained from scratch outside cellsearch."]


def _card_limitations(model: Any, info: Mapping[str, Any]) -> list[str]:
    return ["- Trained and evaluated only on the task above, at the sizes above; nothing is known about "
            "other data.",
            f"- The step is specialized to hidden size {model.spec.hidden_size} and input size "
            f"{model.spec.input_size}: to use other sizes, export a model of those sizes from cellsearch.",
            "- Needs at least one time step (T ≥ 1) and a batch dimension: input [batch, time, features].",
            "- Search results on small CPU-size tasks with few seeds carry wide uncertainty; see the metrics."]


def _card_citation(published: str | None, info: Mapping[str, Any]) -> list[str]:
    lines = []
    if published:
        try:
            from .registry import get_cell_card

            lines += [f"The cell: {get_cell_card(published).citation}", ""]
        except LookupError:
            pass
    version = info["versions"]["cellsearch"]
    return lines + ["```bibtex", "@software{cellsearch,", "  title = {cellsearch: searching recurrent-network "
                    "cells composed from gating primitives},", f"  version = {{{version}}},", "  year = {2026}",
                    "}", "```"]


def export(study_or_trial: Any, out_dir: str | Path, trial: int | None = None, force: bool = False) -> Path:
    """Export a study's best trial (or ``trial``), a trial, or a model; return the written ``.py`` path.

    ``out_dir`` must be new or empty unless ``force`` (then it is replaced whole, after the export
    succeeded).

    ``study_or_trial`` may be a study file path, a :class:`~cellsearch.study.StudyConfig`, a
    :class:`~cellsearch.search.optuna_backend.StudyResult`, an ``optuna.Study`` created by cellsearch, a
    ``FrozenTrial`` of one, or a :class:`~cellsearch.model.SequenceModel`.
    """
    from torch import nn

    if isinstance(study_or_trial, nn.Module):
        return export_model(study_or_trial, out_dir, force=force)
    from .search.optuna_backend import export_from

    return export_from(study_or_trial, out_dir, trial, force)

