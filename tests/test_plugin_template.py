"""The template third-party plugin (plugins/template), pip-installed for real into a temporary target (the
project venv is untouched): its cells and its gate, update and saturation primitives register through
entry points, train, and export to a standalone module that runs where cellsearch cannot be imported (the
exported cell with the plugin's depth primitive switched on)."""

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
import json, sys, torch, cellsearch as cs
from cellsearch import registry
report = {"errors": [str(e) for e in cs.plugin_errors()], "cells": cs.list_cells(),
          "depth": cs.list_primitives("depth"),
          "gates": cs.list_primitives("gate"), "origin_cell": registry.origin_of("cell", "ur_star"),
          "origin_gate": registry.origin_of("primitive", "hard_sigmoid", "gate"),
          "formula": registry.get_primitive("gate", "hard_sigmoid").formula(), "steps": {}}
torch.manual_seed(0)
for label, model in [("ur_star", cs.create_rnn("ur_star", 3, 8, num_layers=2)),
                     ("star+hard_sigmoid", cs.create_rnn(cs.CellSpec(update="star", gate="hard_sigmoid"), 3, 8)),
                     ("lstm+hard_sigmoid", cs.create_rnn("lstm", 3, 8, gate="hard_sigmoid")),
                     ("janet_softsign", cs.create_rnn("janet_softsign", 3, 8, num_layers=2)),
                     ("janet+ur", cs.create_rnn("janet_softsign", 3, 8, gate="ur", saturation="identity")),
                     ("lstm+layer_scale", cs.create_rnn("lstm", 3, 8, num_layers=2,
                                                        depth={"extra": {"layer_scale": {"gain": 0.5}}}))]:
    head = torch.nn.Linear(8, 1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    x, y = torch.randn(4, 6, 3), torch.randn(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.mse_loss(head(model(x)[0][:, -1]), y)
    opt.zero_grad(); loss.backward(); opt.step()
    moved = all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    report["steps"][label] = {"loss": float(loss), "moved": moved, "params": cs.count_parameters(model)}
from cellsearch.exporter import export_model
from cellsearch.model import SequenceModel
from safetensors.torch import save_file
spec = cs.get_cell("janet_softsign").model_spec(8, 2, input_size=3, output_size=2)
spec = spec.replace(depth=spec.depth.replace(extra={"layer_scale": {}}))  # the plugin's depth primitive too
model = SequenceModel(spec, "all").eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 7, 3)
    y = model(x)[0]
export_model(model, sys.argv[1], name="janet_softsign", published="janet_softsign")
save_file({"x": x, "y": y.contiguous()}, sys.argv[1] + "/io.safetensors")
print(json.dumps(report))
"""

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])  # a fake 'cellsearch' that refuses to import
sys.path.insert(0, sys.argv[2])
import torch
import janet_softsign as m
model = m.load()
io = m.read_safetensors(sys.argv[2] + "/io.safetensors")
with torch.no_grad():
    y = model(io["x"])[0]
program = torch.export.export(model, (io["x"],))
print(json.dumps({"loaded": "cellsearch" in sys.modules, "diff": float((y - io["y"]).abs().max()),
                  "export_diff": float((program.module()(io["x"])[0] - y).abs().max())}))
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
    out = tmp_path / "export"
    run = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], capture_output=True, text=True, env=env,
                         timeout=180)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert "ur_star" in report["cells"] and set(cs.list_cells()) <= set(report["cells"])
    assert "hard_sigmoid" in report["gates"]
    for origin in (report["origin_cell"], report["origin_gate"]):
        assert "cellsearch-template" in origin.replace("_", "-")
    assert report["formula"].startswith("g = clip(")
    assert report["steps"]["ur_star"]["params"] == _ur_star_params(3, 8) + _ur_star_params(8, 8)
    assert report["steps"]["janet_softsign"]["params"] == 2 * 8 * (3 + 8 + 1) + 2 * 8 * (8 + 8 + 1)
    assert "layer_scale" in report["depth"]  # a gain per layer and channel: 2 layers × 8
    assert report["steps"]["lstm+layer_scale"]["params"] == 4 * 8 * (3 + 8 + 1) + 4 * 8 * (8 + 8 + 1) + 2 * 8
    for label, step in report["steps"].items():
        assert step["moved"], f"{label}: a parameter did not move after one step"
        assert math.isfinite(step["loss"]), label
    _check_standalone_export(tmp_path, out)


def _check_standalone_export(tmp_path: Path, out: Path) -> None:
    """The plugin cell's export, with only torch importable: equal to the in-framework model and
    accepted by torch.export.export."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "cellsearch.py").write_text("raise ImportError('cellsearch must not be imported by an export')\n")
    child = subprocess.run([sys.executable, "-c", _CHILD, str(fake), str(out)], capture_output=True, text=True,
                           timeout=180)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert not result["loaded"]
    assert result["diff"] < 1e-6 and result["export_diff"] < 1e-6


def _ur_star_params(d: int, n: int) -> int:
    """STAR's n(2d + n + 2) plus the refine block's n(d + n + 1)."""
    return n * (2 * d + n + 2) + n * (d + n + 1)
