"""Shared test setup: one torch thread per xdist worker (two workers on a 2-core CI machine)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# the tests were written for one trial at a time: plan for one core unless a test asks for more
# (cellsearch.resources; tests/test_resources.py runs a study two trials at once)
os.environ.setdefault("CELLSEARCH_CORES", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
