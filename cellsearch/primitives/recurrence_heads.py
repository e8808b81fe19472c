"""The ``heads`` recurrence: block-diagonal recurrent matrices, one block per head (xLSTM's sLSTM heads)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import register_primitive
from ..spec import SpecError
from .recurrence import Recurrence

__all__ = ["HeadsRecurrence"]


@register_primitive
class HeadsRecurrence(Recurrence):
    """U = blockdiag(U¹, …, U^H)

    Heads (Beck et al. 2024, "xLSTM", arXiv:2405.04517, §2.2: "sLSTM can have multiple heads with memory
    mixing within each head but not across heads") [paper]: every recurrent block's n × n matrix is block
    diagonal with ``heads`` blocks of size n / heads, so a unit's recurrent input comes only from the units
    of its own head; R·n²/heads free parameters. ``heads: 1`` is the full matrix (``free``). The xLSTM
    sLSTM blocks use 4 heads [code]; the ``slstm`` card keeps one head (a full R), the form the other
    published cells are compared in, and a search can choose this primitive with ``heads`` for sLSTM or
    any other update. Each head's matrix is initialised ~ U(−1/√d, 1/√d), d = n / heads (PyTorch's RNN
    init on a head's fan-in) [ours]. Default ``heads: 1`` (builds at every hidden size; say ``heads`` in a space).
    """

    name = "heads"
    defaults: ClassVar[dict[str, Any]] = {"heads": 1}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        heads = self.options["heads"]
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise SpecError("cell.options.recurrence.heads", heads, "an integer >= 1 that divides the hidden size")

    def bind(self, blocks: int, hidden_size: int) -> None:
        heads = self.options["heads"]
        if hidden_size % heads:
            raise SpecError("cell.options.recurrence.heads", heads,
                            f"an integer >= 1 that divides the hidden size {hidden_size}")
        super().bind(blocks, hidden_size)
        d = hidden_size // heads
        self.weight = nn.Parameter(torch.empty(blocks, heads, d, d))

    def matrix(self) -> Tensor:
        return torch.cat([torch.block_diag(*self.weight[b].unbind(0)) for b in range(self.blocks)])

    def reset_parameters(self) -> None:
        bound = 1.0 / self.weight.shape[-1] ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
