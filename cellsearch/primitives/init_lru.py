"""The ``lru`` init: the decay of a gated diagonal recurrence spread over long timescales."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..registry import register_primitive
from ..spec import SpecError
from .init import Init

__all__ = ["LRUInit"]


@register_primitive
class LRUInit(Init):
    """Λ = logit(u^(1/c)),  u ~ U[low, high]  (so a^c = σ(Λ)^c ~ U[low, high])

    RG-LRU initialization (De et al. 2024, Griffin §2.4) [paper]: "we initialize Λ such that a^c is
    uniformly distributed between 0.9 and 0.999" (defaults ``low`` 0.9, ``high`` 0.999), after the ring
    initialization of the LRU (Orvieto et al. 2023). With c = 8 the per-step decay a at r = 1 lies in
    [0.9869, 0.99987]: timescales 1/(1 − a^c) of 10 to 1000 steps. Needs an update with a ``decay``
    (one that names its Λ in ``decay_parameter`` and its exponent in ``decay_exponent``: RG-LRU);
    the other parameters keep the default init.
    """

    name = "lru"
    requires = frozenset({"decay"})
    defaults: ClassVar[dict[str, Any]] = {"low": 0.9, "high": 0.999}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        low, high = float(self.options["low"]), float(self.options["high"])
        if not 0 < low <= high < 1:
            raise SpecError("cell.options.init.low", self.options["low"], "numbers with 0 < low <= high < 1")

    def apply(self, cell: Any) -> None:
        lam = cell.extra[cell.update.decay_parameter]
        low, high = float(self.options["low"]), float(self.options["high"])
        u = torch.rand(lam.shape, dtype=torch.float64) * (high - low) + low
        a = u ** (1.0 / cell.update.decay_exponent)
        lam.copy_((torch.log(a) - torch.log1p(-a)).to(lam))
