"""Gate-bias init primitives: the biases of the gate that keeps old state (PRIMITIVES.md §2, §3).

A cell is initialised in three passes (:meth:`cellsearch.cells.ComposedCell.reset_parameters`):
PyTorch's U(−1/√n, 1/√n) everywhere, then the weight init (role ``init``: default, orthogonal,
identity, ...), then the gate-bias init (role ``bias``, this module). A gate-bias init writes the keep
gate's bias (and, for chrono, the input gate's) and leaves every other bias as the weight init left it:
``bias: default`` changes nothing, so ``init: orthogonal`` alone keeps its zero biases.

Biases are set in *keep polarity*: for an update whose keep gate writes (STAR's k, MGU's f;
``keep_polarity = −1``) the keep coefficient is σ(−a), so the bias written is the negative of the keep
logit. Before issue 16 these primitives were ``init`` primitives; a spec that still names one under
``init`` is read as ``bias`` (:data:`cellsearch.spec.LEGACY_BIAS_INITS`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..registry import register_primitive
from ..spec import SpecError
from .base import Primitive

__all__ = ["Bias", "DefaultBias", "UGI", "Chrono", "ConstantBias", "ugi_bias", "CHRONO_T_MAX"]

#: chrono's T_max when neither the spec nor the task gives one: the value STAR's code hard-codes (sMNIST's
#: 784 steps), and what ``init: chrono`` meant before issue 16.
CHRONO_T_MAX = 784.0


class Bias(Primitive):
    """Base class of gate-bias init primitives; :meth:`apply` runs under ``torch.no_grad`` after the
    weight init."""

    role = "bias"

    def apply(self, cell: Any) -> None:
        """Set ``cell``'s gate biases (a :class:`~cellsearch.cells.ComposedCell`) in place."""


def _set_keep_logit(cell: Any, logit: torch.Tensor) -> None:
    """Set the keep gate's bias so that the keep coefficient is σ(logit)."""
    cell.block_bias(cell.update.keep).copy_(cell.update.keep_polarity * logit)


def ugi_bias(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """b[j] = logit(u_j), u_j ~ U[1/n, 1 − 1/n]: σ(b) is uniform on [1/n, 1 − 1/n]."""
    u = torch.rand(n, dtype=torch.float64, generator=generator) * (1.0 - 2.0 / n) + 1.0 / n
    return torch.log(u) - torch.log1p(-u)


@register_primitive
class DefaultBias(Bias):
    """b as the weight init left it

    No gate-bias rule: with ``init: default`` every bias is U(−1/√n, 1/√n) (PyTorch's RNNs); with
    ``init: orthogonal`` every bias is 0.
    """

    name = "default"


@register_primitive
class UGI(Bias):
    """b_f = logit(u), u ~ U[1/n, 1 − 1/n]

    Uniform gate initialization (Gu et al., ICML 2020; PRIMITIVES.md §3): the keep gate's bias is
    b_f[j] = −log(1/u_j − 1), u_j ~ U[1/n, 1 − 1/n] independently per unit, so σ(b_f) is uniform on
    [1/n, 1 − 1/n] at init and the characteristic timescales 1/(1 − f) spread up to n. No
    hyperparameter; re-sampled for every hidden size (every cell built).
    """

    name = "ugi"
    requires = frozenset({"keep_gate"})

    def apply(self, cell: Any) -> None:
        _set_keep_logit(cell, ugi_bias(cell.hidden_size).to(cell.bias))


@register_primitive
class Chrono(Bias):
    """b_f = log U[1, T_max − 1],  b_i = −b_f

    Chrono initialization (Tallec & Ollivier 2018; compared in Gu et al. 2020, PRIMITIVES.md §3; STAR's
    code uses it on the keep gate [code]): b_f[j] = log(τ_j), τ_j ~ U[1, T_max − 1]; where the update has
    an input gate, b_i = −b_f. Option ``t_max``: the longest dependency the task needs. Left null (the
    default), it is the task's sequence length when a study or reproduction completes the spec for a
    task (the task's ``seq_len``, or ``bptt`` for language models; :func:`cellsearch.cells.for_task`), and
    784 (:data:`CHRONO_T_MAX`, STAR's hard-coded value) where the task states none or no task is known.
    """

    name = "chrono"
    requires = frozenset({"keep_gate"})
    defaults: ClassVar[dict[str, Any]] = {"t_max": None}
    task_options: ClassVar[dict[str, tuple[str, ...]]] = {"t_max": ("seq_len", "bptt")}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        t_max = self.options["t_max"]
        if t_max is not None and (isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or t_max <= 2):
            raise SpecError("cell.options.bias.t_max", t_max, "null (from the task) or a number > 2")

    def apply(self, cell: Any) -> None:
        t_max = CHRONO_T_MAX if self.options["t_max"] is None else float(self.options["t_max"])
        n = cell.hidden_size
        tau = torch.rand(n, dtype=torch.float64) * (t_max - 2.0) + 1.0
        b = torch.log(tau).to(cell.bias)
        _set_keep_logit(cell, b)
        if cell.update.input_gate is not None:
            cell.block_bias(cell.update.input_gate).copy_(-b)


@register_primitive
class ConstantBias(Bias):
    """b_f = value

    The keep gate's logit set to a constant (e.g. forget bias 1, Jozefowicz et al. 2015; STAR's code
    uses 1 or 0 as an option [code]). Option ``value`` (default 1.0), in keep polarity.
    """

    name = "constant"
    requires = frozenset({"keep_gate"})
    defaults: ClassVar[dict[str, Any]] = {"value": 1.0}

    def apply(self, cell: Any) -> None:
        _set_keep_logit(cell, torch.full((cell.hidden_size,), float(self.options["value"])).to(cell.bias))
