"""The cells of a grid: a registered cell by name, or a variant of it with overrides (torch-free).

A study's ``cells:`` and a reproduction's experiment list the same thing, read by :func:`read_variants`::

    cells:
      - lstm                                            # a registered cell as its card defines it
      - {cell: chrono_lstm, options: {bias: {t_max: 100}}}
      - {label: sRNN, cell: vanilla, layers: 2, train: {lr: 1.0e-3}, model: {param_budget: 9000}}

A variant mapping takes ``label`` (its name in tables and leaderboards; default: the cell name), ``cell``
(a registered cell), ``layers``, ``spec`` (primitives replacing the card's, e.g. ``{init: orthogonal}``),
``options`` (per-role primitive options merged into the card's), ``depth`` (DepthSpec fields), ``train``
(merged over the grid's training settings) and ``model`` (``hidden_size`` or ``param_budget``, replacing
the grid's sizing). Every key is checked here; whether the names are registered and the cell builds is
checked by the layers above (the search layer's :func:`cellsearch.search.load_config`, the reproductions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spec import CELL_ROLES, DepthSpec
from .reader import Reader, bounded
from .space import DEPTH_MAX, HIDDEN_MAX, PARAM_BUDGET_MAX, depth_value, train_fields
from .yamlio import plain

__all__ = ["Variant", "VARIANT_KEYS", "SIZE_KEYS", "read_variant", "read_variants"]

VARIANT_KEYS = ("label", "cell", "layers", "spec", "options", "depth", "train", "model")
#: a variant's ``model``: its sizing, replacing the grid's (the two exclude each other)
SIZE_KEYS = ("hidden_size", "param_budget")
#: the overrides a variant may carry, in the order they are written
OVERRIDES = ("spec", "options", "depth", "train", "model")


@dataclass(frozen=True)
class Variant:
    """One cell of a grid: a registered ``cell`` with overrides, called ``label``. ``layers`` None: the
    grid's ``model.num_layers``. The override mappings keep the order they were written in."""

    label: str
    cell: str
    layers: int | None = None
    spec: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    depth: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        """A registered cell as its card defines it, written as its name alone."""
        return self.label == self.cell and self.layers is None and not self.overrides()

    def overrides(self) -> dict[str, Any]:
        """The non-empty overrides (``spec``, ``options``, ``depth``, ``train``, ``model``) as plain data."""
        return {k: plain(getattr(self, k)) for k in OVERRIDES if getattr(self, k)}

    def to_dict(self) -> str | dict[str, Any]:
        """The name of a plain cell, else the variant mapping (what a study file holds)."""
        if self.plain:
            return self.cell
        out: dict[str, Any] = {"label": self.label, "cell": self.cell}
        if self.layers is not None:
            out["layers"] = self.layers
        return {**out, **self.overrides()}

    def sizes(self, model: Mapping[str, Any]) -> dict[str, Any]:
        """The grid's sizing ``model`` with this variant's: a variant naming ``hidden_size`` or
        ``param_budget`` replaces both of the grid's."""
        base = {k: v for k, v in model.items() if not (self.model and k in SIZE_KEYS)}
        return {**base, **plain(self.model)}


def read_variant(r: Reader, key: str, raw: Any, layers: int | None = None) -> Variant:
    """A cell name or a variant mapping at ``key``; ``layers``: the depth when the variant names none."""
    if isinstance(raw, str):
        raw = {"cell": raw}
    if not isinstance(raw, Mapping):
        raise r.fail(key, raw, f"a registered cell name or a variant mapping with keys {list(VARIANT_KEYS)}")
    data = r.mapping(key, raw, VARIANT_KEYS)
    cell = r.string(f"{key}.cell", data.get("cell"))
    label = r.string(f"{key}.label", data.get("label", cell))
    depth_layers = r.integer(f"{key}.layers", data.get("layers", layers), 1, none=True)
    bounded(r, f"{key}.layers", depth_layers, 1, DEPTH_MAX, none=True)
    options = {role: r.mapping(f"{key}.options.{role}", v)
               for role, v in r.mapping(f"{key}.options", data.get("options", {}), CELL_ROLES).items()}
    return Variant(label=label, cell=cell, layers=depth_layers, spec=_spec(r, f"{key}.spec", data.get("spec", {})),
                   options=plain(options), depth=_depth(r, f"{key}.depth", data.get("depth", {})),
                   train=plain(r.mapping(f"{key}.train", data.get("train", {}), train_fields())),
                   model=_model(r, f"{key}.model", data.get("model", {})))


def read_variants(r: Reader, key: str, raw: Any, layers: int | None = None) -> tuple[Variant, ...]:
    """A non-empty list of cells (a single name is a list of one), with distinct labels."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise r.fail(key, raw, "a non-empty list of registered cell names or variant mappings "
                               f"{{{', '.join(VARIANT_KEYS)}}}")
    variants = tuple(read_variant(r, f"{key}[{i}]", item, layers) for i, item in enumerate(raw))
    labels = [v.label for v in variants]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise r.fail(key, dup, "distinct cell names (give each variant of a cell its own label)")
    return variants


def _spec(r: Reader, key: str, raw: Any) -> dict[str, str]:
    data = r.mapping(key, raw, CELL_ROLES)
    for role, name in data.items():
        r.string(f"{key}.{role}", name)
    return data


def _depth(r: Reader, key: str, raw: Any) -> dict[str, Any]:
    """DepthSpec fields but ``layers`` (a variant's own key) and ``extra``."""
    allowed = [k for k in DepthSpec.__dataclass_fields__ if k not in ("layers", "extra")]
    data = r.mapping(key, raw, allowed)
    for name, value in data.items():
        depth_value(r, f"{key}.{name}", name, value)
    return data


def _model(r: Reader, key: str, raw: Any) -> dict[str, int]:
    data = r.mapping(key, raw, SIZE_KEYS)
    if len(data) > 1:
        raise r.fail(key, data, "either hidden_size or param_budget, not both")
    for k, v in data.items():
        r.integer(f"{key}.{k}", v, 1)
        bounded(r, f"{key}.{k}", v, 1, HIDDEN_MAX if k == "hidden_size" else PARAM_BUDGET_MAX)
    return dict(data)
