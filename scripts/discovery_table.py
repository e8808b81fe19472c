"""Build (or continue) the tabular benchmark of docs/DISCOVERY.md: every compatible cell of
spaces/gating.yaml on the adding problem (T = 30), hidden size 16, 300 Adam steps, seeds 0 and 1.

    nice -n 19 .venv/bin/python scripts/discovery_table.py            # resumable: skips rows already done
    .venv/bin/python scripts/discovery_table.py --limit 4 --out /tmp/t.csv   # a few rows elsewhere

Rows go to benchmarks/gating_adding30.csv (one per cell and seed, appended as each job finishes), the
definition, torch version and code versions to benchmarks/gating_adding30.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the table's definition: a study mapping, checked like any study (cellsearch.config.study_from_mapping)
STUDY = {
    "name": "discovery_table",
    "task": {"name": "adding", "seq_len": 30, "n_valid": 500, "n_test": 100, "data_seed": 0},
    "space": "spaces/gating.yaml",
    "model": {"hidden_size": 16, "num_layers": 1},
    "train": {"epochs": 6, "steps_per_epoch": 50, "batch_size": 32, "lr": 1.0e-2, "clip": 1.0,
              "threads": 1},
    "objective": {"metric": "val_mse", "direction": "minimize"},
}
SEEDS = (0, 1)
TABLE = ROOT / "benchmarks" / "gating_adding30.csv"


def main(argv: list[str] | None = None) -> int:
    from cellsearch.search.tabular import TableDefinition, build_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TABLE, help=f"table CSV (default {TABLE.relative_to(ROOT)})")
    parser.add_argument("--workers", type=int, default=1, help="training processes (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many jobs this time")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start, count = time.perf_counter(), [0]

    def on_row(row: dict) -> None:
        count[0] += 1
        print(f"[{time.perf_counter() - start:7.0f} s] {count[0]:4d} {row['key']} seed {row['seed']}: "
              f"{row['metric']} {row['value']} ({row['seconds']} s)", flush=True)

    added = build_table(TableDefinition(STUDY, SEEDS, str(ROOT)), args.out, args.workers, on_row, args.limit)
    print(f"{added} row(s) added to {args.out} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
