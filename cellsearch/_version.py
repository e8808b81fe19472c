"""The package version, below every layer (the root package, the CLI and exported files read it)."""

__version__ = "0.1.0"
