"""One declared option of a task or of the training recipe: its default, kind and allowed values.

:class:`Option` is the rule every scalar option is checked by (``train.*`` keys and each task's own options):
the value, converted where YAML reads a number as a string, or a :class:`~cellsearch.spec.SpecError` naming
``<prefix>.<key>``, the value and what is allowed. Torch-free.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any

from ..spec import SpecError

__all__ = ["Option"]


@dataclass(frozen=True)
class Option:
    """One declared option: its default and what is allowed.

    ``kind`` is ``int``, ``float``, ``str``, ``bool`` or ``path`` (a string, ``~`` expanded);
    ``low``/``high`` bound numbers inclusively, ``gt``/``lt`` strictly; ``choices`` restricts strings;
    ``nullable`` allows None. Numbers given as strings (YAML reads ``1e-3`` as a string) are converted.
    """

    default: Any
    kind: str = "int"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    help: str = ""
    gt: float | None = None
    lt: float | None = None

    def allowed(self) -> str:
        """What is allowed, in words (the third argument of SpecError)."""
        if self.choices is not None:
            text = f"one of {list(self.choices)}"
        elif self.kind in ("int", "float"):
            word = "an integer" if self.kind == "int" else "a number"
            bounds = [f"{op} {v:g}" for op, v in ((">=", self.low), (">", self.gt), ("<=", self.high),
                                                  ("<", self.lt)) if v is not None]
            text = " ".join([word, " and ".join(bounds)]).strip()
        else:
            text = {"bool": "true or false", "path": "a file or directory path", "str": "a string"}[self.kind]
        return f"{text} or null" if self.nullable else text

    def check(self, key: str, value: Any, prefix: str = "task") -> Any:
        """The validated (and converted) value, or SpecError(``<prefix>.<key>``)."""
        where = f"{prefix}.{key}"
        if value is None:
            if self.nullable:
                return None
            raise SpecError(where, value, self.allowed())
        converted = _convert(self.kind, value)
        if converted is None or not self._in_range(converted):
            raise SpecError(where, value, self.allowed())
        return converted

    def _in_range(self, v: Any) -> bool:
        if self.choices is not None:
            return v in self.choices
        if self.kind not in ("int", "float"):
            return True
        return not ((self.low is not None and v < self.low) or (self.high is not None and v > self.high)
                    or (self.gt is not None and v <= self.gt) or (self.lt is not None and v >= self.lt))


def _convert(kind: str, value: Any) -> Any:
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(value) if isinstance(value, numbers.Integral) else None
    if kind == "float":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    if kind in ("str", "path"):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        return (os.path.expanduser(value) if kind == "path" else value) if isinstance(value, str) else None
    raise ValueError(f"unknown option kind {kind!r}")
