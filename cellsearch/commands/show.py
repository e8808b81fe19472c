"""``cellsearch show CELL``: spec, equations, citation, parameter count."""

from __future__ import annotations

import argparse

from rich.console import Console

HELP = "a cell's spec, equations, citation and parameter count"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cell")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from ..api import count_parameters, create_rnn, get_cell

    card = get_cell(args.cell)
    console = Console()
    console.rule(f"[bold]{card.name}")
    console.print(f"[bold]{card.formula}[/]\n")
    console.print(card.equations, markup=False)
    console.print(f"\n[bold]citation[/] {card.citation}")
    console.print("\n[bold]spec[/]")
    console.print(card.spec.to_yaml().rstrip(), markup=False)
    if card.depth != type(card.depth)():
        console.print("[bold]depth[/]")
        console.print(card.depth.to_yaml().rstrip(), markup=False)
    rnn = create_rnn(args.cell, args.input_size, args.hidden, num_layers=args.layers)
    console.print(f"\n[bold]parameters[/] {count_parameters(rnn):,} at d={args.input_size}, n={args.hidden}, "
                  f"layers={rnn.num_layers}")
    for key, value in card.reported.items():
        console.print(f"[bold]reported[/] {key}: {value}")
    if card.notes:
        console.print(f"\n{card.notes}", markup=False)
    return 0
