"""A template third-party cellsearch plugin.

Cells ``ur_star`` and ``janet_softsign``; primitives ``hard_sigmoid`` (gate), ``template_janet`` (update) and
``softsign`` (saturation). Nothing is registered by importing this package: cellsearch finds them through
the entry points in pyproject.toml when its registry is first read. Each primitive is one file written
against the public contract only; its fast path and its standalone export are derived from it.
"""

from __future__ import annotations

__version__ = "0.1.0"
