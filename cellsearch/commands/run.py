"""``cellsearch run STUDY.yaml`` (and ``resume``): run or continue a study.

    cellsearch run studies/quickstart.yaml [--n-trials N] [--backend optuna|ray] [--storage URL]
                   [--timeout S] [--n-jobs N] [--set a.b=v ...] [--plain | --quiet]

Everything is validated before anything runs; a mistake prints one line and exits with status 2.
Running the same study again continues it (completed trials kept, the budget completed).
"""

from __future__ import annotations

import argparse

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
    parser.add_argument(
        "--force-continue",
        action="store_true",
        help="continue the stored study although its training settings or model size changed",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true", help="one line per trial, no live panel")
    mode.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace) -> int:
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
