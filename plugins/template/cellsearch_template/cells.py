"""A custom cell: STAR with a UR refine gate and uniform gate initialization.

A cell is a :class:`~cellsearch.cards.CellCard`: a point of the search space (a CellSpec naming one
registered primitive per role) plus its metadata. It carries no code; cellsearch composes it.
"""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

UR_STAR = CellCard(
    name="ur_star",
    spec=CellSpec(update="star", gate="ur", init="ugi"),
    formula="h' = tanh((1 − w)⊙h + w⊙tanh(W_z x + b_z)),  1 − w = refine(σ(−a_k), r), UGI",
    equations=(
        "z = tanh(W_z x_t + b_z);  k = σ(a_k);  r = σ(W_r x_t + U_r h_{t-1} + b_r), b_r = −(keep logit) at init\n"
        "keep coefficient κ = 1 − k refined: g = r⊙(1 − (1 − κ)²) + (1 − r)⊙κ²;  w = 1 − g\n"
        "h_t = tanh((1 − w)⊙h_{t-1} + w⊙z)\n"
        "UGI: σ(keep logit) ~ U[1/n, 1 − 1/n];  params n(2d + n + 2) + n(d + n + 1)"
    ),
    citation="Turkoglu et al., 'Gating Revisited', TPAMI 2021, with the UR gate and UGI of Gu et al., "
             "'Improving the Gating Mechanism of Recurrent Neural Networks', ICML 2020.",
    notes="Template plugin example: the combination PRIMITIVES.md §3 calls generic (UGI and R on STAR's k).",
)

JANET_SOFTSIGN = CellCard(
    name="janet_softsign",
    spec=CellSpec(update="template_janet", init="chrono", saturation="softsign"),
    formula="h' = softsign(σ(a_f)⊙h + (1 − σ(a_f − β))⊙tanh(a_u)),  chrono b_f",
    equations=(
        "s = W_f x_t + U_f h_{t-1} + b_f;  u = tanh(W_u x_t + U_u h_{t-1} + b_u)\n"
        "h_t = softsign(σ(s)⊙h_{t-1} + (1 − σ(s − β))⊙u),  softsign(v) = v / (1 + |v|),  β = 1\n"
        "chrono init: b_f = log U[1, T_max − 1];  params 2n(d + n + 1)"
    ),
    citation="van der Westhuizen & Lasenby, 'The unreasonable effectiveness of the forget gate', "
             "arXiv:1804.04849, 2018 (JANET), with a softsign output saturation.",
    notes="Template plugin example: both primitives (update template_janet, saturation softsign) come from this "
          "plugin; with saturation identity the update is the paper's JANET (h = c).",
)
