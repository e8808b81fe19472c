"""A custom gate primitive: the piecewise-linear ("hard") sigmoid.

A primitive subclasses the base class of its role in :mod:`cellsearch.primitives` (here
:class:`~cellsearch.primitives.gate.Gate`), sets ``name`` and ``defaults`` (its options; the types of the
defaults are enforced), and puts its formula on the first docstring line (``cellsearch list`` prints it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from cellsearch.primitives.gate import Gate
from cellsearch.spec import SpecError


class HardSigmoidGate(Gate):
    """g = clip(slope·a + 1/2, 0, 1)

    The hard sigmoid: linear around a = 0 with slope ``slope`` (default 1/6, as torch's hardsigmoid), exactly
    0 or 1 outside |a| ≤ 1/(2·slope). Cheaper than σ and able to close or open a gate completely; its
    gradient is zero in the flat parts, so keep gate biases inside the linear range. Works with any update.
    """

    name = "hard_sigmoid"
    defaults: ClassVar[dict[str, Any]] = {"slope": 1.0 / 6.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not self.options["slope"] > 0:
            raise SpecError("cell.options.gate.slope", self.options["slope"], "a number > 0")

    def function(self, k: int) -> Callable[[Tensor, Tensor | None], tuple[Tensor, ...]]:
        slope = float(self.options["slope"])

        def gates(a: Tensor, xs: Tensor | None) -> tuple[Tensor, ...]:
            return torch.clamp(a * slope + 0.5, 0.0, 1.0).chunk(k, 1)

        return gates
