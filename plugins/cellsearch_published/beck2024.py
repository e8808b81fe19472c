"""sLSTM (Beck et al. 2024, xLSTM): exponential input gate, normalizer and stabilizer states."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

SLSTM = CellCard(
    name="slstm",
    spec=CellSpec(update="slstm", saturation="identity"),
    formula="c' = f'⊙c + i'⊙z, n' = f'⊙n + i', h' = o⊙c'/n'  (i = exp(ĩ), stabilized by m)",
    equations=(
        "z_t = tanh(z̃_t);  o_t = σ(õ_t);  log f_t = logσ(f̃_t) (update.forget: sigmoid) or f̃_t (exp)\n"
        "m_t = max(log f_t + m_{t-1}, ĩ_t);  i'_t = exp(ĩ_t − m_t);  f'_t = exp(log f_t + m_{t-1} − m_t)\n"
        "c_t = f'_t⊙c_{t-1} + i'_t⊙z_t;  n_t = f'_t⊙n_{t-1} + i'_t;  h_t = o_t⊙(c_t / n_t)\n"
        "every pre-activation ã = W x_t + R h_{t-1} + b (one head: a full R);  states (h, c, n, m), zeros at start\n"
        "params 4n(d+n+1)"
    ),
    citation="Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter & Hochreiter, 'xLSTM: "
             "Extended Long Short-Term Memory', NeurIPS 2024 (arXiv:2405.04517).",
    notes="One head; xLSTM's sLSTM blocks use 4 heads (block-diagonal R) inside a residual block with a "
          "convolution and gated MLP, which this card does not include. Reported numbers: none quoted (the "
          "paper reports xLSTM models, not the sLSTM cell on its own).",
)
