"""JSON Schemas of the study and space files, generated from the config classes of :mod:`cellsearch.config`.

The config classes are plain frozen dataclasses validated by hand (no config-class library), so this module
is the one place that turns them into JSON Schema (draft-07, what yaml-language-server reads): the keys come
from ``STUDY_KEYS`` / ``SPACE_KEYS`` / ``SEARCH_KEYS`` and the dataclass fields, types from their annotations,
training keys and task options from their declared :class:`~cellsearch.config.options.Option` rules, names
(tasks, cells, primitives, samplers, pruners) from the registries and tables. Registered names are offered
for completion without refusing names a plugin adds later.

The schemas of the built-in names ship as package data (``cellsearch/schema/*.schema.json``); an editor with
yaml-language-server completes and checks a study file that starts with::

    # yaml-language-server: $schema=<path or URL of study.schema.json>

``cellsearch schema`` prints them (with the names of the plugins installed here); a test keeps the shipped
files equal to what this module generates.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

__all__ = ["study_schema", "space_schema", "schemas", "shipped_dir", "SCHEMA_FILES"]

DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_FILES = {"study": "study.schema.json", "space": "space.schema.json"}
_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "path": "string"}
#: lower bounds the study reader enforces on dataclass fields (``_Reader.integer(key, value, low)``)
_MINIMUM = {"hidden_size": 1, "num_layers": 1, "param_budget": 1, "n_trials": 1, "timeout": 0, "n_jobs": 1,
            "seed": 0, "max_concurrent_trials": 1}


def shipped_dir() -> Path:
    """The folder of the shipped schema files (package data)."""
    return Path(__file__).resolve().parent / "schema"


def _names(kind: str, builtin_only: bool, role: str | None = None) -> list[str]:
    from . import registry

    if kind == "primitive":
        names = registry.list_primitives(role)
    else:
        names = registry.list_cells() if kind == "cell" else registry.list_tasks()
    if not builtin_only:
        return names
    ours = ("cellsearch (built-in)", "distribution cellsearch ")
    return [n for n in names if registry.origin_of(kind, n, role).startswith(ours)]


def _named(names: list[str], what: str) -> dict[str, Any]:
    """A string, completed from ``names`` but open to names registered later by plugins."""
    return {"anyOf": [{"enum": names}, {"type": "string"}], "description": what}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def option_schema(option: Any) -> dict[str, Any]:
    """A declared :class:`~cellsearch.config.options.Option` (kind, bounds, choices, nullable, help)."""
    out: dict[str, Any] = {"type": _JSON_TYPES[option.kind]}
    if option.kind == "float":  # YAML reads 1e-3 as a string; the Option converts it
        out = {"type": ["number", "string"]}
    if option.choices is not None:
        out["enum"] = list(option.choices)
    for key, bound in (("minimum", option.low), ("maximum", option.high), ("exclusiveMinimum", option.gt),
                       ("exclusiveMaximum", option.lt)):
        if bound is not None and option.kind in ("int", "float"):
            out[key] = bound
    if option.default is not None:
        out["default"] = option.default
    if option.help:
        out["description"] = option.help
    return _nullable(out) if option.nullable else out


def _annotation(cls: type, name: str) -> dict[str, Any]:
    """JSON Schema of a dataclass field from its annotation (``int | None`` → integer or null)."""
    hint = str(cls.__annotations__[name])  # a string: the config modules use postponed annotations
    parts = [p.strip() for p in hint.split("|")]
    base = next((p for p in parts if p != "None"), "str")
    out: dict[str, Any] = {"type": _JSON_TYPES.get(base, "string")}
    if name in _MINIMUM:
        out["minimum"] = _MINIMUM[name]
    default = next((f.default for f in fields(cls) if f.name == name), None)
    if isinstance(default, (int, float, str, bool)):
        out["default"] = default
    return _nullable(out) if "None" in parts else out


def _param(value: dict[str, Any] | None = None) -> dict[str, Any]:
    """A space parameter: a list (categorical), ``{low, high, log, step}`` (a range) or one fixed value."""
    item = value or {"type": ["string", "number", "boolean", "null"]}
    return {"anyOf": [
        {"type": "array", "items": item, "minItems": 1, "uniqueItems": True},
        {"type": "object", "required": ["low", "high"], "additionalProperties": False,
         "properties": {"low": {"type": "number"}, "high": {"type": "number"}, "log": {"type": "boolean"},
                        "step": {"type": ["number", "null"]}}},
        item,
    ]}


def _train_rules() -> dict[str, Any]:
    from .config.train import _RULES

    return _RULES


def _train(rules: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "description": "training settings (TrainConfig)",
            "properties": {k: option_schema(o) for k, o in rules.items()}}


def _depth_params() -> dict[str, Any]:
    from .spec import DepthSpec

    out = {}
    for f in fields(DepthSpec):
        if f.name == "extra":  # a spec's plugin depth primitives; a space does not search them
            continue
        item: dict[str, Any] = {"type": _JSON_TYPES.get(str(f.type), "number")}
        if "choices" in f.metadata:
            item = {"enum": list(f.metadata["choices"])}
        elif "low" in f.metadata:
            item["minimum"] = f.metadata["low"]
        out[f.name] = _param(item)
    return out


def space_schema(builtin_only: bool = False) -> dict[str, Any]:
    """JSON Schema of a space file (:class:`~cellsearch.config.SpaceConfig`)."""
    from .config.space import SPACE_KEYS
    from .spec import CELL_ROLES

    cell: dict[str, Any] = {
        role: {"type": "array", "minItems": 1, "uniqueItems": True,
               "items": _named(_names("primitive", builtin_only, role), f"a registered {role} primitive")}
        for role in CELL_ROLES
    }
    cell["options"] = {"type": "object", "description": "options of a primitive: {primitive: {option: value}}",
                       "additionalProperties": {"type": "object", "additionalProperties": _param()}}
    properties = {
        "cell": {"type": "object", "additionalProperties": False, "properties": cell,
                 "description": "primitive names to search, one list per role"},
        "depth": {"type": "object", "additionalProperties": False, "properties": _depth_params()},
        "hidden_size": _param({"type": "integer", "minimum": 1}),
        "train": {"type": "object", "additionalProperties": False, "description": "training values searched jointly",
                  "properties": {k: _param() for k in _train_rules()}},
        "published": {"anyOf": [{"type": "boolean"}, {"type": "array", "items": _named(
            _names("cell", builtin_only), "a published cell")}]},
    }
    assert set(properties) == set(SPACE_KEYS), "a space key without a schema"
    return {"$schema": DRAFT, "title": "cellsearch space file", "type": "object", "additionalProperties": False,
            "properties": properties}


def _task(builtin_only: bool) -> dict[str, Any]:
    from . import registry

    names = _names("task", builtin_only)
    per_task = []
    for name in names:
        task = registry.get_task(name)
        options = task.all_options() if hasattr(task, "all_options") else getattr(task, "options", {}) or {}
        props = {"name": {"const": name}, **{k: option_schema(o) for k, o in options.items()}}
        per_task.append({"if": {"properties": {"name": {"const": name}}, "required": ["name"]},
                         "then": {"properties": props, "additionalProperties": False}})
    mapping = {"type": "object", "required": ["name"], "properties": {"name": _named(names, "a registered task")},
               "allOf": per_task}
    return {"anyOf": [_named(names, "a registered task"), mapping], "description": "the task and its options"}


def _named_choice(choices: list[str], what: str) -> dict[str, Any]:
    """``tpe`` or ``{name: tpe, <constructor argument>: value}``."""
    return {"anyOf": [{"enum": choices}, {"type": "object", "required": ["name"],
                                          "properties": {"name": {"enum": choices}}}], "description": what}


def _search() -> dict[str, Any]:
    from .config.study import BACKENDS, PRUNERS, SAMPLERS, SCHEDULERS, SEARCH_KEYS, SearchConfig

    props: dict[str, Any] = {}
    for key in SEARCH_KEYS:
        if key == "backend":
            props[key] = {"enum": list(BACKENDS), "default": "optuna"}
        elif key == "sampler":
            props[key] = _named_choice(list(SAMPLERS), "Optuna sampler (and its constructor arguments)")
        elif key == "pruner":
            props[key] = _named_choice(list(PRUNERS), "Optuna pruner (and its constructor arguments)")
        elif key == "scheduler":
            props[key] = _nullable(_named_choice(list(SCHEDULERS), "Ray Tune scheduler (backend ray)"))
        elif key == "resources":
            props[key] = {"type": "object", "additionalProperties": False, "description": "per trial (Ray)",
                          "properties": {"cpu": {"type": "number", "minimum": 0},
                                         "gpu": {"type": "number", "minimum": 0}}}
        else:
            props[key] = _annotation(SearchConfig, key)
    return {"type": "object", "additionalProperties": False, "properties": props}


def _objective(builtin_only: bool) -> dict[str, Any]:
    from .config.study import DIRECTIONS

    metric = {"anyOf": [{"enum": ["val_loss", "params", "speed"]}, {"type": "string"}],
              "description": "val_loss, val_<task metric> (e.g. val_mse, val_accuracy), params or speed"}
    one = {"anyOf": [metric, {"type": "object", "required": ["metric"], "additionalProperties": False,
                              "properties": {"metric": metric, "direction": {"enum": list(DIRECTIONS)}}}]}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 2}],
            "description": "one objective, or a list of two or more (multi-objective)"}


def _variant(cells: list[str]) -> dict[str, Any]:
    """A grid's variant mapping (:class:`~cellsearch.config.variants.Variant`): a cell with overrides."""
    from .config.variants import SIZE_KEYS
    from .spec import CELL_ROLES

    depth = {k: v["anyOf"][-1] for k, v in _depth_params().items() if k != "layers"}
    return {"type": "object", "required": ["cell"], "additionalProperties": False,
            "description": "a registered cell with overrides, named by its label",
            "properties": {
                "label": {"type": "string", "description": "its name in tables (default: the cell name)"},
                "cell": _named(cells, "a registered cell"),
                "layers": {"type": "integer", "minimum": 1, "description": "default: model.num_layers"},
                "spec": {"type": "object", "additionalProperties": False,
                         "description": "primitives replacing the card's",
                         "properties": {role: {"type": "string"} for role in CELL_ROLES}},
                "options": {"type": "object", "description": "per-role primitive options merged into the card's",
                            "additionalProperties": False,
                            "properties": {role: {"type": "object"} for role in CELL_ROLES}},
                "depth": {"type": "object", "additionalProperties": False, "properties": depth},
                "train": _train(_train_rules()),
                "model": {"type": "object", "additionalProperties": False, "maxProperties": 1,
                          "description": "hidden_size or param_budget, replacing the study's sizing",
                          "properties": {k: {"type": "integer", "minimum": 1} for k in SIZE_KEYS}}}}


def study_schema(builtin_only: bool = False) -> dict[str, Any]:
    """JSON Schema of a study file (:class:`~cellsearch.config.StudyConfig`); the space schema inline."""
    from .config.study import STUDY_KEYS, ModelConfig

    space = space_schema(builtin_only)
    space = {k: v for k, v in space.items() if k != "$schema"}
    cells = _names("cell", builtin_only)
    properties = {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                 "description": "names the runs/<name> folder"},
        "description": {"type": "string"},
        "task": _task(builtin_only),
        "space": {"anyOf": [{"$ref": "#/definitions/space"},
                            {"type": "string", "description": "a space file (e.g. spaces/gating.yaml)"}]},
        "cells": {"anyOf": [{"type": "array", "minItems": 1, "uniqueItems": True,
                             "items": {"anyOf": [_named(cells, "a registered cell"), _variant(cells)]}},
                            _named(cells, "a registered cell")]},
        "seeds": {"anyOf": [{"type": "integer", "minimum": 1},
                            {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}]},
        "model": {"type": "object", "additionalProperties": False,
                  "properties": {f.name: _annotation(ModelConfig, f.name) for f in fields(ModelConfig)}},
        "train": _train(_train_rules()),
        "objective": _objective(builtin_only),
        "search": _search(),
        "storage": {"type": ["string", "null"], "description": "Optuna storage URL (default sqlite:///runs/<name>/study.db)"},
        "output_dir": {"type": ["string", "null"], "description": "the study's folder (default runs/<name>)"},
    }
    assert set(properties) == set(STUDY_KEYS), "a study key without a schema"
    return {"$schema": DRAFT, "title": "cellsearch study file", "type": "object", "additionalProperties": False,
            "required": ["name", "task"], "properties": properties,
            "oneOf": [{"required": ["space"]}, {"required": ["cells"]}], "definitions": {"space": space}}


def schemas(builtin_only: bool = False) -> dict[str, str]:
    """File name -> JSON text of every schema."""
    made = {"study": study_schema(builtin_only), "space": space_schema(builtin_only)}
    return {SCHEMA_FILES[k]: json.dumps(v, indent=2, sort_keys=False) + "\n" for k, v in made.items()}
