"""Tasks (filled by the tasks module)."""
