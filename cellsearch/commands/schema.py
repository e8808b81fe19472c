"""``cellsearch schema [study|space] [--out DIR]``: the JSON Schema of the study or space file.

Generated from the config classes (:mod:`cellsearch.config_schema`), with the names of every registered
task, cell and primitive (plugins included) offered for completion. The schemas of the built-in names ship
with the package (``cellsearch/schema/``); point yaml-language-server at one with a first line
``# yaml-language-server: $schema=PATH``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "print the JSON Schema of the study (or space) file, for editors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", nargs="?", default="study", choices=("study", "space"))
    parser.add_argument("--out", default=None, help="write study.schema.json and space.schema.json into DIR")
    parser.add_argument("--builtin", action="store_true", help="only the built-in names (the shipped schema)")


def run(args: argparse.Namespace) -> int:
    from ..config_schema import SCHEMA_FILES, schemas

    files = schemas(builtin_only=args.builtin)
    if args.out is None:
        print(files[SCHEMA_FILES[args.which]], end="")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        print(f"wrote {out / name}")
    json.loads(files[SCHEMA_FILES["study"]])  # always valid JSON
    return 0
