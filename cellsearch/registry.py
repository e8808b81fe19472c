"""Name registries for primitives (by role), cells and tasks, filled from code and from entry points.

Built-in primitives register with :func:`register_primitive`; published cells, third-party cells,
primitives and tasks arrive through the entry-point groups ``cellsearch.primitives``,
``cellsearch.cells`` and ``cellsearch.tasks`` (pluggy-style: a plugin is loaded and validated when the
registry is first read, its distribution is recorded as its origin, a duplicate name is an error naming
both origins, and a plugin that fails to import is reported by name while the others keep working).

This module imports neither torch nor any plugin at import time.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .errors import did_you_mean
from .spec import ROLES

__all__ = [
    "RegistryError",
    "UnknownNameError",
    "DuplicateNameError",
    "PluginLoadError",
    "PluginLoadWarning",
    "register_primitive",
    "eager_for",
    "eager_functions",
    "register_cell",
    "register_task",
    "get_primitive",
    "get_cell_card",
    "get_task",
    "list_primitives",
    "list_cells",
    "list_tasks",
    "origin_of",
    "plugin_errors",
    "did_you_mean",
    "set_entry_check",
]

GROUPS = {"primitive": "cellsearch.primitives", "cell": "cellsearch.cells", "task": "cellsearch.tasks"}
#: the built-in modules each kind's registrations live in (imported when that kind is first read: listing
#: cells imports neither torch nor the primitives)
_BUILTIN_MODULES = {"primitive": "cellsearch.primitives", "task": "cellsearch.tasks"}


class RegistryError(LookupError):
    """Base class of registry errors."""


class UnknownNameError(RegistryError, KeyError):
    """A name that is not registered; the message lists close matches and the allowed names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginLoadWarning(RuntimeWarning):
    """A plugin failed to load (warned once per module and error; see :func:`plugin_errors`)."""


class DuplicateNameError(RegistryError):
    """Two registrations under one name; the message names both origins."""


@dataclass(frozen=True)
class PluginLoadError:
    """An entry point that could not be loaded: its group, name, target and the error."""

    group: str
    name: str
    target: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.group} -> {self.target}) failed to load: {self.error}"


@dataclass(frozen=True)
class _Entry:
    kind: str
    key: str
    obj: Any
    origin: str


_entries: dict[tuple[str, str], _Entry] = {}
_errors: list[PluginLoadError] = []
_warned: set[tuple[str, str]] = set()
_loaded: set[str] = set()                      # kinds loaded
_fatal: dict[str, DuplicateNameError] = {}     # kind -> the clash refused on every read of it
_lock = threading.RLock()


def _key(kind: str, name: str, role: str | None) -> str:
    return f"{role}:{name}" if kind == "primitive" else name


def _add(kind: str, name: str, obj: Any, origin: str, role: str | None = None) -> None:
    key = _key(kind, name, role)
    with _lock:
        old = _entries.get((kind, key))
        if old is not None and old.obj is not obj:
            what = f"{role} primitive" if role else kind
            raise DuplicateNameError(
                f"duplicate {what} name {name!r}: registered by {old.origin} and again by {origin}; "
                "rename one of them (names are unique per role)"
            )
        _entries[(kind, key)] = _Entry(kind, key, obj, origin)


def _caller_origin(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    top = module.split(".")[0]
    return "cellsearch (built-in)" if top == "cellsearch" else f"module {module}"


def register_primitive(cls: type | None = None, *, origin: str | None = None) -> Any:
    """Class decorator: register a primitive class under ``cls.role`` / ``cls.name``."""

    def wrap(c: type) -> type:
        role, name = getattr(c, "role", None), getattr(c, "name", None)
        if role not in ROLES:
            raise RegistryError(f"primitive {c!r} has role {role!r}; expected one of {list(ROLES)}")
        if not isinstance(name, str) or not name:
            raise RegistryError(f"primitive {c!r} needs a non-empty string attribute 'name'")
        _add("primitive", name, c, origin or _caller_origin(c), role)
        return c

    return wrap(cls) if cls is not None else wrap


#: functions that run as one op under tracing but otherwise as their own code (value-dependent control
#: flow, a cheaper gradient), by that op (a torch OpOverload): see :func:`eager_for`
_EAGER: dict[Any, Any] = {}


def eager_for(op: Any) -> Any:
    """Decorator for a primitive's function that computes ``op``'s value (to rounding) and is traced as
    ``op``: a traced graph holding ``op`` calls the function instead where it runs eagerly
    (:func:`cellsearch.trace.eager_graph`, the derived path's prologue). The orthogonal map's matrix
    exponential (:func:`cellsearch.primitives.orthogonal.expm`, traced as ``torch.linalg.matrix_exp``)."""

    def register(fn: Any) -> Any:
        _EAGER[op] = fn
        return fn

    return register


def eager_functions() -> dict[Any, Any]:
    """The functions registered with :func:`eager_for`, by op (a copy)."""
    return dict(_EAGER)


def register_cell(card: Any, *, origin: str | None = None) -> Any:
    """Register a :class:`~cellsearch.cards.CellCard` under ``card.name``."""
    _add("cell", card.name, card, origin or _caller_origin(card))
    return card


def register_task(cls: Any = None, *, origin: str | None = None) -> Any:
    """Class decorator: register a task class under ``cls.name``."""

    def wrap(c: Any) -> Any:
        _add("task", c.name, c, origin or _caller_origin(c))
        return c

    return wrap(cls) if cls is not None else wrap


#: a plugin whose import takes longer than this many seconds is named in a warning (it slows every command)
SLOW_IMPORT_S = 2.0


def _load_entry_point(kind: str, ep: metadata.EntryPoint) -> None:
    dist = getattr(ep, "dist", None)
    origin = f"distribution {dist.name if dist else '?'} (entry point {ep.value})"
    started = time.perf_counter()
    try:
        obj = ep.load()
        _validate_plugin(kind, ep.name, obj)
    except (DuplicateNameError, KeyboardInterrupt):  # Ctrl-C stays Ctrl-C
        raise
    except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the others down
        err = PluginLoadError(GROUPS[kind], ep.name, ep.value, _explain(exc))
        _errors.append(err)
        module = ep.value.split(":")[0]
        if (module, err.error) not in _warned:  # one module's failure is reported once, not per entry point
            _warned.add((module, err.error))
            others = [e.name for e in metadata.entry_points(group=GROUPS[kind])
                      if e.value.split(":")[0] == module and e.name != ep.name]
            also = f" (also breaks {', '.join(sorted(others))})" if others else ""
            warnings.warn(str(err) + also, PluginLoadWarning, stacklevel=3)
        return
    finally:
        _warn_if_slow(kind, ep, time.perf_counter() - started)
    _add(kind, ep.name, obj, origin, obj.role if kind == "primitive" else None)


def _warn_if_slow(kind: str, ep: metadata.EntryPoint, seconds: float) -> None:
    """Name a plugin whose import took longer than :data:`SLOW_IMPORT_S` (once per module)."""
    module = ep.value.split(":")[0]
    if seconds <= SLOW_IMPORT_S or (module, "slow") in _warned:
        return
    _warned.add((module, "slow"))
    warnings.warn(f"plugin {ep.name!r} ({GROUPS[kind]}, module {module}) took {seconds:.1f} s to import "
                  f"(more than {SLOW_IMPORT_S:g} s, on every cellsearch command); disable it with "
                  f"CELLSEARCH_DISABLE_PLUGINS={ep.name}", PluginLoadWarning, stacklevel=4)


_MISSING = re.compile(r"(\w+)\.__init__\(\) missing \d+ required (?:positional|keyword-only) arguments?: (.+)")


def _explain(exc: BaseException) -> str:
    """The error in one line; a card or class built without a required field names the field."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r}) on import"
    text = str(exc).splitlines()[0] if str(exc) else ""
    match = _MISSING.search(text)
    if isinstance(exc, TypeError) and match:
        cls, missing = match.groups()
        what = "the field" if "," not in missing and " and " not in missing else "the fields"
        needed = ""
        if cls == "CellCard":
            from dataclasses import MISSING, fields

            from .cards import CellCard

            required = [f.name for f in fields(CellCard) if f.default is MISSING and f.default_factory is MISSING]
            needed = f" (a CellCard needs {', '.join(required)})"
        return f"{cls} is missing {what} {missing}{needed}"
    return f"{type(exc).__name__}: {text}"


#: kind -> a check of what an entry point loaded, given by the floor that defines that kind (the primitives'
#: base class registers its own, so that the registry, a floor below, imports no primitive)
_ENTRY_CHECKS: dict[str, Any] = {}


def set_entry_check(kind: str, check: Any) -> None:
    """``check(name, obj)`` raises TypeError when an entry point of ``kind`` loaded something else than a
    registrable object of that kind (set by :mod:`cellsearch.primitives.base` for primitives)."""
    if kind not in GROUPS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(GROUPS)}")
    _ENTRY_CHECKS[kind] = check


def _validate_plugin(kind: str, name: str, obj: Any) -> None:
    if kind in _ENTRY_CHECKS:
        _ENTRY_CHECKS[kind](name, obj)
    elif kind == "primitive":  # the built-in primitives (imported first) set the check; a plain class test
        if not (isinstance(obj, type) and getattr(obj, "name", None) == name):
            raise TypeError(f"expected a Primitive subclass whose .name is {name!r}, got {obj!r}")
    elif kind == "cell":
        from .cards import CellCard

        if not isinstance(obj, CellCard):
            raise TypeError(f"expected a CellCard, got {type(obj).__name__}")
        if obj.name != name:
            raise TypeError(f"entry point name {name!r} differs from the card's name {obj.name!r}")
    else:
        if not (isinstance(obj, type) and getattr(obj, "name", None) == name):
            raise TypeError(f"expected a Task class whose .name is {name!r}, got {obj!r}")


def _disabled() -> set[str]:
    """Entry-point or distribution names listed in ``CELLSEARCH_DISABLE_PLUGINS`` (comma-separated)."""
    return {s.strip() for s in os.environ.get("CELLSEARCH_DISABLE_PLUGINS", "").split(",") if s.strip()}


def load_plugins(force: bool = False, kinds: Iterable[str] | None = None) -> None:
    """Import the built-in primitives and tasks, then every entry point (once per kind, unless
    ``force``). ``kinds``: only these kinds (``primitive``, ``cell``, ``task``; default all), so that
    reading cells imports no torch.

    Set ``CELLSEARCH_DISABLE_PLUGINS=name,dist`` to skip entry points by name or distribution.
    """
    import importlib

    with _lock:
        if force:
            _loaded.clear()
            _fatal.clear()
            _errors.clear()
        disabled = _disabled()
        for kind in (GROUPS if kinds is None else kinds):
            if kind in _loaded:
                continue
            _loaded.add(kind)
            if kind in _BUILTIN_MODULES:
                importlib.import_module(_BUILTIN_MODULES[kind])
            clashes: list[str] = []
            for ep in sorted(metadata.entry_points(group=GROUPS[kind]), key=lambda e: e.name):
                dist = getattr(ep, "dist", None)
                if ep.name in disabled or (dist is not None and dist.name in disabled):
                    continue
                try:
                    _load_entry_point(kind, ep)
                except DuplicateNameError as exc:  # keep loading the others, then refuse on every read
                    clashes.append(str(exc))
            if clashes:
                _fatal[kind] = DuplicateNameError("; ".join(clashes))
        fatal = [_fatal[k] for k in (GROUPS if kinds is None else kinds) if k in _fatal]
        if fatal:
            raise fatal[0] if len(fatal) == 1 else DuplicateNameError("; ".join(map(str, fatal)))


def plugin_errors() -> list[PluginLoadError]:
    """Plugins that failed to load, each with its name and error."""
    load_plugins()
    return list(_errors)


def _names(kind: str, role: str | None = None) -> list[str]:
    load_plugins(kinds=(kind,))
    out = []
    for k, key in _entries:
        if k != kind:
            continue
        if kind == "primitive":
            r, name = key.split(":", 1)
            if role is None or r == role:
                out.append(name if role else key.replace(":", "/"))
        else:
            out.append(key)
    return sorted(set(out))


def _filter(names: list[str], pattern: str | None) -> list[str]:
    return names if not pattern else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def list_primitives(role: str | None = None, pattern: str | None = None) -> list[str]:
    """Registered primitives: names of one role, or ``role/name`` for all; ``pattern`` is a wildcard."""
    if role is not None and role not in ROLES:
        raise UnknownNameError(f"unknown role {role!r}; {did_you_mean(role, ROLES)}allowed: {list(ROLES)}")
    return _filter(_names("primitive", role), pattern)


def list_cells(pattern: str | None = None) -> list[str]:
    """Registered cells (published and third-party); ``pattern`` is a wildcard such as ``"*lstm"``."""
    return _filter(_names("cell"), pattern)


def list_tasks(pattern: str | None = None) -> list[str]:
    """Registered tasks."""
    return _filter(_names("task"), pattern)


def _get(kind: str, name: str, role: str | None, what: str) -> Any:
    load_plugins(kinds=(kind,))
    entry = _entries.get((kind, _key(kind, name, role)))
    if entry is None:
        choices = _names(kind, role) if kind == "primitive" else _names(kind)
        raise UnknownNameError(f"unknown {what} {name!r}; {did_you_mean(name, choices)}registered: {choices}")
    return entry.obj


def get_primitive(role: str, name: str) -> type:
    """The primitive class registered as ``name`` in ``role``."""
    if role not in ROLES:
        raise UnknownNameError(f"unknown role {role!r}; {did_you_mean(role, ROLES)}allowed: {list(ROLES)}")
    return _get("primitive", name, role, f"{role} primitive")


def get_cell_card(name: str) -> Any:
    """The :class:`~cellsearch.cards.CellCard` registered as ``name``."""
    return _get("cell", name, None, "cell")


def get_task(name: str) -> Any:
    """The task class registered as ``name``."""
    return _get("task", name, None, "task")


def origin_of(kind: str, name: str, role: str | None = None) -> str:
    """Where a registered name came from (``cellsearch (built-in)`` or a distribution)."""
    load_plugins(kinds=(kind,))
    return _entries[(kind, _key(kind, name, role))].origin


def unregister(kind: str, name: str, role: str | None = None) -> None:
    """Remove one registration (for tests and interactive use)."""
    with _lock:
        _entries.pop((kind, _key(kind, name, role)), None)

