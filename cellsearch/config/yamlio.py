"""Reading study and space files: strict, safe YAML (no object tags, no aliases, no duplicate keys, a size
cap), dotted ``--set`` overrides applied to the raw mapping, and where a referenced space file lies.

Every problem raises one :class:`~cellsearch.errors.StudyError` line naming the file (and line/column where
YAML gives one). Torch-free.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import StudyError

__all__ = ["read_yaml", "parse_yaml", "parse_set", "apply_overrides", "builtin_spaces_dir", "resolve_path",
           "load_space_raw", "plain", "MAX_YAML_CHARS"]


def plain(value: Any) -> Any:
    """Frozen mappings and tuples (at any depth, lists included) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def read_yaml(path: str | Path, source: str | None = None) -> Any:
    """``yaml.safe_load`` a file; every problem becomes one :class:`StudyError` line."""
    source = source or str(path)
    p = Path(path)
    if not p.is_file():
        raise StudyError.plain(source, "no such file" if not p.exists() else "not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError.plain(source, f"cannot be read ({type(exc).__name__}: {exc})") from None
    return parse_yaml(text, source)


MAX_YAML_CHARS = 1 << 20  # a study or space file is small; a larger one is refused before parsing


class _Refused(yaml.YAMLError):
    """A YAML feature refused by :class:`_StrictLoader` (the message is the whole explanation)."""


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` without aliases (``*name`` can expand a few lines into gigabytes: a "billion laughs"
    file) and without duplicate keys (YAML silently keeps the last one)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"{_at(event.start_mark)}YAML alias *{event.anchor} is not allowed (anchors and "
                           "aliases can expand a small file enormously); write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not key_node.start_mark:
                raise _Refused(f"{_at(key_node.start_mark)}duplicate key {str(key)[:40]!r} (first at line "
                               f"{first.line + 1}); YAML would keep only the last value")
        return super().construct_mapping(node, deep=deep)


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def parse_yaml(text: str, source: str, expected: str = "a YAML mapping of study keys") -> Any:
    """Parse YAML text safely: no object-constructing tags, no aliases, no duplicate keys, at most
    :data:`MAX_YAML_CHARS` characters; every problem raises one :class:`StudyError` line."""
    if len(text) > MAX_YAML_CHARS:
        raise StudyError.plain(source, f"is {len(text):,} characters; a study, space or --set value is at most "
                                       f"{MAX_YAML_CHARS:,}")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise StudyError.plain(source, str(exc)) from None
    except yaml.constructor.ConstructorError as exc:
        where = _mark(exc)
        tag = re.search(r"tag '([^']+)'", str(exc))
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "a YAML tag"
        raise StudyError.plain(
            source,
            f"{where}YAML tag {shown!r} is not allowed; expected plain YAML "
            "(mappings, lists, strings, numbers, booleans, null) read with "
            "safe_load",
        ) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError.plain(
            source, f"{_mark(exc)}malformed YAML ({problem}); expected {expected}"
        ) from None


def _mark(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def parse_set(item: str) -> tuple[str, Any]:
    """``"a.b=v"`` → ``("a.b", yaml value of v)``; raises :class:`StudyError` when malformed."""
    if "=" not in item:
        raise StudyError("--set", "", item, "KEY=VALUE with a dotted key, e.g. train.epochs=1")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise StudyError("--set", key or "", item, "KEY=VALUE with a dotted key, e.g. train.epochs=1")
    return key, parse_yaml(
        text, f"--set {key}", "a YAML value, e.g. 1, 1.0e-3, tpe or [lstm, gru]"
    ) if text.strip() else None


def apply_overrides(
    raw: dict[str, Any], overrides: Mapping[str, Any] | Iterable[str], source: str, base: Path
) -> dict[str, Any]:
    """Set dotted keys in a copy of ``raw``; ``space.*`` loads a referenced space file first."""
    items = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_set(s) for s in overrides]
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    for key, value in items:
        parts = key.split(".")
        if parts[0] == "space" and len(parts) > 1 and isinstance(out.get("space"), str):
            out["space"] = load_space_raw(out["space"], source, base)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise StudyError(
                    "--set",
                    ".".join(parts[: i + 1]),
                    child,
                    "a mapping to set a key inside (this key holds a single value)",
                )
            node = child
        node[parts[-1]] = value
    return out


def builtin_spaces_dir() -> Path | None:
    """The folder of the space files shipped with the package (``cellsearch/spaces``), if present."""
    from importlib import resources

    try:
        folder = Path(str(resources.files("cellsearch") / "spaces"))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - zipped or odd installs
        return None
    return folder if folder.is_dir() else None


def resolve_path(ref: str, base: Path) -> Path:
    """A space path: absolute, relative to the working directory or to the study file, or a built-in space
    (``spaces/gating.yaml``, ``gating.yaml`` or ``gating`` from anywhere, when no such file is nearer)."""
    p = Path(ref)
    if p.is_absolute() or p.exists():
        return p
    for near in (base / p, base.parent / p):
        if near.exists():
            return near
    builtin = builtin_spaces_dir()
    if builtin is not None and not p.is_absolute():
        for name in (p.name, f"{p.name}.yaml"):
            if (builtin / name).is_file():
                return builtin / name
    return p


def load_space_raw(ref: str, source: str, base: Path) -> Any:
    path = resolve_path(ref, base)
    if not path.exists():
        raise StudyError(
            source,
            "space",
            ref,
            "a space file that exists (or an inline mapping)",
            f"file not found ({path}); ",
        )
    return read_yaml(path)
