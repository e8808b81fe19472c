"""``cellsearch confirm STUDY --top K --seeds S``: retrain a study's top trials with new seeds.

Ranks the top-K distinct completed trials of the study by the mean of the objective metric over S new
seeds, with 95 % Student-t confidence intervals, so that a winner is not a lucky seed. Prints the ranked
table and writes ``confirm.csv`` / ``confirm.md`` (default folder ``runs/<study>/confirm/``). Killed or
crashed half-way, the same command retrains only what was not finished (``--fresh`` starts over). See
:mod:`cellsearch.reproduce.confirm`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HELP = "retrain a study's top trials with new seeds; rank by mean ± 95 % CI"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="the study file (YAML) the study was run from")
    parser.add_argument("--top", type=int, default=3, help="how many of the best distinct trials (default 3)")
    parser.add_argument("--seeds", type=int, default=3, help="new seeds per trial (default 3)")
    parser.add_argument("--metric", default=None, help="metric to rank by (default: the study's first objective)")
    parser.add_argument("--storage", default=None, help="storage URL (default: the study's)")
    parser.add_argument("--first-seed", type=int, default=None,
                        help="first new seed (default 1000, or past the largest seed the trials used)")
    parser.add_argument("--workers", type=int, default=1, help="retraining processes in parallel (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/<study>/confirm)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: discard what an interrupted run of the same command left to resume")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ..errors import UserError
    from ..reproduce.confirm import confirm, table, verdict

    for name in ("top", "seeds", "workers"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    console = Console()
    done = [0]

    def on_done(result: Any) -> None:
        done[0] += 1
        if not sys.stdout.isatty():
            print(f"[confirm] {done[0]} retraining run(s) done", flush=True)

    with console.status(f"retraining the top {args.top} trials with {args.seeds} new seeds"):
        result = confirm(args.study, args.top, args.seeds, args.metric, args.storage, args.first_seed,
                         args.workers, args.out, on_done, args.fresh)
    header, rows = table(result)
    out = Table(title=f"{result.study}: top {len(result.ranked)} trials, {len(result.seeds)} new seeds "
                f"({result.metric}, {result.direction})")
    for col in header:
        out.add_column(col, justify="left" if col in ("candidate", "per seed") else "right")
    for row in rows:
        out.add_row(*(str(c) for c in row))
    console.print(out)
    console.print(verdict(result))
    console.print(f"wrote {', '.join(str(p) for p in result.files)}", markup=False)
    return 0
