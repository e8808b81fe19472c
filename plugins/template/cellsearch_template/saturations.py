"""A custom saturation primitive: softsign.

A saturation returns, once per sequence, the function every step applies to the new state. Written in
torch ops, it is traced into the derived fast path and the standalone export like any built-in one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from cellsearch.primitives.saturation import Saturation


class SoftsignSaturation(Saturation):
    """sat(v) = v / (1 + |v|)

    Softsign (Glorot & Bengio 2010 used it as a tanh alternative): bounded in (−1, 1) like tanh, but it
    approaches its bounds polynomially, not exponentially, so it saturates later and its gradient
    1 / (1 + |v|)² decays more slowly.
    """

    name = "softsign"

    def function(self) -> Callable[[Tensor], Tensor]:
        return F.softsign
