"""Benchmark results written out: BENCH.md (tables), bench.png (ratio charts) and bench.json (read back by
``--resume``)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from .machine import machine_info
from .result import BenchResult

__all__ = ["write_markdown", "write_chart", "read_json", "write_json"]


def _fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def write_markdown(results: Sequence[BenchResult], path: str | Path, info: dict[str, str] | None = None,
                   main_sizes: Sequence[tuple[int, int]] | None = None, command: str | None = None) -> Path:
    """docs/bench/BENCH.md: one table per main size, then every measured size compactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = list(main_sizes or sorted({(r.hidden, r.seq) for r in results}))
    lines = _preamble(results, info or machine_info(), command)
    for hidden, seq in sizes:
        lines += _size_table(results, hidden, seq)
    lines += _other_sizes(results, sizes)
    path.write_text("\n".join(lines))
    return path


def _preamble(results: Sequence[BenchResult], info: dict[str, str], command: str | None) -> list[str]:
    """How BENCH.md was measured: the command, the method, the machine, the paths and columns."""
    lines = ["# cellsearch bench", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    r0 = results[0] if results else None
    if r0 is not None:
        lines += [f"Forward + backward of `out.sum()` for a {r0.layers}-layer network, batch {r0.batch}, "
                  f"input size {r0.input_size}, float32; median of {r0.repeats} runs after warm-up, "
                  "interleaved with `torch.nn.LSTM` of the same sizes in the same process. "
                  "**× nn.LSTM** = nn.LSTM's time / the cell's time (> 1: faster).", ""]
    lines += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()] + [""]
    lines += ["Path: `native` = torch's LSTM/GRU kernel (the spec is exactly LSTM/GRU); `fused` = one "
              "whole-sequence autograd function with a hand-written backward (cellsearch.fast); "
              "`derived` = the whole-sequence function generated from the cell's own step "
              "(cellsearch.fast.derived: traced forward and backward step graphs, their pointwise work and, "
              "where every op acts on each batch row alone, the whole time loop in generated C, "
              "cellsearch.fast.pwloop; preferred on the CPU to a hand-written stepping kernel where it has "
              "that loop); `reference` = the step-by-step loop. *Reference loop ×* is the same cell "
              "with fast paths off and *derived ×* the same cell forced onto the derived path, timed in "
              "the same rounds. Peak memory: one run's peak resident-set growth (CPU) or "
              "peak allocated memory (CUDA), see cellsearch/bench/memory.py. *× GEMM floor*: the cell's time "
              "over the time of its matrix products alone (input GEMM, one recurrent GEMM per step and "
              "direction, post-loop weight gradients, a deep transition's layers and shortcut, deep input / "
              "output MLPs, an adaptive saturation's map of every step's output, a refined gate's projected "
              "short input; on the derived path's own C products where they are built; `GemmFloor` in "
              "cellsearch/bench/compare.py), timed "
              "in the same rounds; *µs/step over floor*: what the rest costs per time step. *First call*: "
              "the first forward + backward of a new model (plan, weight reorders, first allocations; "
              "tracing and compiling for the derived path, whose own first call is *derived first s*: it "
              "compiles on first use on a machine and loads from the private cache afterwards).", ""]
    discarded = sum(r.extra.get("discarded_rounds", 0) for r in results)
    used = sum(r.extra.get("loaded_rounds_used", 0) for r in results)
    if discarded:
        lines += [f"The machine was shared: {discarded} timing rounds during which other processes kept a "
                  f"CPU busy were discarded and re-run ({used} of them had to be kept when clean rounds "
                  "ran short).", ""]
    return lines


def _size_table(results: Sequence[BenchResult], hidden: int, seq: int) -> list[str]:
    """One main size: every cell's speed, ratios, floor, memory and first call."""
    lines: list[str] = []
    rows = [r for r in results if (r.hidden, r.seq) == (hidden, seq)]
    if rows:
        ref = statistics.median(r.ref_tokens_per_s for r in rows)
        lines += [f"## hidden {hidden}, sequence {seq} (nn.LSTM ≈ {ref:,.0f} tokens/s)", "",
                  "| cell | path | tokens/s | × nn.LSTM | reference loop × | derived × | × GEMM floor "
                  "| µs/step over floor | peak MB | × nn.LSTM memory | first call s | derived first s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r.cell} | {r.path} | {r.tokens_per_s:,.0f} | **{r.ratio:.2f}** | "
                         f"{_fmt(r.reference_ratio)} | {_fmt(r.derived_ratio)} | {_fmt(r.floor_ratio)} | "
                         f"{_fmt(r.over_floor_us, '.0f')} | {_fmt(r.peak_mb, '.0f')} | "
                         f"{_fmt(r.memory_ratio)} | {r.first_call_s:.2f} | {_fmt(r.derived_first_s)} |")
        lines.append("")
    return lines


def _other_sizes(results: Sequence[BenchResult], sizes: Sequence[tuple[int, int]]) -> list[str]:
    """× nn.LSTM of every cell at the sizes that are not main sizes, one compact table."""
    lines: list[str] = []
    others = sorted({(r.hidden, r.seq) for r in results} - set(sizes))
    if others:
        cells = list(dict.fromkeys(r.cell for r in results))
        head = " | ".join(f"{h}/{s}" for h, s in others)
        lines += ["## × nn.LSTM at other sizes (hidden/sequence)", "", f"| cell | {head} |",
                  "|---|" + "---:|" * len(others)]
        for c in cells:
            vals = []
            for size in others:
                match = [r for r in results if r.cell == c and (r.hidden, r.seq) == size]
                vals.append(f"{match[0].ratio:.2f}" if match else "–")
            lines.append(f"| {c} | " + " | ".join(vals) + " |")
        lines.append("")
    return lines


def write_chart(results: Sequence[BenchResult], path: str | Path, seq_hidden: int | None = None,
                hidden_seq: int | None = None) -> Path | None:
    """PNG: × nn.LSTM against sequence length (at ``seq_hidden``) and hidden size (at ``hidden_seq``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = list(dict.fromkeys(r.cell for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    panels = [("seq", seq_hidden, "hidden", "sequence length"), ("hidden", hidden_seq, "seq", "hidden size")]
    cmap = plt.get_cmap("tab20")
    for ax, (xkey, fixed, fixkey, label) in zip(axes, panels):
        for i, c in enumerate(cells):
            pts = sorted((getattr(r, xkey), r.ratio) for r in results
                         if r.cell == c and (fixed is None or getattr(r, fixkey) == fixed))
            if len(pts) >= 2:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c, color=cmap(i % 20))
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_title(f"× torch.nn.LSTM vs {label}" + (f" ({fixkey} {fixed})" if fixed else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("forward+backward speed / nn.LSTM")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_json(path: str | Path) -> list[BenchResult]:
    """Results written by :func:`write_json` (an empty list when the file does not exist)."""
    import json

    path = Path(path)
    if not path.exists():
        return []
    names = {f.name for f in fields(BenchResult)}
    rows = json.loads(path.read_text()).get("results", [])
    return [BenchResult(**{k: v for k, v in row.items() if k in names}) for row in rows]


def write_json(results: Sequence[BenchResult], path: str | Path, info: dict[str, str] | None = None) -> Path:
    """All measurements as JSON (for README tables and later comparisons)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "tokens_per_s": r.tokens_per_s, "ratio": r.ratio,
             "reference_ratio": r.reference_ratio, "derived_ratio": r.derived_ratio} for r in results]
    path.write_text(json.dumps({"machine": info or machine_info(), "results": rows}, indent=1))
    return path
