"""A template third-party cellsearch plugin: the ``ur_star`` cell and the ``hard_sigmoid`` gate primitive.

Nothing is registered by importing this package: cellsearch finds both through the entry points in
pyproject.toml when its registry is first read.
"""

from __future__ import annotations

__version__ = "0.1.0"
