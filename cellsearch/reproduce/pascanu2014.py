"""Pascanu et al. (ICLR 2014), "How to construct deep RNNs": depth in the transition and the output.

Claim: on polyphonic music, giving a tanh RNN a deep transition with a shortcut (DT(S)) and a deep output
(DOT(S)) lowers the negative log-likelihood per step compared with a shallow RNN and a stacked RNN (sRNN)
of similar size. Here: vanilla (1 layer), sRNN (vanilla, 2 stacked layers), dt_rnn, dts_rnn and dots_rnn
at one parameter budget on Bach chorales (music21's corpus on the quarter-note grid; not the JSB
Chorales files of the paper, whose numbers are therefore not comparable in absolute terms).
"""

from __future__ import annotations

from typing import Any

from .base import Loaded, Reproduction
from .overview import Overview, Results, card_sources, compare, quote
from .report import experiment_table

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
    reference = "PRIMITIVES.md §6"
    claim = ("Deep transition (with shortcut) and deep output RNNs model polyphonic music better (lower test "
             "NLL per time step) than a shallow RNN and a stacked RNN; on JSB Chorales the paper reports "
             "RNN 8.338, DT(S)-RNN 8.278, DOT(S)-RNN 8.437, sRNN 8.367 — i.e. DT(S) best, DOT(S) worst on "
             "that dataset; the gains are small (< 1 %).")

    def configs(self) -> dict[str, dict[str, Any]]:
        """tiny: 10 chorales, seconds; cpu: all 350 chorales at ≈ 20k parameters, 150 epochs (chosen from
        pilot runs of RNN and DT(S)-RNN, seed 0, whose files are not committed: a choice, not a result);
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

    def overview(self, run: Loaded) -> Overview:
        """DT(S) and DOT(S) against the shallow and the stacked RNN (resolved or not), and the paper's JSB
        ordering of the four."""
        exp = run.config.experiments[0]
        res, name = Results(run.records), exp.name
        labels = [v["label"] for v in VARIANTS]
        rnn, srnn, dt, dts, dots = labels
        test = {v: res.ci(name, v) for v in labels}
        n = res.n(name, rnn)
        jsb = _published_jsb()
        deep = {v: {base: compare(test[v], test[base]) for base in (rnn, srnn)} for v in (dts, dots)}
        if all(o == -1 for d in deep.values() for o in d.values()):
            verdict = "yes"
        elif test[dts].mean >= test[rnn].mean and test[dots].mean >= test[rnn].mean:
            verdict = "no"
        else:
            verdict = "not resolved"
        word = {-1: "better (resolved)", 1: "worse (resolved)", 0: "not resolved"}
        parts = [f"{v} vs {base}: {test[v].mean:.3f} vs {test[base].mean:.3f}, "
                 + (word[o] if o else ("lower mean, " if test[v].mean < test[base].mean else "higher mean, ")
                    + "CIs overlap") for v, d in deep.items() for base, o in d.items()]
        ours_order = sorted((rnn, srnn, dts, dots), key=lambda v: test[v].mean)
        paper_order = sorted((rnn, srnn, dts, dots), key=lambda v: jsb[v])
        gap = (jsb[rnn] - jsb[dts]) / jsb[rnn]
        rel = [test[v].half / test[v].mean for v in labels]
        sizes = ", ".join(f"{v} n = {res.runs(name, v)[0].hidden_size}" for v in labels)
        published = ", ".join(f"{v.split(' (')[0]} {jsb[v]}" for v in (rnn, dts, dots, srnn))
        train = exp.train
        section = [
            "**Claim.** Giving a tanh RNN a deep transition with a shortcut (DT(S)) or a deep transition and a "
            "deep output (DOT(S)) lowers the test negative log-likelihood per step on polyphonic music, compared "
            "with a shallow RNN and a stacked RNN of similar size. Published (test NLL per step on JSB Chorales, "
            f"from the `dts_rnn` and `dots_rnn` cards): {published}; on JSB the best is "
            f"{paper_order[0]} and the worst {paper_order[-1]}, and DT(S)'s advantage over the shallow RNN is "
            f"{100 * gap:.1f} %. The cards also hold the Nottingham, MuseData and PTB-char numbers.", "",
            card_sources(self.cards, self.reference), "",
            f"**This run.** {exp.title or name} (not the JSB files of the paper, so absolute numbers are not "
            f"comparable; memoryless baseline {res.baseline(name):.4g} nats/step), every model at the hidden "
            f"size closest to {exp.model['param_budget']:,} parameters ({sizes}), Adam {train['lr']:g}, clip "
            f"{train['clip']:g}, batch {train['batch_size']}, {train['epochs']} epochs.", "",
            *experiment_table(exp, run.records), "",
            f"**Verdict: {verdict}.** " + "; ".join(parts) + ". "
            f"Our 95 % CIs are ±{100 * min(rel):.0f}–{100 * max(rel):.0f} % of the means with {n} seeds, so a "
            f"difference of the paper's size ({100 * gap:.1f} %) could not be resolved here even if it were "
            f"there. Ranked by mean (best first) this run gives {', '.join(ours_order)}; the paper's JSB "
            f"numbers give {', '.join(paper_order)}. At equal parameters the deeper models also have a narrower "
            f"state ({sizes}). {dt} (no shortcut) scores {test[dt].format(3)}."]
        result = (f"{exp.title or name} at ≈ {exp.model['param_budget'] / 1000:.0f}k parameters: "
                  + ", ".join(f"{v} {test[v].format(3)}" for v in labels) + " nats/step")
        return Overview("Pascanu et al. 2014", "DT(S) / DOT(S) RNNs beat a shallow and a stacked RNN on "
                        "polyphonic music", f"JSB NLL: {published}", result, verdict,
                        "Pascanu et al. 2014 — deep transition and deep output RNNs", section)


def _published_jsb() -> dict[str, float]:
    """JSB Chorales test NLL per step of the four models, from the cards (RNN and sRNN: the dts_rnn card's
    baseline entries, "Nottingham / JSB / MuseData / PTB-char")."""
    def second(key: str) -> float:
        return float(str(quote("dts_rnn", key)).split(" / ")[1])

    return {"RNN": second("(RNN baseline) Nottingham / JSB / MuseData / PTB-char"),
            "sRNN (2 layers)": second("(sRNN) Nottingham / JSB / MuseData / PTB-char"),
            "DT(S)-RNN": float(quote("dts_rnn", "JSB Chorales NLL")),
            "DOT(S)-RNN": float(quote("dots_rnn", "JSB Chorales NLL"))}


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
