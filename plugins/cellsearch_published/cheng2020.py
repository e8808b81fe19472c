"""Refined gates with short connections from the input (Cheng et al. 2020; PRIMITIVES.md §4).

[uncertain] The paper's exact form is not confirmed: these cards use mode "mul" on (LSTM: i, o),
(GRU: z, r), (MGU: f), with x̃ = x when d = n and a learned projection P x otherwise. Mode and gate set
are options of the ``refined`` gate primitive.
"""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

CITATION = ("Cheng, Wang, Shi, Xu & Zhou, 'Refined gate: A simple and effective gating mechanism for "
            "recurrent units' (arXiv:2002.11338), 2020.")
_SHORT = "x̃ = x_t if d = n else P x_t (P ∈ R^{n×d}, learned);  mode mul: g' = σ(a_g)⊙x̃\n"
_UNCERTAIN = ("[uncertain] mode (mul/add), the refined gate set and the projection are not confirmed by the "
              "paper; evaluated there on adding, counting, language modelling and scene-text recognition.")

REFINED_LSTM = CellCard(
    name="refined_lstm",
    spec=CellSpec(update="lstm", gate="refined", options={"gate": {"mode": "mul", "gates": ["i", "o"]}}),
    formula="LSTM with i' = σ(a_i)⊙x̃, o' = σ(a_o)⊙x̃",
    equations=_SHORT + "LSTM step with i' and o' in place of i and o; params 4n(d+n+1) (+ nd when d ≠ n)",
    citation=CITATION,
    notes=_UNCERTAIN,
)

REFINED_GRU = CellCard(
    name="refined_gru",
    spec=CellSpec(update="gru", gate="refined", options={"gate": {"mode": "mul", "gates": ["z", "r"]}}),
    formula="GRU with z' = σ(a_z)⊙x̃, r' = σ(a_r)⊙x̃",
    equations=_SHORT + "GRU step with z' and r' in place of z and r; params 3n(d+n+1) + n (+ nd when d ≠ n)",
    citation=CITATION,
    notes=_UNCERTAIN,
)

REFINED_MGU = CellCard(
    name="refined_mgu",
    spec=CellSpec(update="mgu", gate="refined", options={"gate": {"mode": "mul", "gates": ["f"]}}),
    formula="MGU with f' = σ(a_f)⊙x̃",
    equations=_SHORT + "MGU step with f' in place of f; params 2n(d+n+1) (+ nd when d ≠ n)",
    citation=CITATION,
    notes=_UNCERTAIN,
)
