"""One module per CLI command (see :mod:`cellsearch.cli`)."""
