"""Trials per hour with 1 and with 2 ``cellsearch run`` workers on one study (issue 19; goal >= 1.8x).

The workers are started as the README's "Workers on PostgreSQL" starts them (``cellsearch run STUDY.yaml
--storage URL --quiet &``, one per worker, then ``wait``), on a throwaway PostgreSQL server
(``scripts/pgserver.py``; or ``CELLSEARCH_TEST_POSTGRES``) or, with ``--storage sqlite``, on one SQLite
file. Each worker runs one trial at a time on one torch thread (``search.n_jobs: 1``, ``train.threads:
1``), so 2 workers on a 2-core machine use both cores.

Both settings run the same work: a new study of ``--trials`` trials each round (adding, T = 100, hidden 32,
6 epochs x 50 steps, like the quickstart; four cells and a log-uniform learning rate drawn by a seeded
random sampler, which Optuna reseeds per trial number here, so trial k is the same cell and learning rate
whatever worker runs it; no pruning, no published cells, so every trial trains in full and none is a
duplicate). Rounds alternate 1, 2, 1, 2, ... workers (``--rounds`` of each) so that a drift in the
machine's load hits both. Per round: trials/hour end to end (from starting the workers to the last one
exiting, start-up included) and in steady state (trials finished between the first trial's start and
the last one's end, from the storage's timestamps), with the load average before and after. The
figures are only worth quoting when the machine is otherwise idle: a round that starts with a 1-minute
load above ``--max-load`` is marked (before each round the script waits up to ``--settle`` seconds for
the load, its own previous round's included, to fall below it).

    python scripts/throughput.py                         # PostgreSQL, 24 trials, 2 rounds of each
    python scripts/throughput.py --trials 4 --rounds 1 --steps 10 --settle 0   # a quick dry run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kill_loop import cellsearch_cmd  # noqa: E402
from pgserver import postgres  # noqa: E402


def study_file(folder: Path, name: str, trials: int, epochs: int, steps: int) -> Path:
    raw = {
        "name": name,
        "task": {"name": "adding", "seq_len": 100, "n_valid": 500},
        "space": {
            "cell": {"update": ["lstm", "gru", "mgu", "star"]},
            "train": {"lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True}},
        },
        "model": {"hidden_size": 32, "num_layers": 1},
        "train": {"epochs": epochs, "steps_per_epoch": steps, "batch_size": 64, "clip": 1.0, "seed": 0,
                  "threads": 1},
        "objective": {"metric": "val_mse", "direction": "minimize"},
        "search": {"backend": "optuna", "sampler": "random", "pruner": "none", "n_trials": trials, "n_jobs": 1,
                   "seed": 0, "enqueue_published": False},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def one_round(workers: int, url: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from cellsearch.search.storage import make_storage

    name = f"tp{workers}_{uuid.uuid4().hex[:6]}"
    path = study_file(folder, name, args.trials, args.epochs, args.steps)
    cmd = [*cellsearch_cmd(), "run", str(path), "--storage", url, "--quiet"]
    settle_end = time.monotonic() + args.settle
    while load1() > args.max_load and time.monotonic() < settle_end:  # the previous round's load decays
        time.sleep(5)
    before = load1()
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(workers)]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.monotonic() - start
    after = load1()
    codes = [p.returncode for p in procs]
    trials = optuna.load_study(study_name=name, storage=make_storage(url, create=False)).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    steady = (last - first).total_seconds()
    pids = {t.user_attrs.get("worker", {}).get("pid") for t in done}
    record = {
        "workers": workers, "trials": len(done), "wall_s": round(wall, 1), "steady_s": round(steady, 1),
        "per_hour": round(len(done) / wall * 3600), "steady_per_hour": round(len(done) / steady * 3600),
        "mean_trial_s": round(statistics.mean(t.user_attrs.get("seconds", 0.0) for t in done), 2),
        "load_before": before, "load_after": after, "exit_codes": codes, "worker_pids_used": len(pids),
        "command": " ".join(cmd),
    }
    problems = []
    if any(codes) or len(done) != args.trials:
        problems.append(f"exit codes {codes}, {len(done)} of {args.trials} complete: {outputs}")
    if before > args.max_load:
        problems.append(f"load {before} > {args.max_load} at the start: not for quoting")
    record["problems"] = problems
    return record


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| round | workers | trials | wall (s) | trials/hour | steady trials/hour | mean trial (s) | "
             "load before / after | note |", "|" + "---|" * 9]
    for i, r in enumerate(records, 1):
        note = "; ".join(r["problems"]) or "ok"
        lines.append(f"| {i} | {r['workers']} | {r['trials']} | {r['wall_s']} | {r['per_hour']} | "
                     f"{r['steady_per_hour']} | {r['mean_trial_s']} | {r['load_before']} / {r['load_after']} | "
                     f"{note} |")
    by = {w: [r for r in records if r["workers"] == w] for w in (1, 2)}
    if by[1] and by[2]:
        one = statistics.median(r["per_hour"] for r in by[1])
        two = statistics.median(r["per_hour"] for r in by[2])
        s1 = statistics.median(r["steady_per_hour"] for r in by[1])
        s2 = statistics.median(r["steady_per_hour"] for r in by[2])
        lines.append(f"\nmedian trials/hour: 1 worker {one:.0f}, 2 workers {two:.0f} (**{two / one:.2f}x**); "
                     f"steady state {s1:.0f} vs {s2:.0f} ({s2 / s1:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--trials", type=int, default=24, help="trials per round (the same work for 1 and 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each setting, alternating")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50, help="training steps per epoch")
    parser.add_argument("--max-load", type=float, default=0.5, help="a round starting above is marked")
    parser.add_argument("--settle", type=float, default=240,
                        help="seconds to wait at most, before each round, for the load to fall below --max-load")
    parser.add_argument("--out", type=Path, default=None, help="write the table and JSON records here")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="cs-throughput-", dir="/tmp"))
    records = []
    try:
        with postgres("cellsearch_throughput") if args.storage == "postgresql" else nullcontext(None) as pg:
            for _ in range(args.rounds):
                for workers in (1, 2):
                    url = pg or f"sqlite:///{folder / f'study{len(records)}.db'}"
                    records.append(one_round(workers, url, folder, args))
                    print(json.dumps({k: v for k, v in records[-1].items() if k != "command"}), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"worker command: {records[0]['command'] if records else '?'} (x1, then x2 in parallel)")
    print(f"machine: {os.cpu_count()} CPUs; storage {args.storage}")
    text = table(records)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    return 0 if records and not any(r["problems"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
