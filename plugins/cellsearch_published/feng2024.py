"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates from the input only, trained
by a parallel scan."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

CITATION = ("Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, 'Were RNNs All We Needed?', arXiv:2410.01201, 2024.")
_G = "g(v) = v + 1/2 (v ≥ 0), σ(v) (v < 0)  (the appendix's positive candidate, for the log-space scan)\n"
_SCAN = ("no recurrent matrix (recurrence: none): h_t = a_t⊙h_{t-1} + b_t with input-only a, b, trained by the "
         "parallel scan (cellsearch.fast.scan)\n")

MINGRU = CellCard(
    name="mingru",
    spec=CellSpec(update="mingru", saturation="g", recurrence="none"),
    formula="h' = (1 − z)⊙h + z⊙g(W_h x + b_h),  z = σ(W_z x + b_z)",
    equations=(
        "z_t = σ(W_z x_t + b_z);  h̃_t = g(W_h x_t + b_h)\n"
        "h_t = (1 − z_t)⊙h_{t-1} + z_t⊙h̃_t\n" + _G + _SCAN
        + "params 2n(d+1); saturation: identity gives the plain form of §3.1 (h̃ = W_h x + b_h)"
    ),
    citation=CITATION,
    reported={"training-step speed-up over the sequential GRU/LSTM at T = 512 (×, abstract v2)": 175},
    notes="State h is taken as given (zeros at the start); the paper's listing passes h_0 through g. Task "
          "results (selective copying, Shakespeare, D4RL) are not quoted here: not checked against the paper.",
)

MINLSTM = CellCard(
    name="minlstm",
    spec=CellSpec(update="minlstm", saturation="g", recurrence="none"),
    formula="h' = f'⊙h + i'⊙g(W_h x + b_h),  f' = f/(f + i), i' = i/(f + i)",
    equations=(
        "f_t = σ(W_f x_t + b_f);  i_t = σ(W_i x_t + b_i);  f'_t, i'_t = f_t/(f_t + i_t), i_t/(f_t + i_t)\n"
        "h̃_t = g(W_h x_t + b_h);  h_t = f'_t⊙h_{t-1} + i'_t⊙h̃_t\n" + _G + _SCAN
        + "params 3n(d+1); saturation: identity gives the plain form of §3.2"
    ),
    citation=CITATION,
    reported={"training-step speed-up over the sequential GRU/LSTM at T = 512 (×, abstract v2)": 175},
    notes="The abstract's 175× is quoted for the minimal RNNs together. Task results not quoted here: not "
          "checked against the paper.",
)
