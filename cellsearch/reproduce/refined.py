"""Refined gates (Cheng et al. 2020): short connections from the input into the gates, on adding.

Claim: refining the gates of LSTM, GRU and MGU (g' = σ(a_g) ⊙ x̃, x̃ = P x here since d = 2 ≠ n) widens
the gates' range and adds a gradient path around the saturating σ, so the refined cells learn the adding
problem faster / to a lower error than their plain versions. Here: each plain cell and its refined
version at one hidden size and one recipe (the adding setup of the gu2020 reproduction, trained longer).
"""

from __future__ import annotations

from typing import Any

from .base import Reproduction

__all__ = ["Refined"]

CELLS = ("lstm", "refined_lstm", "gru", "refined_gru", "mgu", "refined_mgu")


def _adding(seq_len: int, hidden: int, train: dict[str, Any], n_valid: int, n_test: int) -> dict[str, Any]:
    return {"name": f"adding_{seq_len}", "title": f"Adding problem, T = {seq_len}",
            "task": {"name": "adding", "seq_len": seq_len, "n_valid": n_valid, "n_test": n_test},
            "model": {"hidden_size": hidden}, "train": train, "solved_below": 0.01, "cells": list(CELLS)}


def _styles(labels: Any) -> dict[str, dict[str, Any]]:
    """One colour per cell family; the plain cell dashed, the refined one solid."""
    colours = {"lstm": "C0", "gru": "C1", "mgu": "C2"}
    out = {}
    for label in labels:
        family = label.removeprefix("refined_")
        out[label] = {"color": colours.get(family), "ls": "-" if label.startswith("refined_") else "--"}
    return out


class Refined(Reproduction):
    """refined_lstm / refined_gru / refined_mgu vs lstm / gru / mgu on adding."""

    name = "refined"
    title = "Refined gates (Cheng et al. 2020) vs plain gates on the adding problem"
    cards = ("refined_lstm", "refined_gru", "refined_mgu")
    claim = ("Short-connecting the input features into the gates (\"refined gates\") fixes gate undertraining: "
             "refined LSTM / GRU / MGU learn the adding problem faster and to a lower error than the plain "
             "cells. PRIMITIVES.md quotes no number for adding; the exact refined form in the paper (mul or "
             "add, which gates, projection of x) is uncertain — the plugins use \"mul\" with a learned "
             "projection when d ≠ n.")

    def figure(self, config: Any, records: Any, extra: Any) -> Any:
        """Validation MSE curves, each plain cell dashed beside its refined version (solid)."""
        from matplotlib.figure import Figure

        from .report import plot_curves

        n = len(config.experiments)
        fig = Figure(figsize=(5.6 * n, 4.0), layout="constrained")
        for ax, exp in zip(fig.subplots(1, n, squeeze=False)[0], config.experiments):
            plot_curves(ax, exp, records, styles=_styles(v.label for v in exp.variants))
        return fig

    def configs(self) -> dict[str, dict[str, Any]]:
        """tiny: seconds; cpu: T = 100 at n = 64 (2000 steps); full: T = 200 / 400 / 1000 (paper-style)."""
        def train(steps: int, every: int, batch: int) -> dict[str, Any]:
            return {"steps": steps, "steps_per_epoch": every, "batch_size": batch, "lr": 2e-3, "clip": 1.0}

        return {
            "tiny": {"seeds": 3, "experiments": [_adding(12, 8, train(4, 2, 8), 16, 16)]},
            "cpu": {"seeds": 3, "experiments": [_adding(100, 64, train(2000, 100, 64), 500, 1000)]},
            "full": {"seeds": 5, "experiments": [_adding(t, 128, {**train(20000, 500, 64), "lr": 1e-3}, 1000, 2000)
                                                 for t in (200, 400, 1000)]},
        }
