"""``cellsearch export STUDY.yaml [--trial N] --out DIR``: a trial as a standalone PyTorch module."""

from __future__ import annotations

import argparse

from .run import add_study_arguments

HELP = "export a trial as a standalone PyTorch module"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--trial", type=int, default=None, help="trial number (default: the best)")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..exporter.study import export_trial
    from ..search import load_config
    from ..search.studies import open_study

    config = load_config(args.study, args.sets, storage=args.storage)
    study = open_study(config, args.storage, create=False)
    path = export_trial(study, config, args.out, args.trial, force=args.force)
    Console().print(
        f"exported to {path} (+ {path.with_suffix('.safetensors').name}, spec.yaml, MODEL_CARD.md)",
        markup=False,
    )
    return 0
