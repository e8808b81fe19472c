"""``cellsearch validate STUDY.yaml...``: check study files without running anything.

Each file is read and validated exactly as ``cellsearch run`` would (``--set`` overrides included), and
run's preflight follows: the task's data files are read (missing, empty or corrupt ones are found here,
not on a cluster) and the storage URL checked (a local file could be created; a server is not contacted).
Exit 0 with a one-line summary per file, or exit 2 with the same one-line error ``run`` prints. Nothing is
written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "check study files (as run would) without running them; nothing is written"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("studies", nargs="+", metavar="STUDY", help="study files (studies/*.yaml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study key, e.g. --set train.epochs=1 (values are YAML)")


def summary(config: Any) -> str:
    """One line: what the study searches, on what, toward which objective, with which budget."""
    from ..config.urls import mask_url

    what = f"cells {', '.join(v.label for v in config.cells)}" if config.cells else f"space {config.space.source}"
    objective = ", ".join(f"{o.metric} ({o.direction})" for o in config.objective)
    s = config.search
    budget = f"{s.n_trials} trials" if s.n_trials else f"{s.timeout:g} s"
    return (f"study {config.name!r}: task {config.task.name}, {what}; objective {objective}; "
            f"{s.backend}/{s.sampler}/{s.pruner}, {budget}; storage {mask_url(config.storage_url)}")


def _preflight(config: Any) -> None:
    """Run's preflight without a server: the storage URL and local file, the task's data."""
    from ..search.preflight import check_storage, check_task_data
    from ..tasks import make_task

    check_storage(config, config.storage_url)
    check_task_data(config, make_task(config.task.to_dict()))


def run(args: argparse.Namespace) -> int:
    from ..config.urls import one_line
    from ..errors import UserError
    from ..registry import RegistryError
    from ..search import load_config
    from ..spec import SpecError

    failed = 0
    for path in args.studies:
        try:
            config = load_config(path, args.sets)
            _preflight(config)
        except (UserError, SpecError, RegistryError) as exc:
            print(f"cellsearch validate: error: {one_line(exc)}", file=sys.stderr)
            failed += 1
            continue
        print(f"ok: {path}: {summary(config)}")
    return 2 if failed else 0
