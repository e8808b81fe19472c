"""``cellsearch list [primitives|cells|tasks|spaces] [PATTERN]``: rich tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import registry

HELP = "list primitives, cells, tasks or spaces"
WHAT = ("primitives", "cells", "tasks", "spaces")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="cells", choices=WHAT)
    parser.add_argument("pattern", nargs="?", default=None, help="wildcard, e.g. '*lstm' or 'gate/*'")
    parser.add_argument("--role", default=None, help="only primitives of this role")


def _primitives(args: argparse.Namespace) -> Table:
    from ..primitives.base import formula_of

    table = Table("role", "name", "formula", "origin", title="primitives")
    for full in registry.list_primitives(args.role, None):
        role, name = (args.role, full) if args.role else full.split("/", 1)
        if args.pattern and not registry._filter([full, name], args.pattern):
            continue
        cls = registry.get_primitive(role, name)
        table.add_row(role, name, formula_of(cls), registry.origin_of("primitive", name, role))
    return table


def _cells(args: argparse.Namespace) -> Table:
    table = Table("cell", "formula", "spec", "origin", title="cells")
    for name in registry.list_cells(args.pattern):
        card = registry.get_cell_card(name)
        spec = card.spec
        brief = f"{spec.update}/{spec.gate}/{spec.init}/{spec.saturation}/{spec.recurrence}"
        if card.depth.transition != "none":
            brief += f" +{card.depth.transition}"
        table.add_row(name, card.formula, brief, registry.origin_of("cell", name))
    return table


def _tasks(args: argparse.Namespace) -> Table:
    table = Table("task", "summary", "origin", title="tasks")
    for name in registry.list_tasks(args.pattern):
        task = registry.get_task(name)
        doc = (task.__doc__ or "").strip().splitlines()
        table.add_row(name, doc[0] if doc else "", registry.origin_of("task", name))
    return table


def _spaces(args: argparse.Namespace) -> Table:
    table = Table("space", "path", title="spaces")
    for path in sorted(Path("spaces").glob(args.pattern or "*.yaml")):
        table.add_row(path.stem, str(path))
    return table


def run(args: argparse.Namespace) -> int:
    console = Console()
    console.print({"primitives": _primitives, "cells": _cells, "tasks": _tasks, "spaces": _spaces}[args.what](args))
    for err in registry.plugin_errors():
        console.print(f"[yellow]warning:[/] {err}")
    return 0
