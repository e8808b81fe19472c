"""Init primitives: weight and bias initialization of named blocks (PRIMITIVES.md §2, §3).

Every cell is first initialised like PyTorch's RNNs (all weights and biases ~ U(−1/√n, 1/√n));
the init primitive then changes what it owns. Gate biases are set in *keep polarity*: for an update
whose keep gate writes (STAR's k, MGU's f; ``keep_polarity = −1``) the keep coefficient is
σ(−a), so the bias written is the negative of the keep logit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..registry import register_primitive
from ..spec import SpecError
from .base import Primitive

__all__ = ["Init", "DefaultInit", "UGI", "Chrono", "ConstantInit", "OrthogonalInit", "ugi_bias"]


class Init(Primitive):
    """Base class of init primitives; :meth:`apply` runs under ``torch.no_grad``."""

    role = "init"

    def apply(self, cell: Any) -> None:
        """Initialise ``cell`` (a :class:`~cellsearch.cells.ComposedCell`) in place."""


def _set_keep_logit(cell: Any, logit: torch.Tensor) -> None:
    """Set the keep gate's bias so that the keep coefficient is σ(logit)."""
    cell.block_bias(cell.update.keep).copy_(cell.update.keep_polarity * logit)


def ugi_bias(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """b[j] = logit(u_j), u_j ~ U[1/n, 1 − 1/n]: σ(b) is uniform on [1/n, 1 − 1/n]."""
    u = torch.rand(n, dtype=torch.float64, generator=generator) * (1.0 - 2.0 / n) + 1.0 / n
    return torch.log(u) - torch.log1p(-u)


@register_primitive
class DefaultInit(Init):
    """W, U, b ~ U(−1/√n, 1/√n)

    PyTorch's RNN initialization for every weight and bias; nothing else.
    """

    name = "default"


@register_primitive
class UGI(Init):
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
class Chrono(Init):
    """b_f = log U[1, T_max − 1],  b_i = −b_f

    Chrono initialization (Tallec & Ollivier 2018; compared in Gu et al. 2020, PRIMITIVES.md §3):
    b_f[j] = log(τ_j), τ_j ~ U[1, T_max − 1]; where the update has an input gate, b_i = −b_f.
    Option ``t_max`` (default 784, the value STAR's code hard-codes): set it to the longest dependency
    the task needs.
    """

    name = "chrono"
    requires = frozenset({"keep_gate"})
    defaults: ClassVar[dict[str, Any]] = {"t_max": 784.0}

    def apply(self, cell: Any) -> None:
        t_max = float(self.options["t_max"])
        if t_max <= 2:
            raise SpecError("cell.options.init.t_max", t_max, "a number > 2")
        n = cell.hidden_size
        tau = torch.rand(n, dtype=torch.float64) * (t_max - 2.0) + 1.0
        b = torch.log(tau).to(cell.bias)
        _set_keep_logit(cell, b)
        if cell.update.input_gate is not None:
            cell.block_bias(cell.update.input_gate).copy_(-b)


@register_primitive
class ConstantInit(Init):
    """b_f = value

    The keep gate's logit set to a constant (e.g. forget bias 1, Jozefowicz et al. 2015; STAR's code
    uses 1 or 0 as an option [code]). Option ``value`` (default 1.0), in keep polarity.
    """

    name = "constant"
    requires = frozenset({"keep_gate"})
    defaults: ClassVar[dict[str, Any]] = {"value": 1.0}

    def apply(self, cell: Any) -> None:
        _set_keep_logit(cell, torch.full((cell.hidden_size,), float(self.options["value"])).to(cell.bias))


@register_primitive
class OrthogonalInit(Init):
    """W_b, U_b orthogonal per block, b = 0

    Every block's input matrix W_b (n × d) and, for a free recurrence, recurrent matrix U_b (n × n) is
    a (semi-)orthogonal matrix (Saxe et al. 2014; STAR's code uses it for W_z, W_k, U_k [code]; asRNN
    initialises W_xh orthogonal [code]); biases are zero. Deep-transition layers are orthogonal too.
    """

    name = "orthogonal"

    def apply(self, cell: Any) -> None:
        n = cell.hidden_size
        for w in cell.weight_ih.split(n, 0):
            torch.nn.init.orthogonal_(w)
        cell.bias.zero_()
        weight = getattr(cell.recurrence, "weight", None)
        if isinstance(weight, torch.nn.Parameter):
            for w in weight.split(n, 0):
                torch.nn.init.orthogonal_(w)
        if cell.transition is not None:
            cell.transition.orthogonal_()

