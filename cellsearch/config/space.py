"""Space files: what a search may choose per cell role, primitive options, depth, hidden size and training
knobs, read into a frozen :class:`SpaceConfig`. Torch-free: names are checked against the registry, and
combinations for build-ability, by the search layer (:mod:`cellsearch.search.checks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..spec import CELL_ROLES, CellSpec, DepthSpec
from .reader import Param, Reader, bounded, parse_param, read_only
from .train import TrainConfig
from .yamlio import read_yaml

__all__ = ["SpaceConfig", "load_space", "space_from_mapping", "default_space_from_cell", "SPACE_KEYS",
           "DEPTH_INT_FIELDS", "DEPTH_MAX", "HIDDEN_MAX", "PARAM_BUDGET_MAX", "depth_value"]

SPACE_KEYS = ("cell", "depth", "hidden_size", "train", "published")
DEPTH_INT_FIELDS = DepthSpec.int_fields()
_DEPTH_FIELDS = {f.name: f for f in fields(DepthSpec)}
#: the largest value of each depth field and model size a study may ask for (larger ones would hang or
#: exhaust memory building the model, long after the study was created)
DEPTH_MAX = 64
HIDDEN_MAX = 1 << 16
PARAM_BUDGET_MAX = 1 << 30
_TRAIN_NUMERIC = ("lr", "momentum", "weight_decay", "clip", "dropout")


def train_fields() -> tuple[str, ...]:
    """The keys of a ``train`` mapping (the fields of :class:`~cellsearch.config.train.TrainConfig`)."""
    return tuple(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class SpaceConfig:
    """A search space: choices per cell role, primitive options, depth, hidden size, training knobs.

    ``cell`` maps a role to a :class:`Param` of primitive names; ``options`` maps a primitive name to its
    options (fixed values or Params); ``depth`` maps a :class:`~cellsearch.spec.DepthSpec` field to a
    Param; ``train`` a training key to a Param. ``published``: which published cells lying in the space
    are enqueued as the first trials (``True`` = all registered, or a list of names).
    """

    cell: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Mapping[str, Param]] = field(default_factory=lambda: MappingProxyType({}))
    depth: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    hidden_size: Param | None = None
    train: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    published: bool | tuple[str, ...] = True
    source: str = "<inline>"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cell": {k: p.to_dict() for k, p in self.cell.items()}}
        if self.options:
            out["cell"]["options"] = {
                prim: {k: p.to_dict() for k, p in opts.items()} for prim, opts in self.options.items()
            }
        out["depth"] = {k: p.to_dict() for k, p in self.depth.items()}
        out["hidden_size"] = self.hidden_size.to_dict() if self.hidden_size is not None else None
        out["train"] = {k: p.to_dict() for k, p in self.train.items()}
        out["published"] = self.published if isinstance(self.published, bool) else list(self.published)
        return out



def load_space(path: str | Path) -> SpaceConfig:
    """Read a space file into a :class:`SpaceConfig` (structure only; see :func:`space_from_mapping`)."""
    return space_from_mapping(read_yaml(path), source=str(path))


def space_from_mapping(raw: Any, source: str = "<inline>") -> SpaceConfig:
    """Read a raw space mapping into a :class:`SpaceConfig`: keys, types, ranges and bounds. Whether its
    primitives are registered and combine is checked by :func:`cellsearch.search.checks.check_space`."""
    r = Reader(source)
    if not isinstance(raw, Mapping):
        raise r.fail("", raw, f"a YAML mapping with space keys {list(SPACE_KEYS)}")
    data = r.mapping("", raw, SPACE_KEYS)
    cell, options = _space_cell(r, data.get("cell") or {})
    depth = _space_depth(r, data.get("depth") or {})
    hidden = parse_param(r, "hidden_size", data["hidden_size"], integer=True) if data.get("hidden_size") else None
    if hidden is not None:
        for v in hidden.values:
            bounded(r, "hidden_size", v, 1, HIDDEN_MAX)
    train_raw = r.mapping("train", data.get("train") or {}, train_fields())
    train = {k: parse_param(r, f"train.{k}", v, integer=k not in _TRAIN_NUMERIC) for k, v in train_raw.items()}
    published = _published(r, data.get("published", True))
    space = SpaceConfig(
        cell=read_only(cell),
        options=read_only({k: read_only(v) for k, v in options.items()}),
        depth=read_only(depth),
        hidden_size=hidden,
        train=read_only(train),
        published=published,
        source=source,
    )
    return space


def _space_cell(r: Reader, raw: Any) -> tuple[dict[str, Param], dict[str, dict[str, Param]]]:
    data = r.mapping("cell", raw, (*CELL_ROLES, "options"))
    cell = {}
    for role in CELL_ROLES:
        if role not in data:
            continue
        param = parse_param(r, f"cell.{role}", data[role])
        if param.kind != "categorical":
            raise r.fail(f"cell.{role}", data[role], f"a list of {role} primitive names")
        for name in param.choices:
            r.string(f"cell.{role}", name)
        cell[role] = param
    options = {}
    for prim, opts in r.mapping("cell.options", data.get("options") or {}).items():
        key = f"cell.options.{prim}"
        options[prim] = {k: parse_param(r, f"{key}.{k}", v) for k, v in r.mapping(key, opts).items()}
    return cell, options


def _space_depth(r: Reader, raw: Any) -> dict[str, Param]:
    names = tuple(f.name for f in fields(DepthSpec) if f.name != "extra")  # extra: in a spec, not searched
    data = r.mapping("depth", raw, names)
    out = {}
    for k, v in data.items():
        key = f"depth.{k}"
        param = parse_param(r, key, v, integer=k in DEPTH_INT_FIELDS)
        for value in param.values:
            depth_value(r, key, k, value)
        out[k] = param
    return out


def depth_value(r: Reader, key: str, name: str, value: Any) -> None:
    """One value of the DepthSpec field ``name`` (read at ``key``): in range, one of its choices."""
    if name in DEPTH_INT_FIELDS:
        bounded(r, key, value, DEPTH_INT_FIELDS[name], DEPTH_MAX)
    elif "choices" in (meta := _DEPTH_FIELDS[name].metadata):
        r.string(key, value, meta["choices"])
    elif name == "residual":
        r.boolean(key, value)
    elif name == "dropout" and not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise r.fail(key, value, "a number in [0, 1)")


def _published(r: Reader, raw: Any) -> bool | tuple[str, ...]:
    if isinstance(raw, bool):
        return raw
    if not isinstance(raw, list):
        raise r.fail("published", raw, "true, false or a list of published cell names")
    for i, name in enumerate(raw):
        r.string(f"published[{i}]", name)
    return tuple(raw)


def default_space_from_cell(spec: CellSpec) -> SpaceConfig:
    """A space with one point: ``spec`` (used by tests and for rebuilding)."""
    cell = {role: Param("categorical", (getattr(spec, role),)) for role in CELL_ROLES}
    return SpaceConfig(cell=read_only(cell))
