"""Pascanu et al. (ICLR 2014), "How to construct deep RNNs": depth in the transition and the output.

Claim: on polyphonic music, giving a tanh RNN a deep transition with a shortcut (DT(S)) and a deep output
(DOT(S)) lowers the negative log-likelihood per step compared with a shallow RNN and a stacked RNN (sRNN)
of similar size. Here: vanilla (1 layer), sRNN (vanilla, 2 stacked layers), dt_rnn, dts_rnn and dots_rnn
at one parameter budget on Bach chorales (music21's corpus on the quarter-note grid; not the JSB
Chorales files of the paper, whose numbers are therefore not comparable in absolute terms).
"""

from __future__ import annotations

from typing import Any

from .base import Reproduction

__all__ = ["Pascanu2014"]

VARIANTS: tuple[dict[str, Any], ...] = (
    {"label": "RNN", "cell": "vanilla"},
    {"label": "sRNN (2 layers)", "cell": "vanilla", "layers": 2},
    {"label": "DT-RNN", "cell": "dt_rnn"},
    {"label": "DT(S)-RNN", "cell": "dts_rnn"},
    {"label": "DOT(S)-RNN", "cell": "dots_rnn"},
)


def _music(name: str, title: str, task: dict[str, Any], budget: int, train: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "title": title, "task": task, "model": {"param_budget": budget}, "train": train,
            "cells": [dict(v) for v in VARIANTS]}


class Pascanu2014(Reproduction):
    """RNN / sRNN / DT-RNN / DT(S)-RNN / DOT(S)-RNN on polyphonic music, NLL per step."""

    name = "pascanu2014"
    title = "Pascanu et al. 2014: deep transition / deep output RNNs on polyphonic music"
    cards = ("dts_rnn", "dots_rnn")
    claim = ("Deep transition (with shortcut) and deep output RNNs model polyphonic music better (lower test "
             "NLL per time step) than a shallow RNN and a stacked RNN; on JSB Chorales the paper reports "
             "RNN 8.338, DT(S)-RNN 8.278, DOT(S)-RNN 8.437, sRNN 8.367 — i.e. DT(S) best, DOT(S) worst on "
             "that dataset; the gains are small (< 1 %).")

    def configs(self) -> dict[str, dict[str, Any]]:
        """tiny: 10 chorales, seconds; cpu: all 350 chorales at ≈ 20k parameters, 150 epochs (where the
        validation NLL of pilot runs of RNN and DT(S)-RNN, seed 0, bottomed out; later epochs overfit);
        full: the JSB / Nottingham / MuseData files and PTB-char at larger budgets."""
        tiny_train = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "lr": 1e-3, "clip": 1.0}
        cpu_train = {"epochs": 150, "batch_size": 16, "lr": 3e-3, "clip": 1.0}
        return {
            "tiny": {"seeds": 3, "experiments": [_music("chorales", "Bach chorales (10 pieces)",
                                                        {"name": "polyphonic_music", "max_pieces": 10}, 3000,
                                                        tiny_train)]},
            "cpu": {"seeds": 3, "experiments": [_music("chorales", "Bach chorales (music21, quarter-note grid)",
                                                       {"name": "polyphonic_music"}, 20000, cpu_train)]},
            "full": _full(),
        }


def _full() -> dict[str, Any]:
    """The paper's datasets from local files (standard pickles under ~/.cache/cellsearch/data/music) and
    PTB-char; budgets and the recipe (Adam, clip 1) are ours, not the paper's (SGD with its own schedule)."""
    train = {"epochs": 200, "batch_size": 16, "lr": 1e-3, "clip": 1.0}
    root = "~/.cache/cellsearch/data/music"
    experiments = [_music(key, title, {"name": "polyphonic_music", "path": f"{root}/{file}"}, 200000, train)
                   for key, title, file in (("jsb", "JSB Chorales", "JSB Chorales.pickle"),
                                            ("nottingham", "Nottingham", "Nottingham.pickle"),
                                            ("musedata", "MuseData", "MuseData.pickle"))]
    experiments.append(_music("ptb_char", "PTB character level",
                              {"name": "char_lm", "path": "~/.cache/cellsearch/data/ptb", "bptt": 100},
                              1000000, {"epochs": 50, "batch_size": 128, "lr": 1e-3, "clip": 1.0}))
    return {"seeds": 3, "experiments": experiments}
