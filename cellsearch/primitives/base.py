"""The contract of a primitive, written once (one abstract base per role).

A primitive is a small class registered under a role and a name. Its first docstring line is its
formula (``cellsearch list primitives`` prints it); the rest of the docstring holds its equations in
full and cites PRIMITIVES.md. Options are declared in ``defaults`` and validated when the primitive is
built, so a typo in a study file fails before anything trains.

Roles and what the composer asks of each (see :mod:`cellsearch.cells` for how they meet):

- ``update``: the cell skeleton. Declares its gate blocks, candidate blocks, which gate keeps old
  state, the number of state tensors, and implements one step from precomputed input projections.
- ``gate``: turns the gate pre-activations into gate values (and may add blocks, like UR's r).
- ``init``: sets the weights (input, recurrent, transition matrices) after the default initialization.
- ``bias``: sets the gate biases (the keep gate's timescales) after the weight init.
- ``saturation``: the squashing of the new state (may own parameters, like asRNN's W_f).
- ``recurrence``: the parametrization of the recurrent matrices.
- ``depth``: arrangement of cells (see :mod:`cellsearch.primitives.depth`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..registry import set_entry_check
from ..spec import SpecError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Primitive", "Block", "StepContext", "formula_of", "check_options"]


class StepContext(Protocol):
    """What an update's ``step`` receives: the per-sequence constants the cell prepared.

    This is the whole contract between an update and the rest of a cell. A step written against it in
    torch ops is all cellsearch needs: the reference loop calls it, and the derived fast path and the
    standalone export trace it (:mod:`cellsearch.trace`), so it must not branch on tensor values.
    """

    #: hidden size
    n: int
    #: number of gate blocks, including blocks a gate primitive adds (UR's r)
    k: int
    #: the recurrent matrices of the recurrent blocks, transposed ([n, r·n]), in layout order
    w_hh_t: Tensor
    #: parameters the update asked for in ``extra_parameters`` (e.g. GRU's ``bias_hn``)
    params: Mapping[str, Tensor]
    #: False where the recurrence has no matrix (it provides ``no_recurrence``: ``w_hh_t`` is the constant
    #: zero): an update whose state still enters its step (``input_only``) may skip the product with it
    recurrent: bool

    def gates(self, a: Tensor, xs: Tensor | None) -> tuple[Tensor, ...]:
        """Gate pre-activations ``a`` ([B, k·n]) and the short input x̃ (or None) → the update's gates."""
        ...

    def cand(self, pre: Tensor, h: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
        """The candidate path: ``act(pre)``, or the deep transition applied to ``pre``."""
        ...

    def sat(self, v: Tensor) -> Tensor:
        """The saturation primitive's squashing."""
        ...


@dataclass(frozen=True)
class Block:
    """One gate block: pre-activation a = W x + U h + b of width n.

    ``kind`` is ``gate`` (squashed by the gate primitive), ``cand`` (a candidate / transition block) or
    ``proj`` (an input projection used by a primitive, e.g. the refined gate's P x; no bias).
    ``recurrent`` says whether the block has a recurrent term U h.
    """

    name: str
    kind: str
    recurrent: bool = True

    @property
    def bias(self) -> bool:
        return self.kind != "proj"


def check_options(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``given`` into ``defaults``; unknown keys and wrong types raise :class:`SpecError`."""
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            allowed = sorted(defaults) or "no options"
            raise SpecError(f"{owner}.{key}", key, f"one of {allowed}")
        default = defaults[key]
        if default is not None and not _same_kind(default, value):
            raise SpecError(f"{owner}.{key}", value, f"a value of type {type(default).__name__}")
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def formula_of(obj: Any) -> str:
    """The first docstring line of a primitive or cell: its formula."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Primitive:
    """Base of every primitive. Subclasses set ``role``, ``name`` and ``defaults`` (their options)."""

    role: ClassVar[str] = ""
    name: ClassVar[str] = ""
    #: Option names and default values; the types of the defaults are enforced.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Capabilities this primitive gives the cell (e.g. an update's ``keep_gate``).
    provides: frozenset[str] = frozenset()
    #: Capabilities it needs from the other primitives of the cell; the composer refuses a cell where
    #: none provides one, naming both. May depend on the options (override as a property).
    requires: frozenset[str] = frozenset()
    #: Options that a task can fill when the spec leaves them null: option name → the task attributes
    #: tried in order (chrono's ``t_max`` ← the task's ``seq_len``); see :func:`cellsearch.cells.for_task`.
    task_options: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Hand-written whole-sequence kernels this primitive owns (optional: the derived fast path serves
    #: every primitive without one), as ``"module:function"`` strings, imported only when a cell's
    #: execution plan is built. Each function takes the cell and returns a :class:`cellsearch.fast.Plan`,
    #: or a one-line reason why it does not serve this cell. The cell's primitives are asked in role
    #: order (update, saturation, gate, recurrence, init) and the first plan wins; a cell none serves
    #: takes the derived path (:mod:`cellsearch.fast.paths`). A kernel is kept only where ``make bench``
    #: shows it faster than the derived path, and is tested against the reference and derived paths.
    kernels: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.options = check_options(self.options_key(), self.defaults, options)

    @classmethod
    def options_key(cls) -> str:
        """Where a spec gives this primitive's options (named in errors)."""
        return f"cell.options.{cls.role}"

    @classmethod
    def formula(cls) -> str:
        return formula_of(cls)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.role}:{self.name}({opts})"


def _check_entry(name: str, obj: Any) -> None:
    """What a ``cellsearch.primitives`` entry point loads: a :class:`Primitive` subclass of that name."""
    if not (isinstance(obj, type) and issubclass(obj, Primitive)):
        raise TypeError(f"expected a Primitive subclass, got {obj!r}")
    if obj.name != name:
        raise TypeError(f"entry point name {name!r} differs from the primitive's name {obj.name!r}")


set_entry_check("primitive", _check_entry)
