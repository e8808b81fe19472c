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
    for other in earlier:  # the same step as an earlier class (only an input width differs): share it
        if other.functions and other.functions == _renamed(functions, suffix, other.suffix, cls, other.cls):
            functions, suffix = "", other.suffix
    init = ["super().__init__()", f"self.input_size, self.hidden_size = {cell.input_size}, {cell.hidden_size}"]
    for path, p in cell.named_parameters():
        init.append(f"self.{_flat(path)} = nn.Parameter(torch.zeros({_shape(p)}))")
    for path, b in cell.named_buffers():
        init.append(f"self.register_buffer({_flat(path)!r}, torch.zeros({_shape(b)}, dtype={b.dtype}))")
    body = (
        f"class {cls}(nn.Module):\n"
        '    """' + doc[0] + "\n\n" + _indent(doc[1:], 1).rstrip() + "\n\n"
        "    forward(x [T, B, d], state) -> (out [T, B, n], state); time-major, one step per loop turn.\n"
        '    """\n\n'
        "    def __init__(self) -> None:\n" + _indent(init, 2) + "\n\n"
        "    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:\n"
        + _indent(_forward_lines(cell.short), 2) + "\n\n"
        "    def recurrence(self, xp: Tensor, xs: Tensor | None, state: tuple[Tensor, ...]"
        ") -> tuple[Tensor, tuple[Tensor, ...]]:\n"
        '        """The loop over time: xp = W x + b for every step, precomputed."""\n'
        + _indent(_recurrence_lines(traced, suffix), 2) + "\n"
    )
    return _CellCode(cls, body, functions, imports | more, suffix)


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
    return [
        f"consts = _prepare{suffix}({', '.join(args)})  # once per sequence",
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
    )
    parts = [header]
    for code in codes:
        parts += (["\n\n" + code.functions] if code.functions else []) + ["\n\n" + code.source]
    parts += ["\n\n" + _model_source(spec, model.readout, classes, model.rnn.layers[0].update.n_states), "\n" + _LOADER]
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
) -> Path:
    """Write ``<name>.py``, ``<name>.safetensors``, ``spec.yaml``, ``MODEL_CARD.md``; return the .py path.

    The files are written into a temporary folder beside ``out_dir`` and moved into place at the end, so
    a failure (a full disk, an untraceable cell) leaves no partial export. A non-empty ``out_dir`` is
    refused unless ``force`` (then it is replaced whole)."""
    out = _check_target(Path(out_dir), force)
    name = name or module_name(model, published)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_export(model, tmp, name, published, dict(meta or {}))
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


def _write_export(model: Any, folder: Path, name: str, published: str | None, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    weights = folder / f"{name}.safetensors"
    save_file(export_state_dict(model), str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / f"{name}.py").write_text(generate_source(model, name, published, digest), encoding="utf-8")
    info = json.loads(json.dumps(_spec_info(model, name, published, digest, meta), default=str))
    (folder / "spec.yaml").write_text(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (folder / "MODEL_CARD.md").write_text(_model_card(model, name, published, info), encoding="utf-8")
    mode = 0o666 & ~_umask()
    for path in folder.iterdir():  # one mode for every file (safetensors writes its own 0600 otherwise)
        path.chmod(mode)
    folder.chmod(0o777 & ~_umask())


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
    spec = model.spec
    what = _cell_doc(spec, published)
    lines = [
        f"# {name}",
        "",
        f"A recurrent model ({info['parameters']:,} parameters) exported by cellsearch "
        f"{info['versions']['cellsearch']}.",
        "",
        "## What it is",
        "",
        "```",
        *what,
        "```",
        "",
        f"- hidden size {spec.hidden_size}, {spec.depth.layers} layer(s), depth {spec.depth.to_dict()}",
        f"- input size {spec.input_size}, output size {spec.output_size}, readout `{model.readout}`",
        f"- spec digest `{info['digest']}`",
    ]
    if published:
        try:
            from .registry import get_cell_card

            lines.append(f"- published cell `{published}`: {get_cell_card(published).citation}")
        except LookupError:
            pass
    lines += ["", "## How it was found", ""]
    if info.get("study"):
        lines += [
            f"- study `{info['study']}`, trial {info.get('trial')} (state {info.get('state', '?')})",
            f"- task `{info.get('task')}`",
            f"- objective {info.get('objective')}",
            f"- search: {info.get('search')}",
            f"- training: {info.get('train')}",
            f"- metrics: {info.get('metrics')}",
        ]
    else:
        lines.append("- exported directly from a model (no study).")
    lines += [
        "",
        "## How to use it",
        "",
        "```python",
        "import torch",
        f"import {name}",
        "",
        f"model = {name}.load()            # weights from {name}.safetensors beside the module",
        f"y, state = model(torch.randn(8, 50, {spec.input_size}))   # [batch, time, features]",
        "```",
        "",
        f"`{name}.py` imports torch only. Its outputs match cellsearch's model to |Δ| < 1e-6 and "
        "it passes `torch.export.export`.",
        "",
        "Files: "
        f"`{name}.py`, `{name}.safetensors` (sha256 `{info['files']['weights_sha256'][:16]}…`), "
        "`spec.yaml`, `MODEL_CARD.md`.",
        "",
    ]
    return "\n".join(lines)


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

