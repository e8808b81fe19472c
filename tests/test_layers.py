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


REPO = ROOT.parent


def test_the_floors_hold() -> None:
    """The layer contract of pyproject.toml ([tool.importlinter]): config -> registry -> primitives/tasks ->
    cells -> model/train -> search -> export/bench/reproduce -> commands/cli, every import pointing down."""
    import subprocess
    import sys

    tool = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(tool), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def test_no_import_cycles_between_the_modules_of_the_house() -> None:
    """No cycle among cellsearch's top-level modules and packages (imports inside functions included)."""
    import grimp

    graph = grimp.build_graph("cellsearch", include_external_packages=False)

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if top(module) != top(imported) and top(module) != "cellsearch":
                edges.setdefault(top(module), set()).add(top(imported))
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                cycles.append(" -> ".join([*path, nxt]))
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, cycles


def test_reading_every_shipped_study_imports_no_torch_optuna_or_ray() -> None:
    """The config floor reads a study file (and the space files it names) without torch, Optuna or Ray."""
    import subprocess
    import sys

    code = ("import sys, glob, cellsearch.config as c\n"
            "for path in sorted(glob.glob('studies/*.yaml')):\n"
            "    c.load_study(path)\n"
            "print(sorted(m for m in ('torch', 'optuna', 'ray', 'numpy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
