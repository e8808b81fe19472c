"""Gate primitives: how gate pre-activations become gate values (PRIMITIVES.md §3, §4).

A gate primitive is bound to an update (:meth:`Gate.bind`) and then returns, from the contiguous
pre-activations of all gate blocks ``a_g`` ([B, k·n]) and the short-connection input ``xs`` (x̃_t or
None), the gate values in the order of ``update.gates``. It may add gate blocks (UR's r) placed right
after the gate they refine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import register_primitive
from ..spec import SpecError
from .base import Primitive
from .update import Update

__all__ = ["Gate", "SigmoidGate", "URGate", "RefinedGate", "refine"]

GateFn = Callable[[Tensor, Tensor | None], tuple[Tensor, ...]]


def refine(f: Tensor, r: Tensor) -> Tensor:
    """g = r⊙(1 − (1 − f)²) + (1 − r)⊙f² = f + (2r − 1)⊙f⊙(1 − f)  (Gu et al. 2020)."""
    return torch.addcmul(f, (2.0 * r - 1.0) * f, 1.0 - f)


class Gate(Primitive):
    """Base class of gate primitives."""

    role = "gate"

    def bind(self, update: Update, input_size: int, hidden_size: int) -> None:
        """Check compatibility with ``update`` and remember the layout it needs."""
        self.update = update
        self.gate_names: list[str] = list(update.gates)

    def extra_blocks(self) -> list[tuple[str, str]]:
        """Gate blocks this primitive adds, as (name, inserted after this gate)."""
        return []

    def short_input(self, input_size: int, hidden_size: int) -> str:
        """``none``, ``identity`` (x̃ = x) or ``project`` (x̃ = P x): what ``xs`` must carry."""
        return "none"

    def after_init(self, cell: Any) -> None:
        """Adjust the cell after the init primitive ran (under no_grad); nothing by default."""

    def function(self, k: int) -> GateFn:
        """The per-step gate function for ``k`` gate blocks (including added ones)."""
        raise NotImplementedError

    def fused_ops(self) -> dict[str, Any] | None:
        """What this gate is inside the hand-written fused loops (the keyword arguments of
        :class:`cellsearch.fast.gates.GateOps` after ``names`` and ``n``), or None: those loops cannot
        run it, and a cell with it takes the derived path."""
        return None


@register_primitive
class SigmoidGate(Gate):
    """g = σ(a)

    The standard gate: every gate block's pre-activation a = W x + U h + b goes through the logistic
    sigmoid (one sigmoid over all gate blocks at once).
    """

    name = "sigmoid"
    provides = frozenset({"sigmoid_gate"})

    def function(self, k: int) -> GateFn:
        def gates(a: Tensor, xs: Tensor | None) -> tuple[Tensor, ...]:
            return torch.sigmoid(a).chunk(k, 1)

        return gates

    def fused_ops(self) -> dict[str, Any] | None:
        return {"kind": "sigmoid"}


@register_primitive
class URGate(Gate):
    """g = f + (2r − 1)⊙f⊙(1 − f),  f = σ(a_f), r = σ(a_r)

    Refine gate (Gu et al., ICML 2020; PRIMITIVES.md §3) on the update's keep gate f, with its own block
    r = σ(W_r x + U_r h + b_r) whose bias b_r is a free parameter initialised to −b_f [code, two
    reimplementations] (only its initial value is tied to b_f; both train independently) (the block is
    named ``r``, or ``rho`` for an update that already has a gate ``r``, i.e. the GRU's reset gate):
    g = r⊙(1 − (1 − f)²) + (1 − r)⊙f², so g ∈ [f², 1 − (1 − f)²]. Other gates stay σ(a).
    When the keep gate writes (keep polarity −1, e.g. STAR's k, MGU's f) the refinement is applied to
    the keep coefficient 1 − w: w' = 1 − g(1 − w, r) = w + (1 − 2r)⊙w⊙(1 − w).
    """

    name = "ur"
    requires = frozenset({"keep_gate"})

    @property
    def block_name(self) -> str:
        """The refine block's name: ``r``, or ``rho`` when the update already has a gate ``r`` (GRU)."""
        return "rho" if "r" in self.update.gates else "r"

    def extra_blocks(self) -> list[tuple[str, str]]:
        return [(self.block_name, self.update.keep)]  # type: ignore[list-item]

    def after_init(self, cell: Any) -> None:
        """b_r = −b_f: r's bias is the negative of the keep gate's (in keep polarity) [code]."""
        keep_logit = self.update.keep_polarity * cell.block_bias(self.update.keep)
        cell.block_bias(self.block_name).copy_(-keep_logit)

    def function(self, k: int) -> GateFn:
        j = self.gate_names.index(self.update.keep)  # r sits right after the keep gate
        polarity = self.update.keep_polarity

        def gates(a: Tensor, xs: Tensor | None) -> tuple[Tensor, ...]:
            s = torch.sigmoid(a).chunk(k, 1)
            f, r = s[j], s[j + 1]
            g = refine(f, r) if polarity > 0 else torch.addcmul(f, (1.0 - 2.0 * r) * f, 1.0 - f)
            return (*s[:j], g, *s[j + 2:])

        return gates

    def fused_ops(self) -> dict[str, Any] | None:
        return {"kind": "ur", "keep": self.update.keep, "polarity": self.update.keep_polarity}


@register_primitive
class RefinedGate(Gate):
    """g' = σ(a) ⊙ x̃  (mode mul; center: σ(a) ⊙ (1 + x̃))  or  σ(a) + x̃  (mode add)

    Refined gate with a short connection from the input features (Cheng et al. 2020; PRIMITIVES.md §4):
    x̃ = x_t when d = n, otherwise x̃ = P x_t with a learned P ∈ R^{n×d} (no bias), P ~ U(±s/√n) at init
    (s = ``p_scale``, default 1). The refined gate's range is no longer (0, 1) and its gradient has a path
    that bypasses σ. Gates not listed stay σ(a).

    [uncertain] The paper's exact form is not confirmed: ``mode`` (mul | add) and ``gates`` (which of the
    update's gates; default per update: LSTM i, o; GRU z, r; MGU f) are options. The one public
    implementation [code] refines the LSTM's i and o multiplicatively with x̃ = x (d = n).

    ``center`` (mul only, default false): g' = σ(a) ⊙ (1 + x̃), so that with a small P the refined gate
    starts near the plain gate σ(a) (issue 16). Plain ``mul`` with a small P starts with g' ≈ 0: a
    refined GRU update gate z' ≈ 0 keeps nothing of h, a refined MGU f' ≈ 0 keeps everything.
    ``add`` starts at σ(a) + P x, near σ(a) for a small P.
    """

    name = "refined"
    defaults: ClassVar[dict[str, Any]] = {"mode": "mul", "gates": None, "center": False, "p_scale": 1.0}

    def bind(self, update: Update, input_size: int, hidden_size: int) -> None:
        super().bind(update, input_size, hidden_size)
        mode, chosen = self.options["mode"], self.options["gates"]
        if mode not in ("mul", "add"):
            raise SpecError("cell.options.gate.mode", mode, "one of ['add', 'mul']")
        if self.options["center"] and mode != "mul":
            raise SpecError("cell.options.gate.center", True, "false with mode add (σ(a) + x̃ is centred already)")
        if float(self.options["p_scale"]) < 0:
            raise SpecError("cell.options.gate.p_scale", self.options["p_scale"], "a number >= 0")
        chosen = list(update.refined_default if chosen is None else chosen)
        if not update.gates:
            raise SpecError("cell.gate", self.name, f"a gate primitive for an update with gates; update "
                            f"{update.name!r} has none (use gate: sigmoid)")
        for g in chosen:
            if g not in update.gates:
                raise SpecError("cell.options.gate.gates", g, f"gates of update {update.name!r}: "
                                f"{list(update.gates)}")
        self.refined = tuple(chosen)

    def short_input(self, input_size: int, hidden_size: int) -> str:
        return "identity" if input_size == hidden_size else "project"

    def after_init(self, cell: Any) -> None:
        """P ~ U(±p_scale/√n): the default init scaled (nothing to do at p_scale 1 or without P)."""
        scale = float(self.options["p_scale"])
        if cell.weight_proj is not None and scale != 1.0:
            cell.weight_proj.mul_(scale)

    def function(self, k: int) -> GateFn:
        idx = [self.gate_names.index(g) for g in self.refined]
        mul, center = self.options["mode"] == "mul", bool(self.options["center"])

        def gates(a: Tensor, xs: Tensor | None) -> tuple[Tensor, ...]:
            s = list(torch.sigmoid(a).chunk(k, 1))
            for i in idx:
                if center:
                    s[i] = torch.addcmul(s[i], s[i], xs)  # σ(a) ⊙ (1 + x̃)
                else:
                    s[i] = s[i] * xs if mul else s[i] + xs
            return tuple(s)

        return gates

    def fused_ops(self) -> dict[str, Any] | None:
        if self.options["center"]:
            return None  # the fused loops know σ⊙x̃ and σ + x̃ only: the derived path runs it
        return {"kind": "refined", "refined": self.refined, "mode": self.options["mode"]}
