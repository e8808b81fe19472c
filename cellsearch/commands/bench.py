"""``cellsearch bench CELL... [--hidden N --seq T --batch B --device D]`` and ``cellsearch bench --all``.

Forward + backward tokens/s of each cell, its ratio to ``torch.nn.LSTM`` measured in the same process
(interleaved runs), peak memory, and the execution path (native / fused / derived / reference); with
``--derived`` also each cell forced onto the derived path (generated from its step), in the same rounds,
and with ``--first-use CELL`` the derived path's first-use cost (cold cache, then warm cache, each in a
fresh process); see
:mod:`cellsearch.bench` for the method. With ``--out DIR`` it writes ``DIR/BENCH.md``, ``DIR/bench.png``
(× nn.LSTM against sequence length and hidden size) and ``DIR/bench.json``.

``--all`` benches every published cell on a grid: the two main sizes (hidden 128 / seq 100 and
hidden 256 / seq 200, with memory, the reference loop and the derived path), plus sequence lengths 50
and 200 at hidden 128 and hidden sizes 64 and 256 at sequence 100 for the chart, and the derived path's
first use for ``ur_lstm`` at hidden 256 / seq 200.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

HELP = "tokens/s forward+backward vs torch.nn.LSTM"

MAIN_SIZES = ((128, 100), (256, 200))
CHART_SIZES = ((128, 50), (128, 200), (64, 100), (256, 100))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cells", nargs="*", metavar="CELL", help="cell names (see `cellsearch list`)")
    parser.add_argument("--all", action="store_true", help="every published cell on the standard grid")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden size(s) (default 128)")
    parser.add_argument("--seq", type=int, nargs="+", default=None, help="sequence length(s) (default 100)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per model (median; default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--max-load", type=float, default=0.25,
                        help="discard timing rounds in which other processes kept more than this many CPUs "
                             "busy (0: keep every round; default 0.25)")
    parser.add_argument("--patience", type=int, default=2,
                        help="run at most PATIENCE × repeats rounds per cell while waiting for clean ones "
                             "(default 2)")
    parser.add_argument("--reference", action="store_true",
                        help="also time each cell's reference loop (fast paths off)")
    parser.add_argument("--derived", action="store_true",
                        help="also time each cell forced onto the derived path (generated from its step)")
    parser.add_argument("--first-use", default=None, metavar="CELL",
                        help="measure the derived path's first use for CELL at the (last) hidden/seq size: "
                             "cold private cache, then warm, each in a fresh process (--all: ur_lstm)")
    parser.add_argument("--first-use-compiler", choices=("auto", "c", "inductor", "both"), default="auto",
                        help="what compiles the derived step graphs for --first-use (CELLSEARCH_DERIVED_COMPILER;"
                             " both: the C generator, then Inductor)")
    parser.add_argument("--out", default=None, help="write BENCH.md, bench.png and bench.json here")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                        help="tuned (default): glibc malloc tuned as for training (cellsearch.allocator), so "
                             "nn.LSTM runs at its best; default: glibc's defaults (nn.LSTM page-faults "
                             "its work buffers)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the results in OUT/bench.json that were measured without load and "
                             "measure only the rest (for a shared machine)")


Sizes = list[tuple[int, int]]


def _sizes(args: argparse.Namespace) -> tuple[Sizes, Sizes, Sizes]:
    """(all sizes to run, main sizes [tables, memory, reference], chart-only sizes)."""
    if args.all and args.hidden is None and args.seq is None:
        return [*MAIN_SIZES, *CHART_SIZES], list(MAIN_SIZES), list(CHART_SIZES)
    hidden, seq = args.hidden or [128], args.seq or [100]
    sizes = [(h, s) for h in hidden for s in seq]
    return sizes, sizes, []


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (for the report's header)."""
    parts = ["cellsearch", "bench", *args.cells]
    if args.all:
        parts.append("--all")
    for flag, value in (("--hidden", args.hidden), ("--seq", args.seq)):
        if value:
            parts += [flag, *map(str, value)]
    defaults = {"batch": 64, "input_size": 32, "layers": 1, "device": "cpu", "threads": 2, "repeats": 10,
                "warmup": 2, "max_load": 0.25, "patience": 2}
    for key, default in defaults.items():
        if getattr(args, key) != default:
            parts += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    flags = (("--no-memory", args.no_memory), ("--reference", args.reference), ("--derived", args.derived),
             ("--resume", args.resume))
    parts += [f for f, on in flags if on]
    if args.allocator != "tuned":
        parts += ["--allocator", args.allocator]
    if args.first_use:
        parts += ["--first-use", args.first_use]
    if args.first_use_compiler != "auto":
        parts += ["--first-use-compiler", args.first_use_compiler]
    if args.out:
        parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def _cells(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The cells to measure and the one whose derived path's first use is timed; unknown names refused."""
    from .. import registry
    from ..errors import UserError

    cells = list(args.cells)
    if args.all:
        cells = cells or registry.list_cells()
    if not cells:
        raise UserError(f"name at least one CELL or pass --all (cells: {', '.join(registry.list_cells())})")
    first_use = args.first_use or ("ur_lstm" if args.all and "ur_lstm" in registry.list_cells() else None)
    for c in cells + ([first_use] if first_use else []):
        registry.get_cell_card(c)      # unknown names fail here with "did you mean"
    return cells, first_use


def _settle(args: argparse.Namespace) -> None:
    """Check the numeric arguments and the device; set torch's threads and the allocator."""
    import torch

    from ..errors import UserError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here")
    if min(args.repeats, args.batch, args.threads, args.patience) < 1:
        raise UserError("--repeats, --batch, --threads and --patience must be >= 1")
    torch.set_num_threads(args.threads)
    if args.allocator == "tuned":
        from ..allocator import tune

        tune()


def _progress(console: Any, total: int, kept: set[int]) -> Any:
    """``progress(result)``: one line per measured (or kept) cell and size."""
    done = [0]

    def progress(r: Any) -> None:
        done[0] += 1
        if id(r) in kept:
            console.print(f"[{done[0]}/{total}] {r.cell:<13} h={r.hidden:<4} T={r.seq:<4} kept (no load)")
            return
        ref = f"  (reference loop {r.reference_ratio:.2f}×)" if r.reference_ratio else ""
        if r.derived_ratio:
            ref += f"  (derived {r.derived_ratio:.2f}×, first call {r.derived_first_s:.1f} s)"
        drop = r.extra.get("discarded_rounds", 0)
        ref += f"  [{drop} loaded rounds re-run]" if drop else ""
        mem = (f"  peak {r.peak_mb:.0f} MB vs {r.ref_peak_mb:.0f} MB"
               if r.peak_mb is not None and r.ref_peak_mb else "")
        console.print(f"[{done[0]}/{total}] {r.cell:<13} h={r.hidden:<4} T={r.seq:<4} {r.path:<9} "
                      f"{r.tokens_per_s:>10,.0f} tok/s  [bold]{r.ratio:.2f}×[/] nn.LSTM{ref}{mem}")

    return progress


def _first_use(args: argparse.Namespace, cell: str, size: tuple[int, int], info: dict[str, str]) -> None:
    """The derived path's first use (cold, then warm cache), per compiler asked for, into ``info``."""
    from .. import bench

    hidden, seq = size
    for compiler in (("c", "inductor") if args.first_use_compiler == "both" else (args.first_use_compiler,)):
        t = bench.derived_first_use(cell, hidden, seq, args.batch, args.input_size, compiler=compiler)
        what = {"c": "the C generator", "inductor": "Inductor"}.get(compiler, "C generator, else Inductor")
        info[f"derived path, first use ({cell}, hidden {hidden}, seq {seq}, {compiler})"] = (
            f"{t['cold']:.1f} s with an empty cache (once per machine: trace + compile by {what}), "
            f"{t['warm']:.1f} s after (trace + compiled code from the private cache)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .. import bench

    cells, first_use = _cells(args)
    _settle(args)
    sizes, main, chart = _sizes(args)
    info = bench.machine_info(args.device, build_time=args.all)
    console = Console()
    previous = bench.read_json(Path(args.out) / "bench.json") if args.resume and args.out else []
    if first_use:
        _first_use(args, first_use, sizes[-1] if not args.all else MAIN_SIZES[-1], info)
    console.print("[bold]cellsearch bench[/] " + ", ".join(f"{k}: {v}" for k, v in info.items()))
    results = bench.bench_cells(
        cells, sizes, batch=args.batch, input_size=args.input_size, layers=args.layers, device=args.device,
        repeats=args.repeats, warmup=args.warmup, memory_sizes=() if args.no_memory else main,
        reference_sizes=main if (args.reference or args.all) else (),
        progress=_progress(console, len(sizes) * len(cells), {id(r) for r in previous}),
        max_load=args.max_load if args.max_load > 0 else None, patience=args.patience, previous=previous,
        derived_sizes=main if (args.derived or args.all) else ())
    if args.out:
        out = Path(args.out)
        md = bench.write_markdown(results, out / "BENCH.md", info, main, command=_command_line(args))
        png = bench.write_chart(results, out / "bench.png", seq_hidden=128 if chart else None,
                                hidden_seq=100 if chart else None)
        bench.write_json(results, out / "bench.json", info)
        console.print(f"wrote {md}, {png}, {out / 'bench.json'}")
    return 0
