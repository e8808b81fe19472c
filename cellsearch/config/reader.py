"""Reading a raw YAML mapping into typed values, each mistake one :class:`~cellsearch.errors.StudyError`
naming the file and the key path; and :class:`Param`, one searched (or fixed) value of a space.

This is the study files' one validation system: the study, space and search keys are read through
:class:`Reader`; scalar options (``train.*``, a task's options) through :class:`~cellsearch.config.options.Option`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import StudyError, did_you_mean

__all__ = ["Reader", "Param", "parse_param", "bounded", "read_only", "first_line"]


class Reader:
    """Reads values out of a raw mapping, raising :class:`StudyError` with ``source`` and the key path
    (``prefix``: where the mapping sits in a larger file, e.g. ``experiments[0]`` of a reproduction config)."""

    def __init__(self, source: str, error: type[StudyError] = StudyError, prefix: str = "") -> None:
        self.source, self.error, self.prefix = source, error, prefix

    def fail(self, key: str, value: Any, allowed: str, hint: str = "") -> StudyError:
        """The error naming ``source``, ``key``, the value and what is allowed (``error``: its class)."""
        where = f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)
        return self.error(self.source, where, value, allowed, hint)

    def mapping(self, key: str, value: Any, allowed_keys: Sequence[str] | None = None) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            allowed = f"a mapping with keys {list(allowed_keys)}" if allowed_keys else "a mapping"
            raise self.fail(key, value, allowed)
        for k in value:
            if not isinstance(k, str):
                raise self.fail(f"{key}.{k}" if key else str(k), k, "string keys")
            if allowed_keys is not None and k not in allowed_keys:
                raise self.fail(
                    f"{key}.{k}" if key else k,
                    k,
                    f"one of {list(allowed_keys)}",
                    did_you_mean(k, allowed_keys) or "unknown key; ",
                )
        return dict(value)

    def integer(self, key: str, value: Any, low: int | None = None, none: bool = False) -> int | None:
        if value is None and none:
            return None
        allowed = f"an integer >= {low}" if low is not None else "an integer"
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise self.fail(key, value, allowed + (" or null" if none else ""))
        return value

    def number(self, key: str, value: Any, low: float | None = None, none: bool = False) -> float | None:
        if value is None and none:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (low is not None and value < low):
            allowed = f"a number >= {low}" if low is not None else "a number"
            raise self.fail(key, value, allowed + (" or null" if none else ""))
        return float(value)

    def string(self, key: str, value: Any, choices: Sequence[str] | None = None, none: bool = False) -> Any:
        if value is None and none:
            return None
        if not isinstance(value, str) or (choices is not None and value not in choices):
            allowed = f"one of {list(choices)}" if choices is not None else "a string"
            hint = did_you_mean(value, choices) if choices is not None and isinstance(value, str) else ""
            raise self.fail(key, value, allowed + (" or null" if none else ""), hint)
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, value, "true or false")
        return value


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) value of a space.

    ``kind`` is ``categorical`` (``choices``), ``int`` or ``float`` (``low``..``high``, optional ``log``
    and ``step``). A list in YAML is categorical, ``{low, high, log, step}`` a range, a scalar fixed
    (a categorical with one choice, never suggested).
    """

    kind: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def fixed(self) -> bool:
        """True when the parameter has a single possible value."""
        if self.kind == "categorical":
            return len(self.choices) == 1
        return self.low == self.high

    @property
    def values(self) -> tuple[Any, ...]:
        """The choices of a categorical, or (low, high) of a range."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def to_dict(self) -> Any:
        if self.kind == "categorical":
            return list(self.choices) if len(self.choices) != 1 else self.choices[0]
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def parse_param(r: Reader, key: str, raw: Any, integer: bool = False) -> Param:
    """Parse a list (categorical), a {low, high, log, step} range or a scalar (fixed)."""
    if isinstance(raw, list):
        if not raw:
            raise r.fail(key, raw, "a non-empty list of choices")
        for v in raw:
            if not (v is None or isinstance(v, (str, int, float, bool))):
                raise r.fail(key, v, "choices that are strings, numbers, booleans or null")
        if len(set(map(repr, raw))) != len(raw):
            raise r.fail(key, raw, "a list without repeated choices")
        return Param("categorical", tuple(raw))
    if isinstance(raw, Mapping):
        return _range(r, key, r.mapping(key, raw, ("low", "high", "log", "step")), integer)
    if raw is None or isinstance(raw, (str, int, float, bool)):
        return Param("categorical", (raw,))
    raise r.fail(key, raw, "a list of choices, a mapping {low, high, log, step} or a single value")


def _range(r: Reader, key: str, raw: dict[str, Any], integer: bool) -> Param:
    for k in ("low", "high"):
        if k not in raw:
            raise r.fail(f"{key}.{k}", None, "a number (a range needs both low and high)")
        r.number(f"{key}.{k}", raw[k])
    low, high = raw["low"], raw["high"]
    log = r.boolean(f"{key}.log", raw.get("log", False))
    step = r.number(f"{key}.step", raw["step"], none=True) if raw.get("step") is not None else None
    if low > high:
        raise r.fail(key, {"low": low, "high": high}, "a range with low <= high")
    if log and low <= 0:
        raise r.fail(f"{key}.low", low, "a number > 0 when log: true")
    if log and step is not None:
        raise r.fail(f"{key}.step", step, "no step with log: true (Optuna does not allow both)")
    is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
    if integer and not is_int:
        raise r.fail(key, raw, "an integer range (low and high integers)")
    if is_int and (step is None or float(step).is_integer()):
        return Param("int", low=low, high=high, log=log, step=int(step) if step is not None else None)
    return Param("float", low=float(low), high=float(high), log=log, step=step)


def bounded(r: Reader, key: str, value: Any, low: int, high: int, none: bool = False) -> None:
    """An integer in [low, high] (or null when ``none``)."""
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise r.fail(key, value, f"an integer from {low} to {high}")


def read_only(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a mapping of Params."""
    return MappingProxyType(dict(mapping))


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
