"""STAR (Turkoglu et al., "Gating Revisited"): gradient flow through deep stacks, accuracy vs depth.

Two parts:

1. Gradient maps (the paper's figure 2 recipe, :func:`cellsearch.diagnostics.gradient_map`): the mean
   |∂L/∂θ_(ℓ,t)| per layer ℓ and step t of a 10-layer stack, untrained, loss on the last step and on every
   step, one map per seed. Summaries per seed: the depth ratio  Ḡ(layer 1) / Ḡ(layer L)  (each averaged
   over steps) and the time ratio  Ḡ(step 1) / Ḡ(step T)  (averaged over layers), reported as log10
   mean ± 95 % CI over seeds. 0 means "preserved"; −3 means the bottom layer gets 1000× less gradient.
2. Accuracy vs depth: vanilla, lstm, gru and star stacked 1, 2, 4, 8 layers deep on ``seq_digits``.

The ``star`` card follows the authors' code since issue 16 (orthogonal W_z, W_k, U_k, b_z = 0, chrono-style
keep-gate bias with T_max = the task's length, β = 1). Both parts also run STAR in the paper form with
PyTorch's init (the card before issue 16); the maps add the paper form with orthogonal weights and all
biases 0 (the "authors' init" variant before issue 16, which is neither) and the tanh RNN with orthogonal
init, because the init changes the outcome.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Loaded, Reproduction
from .config import ConfigError, ReproConfig
from .overview import Overview, card_sources, quotes
from .report import by_variant, fmt, markdown_table, write_csv
from .runner import Record, cell_spec
from .stats import mean_ci

__all__ = ["STAR", "depth_ratio", "time_ratio"]

CELLS = ("vanilla", "lstm", "gru", "star")
#: the paper's equations with PyTorch's init: the star card before issue 16
STAR_PAPER = {"label": "star (paper form)", "cell": "star", "spec": {"init": "default", "bias": "default"},
              "options": {"update": {"beta": None}}}
#: the paper's equations, orthogonal weights, every bias 0 (the "authors' init" variant before issue 16)
STAR_PAPER_ORTHOGONAL = {"label": "star (paper form, orthogonal init, zero biases)", "cell": "star",
                         "spec": {"bias": "default"}, "options": {"update": {"beta": None}}}
MAP_CELLS: tuple[Any, ...] = (
    *CELLS,
    STAR_PAPER,
    STAR_PAPER_ORTHOGONAL,
    {"label": "vanilla (orthogonal init)", "cell": "vanilla", "spec": {"init": "orthogonal"}},
)
_MAP_KEYS = ("cells", "layers", "steps", "hidden_size", "batch", "losses")


def depth_ratio(grad_map: np.ndarray) -> float:
    """Ḡ(first layer) / Ḡ(last layer), each averaged over time steps."""
    return float(grad_map[0].mean() / grad_map[-1].mean())


def time_ratio(grad_map: np.ndarray) -> float:
    """Ḡ(first step) / Ḡ(last step), each averaged over layers."""
    return float(grad_map[:, 0].mean() / grad_map[:, -1].mean())


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 and math.isfinite(x) else math.nan


def _size(hidden: int, steps: int, every: int, batch: int, lr: float, task: dict[str, Any],
          maps: dict[str, Any], depths: Sequence[int] = (1, 2, 4, 8)) -> dict[str, Any]:
    return {"seeds": 3, "gradient_maps": maps, "experiments": [
        {"name": "depth", "title": f"{task['name']}: test accuracy vs depth", "task": task,
         "model": {"hidden_size": hidden}, "layers": list(depths), "cells": [*CELLS, STAR_PAPER],
         "train": {"steps": steps, "steps_per_epoch": every, "batch_size": batch, "lr": lr, "clip": 1.0}}]}


def _full(maps: dict[str, Any]) -> dict[str, Any]:
    """sMNIST and pMNIST, 1–16 layers of 128 units, the authors' recipe (Adam 1e-3, batch 100, clip 5 —
    ``clip`` from their code, ``dropout`` left out); MNIST from local files under $CELLSEARCH_DATA."""
    config = _size(128, 60000, 1000, 100, 1e-3, {"name": "pixel_mnist"}, {**maps, "hidden_size": 128},
                   depths=(1, 2, 4, 8, 12, 16))
    first = config["experiments"][0]
    first["train"]["clip"] = 5.0
    config["experiments"].append({**first, "name": "depth_permuted",
                                  "title": "perm_mnist: test accuracy vs depth", "task": {"name": "perm_mnist"}})
    return config


class STAR(Reproduction):
    """Gradient maps of vanilla / lstm / gru / star at 10 layers; accuracy vs depth on seq_digits."""

    name = "star"
    title = "STAR (Turkoglu et al.): gradient flow in deep stacks and accuracy vs depth"
    cards = ("star",)
    reference = "PRIMITIVES.md §2"
    extra_keys = ("gradient_maps",)
    claim = ("Stacking many STAR layers keeps the gradient magnitude roughly constant across depth, while LSTM "
             "gradients attenuate and vanilla-RNN gradients explode (their figure: mean |∂L/∂θ| per layer and "
             "time step of a ~10 × 10 grid, loss on the last step and on every step); as a result deep STAR "
             "stacks train where deep LSTM / vanilla stacks degrade. The published accuracy-vs-depth numbers "
             "are not in the project's references; the card's published numbers are below.")

    def configs(self) -> dict[str, dict[str, Any]]:
        """tiny: seconds; cpu: 10 × 10 maps at n = 32, seq_digits at n = 32 (300 steps); full: sMNIST, pMNIST."""
        maps = {"cells": list(MAP_CELLS), "layers": 10, "steps": 10, "hidden_size": 32, "batch": 8,
                "losses": ["last", "all"]}
        return {
            "tiny": _size(8, 4, 2, 16, 3e-3, {"name": "seq_digits", "n_valid": 32, "n_test": 32},
                          {**maps, "layers": 3, "steps": 4, "hidden_size": 8, "batch": 2}, depths=(1, 2)),
            "cpu": _size(32, 300, 50, 64, 3e-3, {"name": "seq_digits"}, maps),
            "full": _full(maps),
        }

    # ---------------------------------------------------------------- gradient maps
    def extra(self, config: ReproConfig, out: Path) -> dict[str, Any]:
        """Gradient maps per cell, loss mode and seed; writes ``star_gradients.csv``."""
        from ..diagnostics import gradient_map

        spec = _map_config(config.raw.get("gradient_maps", {}))
        maps: dict[tuple[str, str], list[np.ndarray]] = {}
        for label, cell in spec["cells"]:
            for loss in spec["losses"]:
                maps[label, loss] = [gradient_map(cell, layers=spec["layers"], steps=spec["steps"],
                                                  hidden_size=spec["hidden_size"], batch=spec["batch"],
                                                  loss=loss, seeds=[seed]) for seed in config.seeds]
        rows = []
        for (label, loss), per_seed in maps.items():
            stack = np.stack(per_seed)
            for layer in range(stack.shape[1]):
                for step in range(stack.shape[2]):
                    rows.append({"cell": label, "loss": loss, "layer": layer + 1, "step": step + 1,
                                 "mean": float(stack[:, layer, step].mean()),
                                 **{f"seed{s}": float(stack[i, layer, step]) for i, s in enumerate(config.seeds)}})
        path = write_csv(out / f"{self.name}_gradients.csv", rows)
        return {"maps": maps, "map_spec": spec, "files": [path]}

    def load_extra(self, config: ReproConfig, out: Path) -> dict[str, Any]:
        """The per-seed gradient maps back from ``star_gradients.csv``."""
        spec = _map_config(config.raw.get("gradient_maps", {}))
        shape = (len(config.seeds), spec["layers"], spec["steps"])
        maps = {(label, loss): np.zeros(shape) for label, _ in spec["cells"] for loss in spec["losses"]}
        with (out / f"{self.name}_gradients.csv").open() as fh:
            for row in csv.DictReader(fh):
                grid = maps[row["cell"], row["loss"]]
                for i, seed in enumerate(config.seeds):
                    grid[i, int(row["layer"]) - 1, int(row["step"]) - 1] = float(row[f"seed{seed}"])
        return {"maps": {key: list(grid) for key, grid in maps.items()}, "map_spec": spec}

    def sections(self, config: ReproConfig, records: Sequence[Record], extra: Mapping[str, Any]) -> list[str]:
        """The gradient-ratio table, then accuracy vs depth."""
        spec, maps = extra["map_spec"], extra["maps"]
        lines = ["## Gradient flow (untrained, "
                 f"{spec['layers']} layers × {spec['steps']} steps, n = {spec['hidden_size']})", "",
                 "log10 of the ratios (mean ± 95 % CI over seeds; 0 = preserved, < 0 = attenuated towards the "
                 "bottom layer / first step, > 0 = amplified). Raw maps: "
                 f"[`{self.name}_gradients.csv`]({self.name}_gradients.csv).", ""]
        header = ["cell"] + [f"{kind} (loss on {loss})" for loss in spec["losses"]
                             for kind in ("log10 layer 1 / layer L", "log10 step 1 / step T")]
        rows = []
        for label, _ in spec["cells"]:
            row = [label]
            for loss in spec["losses"]:
                per_seed = maps[label, loss]
                row.append(mean_ci([_log10(depth_ratio(g)) for g in per_seed]).format(2))
                row.append(mean_ci([_log10(time_ratio(g)) for g in per_seed]).format(2))
            rows.append(row)
        lines += [*markdown_table(header, rows), ""]
        lines += ["## Accuracy vs depth", ""]
        for exp in config.experiments:
            lines += [f"### {exp.title or exp.name}", "", *self.depth_table(exp.name, records), ""]
        lines += [f"![{self.name}]({self.name}.png)", ""]
        return lines

    def depth_table(self, experiment: str, records: Sequence[Record]) -> list[str]:
        """Rows: cells; columns: depths; entries: test metric mean ± 95 % CI (and parameters)."""
        groups = _by_cell_depth(records, experiment)
        depths = sorted({d for cell in groups.values() for d in cell})
        metric = records[0].metric if records else "accuracy"
        unit = " %" if metric == "accuracy" else ""
        header = ["cell"] + [f"{d} layer{'s' * (d > 1)}: test {metric}{unit}" for d in depths] + ["params (deepest)"]
        rows = []
        for cell, per_depth in groups.items():
            row = [cell] + [fmt(mean_ci([r.test_metric for r in per_depth.get(d, [])]), metric) for d in depths]
            deepest = per_depth[max(per_depth)]
            row.append(f"{max(r.n_params for r in deepest):,}")
            rows.append(row)
        return markdown_table(header, rows)

    # ---------------------------------------------------------------- REPRODUCTION.md
    def runs_text(self, run: Loaded) -> str:
        """Training runs and gradient maps."""
        spec = run.extra["map_spec"]
        maps = len(spec["cells"]) * len(spec["losses"]) * len(run.config.seeds)
        return f"{len(run.records)} training runs + {maps} gradient maps"

    def overview(self, run: Loaded) -> Overview:
        """Gradient ratios across depth (preserved / attenuated / amplified) and accuracy vs depth."""
        f = _Facts(run)
        return Overview("STAR (Turkoglu et al.)", "STAR keeps gradient magnitude across depth; LSTM attenuates, "
                        "vanilla explodes; deep STAR stacks train", f"`star`: {quotes('star')}", f.result(),
                        f.verdict, "STAR — gradient flow in deep stacks", self._section(f))

    def _section(self, f: _Facts) -> list[str]:
        """The page's text: the claim, the cards' sources, the run's settings and tables, the verdict."""
        spec, exp, layers, ratio = f.spec, f.exp, f.layers, f.ratio
        star, paper, paper_o, flow, top, lstm_peak = f.star, f.paper, f.paper_o, f.flow, f.top, f.lstm_peak
        grad_rows = [[label] + [ratio_l.format(2) for ratio_l in
                                (mean_ci([_log10(depth_ratio(g)) for g in f.maps[label, lo]]) for lo in spec["losses"])]
                     for label, _ in spec["cells"]]
        t_max = exp.task.get("seq_len", "the task's length")
        section = [
            "**Claim.** Turkoglu et al. (\"Gating Revisited\", TPAMI 2021) show that the mean gradient magnitude "
            f"per (layer, time step) of a ~{layers}-layer stack stays roughly constant for STAR, while it "
            "attenuates towards the bottom layers for LSTM and explodes for a vanilla RNN; consequently deep "
            f"STAR stacks train where deep LSTM / vanilla stacks degrade. Published (`star` card): "
            f"{quotes('star')}. The project's references quote no accuracy-vs-depth numbers.", "",
            card_sources(self.cards, self.reference), "",
            "The `star` card follows the authors' code (issue 16): orthogonal W_z, W_k, U_k, b_z = 0, keep-gate "
            "bias chrono-style (σ(−b_k) = τ/(1 + τ), τ ~ U[1, T_max − 1], T_max = the task's sequence length) and "
            "β = 1; \"star (paper form)\" is the paper's equations with PyTorch's uniform init (the card before "
            "issue 16); \"paper form, orthogonal init, zero biases\" is the variant this page called the authors' "
            "init before issue 16 (it is neither).", "",
            f"**This run.** (a) Gradient maps of untrained {layers}-layer × {spec['steps']}-step stacks, "
            f"n = {spec['hidden_size']}, batch {spec['batch']}, inputs N(0, 1), a fixed random linear readout, "
            f"loss on the last step and on every step, {len(f.run.config.seeds)} seeds "
            "(`cellsearch.diagnostics.gradient_map`; no task, so chrono's T_max is its fallback 784). log10 of "
            f"Ḡ(layer 1) / Ḡ(layer {layers}), each averaged over steps (0 = preserved; below, |mean| < 0.5 "
            "counts as preserved, ≤ −0.5 as attenuated, ≥ 0.5 as amplified):", "",
            *markdown_table(["cell"] + [f"loss on {lo} step{'s' * (lo == 'all')}" for lo in spec["losses"]],
                            grad_rows), "",
            f"(b) Accuracy vs depth on `{exp.task['name']}` (T_max {t_max}), n = {exp.model['hidden_size']} per "
            f"layer, Adam {exp.train['lr']:g}, {exp.train['steps']} steps of batch {exp.train['batch_size']}, "
            "test accuracy %:", "",
            *self.depth_table(exp.name, f.run.records), "",
            f"**Verdict: {f.verdict}.** "
            + " ".join(f"{k}: {'holds' if v else 'does not hold'}." for k, v in f.parts.items())
            + f" LSTM's bottom layer receives 10^({ratio['lstm'].mean:.1f}) of the top layer's gradient, and its "
            f"accuracy goes from {f.a('lstm', lstm_peak)} % ({lstm_peak} layer{'s' * (lstm_peak > 1)}, its best) to "
            f"{f.a('lstm', top)} % ({top} layers). STAR as the authors' code initialises it gives "
            f"10^({ratio[star].mean:.2f}) ({flow[star]}); in the paper form with PyTorch's init "
            f"10^({ratio[paper].mean:.1f}) ({flow[paper]}; GRU 10^({ratio['gru'].mean:.1f})); the paper form with "
            f"orthogonal weights and every bias at 0 gives 10^({ratio[paper_o].mean:.2f}) ({flow[paper_o]})"
            + (", so \"preserved with orthogonal init\" holds for that variant only, not for the authors' code "
               "(orthogonal weights with the chrono keep bias and β = 1). " if flow[paper_o] == "preserved"
               and flow[star] != "preserved" else ". ")
            + f"Accuracy from 1 to {top} layers: STAR (authors' code) {f.arrow(star)} %, STAR (paper form) "
            f"{f.arrow(paper)} %. The vanilla RNN is {flow['vanilla']} with the default init and "
            f"{flow['vanilla (orthogonal init)']} with orthogonal init "
            f"(10^({ratio['vanilla (orthogonal init)'].mean:.2f}))."]
        section[-1] += _notes(f)
        return section


    # ---------------------------------------------------------------- plot
    def figure(self, config: ReproConfig, records: Sequence[Record], extra: Mapping[str, Any]) -> Any:
        """Top rows: the seed-mean gradient maps (log colour, shared scale per loss mode); bottom: accuracy
        vs depth with 95 % CI error bars."""
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure

        spec, maps = extra["map_spec"], extra["maps"]
        labels = [label for label, _ in spec["cells"]]
        losses = spec["losses"]
        fig = Figure(figsize=(2.6 * len(labels), 2.5 * len(losses) + 3.6), layout="constrained")
        grid = fig.add_gridspec(len(losses) + 1, len(labels), height_ratios=[1] * len(losses) + [1.4])
        for i, loss in enumerate(losses):
            means = {label: np.mean(maps[label, loss], axis=0) for label in labels}
            positive = np.concatenate([m[m > 0].ravel() for m in means.values()])
            norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
            image = None
            for j, label in enumerate(labels):
                ax = fig.add_subplot(grid[i, j])
                m = np.ma.masked_where(~(means[label] > 0), means[label])
                image = ax.imshow(m, origin="lower", aspect="auto", norm=norm, cmap="viridis",
                                  extent=(0.5, m.shape[1] + 0.5, 0.5, m.shape[0] + 0.5))
                ax.set_title(f"{label}\nloss on {loss} step{'s' * (loss == 'all')}", fontsize=8)
                ax.set_xticks(_ticks(m.shape[1]))
                ax.set_yticks(_ticks(m.shape[0]))
                ax.set_xlabel("time step", fontsize=7)
                ax.set_ylabel("layer", fontsize=7)
                ax.tick_params(labelsize=6)
            if image is not None:
                fig.colorbar(image, ax=fig.axes[-len(labels):], label="mean |∂L/∂θ|", shrink=0.9)
        ax = fig.add_subplot(grid[len(losses), :])
        for exp in config.experiments:
            for cell, per_depth in _by_cell_depth(records, exp.name).items():
                depths = sorted(per_depth)
                cis = [mean_ci([r.test_metric for r in per_depth[d]]) for d in depths]
                ax.errorbar(depths, [c.mean for c in cis], yerr=[c.half if math.isfinite(c.half) else 0 for c in cis],
                            marker="o", capsize=3, label=cell)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r.layers for r in records}), [str(d) for d in sorted({r.layers for r in records})])
            ax.set_xlabel("stacked layers")
            ax.set_ylabel(f"test {records[0].metric if records else ''}")
            ax.set_title(exp.title or exp.name, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return fig


def _flow(log10_ratio: float) -> str:
    """preserved (|log10 ratio| < 0.5), attenuated or amplified."""
    if abs(log10_ratio) < 0.5:
        return "preserved"
    return "attenuated" if log10_ratio < 0 else "amplified"


def _ticks(n: int) -> list[int]:
    """Integer tick positions 1..n (every other one beyond 10)."""
    return list(range(1, n + 1, 1 if n <= 10 else 2))


def _by_cell_depth(records: Sequence[Record], experiment: str) -> dict[str, dict[int, list[Record]]]:
    out: dict[str, dict[int, list[Record]]] = {}
    for label, runs in by_variant(records, experiment).items():
        cell = label.rsplit(" ×", 1)[0]
        out.setdefault(cell, {}).setdefault(runs[0].layers, []).extend(runs)
    return out


def _map_config(raw: Any) -> dict[str, Any]:
    """Validate ``gradient_maps``; cells become (label, CellSpec-or-name) pairs."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config.gradient_maps: expected a mapping, got {raw!r}")
    for key in raw:
        if key not in _MAP_KEYS:
            raise ConfigError(f"config.gradient_maps.{key}: unknown key; allowed: {', '.join(_MAP_KEYS)}")
    out: dict[str, Any] = {"layers": 10, "steps": 10, "hidden_size": 32, "batch": 8, "losses": ["last", "all"],
                           **{k: v for k, v in raw.items() if k != "cells"}}
    cells = []
    for i, item in enumerate(raw.get("cells", list(MAP_CELLS))):
        entry = {"cell": item} if isinstance(item, str) else dict(item)
        unknown = set(entry) - {"label", "cell", "spec", "options"}
        if "cell" not in entry or unknown:
            raise ConfigError(f"config.gradient_maps.cells[{i}]: expected a cell name or a mapping with 'cell' "
                              "(and label, spec, options)")
        spec, _ = cell_spec(entry["cell"], entry.get("spec"), entry.get("options"))
        cells.append((str(entry.get("label", entry["cell"])), spec))
    out["cells"] = cells
    for loss in out["losses"]:
        if loss not in ("last", "all"):
            raise ConfigError(f"config.gradient_maps.losses: {loss!r} is not one of last, all")
    return out


class _Facts:
    """What the STAR page says, computed once from a loaded run: gradient ratios and their flow, accuracy
    per cell and depth, the parts of the claim and the verdict."""

    def __init__(self, run: Loaded) -> None:
        self.run = run
        self.spec, self.maps = run.extra["map_spec"], run.extra["maps"]
        self.layers, loss = self.spec["layers"], self.spec["losses"][0]
        self.ratio = {label: mean_ci([_log10(depth_ratio(g)) for g in self.maps[label, loss]])
                      for label, _ in self.spec["cells"]}
        self.flow = {label: _flow(ci.mean) for label, ci in self.ratio.items()}
        self.exp = exp = run.config.experiments[0]
        self.acc = acc = {cell: {d: mean_ci([r.test_metric for r in runs]) for d, runs in sorted(per.items())}
                          for cell, per in _by_cell_depth(run.records, exp.name).items()}
        self.depths = depths = sorted({d for per in acc.values() for d in per})
        self.top, self.star, self.paper = depths[-1], "star", STAR_PAPER["label"]
        self.paper_o = STAR_PAPER_ORTHOGONAL["label"]
        self.lstm_peak = max(acc["lstm"], key=lambda d: acc["lstm"][d].mean)
        lowest = {d: min(acc, key=lambda c: acc[c][d].mean) for d in depths}
        self.least = all(lowest[d] == self.star for d in depths)
        self.paper_least = all(lowest[d] == self.paper for d in depths)
        flow, star, top = self.flow, self.star, self.top
        self.parts = {
            "LSTM attenuates": flow["lstm"] == "attenuated",
            "vanilla explodes": flow["vanilla"] == "amplified" or flow["vanilla (orthogonal init)"] == "amplified",
            "STAR (authors' code) preserves the gradient": flow[star] == "preserved",
            "deep STAR trains": acc[star][top].mean > acc[star][depths[0]].mean,
            "deep LSTM degrades": acc["lstm"][top].mean < acc["lstm"][self.lstm_peak].mean,
            "STAR (authors' code) is competitive": not self.least,
        }
        held = [k for k, v in self.parts.items() if v]
        self.verdict = "yes" if len(held) == len(self.parts) else "no" if not held else "partly"

    def r(self, label: str) -> str:
        return f"{self.ratio[label].format(2)}"

    def a(self, cell: str, d: int) -> str:
        return f"{100 * self.acc[cell][d].mean:.0f}"

    def arrow(self, cell: str) -> str:
        return " → ".join(self.a(cell, d) for d in self.depths)

    def result(self) -> str:
        """The overview's one-line result."""
        r, star, paper, paper_o = self.r, self.star, self.paper, self.paper_o
        return (f"log10 gradient ratio layer 1 / layer {self.layers}: STAR {r(star)} (authors' code: orthogonal, "
                f"chrono keep bias, β = 1), {r(paper)} (paper form, default init), {r(paper_o)} (paper form, "
                f"orthogonal, zero biases); LSTM {r('lstm')}; GRU {r('gru')}; vanilla {r('vanilla')} (default "
                f"init), {r('vanilla (orthogonal init)')} (orthogonal); test accuracy at "
                f"{' / '.join(map(str, self.depths))} layers: STAR (authors' code) {self.arrow(star)} %, STAR (paper "
                f"form) {self.arrow(paper)} %, LSTM {self.arrow('lstm')} %"
                + ("; STAR (authors' code) is the least accurate cell at every depth" if self.least else "")
                + ("; STAR (paper form) is the least accurate cell at every depth" if self.paper_least else ""))


def _notes(f: _Facts) -> str:
    """The verdict's closing remarks: a least-accurate STAR, and chrono's fallback T_max in the maps."""
    out = ""
    if f.least or f.paper_least:
        which = "STAR (authors' code)" if f.least else "STAR in the paper form"
        out += (f" {which} is the least accurate cell at every depth after {f.exp.train['steps']} steps (a "
                "1-layer STAR with a 1-dimensional input can only write z = tanh(W_z x + b), a function "
                "of the current pixel, into its state; the paper trains far longer).")
    out += (" The gradient maps run without a task, so the authors' STAR there has chrono's fallback "
            f"T_max = 784 (the value their code hard-codes) on {f.spec['steps']} steps: its keep gate starts "
            "near 1 and its write coefficient σ(a_k + 1) near 0, so little of each layer's input — and of "
            "the gradient to the layers below — passes at init; on seq_digits T_max is the task's 64.")
    return out
