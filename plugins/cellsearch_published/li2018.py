"""IndRNN (Li et al. 2018): an Elman cell with an element-wise recurrence and ReLU."""

from __future__ import annotations

from cellsearch.cards import CellCard
from cellsearch.spec import CellSpec

INDRNN = CellCard(
    name="indrnn",
    spec=CellSpec(update="vanilla", saturation="relu", recurrence="diagonal"),
    formula="h' = relu(W x + u⊙h + b)",
    equations=(
        "h_t = relu(W x_t + u⊙h_{t-1} + b)     (eq. 2: U = diag(u), each unit sees only its own past)\n"
        "u ~ U[0, 1] at init (recurrence.options low/high); |u| ≤ bound when recurrence.options.bound is set\n"
        "params n(d+2)"
    ),
    citation="Li, Li, Cook, Zhu & Gao, 'Independently Recurrent Neural Network (IndRNN): Building A Longer and "
             "Deeper RNN', CVPR 2018 (arXiv:1803.04831).",
    reported={"longest sequence processed (steps, abstract)": 5000, "deepest stack trained (layers, abstract)": 21},
    notes="The recurrent-weight bound (the authors clip |u| to a function of the sequence length, e.g. 2^(1/T) "
          "[code, uncertain]) and the per-task init are options of recurrence: diagonal; the defaults (U[0, 1], "
          "no bound) are cellsearch's. Per-task accuracies (sMNIST, pMNIST, PTB) are not quoted: not checked.",
)
