"""asRNN: adaptive saturation with an orthogonal recurrence (Nguyen-Duy et al. 2023; PRIMITIVES.md §5)."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

ASRNN = CellCard(
    name="asrnn",
    spec=CellSpec(update="vanilla", init="orthogonal", saturation="adaptive", recurrence="orthogonal",
                  options={"recurrence": {"method": "expm", "skew_init": "henaff", "lr_scale": 0.1}}),
    formula="h' = W_f⁻¹ tanh(W_f (W_xh x + W_hh h + b)),  W_hh orthogonal, W_f = U_f D_f",
    equations=(
        "z = W_xh x_t + W_hh h_{t-1} + b   (W_hh = exp(A − Aᵀ), no recurrent bias)\n"
        "h_t = D_f⁻¹ U_fᵀ tanh(U_f D_f z),  U_f orthogonal, D_f = diag(|s| + ε)  (never inverted numerically)\n"
        "init: W_hh from 2×2 Henaff blocks, W_xh orthogonal, b = 0, U_f = I, s ~ U[a, b] with a > 0\n"
        "free params n(d + n + 1); the recurrent skew parameter trains at 0.1× the learning rate"
    ),
    citation="Nguyen-Duy et al., 'Adaptive-saturated RNN: remember more with less instability', "
             "ICLR 2023 Tiny Papers (arXiv:2304.11790).",
    reported={"sMNIST acc % (16k/69k/137k params)": "98.89 / 99.21 / 99.3",
              "pMNIST acc % (16k/69k/137k params)": "95.41 / 96.88 / 96.96",
              "PTB-char BPC (1.32M params; LSTM 1.41)": 1.46},
    notes="Copy task L = 1000/2000 solved where LSTM stays at the memoryless baseline. The range of s at init "
          "is [uncertain]; see the adaptive saturation primitive.",
)
