"""The house's layers (ARCHITECTURE.md; issue 11): the command line sits on top, nothing imports it.

Statically checked over the package source (every ``import`` and ``from … import``, at module level
or inside functions), so a back-edge fails here before it becomes an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cellsearch

ROOT = Path(cellsearch.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the cellsearch modules ``path`` imports."""
    package = ".".join(("cellsearch", *path.relative_to(ROOT).with_suffix("").parts))
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {n for n in out if n.startswith("cellsearch")}


def test_nothing_below_the_command_line_imports_it() -> None:
    top = {"cellsearch.cli", "cellsearch.commands", "cellsearch.__main__"}
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("commands", "cli.py", "__main__.py"):
            continue
        for name in _imports(path):
            if any(name == t or name.startswith(t + ".") for t in top):
                offenders.append(f"{rel}: {name}")
    assert not offenders, offenders


def test_the_errors_module_is_a_leaf() -> None:
    assert _imports(ROOT / "errors.py") == set()
