"""The ``cellsearch`` command line: one module per command under :mod:`cellsearch.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``cellsearch list`` never loads Optuna or Ray.
User mistakes (:class:`UserError`, :class:`~cellsearch.spec.SpecError`, unknown names) print one line and
exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .config.urls import one_line
from .errors import RunStopped, UserError
from .registry import RegistryError
from .spec import SpecError

__all__ = ["main", "UserError", "RunStopped", "COMMANDS"]

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("cellsearch.commands.listing", "list cells, primitives, tasks and spaces ('*lstm*' filters all)"),
    "show": ("cellsearch.commands.show", "a cell's spec, equations, citation and parameter count"),
    "run": ("cellsearch.commands.run", "run (or continue) a study"),
    "resume": ("cellsearch.commands.run", "continue a study (same as run)"),
    "validate": ("cellsearch.commands.validate", "check study files as run would, without running them"),
    "schema": ("cellsearch.commands.schema", "JSON Schema of the study (or space) file, for editors"),
    "leaderboard": ("cellsearch.commands.leaderboard", "best trials of a study"),
    "dashboard": ("cellsearch.commands.dashboard", "open optuna-dashboard on a study's storage"),
    "export": ("cellsearch.commands.export", "export a trial as a standalone PyTorch module"),
    "plot": ("cellsearch.commands.plot", "plots of a study (PNG and HTML)"),
    "bench": ("cellsearch.commands.bench", "tokens/s forward+backward vs torch.nn.LSTM"),
    "diagnose": ("cellsearch.commands.diagnose", "gradient-magnitude map (layer × time)"),
    "reproduce": ("cellsearch.commands.reproduce", "reproduce a seed paper's claim (table + plot)"),
    "confirm": ("cellsearch.commands.confirm", "retrain a study's top trials with new seeds; rank by mean ± CI"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellsearch", description="Search recurrent-network cells.")
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("cellsearch")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        from ._version import __version__

        return __version__


def _one_line_plugin_warnings() -> None:
    """Print a plugin that failed to load as one ``cellsearch: warning:`` line (not a file:line warning)."""
    import warnings

    from .registry import PluginLoadWarning

    show = warnings.showwarning
    if getattr(show, "_cellsearch", False):
        return

    def one_line(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, PluginLoadWarning):
            print(f"cellsearch: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    one_line._cellsearch = True  # type: ignore[attr-defined]
    warnings.showwarning = one_line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _one_line_plugin_warnings()
    if argv and argv[0] in ("--version", "-V"):
        print(f"cellsearch {version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = _parser()
        if argv and argv[0] not in ("-h", "--help"):
            from .registry import did_you_mean

            parser.print_usage(sys.stderr)
            print(f"cellsearch: error: unknown command {argv[0]!r}; {did_you_mean(argv[0], [*COMMANDS, '--version'])}"
                  f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"cellsearch: error: command {name!r} is not available in this version", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"cellsearch {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.command = name
    try:
        return int(module.run(args) or 0)
    except (UserError, SpecError, RegistryError) as exc:
        print(f"cellsearch {name}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        print(f"cellsearch {name}: stopped: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cellsearch {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
