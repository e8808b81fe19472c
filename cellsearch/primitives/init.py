"""Weight init primitives: the input, recurrent and deep-transition matrices (PRIMITIVES.md §2, §5).

Every cell is first initialised like PyTorch's RNNs (all weights and biases ~ U(−1/√n, 1/√n)); the
weight init (role ``init``) then changes what it owns, and the gate-bias init (role ``bias``,
:mod:`cellsearch.primitives.bias`) runs last. Until issue 16 one ``init`` role held both; the gate-bias
inits (ugi, chrono, constant) moved to ``bias``, and a spec that names one under ``init`` is read as
``bias`` (:data:`cellsearch.spec.LEGACY_BIAS_INITS`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import register_primitive
from .base import Primitive
from .bias import ugi_bias  # noqa: F401  (its home before issue 16)

__all__ = ["Init", "DefaultInit", "OrthogonalInit", "IdentityInit", "ugi_bias"]


class Init(Primitive):
    """Base class of init primitives; :meth:`apply` runs under ``torch.no_grad``."""

    role = "init"

    def apply(self, cell: Any) -> None:
        """Initialise ``cell`` (a :class:`~cellsearch.cells.ComposedCell`) in place."""


@register_primitive
class DefaultInit(Init):
    """W, U, b ~ U(−1/√n, 1/√n)

    PyTorch's RNN initialization for every weight and bias; nothing else.
    """

    name = "default"


@register_primitive
class OrthogonalInit(Init):
    """W_b, U_b orthogonal per block, b = 0

    Every block's input matrix W_b (n × d) and, for a free recurrence, recurrent matrix U_b (n × n) is
    a (semi-)orthogonal matrix (Saxe et al. 2014; STAR's code uses it for W_z, W_k, U_k [code]; asRNN
    initialises W_xh orthogonal [code]); biases are zero (the gate-bias init, which runs after, may set
    the keep gate's: STAR's card is ``init: orthogonal, bias: chrono``). Deep-transition layers are
    orthogonal too.
    """

    name = "orthogonal"

    def apply(self, cell: Any) -> None:
        n = cell.hidden_size
        for w in cell.weight_ih.split(n, 0):
            torch.nn.init.orthogonal_(w)
        cell.bias.zero_()
        if "recurrent_matrix" in cell.recurrence.provides:  # a capability, not an isinstance test: under
            weight = cell.recurrence.weight                 # trace_init the parameters are plain tensors
            for w in weight.split(n, 0):
                torch.nn.init.orthogonal_(w)
        if cell.transition is not None:
            cell.transition.orthogonal_()



@register_primitive
class IdentityInit(Init):
    """U_b = I per recurrent block

    Identity recurrent init (Le, Jaitly & Hinton 2015, "IRNN"): every recurrent matrix U_b of a free
    recurrence starts as the n × n identity, so h is carried unchanged through the recurrent product at
    init; input weights and biases are left at PyTorch's U(−1/√n, 1/√n) (the IRNN's zero biases are not
    applied; the gate-bias init runs after). Needs a free recurrence (a recurrent matrix to set).
    """

    name = "identity"
    requires = frozenset({"recurrent_matrix"})

    def apply(self, cell: Any) -> None:
        n = cell.hidden_size
        for w in cell.recurrence.weight.split(n, 0):
            w.copy_(torch.eye(n, dtype=w.dtype))
