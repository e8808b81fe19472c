"""``cellsearch run STUDY.yaml`` (and ``resume``): run or continue a study.

    cellsearch run studies/quickstart.yaml [--n-trials N] [--backend optuna|ray] [--storage URL]
                   [--timeout S] [--n-jobs N] [--workers N] [--set a.b=v ...] [--plain | --quiet]

Everything is validated before anything runs; a mistake prints one line and exits with status 2.
Running the same study again continues it (completed trials kept, the budget completed).

``--workers N`` (Optuna backend) runs the study in N processes sharing its storage, as N ``cellsearch run``
workers would (the budget split exactly: :mod:`cellsearch.search.claims`): trials in processes, not
threads, so they neither share the interpreter nor a GPU. Each worker gets an equal share of the CPU cores
(``CELLSEARCH_CORES``) and, on a machine with GPUs, its own GPU (``CUDA_VISIBLE_DEVICES``, round robin);
this process shows the run and is worker 0.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "run (or continue) a study"


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every study command shares: the study file, --storage and --set."""
    parser.add_argument("study", help="a study file (studies/*.yaml)")
    parser.add_argument(
        "--storage", default=None, help="an Optuna storage URL (default sqlite:///runs/<name>/study.db)"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study key, e.g. --set train.epochs=1 (values are YAML)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--n-trials", type=int, default=None, help="the study's total trial budget")
    parser.add_argument("--backend", choices=("optuna", "ray"), default=None)
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    parser.add_argument("--n-jobs", type=int, default=None, help="trials in parallel (threads)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the study's storage (optuna backend; one GPU each)")
    parser.add_argument(
        "--force-continue",
        action="store_true",
        help="continue the stored study although its training settings or model size changed",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true", help="one line per trial, no live panel")
    mode.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _spawn_workers(args: argparse.Namespace) -> list[Any]:
    """Start workers 1..N-1 (``cellsearch run`` processes on the same study and storage); validates first."""
    import os
    import subprocess
    import sys

    from ..errors import UserError
    from ..resources import available_cores
    from ..search import load_config

    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected an integer >= 1")
    if args.workers == 1:   # the study is validated once, by run_study
        return []
    config = load_config(args.study, args.sets, backend=args.backend, storage=args.storage)
    if config.search.backend != "optuna":
        raise UserError("--workers runs Optuna workers; with backend ray, Ray places the trials (search.resources)")
    cores = max(1, available_cores() // args.workers)
    gpus = _gpus()
    cmd = [sys.executable, "-m", "cellsearch.cli", "run", args.study, "--quiet", "--workers", "1"]
    for flag, value in (("--storage", args.storage), ("--n-trials", args.n_trials), ("--timeout", args.timeout),
                        ("--backend", args.backend)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += [x for s in args.sets for x in ("--set", s)] + (["--force-continue"] if args.force_continue else [])
    os.environ["CELLSEARCH_CORES"] = str(cores)              # this process is worker 0
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
    procs = []
    for i in range(1, args.workers):
        env = {**os.environ, "CELLSEARCH_CORES": str(cores)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


def _gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (none without CUDA)."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        return []


def run(args: argparse.Namespace) -> int:
    procs = _spawn_workers(args)
    try:
        code = _run(args)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        codes = [p.wait() for p in procs]
    failed = [c for c in codes if c not in (0, None)]
    return code or (failed[0] if failed else 0)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..search import run_study

    display = "quiet" if args.quiet else "plain" if args.plain else "auto"
    result = run_study(
        args.study,
        set=args.sets,
        display=display,
        n_trials=args.n_trials,
        backend=args.backend,
        storage=args.storage,
        timeout=args.timeout,
        n_jobs=args.n_jobs,
        force_continue=args.force_continue,
    )
    if result.n_complete == 0 and result.n_failed > 0:
        reasons = [t.user_attrs.get("fail_reason", "?") for t in result.trials if t.state.name == "FAIL"]
        Console(stderr=True, soft_wrap=True).print(
            f"cellsearch {args.command}: no trial completed; first failure: {reasons[0]}", markup=False
        )
        return 1
    return 0
