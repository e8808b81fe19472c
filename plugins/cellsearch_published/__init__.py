"""The published cells, as fixed points of the cellsearch search space.

This package is written exactly as a third-party plugin would be: it depends only on cellsearch's public
spec and card types and is registered through the ``cellsearch.cells`` entry points of the root
pyproject.toml. Equations and numbers come from PRIMITIVES.md.
"""
