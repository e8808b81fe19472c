"""RG-LRU (De et al. 2024, Griffin / Hawk): a gated diagonal linear recurrence."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

RG_LRU = CellCard(
    name="rg_lru",
    spec=CellSpec(update="rg_lru", init="lru", saturation="identity", recurrence="none"),
    formula="h' = a_t⊙h + √(1 − a_t²)⊙(i⊙(W_v x + b_v)),  a_t = σ(Λ)^(8r)",
    equations=(
        "r_t = σ(W_a x_t + b_a);  i_t = σ(W_x x_t + b_x);  v_t = W_v x_t + b_v\n"
        "log a_t = −c·r_t·softplus(−Λ)  (a_t = σ(Λ)^(c·r_t), c = 8)\n"
        "h_t = a_t⊙h_{t-1} + √(1 − a_t²)⊙(i_t⊙v_t)\n"
        "init (lru): Λ such that σ(Λ)^c ~ U[0.9, 0.999]\n"
        "no recurrent matrix (recurrence: none): parallel scan (cellsearch.fast.scan); params 3n(d+1) + n"
    ),
    citation="De, Smith, Fernando, Botev, Cristian-Muraru, Gu, Haroun, Berrada, Chen, Srinivasan, Desjardins, "
             "Doucet, Budden, Teh, Pascanu, De Freitas & Gulcehre, 'Griffin: Mixing Gated Linear Recurrences with "
             "Local Attention for Efficient Language Models', arXiv:2402.19427, 2024.",
    notes="The cell alone, not the Hawk/Griffin block: the RG-LRU's input v_t is a linear projection here, "
          "where Griffin feeds it a projection followed by a short convolution, and its gates are full, not "
          "block-diagonal, linear maps. Reported numbers: none quoted (the paper reports whole language "
          "models, not this cell on its own).",
)
