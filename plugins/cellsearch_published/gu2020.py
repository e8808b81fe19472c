"""Uniform gate initialization and the refine gate (Gu et al., ICML 2020; PRIMITIVES.md §3).

All of Gu et al.'s LSTM variants use the gated-update form with the input gate tied to 1 − f
(update ``lstm_tied``); UR adds the refine block r, so UR-LSTM has LSTM's parameter count.
"""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

CITATION = ("Gu, Gulcehre, Paine, Hoffman & Pascanu, 'Improving the Gating Mechanism of Recurrent Neural "
            "Networks', ICML 2020 (arXiv:1910.09890).")

_LSTM_TIED = ("c_t = g⊙c_{t-1} + (1 − g)⊙u;  h_t = o⊙tanh(c_t);  u = tanh(a_u), o = σ(a_o)\n")
_REFINE = ("f = σ(W_f x + U_f h + b_f);  r = σ(W_r x + U_r h + b_r), b_r = −b_f at init\n"
           "(b_r is a free parameter, trained like any bias; only its initial value is tied to −b_f [code])\n"
           "g = r⊙(1 − (1 − f)²) + (1 − r)⊙f² = f + (2r − 1)⊙f⊙(1 − f)\n")
_UGI = "UGI: b_f = logit(u), u ~ U[1/n, 1 − 1/n]\n"

UR_LSTM = CellCard(
    name="ur_lstm",
    spec=CellSpec(update="lstm_tied", gate="ur", bias="ugi"),
    formula="c' = g⊙c + (1 − g)⊙u, g = f + (2r − 1)f(1 − f), UGI on b_f",
    equations=_REFINE + _LSTM_TIED + _UGI + "params 4n(d+n+1)",
    citation=CITATION,
    reported={"sMNIST acc %": 99.28, "pMNIST acc %": 96.96, "pMNIST acc % (zoneout)": 97.58,
              "sCIFAR acc % (zoneout)": 74.4, "WikiText-103 ppl": 34.6},
    notes="Synthetic: copy T = 500 and adding T = 2000, where plain LSTM stalls at the baseline and U/UR "
          "converge fastest.",
)

U_LSTM = CellCard(
    name="u_lstm",
    spec=CellSpec(update="lstm_tied", bias="ugi"),
    formula="c' = f⊙c + (1 − f)⊙u, UGI on b_f",
    equations="f = σ(a_f)\n" + _LSTM_TIED.replace("g", "f") + _UGI + "params 3n(d+n+1)",
    citation=CITATION,
)

R_LSTM = CellCard(
    name="r_lstm",
    spec=CellSpec(update="lstm_tied", gate="ur"),
    formula="c' = g⊙c + (1 − g)⊙u, g = f + (2r − 1)f(1 − f)",
    equations=_REFINE + _LSTM_TIED + "default init (U(−1/√n, 1/√n)); params 4n(d+n+1)",
    citation=CITATION,
)

UR_GRU = CellCard(
    name="ur_gru",
    spec=CellSpec(update="gru", gate="ur", bias="ugi"),
    formula="h' = g⊙h + (1 − g)⊙ĥ, g = refine(z, r), UGI on b_z",
    equations=(
        "r_g, z = σ(a_r), σ(a_z);  ρ = σ(a_ρ) (refine block, b_ρ = −b_z at init)\n"
        "g = z + (2ρ − 1)⊙z⊙(1 − z)\n"
        "ĥ = tanh(W_h x_t + b_h + r_g⊙(U_h h_{t-1} + b_hn));  h_t = g⊙h_{t-1} + (1 − g)⊙ĥ\n"
        + _UGI.replace("b_f", "b_z") + "params 4n(d+n+1) + n"
    ),
    citation=CITATION,
)

CHRONO_LSTM = CellCard(
    name="chrono_lstm",
    spec=CellSpec(update="lstm", bias="chrono", options={"bias": {"t_max": 784.0}}),
    formula="LSTM with b_f = log U[1, T_max − 1], b_i = −b_f",
    equations=("LSTM step (see lstm); chrono init: b_f = log(τ), τ ~ U[1, T_max − 1]; b_i = −b_f\n"
               "option bias.t_max, pinned at 784 (the card's value before issue 16; Tallec & Ollivier set it to\n"
               "the task's longest dependency: null takes the task's sequence length); params 4n(d+n+1)"),
    citation="Tallec & Ollivier, 'Can recurrent neural networks warp time?', ICLR 2018 (compared in "
             + CITATION + ")",
)
