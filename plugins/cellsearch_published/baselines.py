"""Baseline cells: vanilla (Elman), LSTM, GRU, MGU (PRIMITIVES.md §1)."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

VANILLA = CellCard(
    name="vanilla",
    spec=CellSpec(update="vanilla"),
    formula="h' = tanh(W x + U h + b)",
    equations="h_t = tanh(W x_t + U h_{t-1} + b)    params n(d+n+1)",
    citation="Elman, 'Finding structure in time', Cognitive Science 14(2), 1990.",
)

LSTM = CellCard(
    name="lstm",
    spec=CellSpec(update="lstm"),
    formula="c' = f⊙c + i⊙tanh(a_u), h' = o⊙tanh(c')",
    equations=(
        "i, f, o = σ(a_i), σ(a_f), σ(a_o); u = tanh(a_u)\n"
        "c_t = f⊙c_{t-1} + i⊙u;  h_t = o⊙tanh(c_t)      a_b = W_b x_t + U_b h_{t-1} + b_b\n"
        "params 4n(d+n+1) (one bias per block; torch.nn.LSTM keeps two)"
    ),
    citation="Hochreiter & Schmidhuber, 'Long short-term memory', Neural Computation 9(8), 1997; "
             "forget gate: Gers, Schmidhuber & Cummins 2000.",
    reported={"PTB-char BPC (asRNN paper's LSTM)": 1.41},
)

GRU = CellCard(
    name="gru",
    spec=CellSpec(update="gru"),
    formula="h' = z⊙h + (1 − z)⊙tanh(W_h x + b_h + r⊙(U_h h + b_hn))",
    equations=(
        "r, z = σ(a_r), σ(a_z)\n"
        "ĥ = tanh(W_h x_t + b_h + r⊙(U_h h_{t-1} + b_hn));  h_t = z⊙h_{t-1} + (1 − z)⊙ĥ\n"
        "params 3n(d+n+1) + n (PyTorch form: the candidate's recurrent bias b_hn is kept)"
    ),
    citation="Cho et al., 'Learning phrase representations using RNN encoder-decoder', EMNLP 2014.",
)

MGU = CellCard(
    name="mgu",
    spec=CellSpec(update="mgu"),
    formula="h' = (1 − f)⊙h + f⊙tanh(W_h x + U_h(f⊙h) + b_h)",
    equations=(
        "f = σ(W_f x_t + U_f h_{t-1} + b_f)\n"
        "ĥ = tanh(W_h x_t + U_h (f⊙h_{t-1}) + b_h);  h_t = (1 − f)⊙h_{t-1} + f⊙ĥ\n"
        "params 2n(d+n+1)"
    ),
    citation="Zhou, Wu, Zhang & Zhou, 'Minimal gated unit for recurrent neural networks', IJAC 13(3), 2016.",
)
