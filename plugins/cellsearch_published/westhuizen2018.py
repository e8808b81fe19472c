"""JANET (van der Westhuizen & Lasenby 2018): the forget-gate-only LSTM with chrono initialization."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

JANET = CellCard(
    name="janet",
    spec=CellSpec(update="janet", bias="chrono", saturation="identity", options={"bias": {"t_max": 784.0}}),
    formula="h' = σ(s)⊙h + (1 − σ(s − β))⊙tanh(a_u),  chrono b_f",
    equations=(
        "s_t = W_f x_t + U_f h_{t-1} + b_f;  c̃_t = tanh(W_c x_t + U_c h_{t-1} + b_c)\n"
        "c_t = σ(s_t)⊙c_{t-1} + (1 − σ(s_t − β))⊙c̃_t;  h_t = c_t;  β = 1\n"
        "chrono init: b_f = log U[1, T_max − 1] (bias.t_max = 784, sequential MNIST's length; pinned so the card\n"
        "keeps its math from before issue 16 — set it to null to take T_max from the task's sequence length)\n"
        "params 2n(d+n+1)"
    ),
    citation="van der Westhuizen & Lasenby, 'The unreasonable effectiveness of the forget gate', "
             "arXiv:1804.04849, 2018.",
    reported={"MNIST acc %": 99.0, "pMNIST acc %": 92.5, "LSTM MNIST acc % (same paper)": 98.5,
              "LSTM pMNIST acc % (same paper)": 91.0},
)
