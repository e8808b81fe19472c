"""Refined gates with short connections from the input (Cheng et al. 2020; PRIMITIVES.md §4).

[uncertain] No stored source gives the paper's exact equation: mode (mul / add), the refined gate set and
the projection are options of the ``refined`` gate primitive, and each card says which it uses and why.
The short input is x̃ = x when d = n and a learned projection P x (P ~ U(±1/√n)) otherwise.
"""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

CITATION = ("Cheng, Xu, Cheng, Qiao, Pu, Niu & Wu, 'Refined Gate: A Simple and Effective Gating Mechanism for "
            "Recurrent Units' (arXiv:2002.11338), 2020.")
_SHORT = "x̃ = x_t if d = n else P x_t (P ∈ R^{n×d}, learned, P ~ U(±1/√n) at init)\n"
_UNCERTAIN = ("[uncertain] the paper's mode (mul/add), refined gate set and projection are not confirmed by a "
              "stored source; evaluated there on adding, counting, language modelling and scene-text recognition.")
#: measured by `cellsearch reproduce refined_ablation --size cpu` (docs/reproduction/refined_ablation.md)
_ABLATION = ("Ablation (this project, adding T = 50, n = 32, 800 steps, 3 seeds; "
             "docs/reproduction/refined_ablation.md): ")

REFINED_LSTM = CellCard(
    name="refined_lstm",
    spec=CellSpec(update="lstm", gate="refined", options={"gate": {"mode": "mul", "gates": ["i", "o"]}}),
    formula="LSTM with i' = σ(a_i)⊙x̃, o' = σ(a_o)⊙x̃",
    equations=_SHORT + "mode mul: i' = σ(a_i)⊙x̃, o' = σ(a_o)⊙x̃; LSTM step with i' and o' in place of i and o;\n"
                       "params 4n(d+n+1) (+ nd when d ≠ n)",
    citation=CITATION,
    notes=_UNCERTAIN + " Form and gates from the one public implementation [code]: i and o, mul, x̃ = x (d = n). "
                       "Not memory-less at init (f is untouched).",
)

REFINED_GRU = CellCard(
    name="refined_gru",
    spec=CellSpec(update="gru", gate="refined", options={"gate": {"mode": "add", "gates": ["z", "r"]}}),
    formula="GRU with z' = σ(a_z) + x̃, r' = σ(a_r) + x̃",
    equations=_SHORT + "mode add: z' = σ(a_z) + x̃, r' = σ(a_r) + x̃; GRU step with z' and r' in place of z and r;\n"
                       "params 3n(d+n+1) + n (+ nd when d ≠ n)",
    citation=CITATION,
    notes=_UNCERTAIN + " Default chosen by ablation (issue 16): until then the card used mode mul on z and r, "
          "which with x̃ = P x (d ≠ n) starts at z' ≈ 0, h_t ≈ ĥ_t, so the cell carries nothing over 50 steps at "
          "init (‖∂h_T/∂x_1‖ ≈ 1e-67) and stayed at the adding baseline (0/3 solved, test MSE 0.153). " + _ABLATION +
          "add on z, r: 3/3 solved in 333 ± 143 steps, test MSE 0.0012 ± 0.0014; plain GRU 3/3 in 500 ± 0, "
          "0.0026 ± 0.0009; the refined z only (add or centred mul σ(a)⊙(1 + x̃)) was best, 0.0005, 267-300 steps, "
          "not resolved from add on z, r; refined r only mul 0.0016. add keeps the gate set and is one of the "
          "paper's two candidate forms; it starts near the plain gate (memory at init as plain GRU's).",
)

REFINED_MGU = CellCard(
    name="refined_mgu",
    spec=CellSpec(update="mgu", gate="refined", options={"gate": {"mode": "mul", "gates": ["f"]}}),
    formula="MGU with f' = σ(a_f)⊙x̃",
    equations=_SHORT + "mode mul: f' = σ(a_f)⊙x̃; MGU step with f' in place of f; params 2n(d+n+1) (+ nd when d ≠ n)",
    citation=CITATION,
    notes=_UNCERTAIN + " Kept as before issue 16 (mul on f). At init f' = σ(a)⊙P x ≈ 0, so the keep coefficient "
          "1 − f' ≈ 1 and the cell starts with long memory (‖∂h_T/∂x_1‖ ≈ 1e-1 at T = 50): part of its gain may be "
          "that init rather than the refined gate; the ablation's init controls measure it. " + _ABLATION +
          "this form 3/3 solved in 233 ± 143 steps, test MSE 0.0002 ± 0.0001; plain MGU 3/3 in 700 ± 248, "
          "0.0049 ± 0.0054; plain MGU with the keep logit at 3 (keep 0.95) 3/3 in 667 ± 143, 0.0024 ± 0.0011, at "
          "6 (keep 0.9975) 0/3, 0.023 ± 0.028; the refined gate started at the plain gate (centred mul) 3/3 in "
          "533 ± 143, 0.0027 ± 0.0037. Neither a keep bias alone nor the refined gate alone reproduces the gain: "
          "it comes with this form's start (memory at init 1e-1, the controls' 1e-3).",
)
