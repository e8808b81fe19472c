"""STAR (Turkoglu et al., 'Gating Revisited'; PRIMITIVES.md §2)."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

STAR = CellCard(
    name="star",
    spec=CellSpec(update="star"),
    formula="h' = tanh((1 − k)⊙h + k⊙tanh(W_z x + b_z)),  k = σ(W_k x + U_k h + b_k)",
    equations=(
        "z = tanh(W_z x_t + b_z)\n"
        "k = σ(W_k x_t + U_k h_{t-1} + b_k)\n"
        "h_t = tanh((1 − k)⊙h_{t-1} + k⊙z)        params n(2d + n + 2)\n"
        "Paper form. Code variants as options: update option beta (σ(−a_k) on h, σ(a_k + β) on z, β = 1 in "
        "the code); saturation: identity drops the outer tanh (convSTAR); init chrono (t_max 784) or "
        "constant for the gate bias; init orthogonal for W_z, W_k, U_k."
    ),
    citation="Turkoglu, D'Aronco, Wegner & Schindler, 'Gating Revisited: Deep Multi-layer RNNs That Can "
             "Be Trained', IEEE TPAMI 2021 (arXiv:1911.11033).",
    reported={"PTB-char BPC": 1.30, "Jester val acc % (convSTAR)": 92.7},
    notes="Central claim: gradient magnitude stays roughly constant across many stacked STAR layers, while "
          "LSTM gradients attenuate and vanilla RNN gradients explode. Authors' training defaults: 4 layers "
          "x 128 units, Adam 1e-3, grad-norm clip 5, dropout 0.1 between layers.",
)
