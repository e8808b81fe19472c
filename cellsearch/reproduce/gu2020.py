"""Gu et al. (ICML 2020): uniform gate initialization (UGI) and the refine gate (UR) on long delays.

Claim: on the copy task (Gu variant) and the adding problem, a plain LSTM stalls at the memoryless
baseline while the U- and R- variants (and UR, both) leave it first and converge fastest; chrono
initialization helps but less. Here: lstm, chrono_lstm (T_max = the sequence length), u_lstm, r_lstm
and ur_lstm at one hidden size and one recipe, on both tasks at the longest delay a CPU trains in minutes.
"""

from __future__ import annotations

from typing import Any

from .base import Loaded, Reproduction
from .config import Experiment
from .overview import Overview, Results, card_sources, compare, quotes, steps_text
from .report import experiment_table

__all__ = ["Gu2020"]


def _cells(t_max: int) -> list[Any]:
    return ["lstm", {"cell": "chrono_lstm", "options": {"bias": {"t_max": t_max}}}, "u_lstm", "r_lstm", "ur_lstm"]


def _size(delay: int, k: int, seq_len: int, hidden: int, steps: int, every: int, batch: int, lr: float,
          n_valid: int, n_test: int, copy_steps: int | None = None) -> dict[str, Any]:
    train = {"steps": steps, "steps_per_epoch": every, "batch_size": batch, "lr": lr, "clip": 1.0}
    sizes = {"n_valid": n_valid, "n_test": n_test}
    copy_len = delay + 2 * k
    return {"seeds": 3, "experiments": [
        {"name": "copy", "title": f"Copy (Gu variant), delay L = {delay}, K = {k}",
         "task": {"name": "copy", "variant": "gu", "delay": delay, "k": k, **sizes},
         "model": {"hidden_size": hidden}, "train": {**train, "steps": copy_steps or steps}, "solved_below": 0.1,
         "cells": _cells(copy_len)},
        {"name": "adding", "title": f"Adding problem, T = {seq_len}",
         "task": {"name": "adding", "seq_len": seq_len, **sizes},
         "model": {"hidden_size": hidden}, "train": train, "solved_below": 0.01, "cells": _cells(seq_len)},
    ]}


class Gu2020(Reproduction):
    """lstm / chrono_lstm / u_lstm / r_lstm / ur_lstm on copy (Gu variant) and adding."""

    name = "gu2020"
    title = "Gu et al. 2020: UGI and refine gates on long-delay memory tasks"
    cards = ("ur_lstm", "u_lstm", "r_lstm", "chrono_lstm")
    reference = "PRIMITIVES.md §3"
    claim = ("On the copy task (T = 500) and the adding problem (T = 2000) a plain LSTM stays at the memoryless "
             "baseline, while the gates with uniform initialization (U) and the refine gate (R) — and both "
             "together (UR-LSTM) — leave the baseline first and converge fastest; chrono initialization also "
             "helps. \"Solved\": adding MSE < 0.01; copy cross-entropy < 0.1 nats (the baseline is ln 8 = 2.08).")

    def configs(self) -> dict[str, dict[str, Any]]:
        """tiny: seconds; cpu: copy delay 100 (1200 steps) and adding T = 100 (800 steps) at n = 64; full: the
        paper's T = 500 / 2000 at n = 256 and sMNIST / pMNIST."""
        return {
            "tiny": _size(delay=6, k=3, seq_len=12, hidden=8, steps=4, every=2, batch=8, lr=2e-3,
                          n_valid=16, n_test=16),
            "cpu": _size(delay=100, k=10, seq_len=100, hidden=64, steps=800, every=100, batch=64, lr=2e-3,
                         n_valid=500, n_test=1000, copy_steps=1200),
            "full": _full(),
        }

    def overview(self, run: Loaded) -> Overview:
        """Per task: does LSTM stall, do U / R / UR leave the baseline, which model is first."""
        res = Results(run.records)
        tasks = [_task_verdict(res, exp) for exp in run.config.experiments if exp.solved_below is not None]
        verdict = "; ".join(f"{t['verdict']} ({t['short']})" for t in tasks)
        result = "; ".join(t["result"] for t in tasks)
        train = run.config.experiments[0].train
        model = run.config.experiments[0].model
        section = [
            "**Claim.** On the copy task (Gu variant, T = 500) and the adding problem (T = 2000), a plain "
            "LSTM stays at the memoryless baseline, while uniform gate initialization (U), the refine gate (R) "
            "and both (UR-LSTM) leave it first and converge fastest; chrono initialization also helps. "
            f"Published (`ur_lstm` card): {quotes('ur_lstm')}.", "",
            card_sources(("ur_lstm",), self.reference), "",
            f"**This run.** n = {model['hidden_size']}, Adam {train['lr']:g}, batch {train['batch_size']}, "
            f"gradient clip {train['clip']:g}; chrono's T_max = the sequence length.", ""]
        for exp, task in zip((e for e in run.config.experiments if e.solved_below is not None), tasks):
            section += [f"### {exp.title or exp.name} ({exp.train['steps']} steps)", "",
                        f"Memoryless baseline {res.baseline(exp.name):.4g}.", "",
                        *experiment_table(exp, run.records), "", task["text"], ""]
        fewer = [v for v in ("u_lstm",) for e in run.config.experiments
                 if res.runs(e.name, v)[0].n_params < res.runs(e.name, "lstm")[0].n_params]
        section += [f"**Verdict: {verdict}.**" + (
            " Note u_lstm has fewer parameters than the rest (its input gate is tied to 1 − f)." if fewer else "")
            + " The paper's delays (T = 500 / 2000) are in `studies/reproduce/gu2020-full.yaml`."]
        return Overview("Gu et al. 2020 (UGI, UR)", "plain LSTM stalls at the baseline on long copy / adding; "
                        "U, R, UR leave it first and converge fastest",
                        f"`ur_lstm`: {quotes('ur_lstm', ('sMNIST acc %', 'pMNIST acc %'))} (copy T = 500, "
                        "adding T = 2000: no number)", result, verdict, "Gu et al. 2020 — UGI and refine gates "
                        "on long delays", section)


GATED = ("u_lstm", "r_lstm", "ur_lstm")


def _task_verdict(res: Results, exp: Experiment) -> dict[str, str]:
    """The verdict on one task: LSTM at the baseline, U / R / UR leave it, the first model is one of them."""
    name, threshold = exp.name, exp.solved_below or 0.0
    variants = res.variants(name)
    n = res.n(name, "lstm")
    left = {v: res.left(name, v) for v in variants}
    solved = {v: res.solved(name, v, threshold) for v in variants}
    test = {v: res.ci(name, v) for v in variants}
    short = exp.task["name"]
    if any(count for count, _ in solved.values()):
        first = min(variants, key=lambda v: (-solved[v][0], solved[v][1].mean if solved[v][0] else 0.0))
        ties = [v for v in variants if solved[v][0] == solved[first][0] and solved[v][1].mean == solved[first][1].mean]
        resolved = True
        how = " and ".join(ties) + f" solve it in {steps_text(*solved[first])} ({solved[first][0]}/{n} seeds)"
    else:
        first = min(variants, key=lambda v: test[v].mean)
        ties = [first]
        resolved = all(compare(test[first], test[v]) == -1 for v in variants if v != first)
        how = (f"no model solves it in {exp.train['steps']} steps; the lowest mean is {first}'s "
               f"({test[first].format(3)}), " + ("below every other CI" if resolved
                                                 else "with a CI that overlaps others': not resolved"))
    stalls, leave = left["lstm"] == 0, all(left[g] == n for g in GATED if g in left)
    if stalls and leave and set(ties) <= set(GATED) and resolved:
        verdict = "yes"
    elif stalls and any(left[g] for g in GATED if g in left):
        verdict = "partly"
    else:
        verdict = "no"
    counts = ", ".join(f"{v} {left[v]}/{n}" for v in variants)
    solves = ", ".join(f"{v} {solved[v][0]}/{n}" for v in variants)
    text = (f"Seeds that leave the baseline: {counts}; seeds that solve it: {solves}. LSTM "
            + ("stays at the baseline in every seed" if stalls else f"leaves it in {left['lstm']}/{n} seeds")
            + f" (mean {test['lstm'].mean:.4g} vs {res.baseline(name):.4g}); {how}.")
    if "chrono_lstm" in left:
        text += (f" Chrono leaves the baseline in {left['chrono_lstm']}/{n} seeds and solves "
                 f"{solved['chrono_lstm'][0]}/{n}.")
    result = (f"{exp.title or name}: LSTM {left['lstm']}/{n} seeds leave the baseline; "
              + ", ".join(f"{v} {solved[v][0]}/{n} solved" + (f" in {steps_text(*solved[v])}" if solved[v][0] else "")
                          for v in variants if v != "lstm") + f"; {how}")
    return {"verdict": verdict, "short": short, "result": result, "text": text}


def _full() -> dict[str, Any]:
    """The paper's synthetic sizes (copy T = 500, adding T = 2000, n = 256) plus sMNIST / pMNIST (n = 512).

    The MNIST recipe (Adam, lr 1e-3, batch 64, 150 epochs, clip 1) is approximate: the paper's exact
    schedule is not reproduced here. Needs MNIST under $CELLSEARCH_DATA (see ``cellsearch list tasks``).
    """
    config = _size(delay=500, k=10, seq_len=2000, hidden=256, steps=30000, every=500, batch=64, lr=1e-3,
                   n_valid=1000, n_test=2000)
    train = {"epochs": 150, "batch_size": 64, "lr": 1e-3, "clip": 1.0}
    for task, title in (("pixel_mnist", "Sequential MNIST"), ("perm_mnist", "Permuted sequential MNIST")):
        config["experiments"].append({"name": task, "title": title, "task": {"name": task},
                                      "model": {"hidden_size": 512}, "train": train, "cells": _cells(784)})
    return config
