"""The template third-party plugin (plugins/template), pip-installed for real into a temporary target (the
project venv is untouched): its cell and its gate primitive register through entry points and train."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cellsearch as cs

TEMPLATE = Path(__file__).resolve().parents[1] / "plugins" / "template"

_SCRIPT = """
import json, torch, cellsearch as cs
from cellsearch import registry
report = {"errors": [str(e) for e in cs.plugin_errors()], "cells": cs.list_cells(),
          "gates": cs.list_primitives("gate"), "origin_cell": registry.origin_of("cell", "ur_star"),
          "origin_gate": registry.origin_of("primitive", "hard_sigmoid", "gate"),
          "formula": registry.get_primitive("gate", "hard_sigmoid").formula(), "steps": {}}
torch.manual_seed(0)
for label, model in [("ur_star", cs.create_rnn("ur_star", 3, 8, num_layers=2)),
                     ("star+hard_sigmoid", cs.create_rnn("star", 3, 8, gate="hard_sigmoid")),
                     ("lstm+hard_sigmoid", cs.create_rnn("lstm", 3, 8, gate="hard_sigmoid"))]:
    head = torch.nn.Linear(8, 1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    x, y = torch.randn(4, 6, 3), torch.randn(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.mse_loss(head(model(x)[0][:, -1]), y)
    opt.zero_grad(); loss.backward(); opt.step()
    moved = all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    report["steps"][label] = {"loss": float(loss), "moved": moved, "params": cs.count_parameters(model)}
print(json.dumps(report))
"""


@pytest.mark.xdist_group("pip")
def test_template_plugin_installs_registers_and_trains(tmp_path: Path) -> None:
    """`pip install --target` of plugins/template (a copy, so the source tree stays clean) makes `ur_star`
    appear in list_cells() and `hard_sigmoid` in list_primitives("gate") with the template's distribution as
    origin; both train one optimizer step (finite loss, every parameter moves)."""
    assert "ur_star" not in cs.list_cells()  # only the installed copy registers it
    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(TEMPLATE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--no-cache-dir", "-q", "--target", str(site), str(src)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    assert list(site.glob("cellsearch_template-*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert "ur_star" in report["cells"] and set(cs.list_cells()) <= set(report["cells"])
    assert "hard_sigmoid" in report["gates"]
    for origin in (report["origin_cell"], report["origin_gate"]):
        assert "cellsearch-template" in origin.replace("_", "-")
    assert report["formula"].startswith("g = clip(")
    assert report["steps"]["ur_star"]["params"] == _ur_star_params(3, 8) + _ur_star_params(8, 8)
    for label, step in report["steps"].items():
        assert step["moved"], f"{label}: a parameter did not move after one step"
        assert math.isfinite(step["loss"]), label


def _ur_star_params(d: int, n: int) -> int:
    """STAR's n(2d + n + 2) plus the refine block's n(d + n + 1)."""
    return n * (2 * d + n + 2) + n * (d + n + 1)
