"""The genome: frozen, torch-free descriptions of a cell, its depth configuration and a whole model.

A :class:`CellSpec` names one registered primitive per role (update, gate, init, bias, saturation,
recurrence) plus per-role options; a :class:`DepthSpec` says how cells are arranged (Pascanu et al.
2014); a :class:`ModelSpec` adds the sizes. All three are immutable, round-trip through YAML and JSON,
and have a stable :meth:`digest` (sha256 of canonical JSON), so a search can deduplicate candidates
and any trial can be rebuilt from what it stored.

This module must not import torch: the search space and the storage layer use it on machines (and in
processes) that never build a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "CellSpec",
    "DepthSpec",
    "ModelSpec",
    "SpecError",
    "ROLES",
    "CELL_ROLES",
    "TRANSITIONS",
]

#: Roles a primitive can fill. ``depth`` primitives arrange cells; the others fill a cell's slots.
#: ``init`` initialises the weights (input, recurrent, deep-transition matrices); ``bias`` the gate biases
#: (issue 16: one role each, so "orthogonal weights + chrono gate bias" is one spec).
CELL_ROLES: tuple[str, ...] = ("update", "gate", "init", "bias", "saturation", "recurrence")
#: Before the split, the gate-bias inits were ``init`` primitives. A spec that names one of these under
#: ``init`` (with ``bias`` left at ``default``) is read as that ``bias`` (its options move with it), and
#: ``chrono`` keeps the T_max it had then (784) when none is given.
LEGACY_BIAS_INITS: dict[str, dict[str, Any]] = {"ugi": {}, "chrono": {"t_max": 784.0}, "constant": {}}
ROLES: tuple[str, ...] = (*CELL_ROLES, "depth")
#: Values of :attr:`DepthSpec.transition` (Pascanu et al. DT / DT(S)).
TRANSITIONS: tuple[str, ...] = ("none", "deep", "deep_shortcut")


class SpecError(ValueError):
    """A spec field holds a value that is not allowed; the message names the field and the choices."""

    def __init__(self, where: str, value: Any, allowed: str) -> None:
        self.where, self.value, self.allowed = where, value, allowed
        super().__init__(f"{where}: {value!r} is not allowed; expected {allowed}")


class FrozenDict(Mapping):
    """A hashable, immutable mapping (JSON-like values only) used for primitive options."""

    __slots__ = ("_items",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        items = {str(k): _freeze(v) for k, v in (data or {}).items()}
        object.__setattr__(self, "_items", dict(sorted(items.items())))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenDict is immutable")

    def __reduce__(self) -> tuple[Any, ...]:  # pickling / copy.deepcopy (Ray, multiprocessing, torch.save)
        return (FrozenDict, (_thaw(self),))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SpecError("option value", value, "JSON-like values (numbers, strings, booleans, lists, mappings)")


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _check_type(where: str, value: Any, kind: type | tuple[type, ...], allowed: str) -> None:
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
        raise SpecError(where, value, allowed)
    if not isinstance(value, kind):
        raise SpecError(where, value, allowed)


def _check_keys(where: str, data: Mapping[str, Any], cls: type) -> None:
    if not isinstance(data, Mapping):
        raise SpecError(where, data, f"a mapping with keys {sorted(f.name for f in dataclasses.fields(cls))}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise SpecError(f"{where}.{key}", key, f"one of {sorted(names)}")


class _SpecMixin:
    """Shared serialization for the spec dataclasses."""

    def to_dict(self, *, _digest: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict(_digest=_digest) if isinstance(value, _SpecMixin) else _thaw(value)
        return out

    def to_json(self, *, _digest: bool = False) -> str:
        """Canonical JSON: sorted keys, no whitespace; the input of :meth:`digest`."""
        return json.dumps(self.to_dict(_digest=_digest), sort_keys=True, separators=(",", ":"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self, length: int = 16) -> str:
        """A stable identifier: the first ``length`` hex digits of sha256 of :meth:`to_json`."""
        return hashlib.sha256(self.to_json(_digest=True).encode()).hexdigest()[:length]

    def replace(self, **changes: Any):
        """A copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))  # type: ignore[attr-defined]

    @classmethod
    def from_yaml(cls, text: str):
        return cls.from_dict(yaml.safe_load(text))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CellSpec(_SpecMixin):
    """One recurrent cell: a registered primitive per role, plus per-role options.

    ``options`` maps a role to the keyword options of the primitive in that role, e.g.
    ``{"gate": {"mode": "mul", "gates": ["i", "o"]}, "bias": {"t_max": 784}}``. Names are checked
    against the registry when the cell is built (:func:`cellsearch.cells.check_spec`), not here, so that
    this module stays torch- and plugin-free.

    ``init`` is the weight init, ``bias`` the gate-bias init. An old spec whose ``init`` names a gate-bias
    init (``ugi``, ``chrono``, ``constant``; see :data:`LEGACY_BIAS_INITS`) is read as the new form, and
    ``bias: default`` is left out of the canonical JSON, so specs that never set it keep their digest.
    """

    update: str = "lstm"
    gate: str = "sigmoid"
    init: str = "default"
    bias: str = "default"
    saturation: str = "tanh"
    recurrence: str = "free"
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=FrozenDict)

    def __post_init__(self) -> None:
        for role in CELL_ROLES:
            value = getattr(self, role)
            if not isinstance(value, str) or not value:
                raise SpecError(f"cell.{role}", value, "the name of a registered primitive (a string)")
        if not isinstance(self.options, Mapping):
            raise SpecError("cell.options", self.options, f"a mapping from a role ({', '.join(CELL_ROLES)}) "
                            "to that primitive's options")
        for role, opts in self.options.items():
            if role not in CELL_ROLES:
                raise SpecError(f"cell.options.{role}", role, f"one of {list(CELL_ROLES)}")
            if not isinstance(opts, Mapping):
                raise SpecError(f"cell.options.{role}", opts, "a mapping of option names to values")
        object.__setattr__(self, "options", FrozenDict({k: v for k, v in self.options.items() if len(v)}))
        if self.init in LEGACY_BIAS_INITS:
            self._move_legacy_init()

    def _move_legacy_init(self) -> None:
        """``init: ugi|chrono|constant`` (before issue 16) → ``init: default, bias: <it>``, options moved."""
        if self.bias != "default":
            raise SpecError("cell.init", self.init, f"a weight init: {self.init!r} is a gate-bias init (bias: "
                            f"{self.init}), and bias is already {self.bias!r}")
        options = dict(self.options)
        moved = {**LEGACY_BIAS_INITS[self.init], **_thaw(options.pop("init", {}))}
        if moved:
            options["bias"] = moved
        object.__setattr__(self, "bias", self.init)
        object.__setattr__(self, "init", "default")
        object.__setattr__(self, "options", FrozenDict(options))

    def to_dict(self, *, _digest: bool = False) -> dict[str, Any]:
        out = super().to_dict()
        if _digest and out["init"] == "default" and out["bias"] in LEGACY_BIAS_INITS:
            out = self._legacy_form(out)  # the digest a trial stored before issue 16
        if out["bias"] == "default":
            del out["bias"]  # specs from before the bias role keep their canonical JSON and digest
        return out

    @staticmethod
    def _legacy_form(out: dict[str, Any]) -> dict[str, Any]:
        """``init: default, bias: ugi|chrono|constant`` written as before the split (``init: <it>``;
        chrono's t_max left out when it is the old default 784), for :meth:`digest` only."""
        options = dict(out["options"])
        bias_options = {k: v for k, v in options.pop("bias", {}).items()
                        if LEGACY_BIAS_INITS[out["bias"]].get(k, object()) != v}
        if bias_options:
            options["init"] = bias_options
        return {**out, "init": out["bias"], "bias": "default", "options": options}

    def options_for(self, role: str) -> dict[str, Any]:
        """The options of the primitive in ``role`` as a plain dict (empty when none)."""
        return _thaw(self.options.get(role, {}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpec:
        _check_keys("cell", data, cls)
        return cls(**dict(data))


@dataclass(frozen=True)
class DepthSpec(_SpecMixin):
    """How cells are arranged (Pascanu et al. 2014, PRIMITIVES.md §6).

    - ``layers``: stacked cells (sRNN); layer ℓ reads layer ℓ−1's output.
    - ``transition``: ``none``; ``deep`` (DT: the candidate path gets ``transition_layers`` extra
      nonlinear layers per step); ``deep_shortcut`` (DT(S): plus a direct W_s h_{t−1} path).
    - ``output_layers``: deep output (DO) — an MLP of this many layers between state and readout.
    - ``input_layers``: deep input — an MLP of this many layers from x_t into the first cell.
    - ``residual``: h^(ℓ) += h^(ℓ−1) between equal-width layers.
    - ``dropout``: dropout between stacked layers (not inside the recurrence).
    - ``extra``: other registered depth primitives (a plugin's) switched on, ``{name: {options}}``.
    """

    # metadata: ``primitive`` — the depth primitive that reads the field; ``low`` — the least integer;
    # ``when`` — the field it matters under (only when that one is off its default: the sampler asks for it
    # conditionally); ``card`` — a published cell's card fixes it (the others are the study's stacking).
    # The config layer, the sampler and the JSON schema read these rules from here.
    layers: int = field(default=1, metadata={"primitive": "stacked", "low": 1})
    transition: str = field(default="none", metadata={"primitive": "deep_transition", "choices": TRANSITIONS,
                                                                 "card": True})
    transition_layers: int = field(default=1, metadata={"primitive": "deep_transition", "low": 1,
                                                        "when": "transition", "card": True})
    output_layers: int = field(default=0, metadata={"primitive": "deep_output", "low": 0, "card": True})
    input_layers: int = field(default=0, metadata={"primitive": "deep_input", "low": 0, "card": True})
    residual: bool = field(default=False, metadata={"primitive": "residual"})
    dropout: float = field(default=0.0, metadata={"primitive": "stacked"})
    #: other registered depth primitives (a plugin's) switched on, by name, with their options
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=FrozenDict)

    def __post_init__(self) -> None:
        self._check_extra()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "low" in f.metadata:
                _check_type(f"depth.{f.name}", value, int, f"an integer >= {f.metadata['low']}")
                if value < f.metadata["low"]:
                    raise SpecError(f"depth.{f.name}", value, f"an integer >= {f.metadata['low']}")
            elif "choices" in f.metadata and value not in f.metadata["choices"]:
                raise SpecError(f"depth.{f.name}", value, f"one of {list(f.metadata['choices'])}")
        _check_type("depth.residual", self.residual, bool, "true or false")
        _check_type("depth.dropout", self.dropout, (int, float), "a number in [0, 1)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise SpecError("depth.dropout", self.dropout, "a number in [0, 1)")
        object.__setattr__(self, "dropout", float(self.dropout))

    def _check_extra(self) -> None:
        if not isinstance(self.extra, Mapping):
            raise SpecError("depth.extra", self.extra, "a mapping from a depth primitive's name to its options")
        for name, opts in self.extra.items():
            if not isinstance(name, str) or not isinstance(opts, Mapping):
                raise SpecError(f"depth.extra.{name}", opts, "a mapping of option names to values ({} for none)")
        object.__setattr__(self, "extra", FrozenDict(self.extra))

    def to_dict(self, *, _digest: bool = False) -> dict[str, Any]:
        out = super().to_dict()
        if not out["extra"]:
            del out["extra"]  # depths from before plugin depth primitives keep their canonical JSON and digest
        return out

    def options_for(self, name: str) -> dict[str, Any]:
        """The options ``extra`` gives depth primitive ``name``, as a plain dict (empty when none)."""
        return _thaw(self.extra.get(name, {}))

    @staticmethod
    def int_fields() -> dict[str, int]:
        """The integer fields and their least values."""
        return {f.name: f.metadata["low"] for f in dataclasses.fields(DepthSpec) if "low" in f.metadata}

    @staticmethod
    def card_fields() -> tuple[str, ...]:
        """The fields a published cell's card fixes (the others are the study's stacking)."""
        return tuple(f.name for f in dataclasses.fields(DepthSpec) if f.metadata.get("card"))

    @staticmethod
    def conditions() -> dict[str, str]:
        """Field → the field it matters under (it applies only when that one is off its default)."""
        return {f.name: f.metadata["when"] for f in dataclasses.fields(DepthSpec) if "when" in f.metadata}

    def applies(self, name: str) -> bool:
        """Whether field ``name`` matters for this depth (see :meth:`conditions`)."""
        when = self.conditions().get(name)
        return when is None or getattr(self, when) != getattr(DepthSpec(), when)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DepthSpec:
        _check_keys("depth", data, cls)
        return cls(**dict(data))


@dataclass(frozen=True)
class ModelSpec(_SpecMixin):
    """A whole candidate: a cell, a depth configuration and the hidden size.

    ``input_size`` and ``output_size`` come from the task and may be left ``None`` in a search space.
    """

    cell: CellSpec = field(default_factory=CellSpec)
    depth: DepthSpec = field(default_factory=DepthSpec)
    hidden_size: int = 64
    input_size: int | None = None
    output_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cell, Mapping):
            object.__setattr__(self, "cell", CellSpec.from_dict(self.cell))
        if isinstance(self.depth, Mapping):
            object.__setattr__(self, "depth", DepthSpec.from_dict(self.depth))
        if not isinstance(self.cell, CellSpec):
            raise SpecError("model.cell", self.cell, "a CellSpec or a mapping")
        if not isinstance(self.depth, DepthSpec):
            raise SpecError("model.depth", self.depth, "a DepthSpec or a mapping")
        _check_type("model.hidden_size", self.hidden_size, int, "an integer >= 1")
        if self.hidden_size < 1:
            raise SpecError("model.hidden_size", self.hidden_size, "an integer >= 1")
        for name in ("input_size", "output_size"):
            value = getattr(self, name)
            if value is not None:
                _check_type(f"model.{name}", value, int, "an integer >= 1 or null")
                if value < 1:
                    raise SpecError(f"model.{name}", value, "an integer >= 1 or null")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        _check_keys("model", data, cls)
        return cls(**dict(data))
