"""asRNN (Nguyen-Duy et al. 2023): adaptive saturation on an orthogonal RNN vs LSTM and a tanh RNN.

Claim: on the copy task (Arjovsky variant, loss on every step) asRNN solves delays L = 1000 / 2000 while
an LSTM of the same parameter count stays at the memoryless baseline. Here: asrnn, lstm and vanilla at
one parameter budget (22,000 at CPU size, our choice: each model's hidden size is the one closest to it)
and one recipe (Adam; asRNN's recurrent skew parameter at 0.1 × the learning rate, as its card declares).
"""

from __future__ import annotations

import math
from typing import Any

from .base import Loaded, Reproduction
from .overview import Overview, Results, card_sources, pct, quotes
from .report import experiment_table

__all__ = ["ASRNN"]

CELLS = ("asrnn", "lstm", "vanilla")


def _copy(delay: int, k: int, budget: int, train: dict[str, Any], n_valid: int, n_test: int,
          cells: Any = CELLS) -> dict[str, Any]:
    baseline = k * math.log(8) / (delay + 2 * k)
    return {"name": f"copy_{delay}", "title": f"Copy (Arjovsky variant), delay L = {delay}, K = {k}",
            "task": {"name": "copy", "variant": "arjovsky", "delay": delay, "k": k, "n_valid": n_valid,
                     "n_test": n_test},
            "model": {"param_budget": budget}, "train": train, "solved_below": round(0.1 * baseline, 4),
            "cells": list(cells)}


class ASRNN(Reproduction):
    """asrnn / lstm / vanilla on copy (Arjovsky variant) at an equal parameter budget."""

    name = "asrnn"
    log_curves = True
    title = "asRNN (Nguyen-Duy et al. 2023): copy task at an equal parameter budget"
    cards = ("asrnn",)
    reference = "PRIMITIVES.md §5"
    claim = ("Adaptive saturation keeps an orthogonal RNN's stable gradients and a tanh RNN's capacity: on the "
             "copy task (Arjovsky variant) asRNN solves delays L = 1000 and 2000, where an LSTM with the same "
             "number of parameters stays at the memoryless baseline K·ln 8 / (L + 2K). \"Solved\" here: "
             "validation cross-entropy below 10 % of that baseline.")

    def configs(self) -> dict[str, dict[str, Any]]:
        """tiny: seconds; cpu: delay 50 at ≈ 22k parameters; full: the paper's delays and recipes."""
        cpu_train = {"steps": 2000, "steps_per_epoch": 200, "batch_size": 64, "lr": 1e-3, "clip": 1.0}
        tiny_train = {"steps": 4, "steps_per_epoch": 2, "batch_size": 8, "lr": 1e-3, "clip": 1.0}
        return {
            "tiny": {"seeds": 3, "experiments": [_copy(6, 3, 600, tiny_train, 16, 16)]},
            "cpu": {"seeds": 3, "experiments": [_copy(50, 10, 22000, cpu_train, 500, 1000)]},
            "full": _full(),
        }

    def overview(self, run: Loaded) -> Overview:
        """asRNN against LSTM and vanilla on the first copy experiment: who leaves the baseline, who solves."""
        exp = run.config.experiments[0]
        res, name = Results(run.records), exp.name
        n = res.n(name, "asrnn")
        base, threshold = res.baseline(name), exp.solved_below or 0.0
        left = {c: res.left(name, c) for c in CELLS}
        solved = res.solved(name, "asrnn", threshold)[0]
        test = {c: res.ci(name, c) for c in CELLS}
        steps, delay, k = exp.train["steps"], exp.task["delay"], exp.task["k"]
        if solved == n and left["lstm"] == 0:
            verdict = "yes"
        elif left["asrnn"] > left["lstm"]:
            verdict = "partly" if left["lstm"] == 0 else "unclear"
        else:
            verdict = "no"
        sizes = ", ".join(f"{c} n = {res.runs(name, c)[0].hidden_size} ({res.runs(name, c)[0].n_params:,})"
                          for c in CELLS)
        keys = ("sMNIST acc % (16k/69k/137k params)", "pMNIST acc % (16k/69k/137k params)",
                "PTB-char BPC (1.32M params; LSTM 1.41)")
        published = quotes("asrnn", keys)
        per_seed = ", ".join(f"{r.test_metric:.3f}" for r in res.runs(name, "asrnn"))
        best = min(r.best_val_metric for r in res.runs(name, "asrnn"))
        if solved:
            reach = f"{solved} of {n} seeds reach our \"solved\" threshold ({threshold:g}) within {steps} steps"
        else:
            reach = (f"No seed reaches our \"solved\" threshold ({threshold:g}, {pct(threshold / base)} % of the "
                     f"baseline) within "
                     f"{steps} steps; the best validation value of any seed is {pct(best / threshold - 1)} % "
                     "above it")
        result = (f"copy L = {delay}, K = {k}: asRNN {test['asrnn'].format(3)} (leaves the baseline in "
                  f"{left['asrnn']}/{n} seeds, solves {solved}/{n} in {steps} steps); LSTM "
                  f"{test['lstm'].mean:.3f} and vanilla {test['vanilla'].mean:.3f} (leave it in "
                  f"{left['lstm']}/{n} and {left['vanilla']}/{n}; baseline {base:.3f})")
        section = [
            "**Claim.** Nguyen-Duy et al. (2023): asRNN, an orthogonal RNN whose saturation is learned, solves "
            "the copy task (Arjovsky variant) at delays L = 1000 and 2000, where an LSTM with the same number "
            f"of parameters stays at the memoryless baseline. Published (`asrnn` card): {published}.", "",
            card_sources(self.cards, self.reference), "",
            f"**This run.** Copy, Arjovsky variant, L = {delay}, K = {k} (baseline K ln 8 / (L + 2K) = "
            f"{base:.4f}), every model at the hidden size closest to a budget of "
            f"{exp.model['param_budget']:,} parameters ({sizes}), Adam {exp.train['lr']:g}, clip "
            f"{exp.train['clip']:g}, {steps} steps of batch {exp.train['batch_size']}, asRNN's recurrent "
            "skew parameter at 0.1 × lr.", "",
            *experiment_table(exp, run.records), "",
            f"**Verdict: {verdict}.** asRNN leaves the memoryless baseline in {left['asrnn']} of {n} seeds "
            f"(final test cross-entropy {per_seed} against the baseline {base:.3f}), while the LSTM and the "
            f"vanilla RNN at the same parameter budget leave it in {left['lstm']} and {left['vanilla']} "
            f"(means {test['lstm'].mean:.3f}, {test['vanilla'].mean:.3f}). {reach}. The paper's "
            f"delays (L = 1000 / 2000) are {1000 // delay}–{2000 // delay}× longer than this run's; they are "
            "in `studies/reproduce/asrnn-full.yaml`."]
        return Overview("asRNN (Nguyen-Duy et al.)", "at equal parameters asRNN solves copy, LSTM stays at the "
                        "baseline", f"{published} (copy: solved at L = 1000 / 2000, no number)", result,
                        verdict, "asRNN — adaptive saturation on the copy task", section)


def _full() -> dict[str, Any]:
    """The paper's copy delays (1000, 2000; RMSprop, batch 128, 4000 iterations, per-model learning rates
    and clipping from the authors' Hyperparameter.md), sMNIST / pMNIST at 16k parameters (70 epochs) and
    PTB-char (asRNN n = 1024 vs LSTM n = 475, BPTT 150, no clipping). MNIST needs local files under
    $CELLSEARCH_DATA; PTB-char needs ``ptb.char.{train,valid,test}.txt`` in the folder named by ``path``.
    """
    copy_train = {"steps": 4000, "steps_per_epoch": 200, "batch_size": 128, "optimizer": "rmsprop"}
    per_cell = {"asrnn": {"lr": 2e-4, "clip": 10.0}, "lstm": {"lr": 1e-3, "clip": 1.0},
                "vanilla": {"lr": 1e-3, "clip": 1.0}}
    cells = [{"cell": c, "train": per_cell[c]} for c in CELLS]
    experiments = [_copy(d, 10, 22000, copy_train, 1000, 2000, cells) for d in (1000, 2000)]
    mnist_cells = [{"cell": "asrnn", "train": {"lr": 7e-4, "clip": 10.0}},
                   {"cell": "lstm", "train": {"lr": 1e-3, "clip": 1.0}}]
    for task, title in (("pixel_mnist", "Sequential MNIST, 16k parameters"),
                        ("perm_mnist", "Permuted sequential MNIST, 16k parameters")):
        experiments.append({"name": task, "title": title, "task": {"name": task},
                            "model": {"param_budget": 16000},
                            "train": {"epochs": 70, "batch_size": 128, "optimizer": "rmsprop"},
                            "cells": mnist_cells})
    experiments.append({
        "name": "ptb_char", "title": "PTB character level",
        "task": {"name": "char_lm", "path": "~/.cache/cellsearch/data/ptb", "bptt": 150},
        "model": {"hidden_size": 1024}, "train": {"epochs": 100, "batch_size": 128, "optimizer": "rmsprop",
                                                  "clip": None, "test": True},
        "cells": [{"cell": "asrnn", "train": {"lr": 1e-3}},
                  {"cell": "lstm", "model": {"hidden_size": 475}, "train": {"lr": 1e-3}}]})
    return {"seeds": 3, "experiments": experiments}
