"""Fixed source written into every exported module: the scan used under torch.export, the safetensors
reader, ``param_groups`` and ``load``."""

from __future__ import annotations

__all__ = ["SCAN", "LOADER", "INPUT_CHECK"]

INPUT_CHECK = '''

@torch.fx.wrap
def _check_input(x: Tensor, input_size: int) -> None:
    """A wrong input is one line: the model takes [batch, time, input_size] with time >= 1."""
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"expected input [batch, time, {input_size}], got shape {tuple(x.shape)}"
                         + (" (add the batch dimension: x.unsqueeze(0))" if x.dim() == 2 else ""))
    if x.shape[1] == 0:
        raise ValueError("expected at least one time step, got an input with T = 0")
'''

SCAN = '''

def _scan(step, consts: tuple, inputs: tuple[Tensor, ...], state: tuple[Tensor, ...]
          ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The time loop as torch's scan (used under torch.export, which keeps T symbolic in it; eager runs
    the plain loop, the same math)."""
    from torch._higher_order_ops.scan import scan

    consts = tuple(c.clone() if isinstance(c, Tensor) else c for c in consts)  # scan refuses aliased inputs

    def combine(carry: tuple[Tensor, ...], x: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
        out = step(*consts, *x, *carry)
        return tuple(s.clone() for s in out[1:]), out[0].clone()

    final, outs = scan(combine, tuple(state), inputs)
    return outs, tuple(final)
'''


LOADER = '''
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
