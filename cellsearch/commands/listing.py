"""``cellsearch list [KIND] [PATTERN]``: rich tables of cells, primitives, tasks and spaces.

``cellsearch list`` shows every kind; ``cellsearch list '*lstm*'`` filters every kind by a wildcard, as
timm's ``list_models('*lstm*')`` does; ``cellsearch list cells|primitives|tasks|spaces [PATTERN]`` shows one
kind. A pattern without wildcards matches names that contain it (``list lstm`` = ``list '*lstm*'``).
Spaces are the ``*.yaml`` files of ``./spaces`` and the built-in spaces shipped with the package.
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import registry
from ..config import builtin_spaces_dir
from ..spec import CELL_ROLES

HELP = "list cells, primitives, tasks or spaces (all kinds, or one; a wildcard pattern filters)"
WHAT = ("cells", "primitives", "tasks", "spaces")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default=None, metavar="KIND|PATTERN",
                        help=f"one of {', '.join(WHAT)} (default: all), or a pattern over every kind")
    parser.add_argument("pattern", nargs="?", default=None,
                        help="wildcard, e.g. '*lstm*' or 'gate/*'; a plain word matches names containing it")
    parser.add_argument("--role", default=None, help="only primitives of this role")


def matcher(pattern: str | None) -> Callable[[Iterable[str]], bool]:
    """A predicate: does any of the given names match ``pattern`` (case-insensitive wildcard)?"""
    if not pattern:
        return lambda names: True
    pat = pattern.lower()
    if not any(c in pat for c in "*?["):
        pat = f"*{pat}*"
    return lambda names: any(fnmatch.fnmatchcase(n.lower(), pat) for n in names)


def _primitives(match: Callable[[Iterable[str]], bool], role: str | None) -> Table:
    from ..primitives.base import formula_of

    table = Table("role", "name", "formula", "origin", title="primitives")
    for full in registry.list_primitives(role, None):
        r, name = (role, full) if role else full.split("/", 1)
        if not match([f"{r}/{name}", name]):
            continue
        cls = registry.get_primitive(r, name)
        table.add_row(r, name, formula_of(cls), registry.origin_of("primitive", name, r))
    return table


def _cells(match: Callable[[Iterable[str]], bool], role: str | None) -> Table:
    table = Table("cell", "formula", "spec", "origin", title="cells")
    for name in registry.list_cells():
        if not match([name]):
            continue
        card = registry.get_cell_card(name)
        spec = card.spec
        brief = "/".join(str(getattr(spec, role)) for role in CELL_ROLES)
        if card.depth.transition != "none":
            brief += f" +{card.depth.transition}"
        table.add_row(name, card.formula, brief, registry.origin_of("cell", name))
    return table


def _tasks(match: Callable[[Iterable[str]], bool], role: str | None) -> Table:
    table = Table("task", "summary", "origin", title="tasks")
    for name in registry.list_tasks():
        if not match([name]):
            continue
        task = registry.get_task(name)
        doc = (task.__doc__ or "").strip().splitlines()
        table.add_row(name, doc[0] if doc else "", registry.origin_of("task", name))
    return table


def space_files() -> dict[str, Path]:
    """Space name -> file: ``./spaces/*.yaml`` first, then the built-in spaces not shadowed by them."""
    out: dict[str, Path] = {}
    folders = [Path("spaces"), builtin_spaces_dir()]
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            out.setdefault(path.stem, path)
    return out


def _spaces(match: Callable[[Iterable[str]], bool], role: str | None) -> Table:
    table = Table("space", "path", title="spaces")
    builtin = builtin_spaces_dir()
    for name, path in space_files().items():
        if match([name, path.name]):
            shown = f"{path} (built-in)" if builtin and path.parent.resolve() == builtin.resolve() else str(path)
            table.add_row(name, shown)
    return table


TABLES = {"cells": _cells, "primitives": _primitives, "tasks": _tasks, "spaces": _spaces}


def run(args: argparse.Namespace) -> int:
    kinds, pattern = list(WHAT), args.what
    if args.what in WHAT:
        kinds, pattern = [args.what], args.pattern
    elif args.pattern is not None:
        from ..errors import UserError

        raise UserError(
            f"unknown kind {args.what!r}; {registry.did_you_mean(args.what, WHAT)}expected one of {list(WHAT)} "
            f"followed by a pattern, or a single pattern over every kind"
        )
    if args.role and kinds != ["primitives"]:
        kinds = ["primitives"]
    console = Console()
    match = matcher(pattern)
    shown = 0
    for kind in kinds:
        table = TABLES[kind](match, args.role)
        if table.row_count or len(kinds) == 1:
            console.print(table)
            shown += table.row_count
        if kind == "spaces" and not table.row_count and not pattern:
            console.print("no space files found in ./spaces or in the installed package; a study can name any "
                          "space file by path, or define its space inline (see `cellsearch schema`)", markup=False)
    if not shown and pattern:
        console.print(f"nothing matches {pattern!r} (names: see `cellsearch list`)", markup=False)
    # plugins that failed to load were reported once, as they loaded (registry.PluginLoadWarning)
    return 0
