"""The model's weights under the exported module's names, and their learning-rate scales."""

from __future__ import annotations

import re
from typing import Any

from .errors import ExportError

__all__ = ["export_state_dict", "exported_name"]


# weights outside the cells keep their names (a depth part's attribute, the head); a cell's weights become
# layers.<i>.<path with _ for .>
_MODEL_RENAMES = [
    (r"^rnn\.(?!layers\.)(\w+)\.(.+)$", r"\1.\2"),
    (r"^head\.(weight|bias)$", r"head.\1"),
]


_CELL_KEY = re.compile(r"^rnn\.layers\.(\d+)\.(.+)$")


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
    from ..trace import flat_name

    match = _CELL_KEY.match(key)
    if match:
        return f"layers.{match.group(1)}.{flat_name(match.group(2))}"
    for pattern, repl in _MODEL_RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _lr_groups(model: Any) -> dict[str, float]:
    """Exported parameter name -> learning-rate scale, for every parameter whose scale is not 1 (the
    rule is :func:`cellsearch.api.parameter_groups`'s)."""
    from ..api import parameter_groups

    names = {id(p): _rename(k) for k, p in model.named_parameters()}
    return {names[id(p)]: g["lr_scale"] for g in parameter_groups(model, 1.0) if g["lr_scale"] != 1.0
            for p in g["params"]}


def exported_name(key: str) -> str | None:
    """The exported module's name of a SequenceModel state-dict key (None: it has no place there)."""
    return _rename(key)
