"""STAR (Turkoglu et al., 'Gating Revisited'; PRIMITIVES.md §2)."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

STAR = CellCard(
    name="star",
    spec=CellSpec(update="star", init="orthogonal", bias="chrono", options={"update": {"beta": 1.0}}),
    formula="h' = tanh(σ(−a_k)⊙h + σ(a_k + β)⊙tanh(W_z x + b_z)),  a_k = W_k x + U_k h + b_k",
    equations=(
        "z = tanh(W_z x_t + b_z)\n"
        "a_k = W_k x_t + U_k h_{t-1} + b_k\n"
        "h_t = tanh(σ(−a_k)⊙h_{t-1} + σ(a_k + β)⊙z),  β = 1        params n(2d + n + 2)\n"
        "As the authors' code [code]: W_z, W_k, U_k orthogonal, b_z = 0; keep-gate bias chrono-style, "
        "σ(−b_k) = σ(log τ), τ ~ U[1, T_max − 1] (T_max: the task's sequence length unless bias.t_max "
        "is given; the code hard-codes 784, sMNIST's length). Paper form [paper]: options.update.beta = null "
        "gives h_t = tanh((1 − k)⊙h + k⊙z), k = σ(a_k); the card before issue 16 was that form with "
        "init: default, bias: default (PyTorch's uniform init). saturation: identity drops the outer tanh "
        "(convSTAR)."
    ),
    citation="Turkoglu, D'Aronco, Wegner & Schindler, 'Gating Revisited: Deep Multi-layer RNNs That Can "
             "Be Trained', IEEE TPAMI 2021 (arXiv:1911.11033); code: github.com/0zgur0/STAckable-Recurrent-network.",
    reported={"PTB-char BPC": 1.30, "Jester val acc % (convSTAR)": 92.7},
    notes="Central claim: gradient magnitude stays roughly constant across many stacked STAR layers, while "
          "LSTM gradients attenuate and vanilla RNN gradients explode. Authors' training defaults: 4 layers "
          "x 128 units, Adam 1e-3, grad-norm clip 5, dropout 0.1 between layers. Init from the code, not the "
          "paper (issue 16). Measured by this project (`cellsearch reproduce star --size cpu`, "
          "docs/reproduction/star.md: seq_digits, n = 32 per layer, 300 steps, 3 seeds), test accuracy at 1 / 2 / "
          "4 / 8 layers: this card (T_max = 64, the task's length) 44 / 72 / 78 / 56 %, the paper form with "
          "PyTorch's init 33 / 42 / 49 / 47 %, LSTM 72 / 78 / 74 / 61 %. A T_max far above the task's length "
          "(the code's 784 on a 64-step task) starts the write coefficient σ(a_k + 1) near 0: give bias.t_max "
          "only to override the task's length.",
)
