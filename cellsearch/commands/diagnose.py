"""``cellsearch diagnose CELL``: gradient-magnitude map (layer × time), gate saturation, state-norm growth.

Writes into ``--out`` (default ``runs/diagnose/CELL``):

- ``gradient_map_<loss>.csv`` / ``.png`` for each loss mode (``last``, ``all``): G[ℓ, t], the mean
  |∂L/∂θ_(ℓ,t)| over layer ℓ's parameters at step t (:func:`cellsearch.diagnostics.gradient_map`);
  the PNG is a heat map with a log colour scale, layers on y (layer 1 at the bottom), steps on x;
- ``saturation_gates.csv``: per layer and gate block, the fractions of gate values < 0.05 and > 0.95;
- ``state_norm.csv``: mean ‖h_t‖ per step and layer over a long sequence;
- ``saturation.png``: both of the above as plots;
- ``score.json``: the pre-screen verdict (:func:`cellsearch.diagnostics.gradient_score`: ratios of the
  state-gradient map, vanishing / exploding).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

HELP = "gradient-magnitude map (layer × time)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cell", help="a registered cell name (see `cellsearch list cells`)")
    parser.add_argument("--layers", type=int, default=10, help="stacked layers (default 10)")
    parser.add_argument("--steps", type=int, default=10, help="time steps of the gradient map (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/diagnose/CELL)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden size n (default 32)")
    parser.add_argument("--input-size", type=int, default=None, help="input size d (default: n)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--loss", choices=("last", "all", "both"), default="both",
                        help="loss on the last step, on every step, or both maps (default both)")
    parser.add_argument("--objective", choices=("linear", "mse"), default="linear",
                        help="linear random readout (default) or MSE to random targets")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds averaged (default 3)")
    parser.add_argument("--sat-steps", type=int, default=200,
                        help="sequence length of the saturation / state-norm run (default 200)")


def _validate(args: argparse.Namespace) -> None:
    from ..errors import UserError

    for name in ("layers", "steps", "hidden", "batch", "seeds", "sat_steps"):
        value = getattr(args, name)
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.input_size is not None and args.input_size < 1:
        raise UserError(f"--input-size must be >= 1, got {args.input_size}")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from .. import diagnostics as dg
    from ..api import get_cell

    _validate(args)
    torch.set_num_threads(1)  # thousands of tiny ops: one thread is fastest, many times so on a busy machine
    get_cell(args.cell)  # unknown name → one line with "did you mean" (exit 2)
    out = Path(args.out) if args.out is not None else Path("runs") / "diagnose" / args.cell
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    modes = ("last", "all") if args.loss == "both" else (args.loss,)
    seeds = list(range(args.seed, args.seed + args.seeds))
    sizes: dict[str, Any] = {"layers": args.layers, "input_size": args.input_size, "hidden_size": args.hidden}
    maps: dict[str, np.ndarray] = {}
    with console.status(f"gradient maps of {args.cell} ({args.layers} layers × {args.steps} steps)"):
        for mode in modes:
            maps[mode] = dg.gradient_map(args.cell, steps=args.steps, batch=args.batch, loss=mode, seeds=seeds,
                                         objective=args.objective, **sizes)
            _write_map_csv(out / f"gradient_map_{mode}.csv", maps[mode])
            _plot_map(out / f"gradient_map_{mode}.png", maps[mode],
                      f"{args.cell}: mean |∂L/∂θ| per layer and step (loss on {mode} step{'s' * (mode == 'all')})")
    with console.status(f"saturation over {args.sat_steps} steps"):
        stats = dg.saturation_stats(args.cell, steps=args.sat_steps, batch=args.batch, seed=args.seed, **sizes)
        _write_saturation(out, stats)
        _plot_saturation(out / "saturation.png", stats, args.cell)
    score = dg.gradient_score(args.cell, steps=args.steps, batch=args.batch, seeds=seeds, **sizes)
    (out / "score.json").write_text(json.dumps(score.as_dict(), indent=2) + "\n")
    _summary(console, args, maps, stats, score, out)
    return 0


# ------------------------------------------------------------------------------------------------------
# files


def _write_map_csv(path: Path, grad_map: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["layer", *(f"t{t + 1}" for t in range(grad_map.shape[1]))])
        for i, row in enumerate(grad_map):
            writer.writerow([i + 1, *(f"{v:.6e}" for v in row)])


def _write_saturation(out: Path, stats: Any) -> None:
    with (out / "saturation_gates.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["layer", "gate", "frac_below_0.05", "frac_above_0.95", "frac_saturated"])
        for i in range(stats.state_norm.shape[0]):
            for j, gate in enumerate(stats.gates):
                writer.writerow([i + 1, gate, f"{stats.low[i, j]:.6f}", f"{stats.high[i, j]:.6f}",
                                 f"{stats.saturated[i, j]:.6f}"])
    with (out / "state_norm.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", *(f"layer{i + 1}" for i in range(stats.state_norm.shape[0]))])
        for t, row in enumerate(stats.state_norm.T):
            writer.writerow([t + 1, *(f"{v:.6e}" for v in row)])


def _plot_map(path: Path, grad_map: np.ndarray, title: str) -> None:
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    layers, steps = grad_map.shape
    data = np.ma.masked_where(~np.isfinite(grad_map) | (grad_map <= 0), grad_map)
    norm = LogNorm(vmin=data.min(), vmax=data.max()) if data.count() else Normalize(0.0, 1.0)
    fig = Figure(figsize=(1.0 + 0.45 * steps, 1.2 + 0.35 * layers), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(data, origin="lower", aspect="auto", norm=norm, cmap="viridis",
                      extent=(0.5, steps + 0.5, 0.5, layers + 0.5))
    ax.set_xlabel("time step")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(1, steps + 1))
    ax.set_yticks(range(1, layers + 1))
    fig.colorbar(image, ax=ax, label="mean |∂L/∂θ| (log scale)")
    fig.savefig(path, dpi=120)


def _plot_saturation(path: Path, stats: Any, cell: str) -> None:
    from matplotlib.figure import Figure

    layers, steps = stats.state_norm.shape
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_norm, ax_gate = fig.subplots(1, 2)
    t = np.arange(1, steps + 1)
    for i in range(layers):
        ax_norm.plot(t, stats.state_norm[i], label=f"layer {i + 1}", lw=1)
    if np.all(stats.state_norm > 0) and np.isfinite(stats.state_norm).all():
        ax_norm.set_yscale("log")
    ax_norm.set_xlabel("time step")
    ax_norm.set_ylabel("mean ‖h_t‖")
    ax_norm.set_title(f"{cell}: state norm", fontsize=9)
    if layers <= 12:
        ax_norm.legend(fontsize=6, ncol=2)
    if stats.gates:
        width = 0.8 / len(stats.gates)
        for j, gate in enumerate(stats.gates):
            x = np.arange(1, layers + 1) + (j - (len(stats.gates) - 1) / 2) * width
            ax_gate.bar(x, stats.low[:, j], width, label=f"{gate} < 0.05")
            ax_gate.bar(x, stats.high[:, j], width, bottom=stats.low[:, j], label=f"{gate} > 0.95", alpha=0.6)
        ax_gate.set_xlabel("layer")
        ax_gate.set_ylabel("fraction of gate values saturated")
        ax_gate.set_ylim(0, 1)
        ax_gate.legend(fontsize=6, ncol=2)
    else:
        ax_gate.text(0.5, 0.5, "no gates", ha="center", va="center", transform=ax_gate.transAxes)
        ax_gate.set_axis_off()
    ax_gate.set_title(f"{cell}: gate saturation", fontsize=9)
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------------------------------
# summary


def _summary(console: Any, args: argparse.Namespace, maps: dict[str, np.ndarray], stats: Any, score: Any,
             out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{args.cell}: gradient flow ({args.layers} layers × {args.steps} steps, n={args.hidden})")
    for col in ("loss", "min G", "max G", "G bottom / top layer", "G first / last step"):
        table.add_column(col, justify="right")
    for mode, grad_map in maps.items():
        s = _ratios(grad_map)
        table.add_row(mode, f"{np.nanmin(grad_map):.2e}", f"{np.nanmax(grad_map):.2e}",
                      f"{s.ratio_first_to_last_layer:.2e}", f"{s.ratio_first_to_last_step:.2e}")
    console.print(table)
    verdict = " ".join(w for w, on in (("[red]vanishing[/]", score.vanishing),
                                         ("[red]exploding[/]", score.exploding)) if on) or "[green]ok[/]"
    console.print(f"pre-screen (∂L/∂state, loss on last step): bottom/top layer "
                  f"{score.ratio_first_to_last_layer:.2e}, first/last step {score.ratio_first_to_last_step:.2e}"
                  f" → {verdict}")
    if stats.gates:
        parts = [f"{g} {stats.saturated[:, j].mean():.0%}" for j, g in enumerate(stats.gates)]
        console.print(f"gates saturated (mean over layers, {args.sat_steps} steps): {', '.join(parts)}")
    growth = stats.growth
    console.print(f"state norm ‖h_T‖/‖h_1‖ over {args.sat_steps} steps: "
                  f"layer 1 {growth[0]:.3g}, top layer {growth[-1]:.3g}")
    console.print(f"wrote {out}/", markup=False)


def _ratios(grad_map: np.ndarray) -> Any:
    from ..diagnostics import score_map

    return score_map(grad_map)
