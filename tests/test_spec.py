"""The genome: YAML/JSON round-trip, stable digests (also across processes), validation messages that name
the bad field and the allowed values, and a torch-free spec module."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import cellsearch as cs
from cellsearch import CellSpec, DepthSpec, ModelSpec, SpecError

CELLS = cs.list_cells()
ROOT = Path(__file__).resolve().parents[1]


def _model(name: str) -> ModelSpec:
    return cs.get_cell(name).model_spec(hidden_size=32, num_layers=2, input_size=3, output_size=4)


@pytest.mark.parametrize("name", CELLS)
def test_spec_round_trips_through_yaml_and_json(name: str) -> None:
    """A cell's CellSpec and ModelSpec come back equal (same digest) from YAML and from JSON, and the YAML
    is plain data that yaml.safe_load reads."""
    card = cs.get_cell(name)
    for spec in (card.spec, card.depth, _model(name)):
        cls = type(spec)
        for back in (cls.from_yaml(spec.to_yaml()), cls.from_json(spec.to_json())):
            assert back == spec and back.digest() == spec.digest()
        assert yaml.safe_load(spec.to_yaml()) == spec.to_dict()


@pytest.mark.parametrize("name", CELLS)
def test_digest_is_sensitive_to_every_role(name: str) -> None:
    """Changing a role, an option or a depth field changes the digest; equal specs built differently share it."""
    spec = cs.get_cell(name).spec
    assert spec.replace(gate="other").digest() != spec.digest()
    assert spec.replace(options={**spec.options, "init": {"t_max": 9}}).digest() != spec.digest()
    assert CellSpec.from_dict(dict(reversed(list(spec.to_dict().items())))).digest() == spec.digest()
    model = _model(name)
    assert model.replace(depth=model.depth.replace(layers=3)).digest() != model.digest()


_DIGEST_SCRIPT = """
import json, cellsearch as cs
print(json.dumps({n: [cs.get_cell(n).spec.digest(),
                      cs.get_cell(n).model_spec(hidden_size=32, num_layers=2, input_size=3, output_size=4).digest()]
                  for n in cs.list_cells()}))
"""


def test_digest_is_stable_across_processes() -> None:
    """A fresh interpreter (another hash seed) computes the same digests for every registered cell."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    mine = {n: [cs.get_cell(n).spec.digest(), _model(n).digest()] for n in CELLS}
    assert theirs == mine


def test_digest_is_pinned() -> None:
    """Digests are pinned (sha256 of canonical JSON): a change to the canonical form or the hashing would
    orphan every stored trial."""
    assert CellSpec().to_json() == ('{"gate":"sigmoid","init":"default","options":{},"recurrence":"free",'
                                    '"saturation":"tanh","update":"lstm"}')
    assert CellSpec().digest() == "76986ce410e1b7ea"
    assert CellSpec(update="lstm_tied", gate="ur", init="ugi").digest() == "54e1b079832aa904"
    # issue 16: the gate-bias inits moved to the role ``bias``; the new form keeps the old digest
    assert CellSpec(update="lstm_tied", gate="ur", bias="ugi").digest() == "54e1b079832aa904"
    assert CellSpec(update="lstm", bias="chrono", options={"bias": {"t_max": 30}}).digest() == \
        "00f46580d4f214e3"


def test_old_single_init_is_read_as_the_new_roles() -> None:
    """A spec from before issue 16 names a gate-bias init under ``init``: it is read as ``bias`` (options
    moved; chrono keeps the T_max 784 it had), and equals the new form."""
    old = CellSpec.from_yaml("update: lstm\ninit: chrono\n")
    assert (old.init, old.bias, old.options_for("bias")) == ("default", "chrono", {"t_max": 784.0})
    assert CellSpec(update="gru", init="ugi") == CellSpec(update="gru", bias="ugi")
    assert CellSpec(update="lstm", init="constant", options={"init": {"value": 2.0}}).options_for("bias") == \
        {"value": 2.0}
    assert CellSpec(update="star", init="orthogonal").bias == "default"
    with pytest.raises(SpecError, match="gate-bias init"):
        CellSpec(update="lstm", init="ugi", bias="chrono")


def test_specs_are_frozen_and_hashable() -> None:
    """Specs are immutable (assignment fails) and hashable, so they can key caches and sets."""
    spec = CellSpec(update="star", options={"gate": {"gates": ["k"]}})
    with pytest.raises(AttributeError):
        spec.update = "lstm"  # type: ignore[misc]
    assert len({spec, CellSpec(update="star", options={"gate": {"gates": ["k"]}})}) == 1


@pytest.mark.parametrize(
    "build,field,allowed",
    [
        (lambda: CellSpec.from_dict({"updat": "lstm"}), "cell.updat", "update"),
        (lambda: CellSpec(update=3), "cell.update", "registered primitive"),
        (lambda: CellSpec(options={"gatee": {}}), "cell.options.gatee", "'gate'"),
        (lambda: DepthSpec(transition="wide"), "depth.transition", "'deep_shortcut'"),
        (lambda: DepthSpec(layers=0), "depth.layers", ">= 1"),
        (lambda: DepthSpec(layers=True), "depth.layers", ">= 1"),
        (lambda: DepthSpec(dropout=1.5), "depth.dropout", "[0, 1)"),
        (lambda: DepthSpec.from_dict({"layer": 2}), "depth.layer", "layers"),
        (lambda: ModelSpec(hidden_size=0), "model.hidden_size", ">= 1"),
        (lambda: ModelSpec.from_dict({"cell": {"update": "gru"}, "depth": {"residual": "yes"}}),
         "depth.residual", "true or false"),
    ],
)
def test_spec_validation_names_field_and_allowed_values(build: Any, field: str, allowed: str) -> None:
    """An invalid spec raises SpecError whose message names the field and what is allowed."""
    with pytest.raises(SpecError) as err:
        build()
    assert field in str(err.value) and allowed in str(err.value)
    assert err.value.where == field


@pytest.mark.parametrize(
    "spec,field,allowed",
    [
        (CellSpec(update="lstm", bias="chrono", options={"bias": {"tmax": 5}}), "cell.options.bias.tmax", "t_max"),
        (CellSpec(update="lstm", recurrence="orthogonal", options={"recurrence": {"method": "qr"}}),
         "cell.options.recurrence.method", "'cayley'"),
        (CellSpec(update="lstm", gate="refined", options={"gate": {"mode": "pow"}}),
         "cell.options.gate.mode", "'mul'"),
        (CellSpec(update="lstm", gate="refined", options={"gate": {"gates": ["x"]}}),
         "cell.options.gate.gates", "['i', 'f', 'o']"),
        (CellSpec(update="lstm", bias="constant", options={"bias": {"value": "high"}}),
         "cell.options.bias.value", "float"),
    ],
)
def test_option_validation_names_field_and_allowed_values(spec: CellSpec, field: str, allowed: str) -> None:
    """Primitive options are checked when the cell is built: the error names the option path and the choices."""
    with pytest.raises(SpecError) as err:
        cs.create_rnn(spec, 3, 4)
    assert field in str(err.value) and allowed in str(err.value)


def test_spec_module_does_not_import_torch() -> None:
    """cellsearch/spec.py imports no torch (statically), and importing it leaves torch unloaded."""
    tree = ast.parse((ROOT / "cellsearch" / "spec.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" not in imported
    code = "import sys, cellsearch.spec as s; s.CellSpec().digest(); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "False"
