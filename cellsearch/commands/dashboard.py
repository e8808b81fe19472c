"""``cellsearch dashboard STUDY.yaml [--port P] [--host H]``: optuna-dashboard on the study's storage.

The storage is the one ``run`` uses (``--storage`` / ``storage:`` / ``sqlite:///runs/<name>/study.db``, a
journal file or PostgreSQL), opened read-and-write as optuna-dashboard needs (notes, trial marks), never
created: a study that was never run is a one-line error. optuna-dashboard is an optional dependency
(``pip install 'cellsearch[dashboard]'``); without it the command says so in one line. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
from typing import Any

from .run import add_study_arguments

HELP = "open optuna-dashboard on a study's storage (pip install 'cellsearch[dashboard]')"
INSTALL = ("optuna-dashboard is not installed; install it with: pip install 'cellsearch[dashboard]' "
           "(or pip install optuna-dashboard)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only)")


def _run_server() -> Any:
    from ..errors import UserError

    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError(INSTALL) from None
    return run_server


def run(args: argparse.Namespace) -> int:
    from ..search import load_config
    from ..search.results import load_study
    from ..search.storage import make_storage
    from ..search.studies import set_metric_names

    run_server = _run_server()  # before anything is opened: a missing extra is the first thing to say
    config = load_config(args.study, args.sets, storage=args.storage)
    result = load_study(config, storage=args.storage)
    set_metric_names(result.study, config)  # a study made before metric names were set gets them now
    url = f"http://{args.host}:{args.port}/dashboard/"
    print(f"optuna-dashboard for study {config.name!r} ({result.storage_url}) at {url}  (Ctrl-C stops it)",
          flush=True)
    run_server(make_storage(result.storage_url, create=False), host=args.host, port=args.port)
    return 0
