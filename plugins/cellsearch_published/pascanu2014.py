"""Deep-transition RNNs (Pascanu, Gulcehre, Cho & Bengio 2014; PRIMITIVES.md §6).

Published test NLL per step on polyphonic music (lower is better) and PTB-char BPC. The cards carry
their depth configuration; their cell is the vanilla (tanh) RNN.
"""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec, DepthSpec

CITATION = ("Pascanu, Gulcehre, Cho & Bengio, 'How to Construct Deep Recurrent Neural Networks', ICLR 2014 "
            "(arXiv:1312.6026).")
_DT = ("z_1 = tanh(W_1 h_{t-1} + U x_t + b_1)\n"
       "h_t = tanh(W_L z_1 + b_L{shortcut})\n")

DT_RNN = CellCard(
    name="dt_rnn",
    spec=CellSpec(update="vanilla"),
    depth=DepthSpec(transition="deep", transition_layers=1),
    formula="h' = tanh(W_L tanh(W_1 h + U x + b_1) + b_L)",
    equations=_DT.replace("{shortcut}", "") + "params n(d+n+1) + n(n+1)",
    citation=CITATION,
    notes="The paper reports DT only with the shortcut (DT(S)); DT is the ablation without it.",
)

DTS_RNN = CellCard(
    name="dts_rnn",
    spec=CellSpec(update="vanilla"),
    depth=DepthSpec(transition="deep_shortcut", transition_layers=1),
    formula="h' = tanh(W_L tanh(W_1 h + U x + b_1) + W_s h + b_L)",
    equations=_DT.replace("{shortcut}", " + W_s h_{t-1}") + "params n(d+n+1) + n(n+1) + n²",
    citation=CITATION,
    reported={"Nottingham NLL": 3.206, "JSB Chorales NLL": 8.278, "MuseData NLL": 6.988, "PTB-char BPC": 1.409,
              "(RNN baseline) Nottingham / JSB / MuseData / PTB-char": "3.225 / 8.338 / 6.990 / 1.414",
              "(sRNN) Nottingham / JSB / MuseData / PTB-char": "3.258 / 8.367 / 6.954 / 1.412"},
)

DOTS_RNN = CellCard(
    name="dots_rnn",
    spec=CellSpec(update="vanilla"),
    depth=DepthSpec(transition="deep_shortcut", transition_layers=1, output_layers=1),
    formula="DT(S) + deep output: y = readout(tanh(V h))",
    equations=_DT.replace("{shortcut}", " + W_s h_{t-1}") + "y_t = readout(tanh(V_1 h_t + c_1))  (deep output)\n"
              "params n(d+n+1) + n(n+1) + n² + n(n+1)",
    citation=CITATION,
    reported={"Nottingham NLL": 3.215, "JSB Chorales NLL": 8.437, "MuseData NLL": 6.973, "PTB-char BPC": 1.386},
)
