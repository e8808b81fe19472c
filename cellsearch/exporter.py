"""Export a trained model as standalone PyTorch source + safetensors weights (torch.fx ``to_folder`` style).

``export_model(model, out_dir)`` writes into ``out_dir``:

- ``<cell>.py`` — imports torch only (never cellsearch): a ``Cell`` class whose ``forward`` is the composed
  cell's step written out for this spec (update, gate, saturation, recurrence and deep transition as
  straight-line code, no dispatch on primitives), a ``Model`` class (deep input → stacked cells with
  residual / dropout → deep output → readout → linear head) and ``load(weights_path=None) -> nn.Module``
  that builds the model and loads the weights beside the file (a small safetensors reader is included,
  so not even the ``safetensors`` package is needed);
- ``<cell>.safetensors`` — the weights (no pickle);
- ``spec.yaml`` — the ModelSpec, readout, task, study, trial, metrics, versions, weights digest;
- ``MODEL_CARD.md`` — what it is, how it was found, how to use it.

The generated forward performs the same tensor operations, in the same order, as the framework's
:class:`~cellsearch.model.SequenceModel`, so outputs agree to float rounding (|Δ| < 1e-6) and the module
passes ``torch.export.export``. Generated source is the durable artefact: it stays loadable across
cellsearch versions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cli import UserError

__all__ = ["ExportError", "export", "export_model", "export_state_dict", "generate_source", "module_name"]

SUPPORTED = {
    "update": ("vanilla", "lstm", "lstm_tied", "gru", "mgu", "star"),
    "gate": ("sigmoid", "ur", "refined"),
    "saturation": ("tanh", "identity", "adaptive"),
    "recurrence": ("free", "orthogonal"),
}

_RENAMES = [
    (r"^rnn\.(input_mlp|output_mlp)\.(.+)$", r"\1.\2"),
    (r"^rnn\.layers\.(\d+)\.(weight_ih|bias|weight_proj)$", r"layers.\1.\2"),
    (r"^rnn\.layers\.(\d+)\.recurrence\.weight$", r"layers.\1.weight_hh"),
    (r"^rnn\.layers\.(\d+)\.recurrence\.skew$", r"layers.\1.skew_hh"),
    (r"^rnn\.layers\.(\d+)\.saturation\.(skew|s)$", r"layers.\1.sat_\2"),
    (r"^rnn\.layers\.(\d+)\.extra\.(\w+)$", r"layers.\1.\2"),
    (r"^rnn\.layers\.(\d+)\.transition\.layers\.(\d+)\.(weight|bias)$", r"layers.\1.transition.\2.\3"),
    (r"^rnn\.layers\.(\d+)\.transition\.shortcut\.weight$", r"layers.\1.shortcut.weight"),
    (r"^head\.(weight|bias)$", r"head.\1"),
]


class ExportError(UserError):
    """A model that cannot be exported (e.g. a plugin primitive the code generator does not know)."""


# ------------------------------------------------------------------------------------------------
# Weights


def export_state_dict(model: Any) -> dict[str, Any]:
    """The model's weights under the exported module's names (contiguous CPU copies)."""
    out = {}
    for key, value in model.state_dict().items():
        new = _rename(key)
        if new is None:
            raise ExportError(
                f"export: weight {key!r} has no place in the generated module; "
                "the code generator does not support the primitive that owns it"
            )
        out[new] = value.detach().to("cpu").contiguous().clone()
    return out


def _rename(key: str) -> str | None:
    for pattern, repl in _RENAMES:
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


def _check_supported(cell: Any) -> None:
    for role, names in SUPPORTED.items():
        prim = getattr(cell, role)
        if prim.name not in names or not type(prim).__module__.startswith("cellsearch."):
            raise ExportError(
                f"export: {role} primitive {prim.name!r} ({type(prim).__module__}) is not "
                f"supported by the code generator; supported {role}s: {list(names)}"
            )


@dataclass
class _CellInfo:
    """What the generated Cell needs to know, read off a built ComposedCell."""

    update: str
    gate: str
    saturation: str
    recurrence: str
    gate_names: list[str]
    k: int
    blocks: int
    rec_blocks: int
    n_states: int
    keep: str | None
    keep_polarity: int
    refined: tuple[str, ...]
    refined_mul: bool
    beta: float | None
    rec_method: str
    sat_method: str
    sat_eps: float
    transition: str
    transition_layers: int
    extras: dict[str, tuple[int, ...]]


def _cell_info(cell: Any, depth: Any) -> _CellInfo:
    _check_supported(cell)
    gate = cell.gate
    refined = tuple(getattr(gate, "refined", ())) if gate.name == "refined" else ()
    return _CellInfo(
        update=cell.update.name,
        gate=gate.name,
        saturation=cell.saturation.name,
        recurrence=cell.recurrence.name,
        gate_names=[b.name for b in cell.blocks if b.kind == "gate"],
        k=cell.k,
        blocks=len(cell.blocks),
        rec_blocks=cell.recurrence.blocks,
        n_states=cell.update.n_states,
        keep=cell.update.keep,
        keep_polarity=cell.update.keep_polarity,
        refined=refined,
        refined_mul=gate.options.get("mode", "mul") == "mul",
        beta=cell.update.options.get("beta") if cell.update.name == "star" else None,
        rec_method=cell.recurrence.options.get("method", "expm"),
        sat_method=cell.saturation.options.get("method", "expm"),
        sat_eps=float(cell.saturation.options.get("eps", 0.0)),
        transition=depth.transition,
        transition_layers=depth.transition_layers,
        extras={k: tuple(v.shape) for k, v in cell.extra.items()},
    )


def _gate_lines(info: _CellInfo, a: str) -> list[str]:
    """Lines turning gate pre-activations ``a`` ([B, k·n]) into the update's gate variables."""
    names = [g for g in info.gate_names]
    if info.gate == "ur":
        extra = names[names.index(info.keep) + 1]  # type: ignore[arg-type]
        lines = [f"s = torch.sigmoid({a}).chunk({info.k}, 1)"]
        j = names.index(info.keep)  # type: ignore[arg-type]
        sign = "2.0 * s[{r}] - 1.0" if info.keep_polarity > 0 else "1.0 - 2.0 * s[{r}]"
        for idx, name in enumerate(names):
            if name == extra:
                continue
            if idx == j:
                coef = sign.format(r=j + 1)
                lines.append(
                    f"{name} = torch.addcmul(s[{j}], ({coef}) * s[{j}], 1.0 - s[{j}])  # refine gate"
                )
            else:
                lines.append(f"{name} = s[{idx}]")
        return lines
    if info.k == 1:
        lines = [f"{names[0]} = torch.sigmoid({a})"]
    else:
        lines = [f"{', '.join(names)} = torch.sigmoid({a}).chunk({info.k}, 1)"]
    for name in info.refined:
        op = "*" if info.refined_mul else "+"
        lines.append(f"{name} = {name} {op} xs_t  # refined gate: short connection from the input")
    return lines


def _sat(info: _CellInfo, v: str) -> str:
    if info.saturation == "tanh":
        return f"torch.tanh({v})"
    if info.saturation == "identity":
        return v
    return f"torch.tanh(({v}) * d_f @ u_f.t()) @ u_f / d_f"


def _cand_lines(info: _CellInfo, target: str, pre: str, act: str) -> list[str]:
    """``target = act(pre)``, or the deep transition (DT / DT(S)) applied to ``pre``."""
    apply = (lambda v: _sat(info, v)) if act == "sat" else (lambda v: f"torch.tanh({v})")
    if info.transition == "none":
        return [f"{target} = {apply(pre)}"]
    lines = [f"m = torch.tanh({pre})  # deep transition"]
    last = info.transition_layers - 1
    for j in range(last):
        lines.append(f"m = torch.tanh(self.transition[{j}](m))")
    lines.append(f"m = F.linear(m, self.transition[{last}].weight, self.transition[{last}].bias)")
    if info.transition == "deep_shortcut":
        lines.append("m = torch.addmm(m, h, self.shortcut.weight.t())  # shortcut W_s h")
    return lines + [f"{target} = {apply('m')}"]


def _step_lines(info: _CellInfo) -> list[str]:
    """The body of one time step, mirroring the update primitive's ``step``."""
    kn = "kn"
    u = info.update
    if u == "vanilla":
        return ["a = torch.addmm(xp_t, h, w_hh_t)", *_cand_lines(info, "h", "a", "sat")]
    if u in ("lstm", "lstm_tied"):
        lines = [
            "a = torch.addmm(xp_t, h, w_hh_t)",
            *_gate_lines(info, f"a[:, :{kn}]"),
            *_cand_lines(info, "u", f"a[:, {kn}:]", "tanh"),
        ]
        if u == "lstm":
            lines.append("c = torch.addcmul(f * c, i, u)")
        else:
            lines.append("c = torch.lerp(u, c, f)  # f⊙c + (1 − f)⊙u")
        return lines + [f"h = o * {_sat(info, 'c')}"]
    if u == "gru":
        keep = info.keep
        return [
            "hp = h @ w_hh_t",
            *_gate_lines(info, f"xp_t[:, :{kn}] + hp[:, :{kn}]"),
            f"pre = torch.addcmul(xp_t[:, {kn}:], r, hp[:, {kn}:] + self.bias_hn)",
            *_cand_lines(info, "cand", "pre", "sat"),
            f"h = torch.lerp(cand, h, {keep})  # z⊙h + (1 − z)⊙ĥ",
        ]
    if u == "mgu":
        return [
            *_gate_lines(info, f"torch.addmm(xp_t[:, :{kn}], h, w_hh_t[:, :{kn}])"),
            f"pre = torch.addmm(xp_t[:, {kn}:], f * h, w_hh_t[:, {kn}:])",
            *_cand_lines(info, "cand", "pre", "sat"),
            "h = torch.lerp(h, cand, f)  # (1 − f)⊙h + f⊙ĥ",
        ]
    if u == "star":
        lines = [
            f"a_k = torch.addmm(xp_t[:, :{kn}], h, w_hh_t)",
            *_cand_lines(info, "z", f"xp_t[:, {kn}:]", "tanh"),
        ]
        if info.beta is None:
            return lines + [*_gate_lines(info, "a_k"), f"h = {_sat(info, 'torch.lerp(h, z, k)')}"]
        beta = float(info.beta)
        return lines + [f"h = {_sat(info, f'torch.sigmoid(-a_k) * h + torch.sigmoid(a_k + {beta!r}) * z')}"]
    raise ExportError(f"export: update {u!r} is not supported")


def _init_lines(info: _CellInfo) -> list[str]:
    g, r = info.blocks, info.rec_blocks
    lines = [
        "super().__init__()",
        "n = hidden_size",
        "self.input_size, self.hidden_size = input_size, hidden_size",
        f"self.weight_ih = nn.Parameter(torch.zeros({g} * n, input_size))",
        f"self.bias = nn.Parameter(torch.zeros({g} * n))",
    ]
    if info.recurrence == "free":
        lines.append(f"self.weight_hh = nn.Parameter(torch.zeros({r} * n, n))")
    else:
        lines.append(f"self.skew_hh = nn.Parameter(torch.zeros({r}, n * (n - 1) // 2))")
    for name in info.extras:
        lines.append(f"self.{name} = nn.Parameter(torch.zeros(n))")
    if info.gate == "refined":
        lines.append(
            "self.weight_proj = (nn.Parameter(torch.zeros(n, input_size)) if input_size != hidden_size "
            "else None)"
        )
    if info.saturation == "adaptive":
        lines += [
            "self.sat_skew = nn.Parameter(torch.zeros(n * (n - 1) // 2))",
            "self.sat_s = nn.Parameter(torch.zeros(n))",
        ]
    if info.transition != "none":
        lines.append(
            f"self.transition = nn.ModuleList(nn.Linear(n, n) for _ in range({info.transition_layers}))"
        )
    if info.transition == "deep_shortcut":
        lines.append("self.shortcut = nn.Linear(n, n, bias=False)")
    return lines


def _forward_lines(info: _CellInfo) -> list[str]:
    """Cell.forward: the hoisted input GEMM; under autocast the recurrence runs with it off, in the
    parameters' dtype (as cellsearch's own cells do)."""
    xs = info.gate == "refined"
    lines = ["xp = F.linear(x, self.weight_ih, self.bias)"]
    if xs:
        lines.append("xs = x if self.weight_proj is None else F.linear(x, self.weight_proj)")
    args = "xp, xs, state" if xs else "xp, state"
    cast = "xp.to(dt), xs.to(dt)" if xs else "xp.to(dt)"
    return lines + [
        "if torch.is_autocast_enabled(x.device.type):  # bf16/fp16 input GEMM, float32 recurrence",
        "    with torch.autocast(x.device.type, enabled=False):",
        "        dt = self.weight_ih.dtype",
        f"        return self.recurrence({cast}, tuple(s.to(dt) for s in state))",
        f"return self.recurrence({args})",
    ]


def _recurrence_lines(info: _CellInfo) -> list[str]:
    lines = ["n = self.hidden_size", f"kn = {info.k} * n"]
    if info.recurrence == "free":
        lines.append("w_hh_t = self.weight_hh.t()")
    else:
        fn = f"_{info.rec_method}_orthogonal"
        lines.append(f"w_hh_t = {fn}(self.skew_hh, n).reshape({info.rec_blocks} * n, n).t()")
    if info.saturation == "adaptive":
        lines += [
            f"u_f = _{info.sat_method}_orthogonal(self.sat_skew, n)",
            f"d_f = self.sat_s.abs() + {info.sat_eps!r}",
        ]
    state = "h, c = state" if info.n_states == 2 else "(h,) = state"
    lines += [state, "outs = []"]
    if info.gate == "refined":
        lines.append("for xp_t, xs_t in zip(xp.unbind(0), xs.unbind(0)):")
    else:
        lines.append("for xp_t in xp.unbind(0):")
    lines += ["    " + s for s in _step_lines(info)] + ["    outs.append(h)"]
    final = "(h, c)" if info.n_states == 2 else "(h,)"
    return lines + [f"return torch.stack(outs), {final}"]


def _indent(lines: list[str], level: int) -> str:
    pad = "    " * level
    return "\n".join(pad + line if line else "" for line in lines)


_ORTHO = {
    "expm": '''
def _expm_orthogonal(v: Tensor, n: int) -> Tensor:
    """B = exp(S), S = A − Aᵀ skew-symmetric with A's strict upper triangle ``v`` ([..., n(n−1)/2])."""
    rows, cols = torch.triu_indices(n, n, offset=1, device=v.device)
    upper = v.new_zeros(*v.shape[:-1], n, n)
    upper[..., rows, cols] = v
    return torch.linalg.matrix_exp(upper - upper.transpose(-1, -2))
''',
    "cayley": '''
def _cayley_orthogonal(v: Tensor, n: int) -> Tensor:
    """B = (I + S)⁻¹(I − S), S = A − Aᵀ skew-symmetric with A's strict upper triangle ``v``."""
    rows, cols = torch.triu_indices(n, n, offset=1, device=v.device)
    upper = v.new_zeros(*v.shape[:-1], n, n)
    upper[..., rows, cols] = v
    s = upper - upper.transpose(-1, -2)
    eye = torch.eye(n, dtype=v.dtype, device=v.device).expand_as(s)
    return torch.linalg.solve(eye + s, eye - s)
''',
}

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
    """Build the model and load its weights (default: the .safetensors file beside this module)."""
    path = Path(weights_path) if weights_path is not None else Path(__file__).with_suffix(".safetensors")
    model = Model()
    model.load_state_dict(read_safetensors(path), strict=True)
    return model.to(device).eval()
'''


def _model_source(spec: Any, readout: str, info: _CellInfo, layer_inputs: list[int]) -> str:
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
    cells = ", ".join(f"Cell({d}, n)" for d in layer_inputs)
    init.append(f"self.layers = nn.ModuleList([{cells}])")
    if depth.dropout > 0 and depth.layers > 1:
        init.append(f"self.dropout = nn.Dropout({depth.dropout!r})  # between stacked layers")
    if depth.output_layers:
        mods = ", ".join("nn.Linear(n, n), nn.Tanh()" for _ in range(depth.output_layers))
        init.append(f"self.output_mlp = nn.Sequential({mods})  # deep output")
    init.append("self.head = nn.Linear(n, OUTPUT_SIZE)")
    zeros = ", ".join(["seq.new_zeros(batch, HIDDEN_SIZE)"] * info.n_states)
    fwd += [
        "batch = x.shape[0]",
        "if state is None:",
        f"    state = tuple(({zeros},) for _ in range(NUM_LAYERS))",
    ]
    for i, d in enumerate(layer_inputs):
        fwd.append(f"out, s{i} = self.layers[{i}](seq, state[{i}])")
        if depth.residual and d == n:
            fwd.append("out = out + seq  # residual")
        last = i == len(layer_inputs) - 1
        fwd.append("seq = self.dropout(out)" if depth.dropout > 0 and not last else "seq = out")
    if depth.output_layers:
        fwd.append("seq = self.output_mlp(seq)")
    fwd.append("out = seq.transpose(0, 1)")
    if readout == "last":
        fwd.append("out = out[:, -1]")
    finals = ", ".join(f"s{i}" for i in range(len(layer_inputs)))
    finals = f"({finals},)" if len(layer_inputs) == 1 else f"({finals})"
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


def generate_source(model: Any, name: str | None = None, published: str | None = None) -> str:
    """Python source (torch only) of a standalone module equivalent to ``model`` (a SequenceModel)."""
    spec, cells = model.spec, list(model.rnn.layers)
    info = _cell_info(cells[0], spec.depth)
    layer_inputs = [c.input_size for c in cells]
    methods = {info.rec_method} if info.recurrence == "orthogonal" else set()
    methods |= {info.sat_method} if info.saturation == "adaptive" else set()
    doc = _cell_doc(spec, published)
    cell_src = (
        "class Cell(nn.Module):\n"
        '    """' + doc[0] + "\n\n" + _indent(doc[1:], 1).rstrip() + "\n\n"
        "    forward(x [T, B, d], state) -> (out [T, B, n], state); time-major, one step per loop turn.\n"
        '    """\n\n'
        "    def __init__(self, input_size: int, hidden_size: int) -> None:\n"
        + _indent(_init_lines(info), 2)
        + "\n\n    def forward(self, x: Tensor, state: tuple[Tensor, ...]"
        ") -> tuple[Tensor, tuple[Tensor, ...]]:\n"
        + _indent(_forward_lines(info), 2)
        + "\n\n    def recurrence(self, xp: Tensor, "
        + ("xs: Tensor, " if info.gate == "refined" else "")
        + "state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:\n"
        + '        """The loop over time: xp = W x + b for every step, precomputed."""\n'
        + _indent(_recurrence_lines(info), 2)
        + "\n"
    )
    header = (
        f'"""{name or module_name(model, published)}: a recurrent model exported by cellsearch.\n\n'
        "Standalone: imports torch only. `load()` builds the model and loads the weights beside this "
        "file.\n\n"
        "    import " + (name or module_name(model, published)) + " as m\n"
        "    model = m.load()\n"
        f"    y, state = model(torch.randn(4, 20, {spec.input_size}))   # [batch, time, features]\n\n"
        "Spec:\n\n" + _indent(yaml.safe_dump(spec.to_dict(), sort_keys=False).splitlines(), 1) + '\n"""\n\n'
        "from __future__ import annotations\n\nimport json\nimport struct\nfrom pathlib import Path\n\n"
        "import torch\nimport torch.nn.functional as F\nfrom torch import Tensor, nn\n\n"
        f"INPUT_SIZE = {spec.input_size}\nHIDDEN_SIZE = {spec.hidden_size}\n"
        f"OUTPUT_SIZE = {spec.output_size}\n"
        f"NUM_LAYERS = {spec.depth.layers}\nREADOUT = {model.readout!r}\n"
    )
    helpers = "".join("\n" + _ORTHO[m] for m in sorted(methods))
    return (
        header
        + helpers
        + "\n\n"
        + cell_src
        + "\n\n"
        + _model_source(spec, model.readout, info, layer_inputs)
        + "\n"
        + _LOADER
    )


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
) -> Path:
    """Write ``<name>.py``, ``<name>.safetensors``, ``spec.yaml``, ``MODEL_CARD.md``; return the .py path."""
    from safetensors.torch import save_file

    name = name or module_name(model, published)
    out = Path(out_dir)
    source = generate_source(model, name, published)
    tensors = export_state_dict(model)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_file(tensors, str(weights))
    py = out / f"{name}.py"
    py.write_text(source, encoding="utf-8")
    meta = dict(meta or {})
    info = json.loads(json.dumps(_spec_info(model, name, published, weights, meta), default=str))
    (out / "spec.yaml").write_text(
        yaml.safe_dump(info, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    (out / "MODEL_CARD.md").write_text(_model_card(model, name, published, info), encoding="utf-8")
    return py


def _spec_info(model: Any, name: str, published: str | None, weights: Path, meta: dict[str, Any]) -> dict:
    from .api import count_parameters

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return {
        "name": name,
        "published_cell": published,
        "model": model.spec.to_dict(),
        "readout": model.readout,
        "digest": model.spec.digest(),
        "parameters": count_parameters(model),
        "files": {"module": f"{name}.py", "weights": weights.name, "weights_sha256": digest},
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


def export(study_or_trial: Any, out_dir: str | Path, trial: int | None = None) -> Path:
    """Export a study's best trial (or ``trial``), a trial, or a model; return the written ``.py`` path.

    ``study_or_trial`` may be a study file path, a :class:`~cellsearch.study.StudyConfig`, a
    :class:`~cellsearch.search.optuna_backend.StudyResult`, an ``optuna.Study`` created by cellsearch, a
    ``FrozenTrial`` of one, or a :class:`~cellsearch.model.SequenceModel`.
    """
    from torch import nn

    if isinstance(study_or_trial, nn.Module):
        return export_model(study_or_trial, out_dir)
    from .search.optuna_backend import export_from

    return export_from(study_or_trial, out_dir, trial)

