"""Standalone export: every published cell (and specs covering every supported primitive and depth option)
exported, imported in a subprocess where ``import cellsearch`` fails, equal to the in-framework model
(|Δ| < 1e-6) and accepted by torch.export.export."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cellsearch.exporter import ExportError, export_model, generate_source
from cellsearch.model import SequenceModel
from cellsearch.registry import get_cell_card, list_cells
from cellsearch.spec import CellSpec, DepthSpec, ModelSpec

EXTRA = {
    "deep_io_refined_add": (
        CellSpec(update="lstm", gate="refined", options={"gate": {"mode": "add"}}),
        DepthSpec(layers=3, input_layers=1, output_layers=2, residual=True, dropout=0.2),
        "all",
    ),
    "star_beta_identity": (
        CellSpec(update="star", saturation="identity", options={"update": {"beta": 1.0}}),
        DepthSpec(layers=2),
        "last",
    ),
    "gru_ur_cayley": (
        CellSpec(
            update="gru", gate="ur", recurrence="orthogonal", options={"recurrence": {"method": "cayley"}}
        ),
        DepthSpec(),
        "last",
    ),
    "vanilla_adaptive_cayley": (
        CellSpec(
            update="vanilla",
            saturation="adaptive",
            recurrence="orthogonal",
            options={"saturation": {"method": "cayley"}},
        ),
        DepthSpec(layers=2),
        "all",
    ),
    "mgu_dt2": (
        CellSpec(update="mgu", gate="ur", init="ugi"),
        DepthSpec(transition="deep", transition_layers=2),
        "last",
    ),
    "lstm_tied_dts_all": (
        CellSpec(update="lstm_tied", gate="refined"),
        DepthSpec(layers=2, transition="deep_shortcut", residual=True),
        "all",
    ),
}

CHILD = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])  # a fake 'cellsearch' that refuses to import
try:
    import cellsearch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
import torch
results = {}
for case in json.loads(sys.argv[2]):
    folder = sys.argv[3] + "/" + case
    sys.path.insert(0, folder)
    mod = importlib.import_module(case)
    model = mod.load()
    io = mod.read_safetensors(folder + "/io.safetensors")
    with torch.no_grad():
        y = model(io["x"])[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y_autocast = model(io["x"])[0]
    program = torch.export.export(model, (io["x"],))
    y_exported = program.module()(io["x"])[0]
    results[case] = {"diff": float((y - io["y"]).abs().max()),
                     "export_diff": float((y_exported - y).abs().max()), "training": model.training,
                     "autocast_diff": float((y_autocast.float() - y).abs().max())}
    sys.path.pop(0)
print(json.dumps({"blocked": blocked, "loaded": "cellsearch" in sys.modules, "results": results}))
"""


def _cases() -> dict[str, tuple[ModelSpec, str, str | None]]:
    cases = {}
    for i, name in enumerate(list_cells()):
        card = get_cell_card(name)
        d = 3 if i % 2 else 8  # d ≠ n exercises the refined gate's projection, d = n its identity
        cases[name] = (card.model_spec(8, 2, input_size=d, output_size=2), "last" if i % 2 else "all", name)
    for name, (cell, depth, readout) in EXTRA.items():
        cases[name] = (
            ModelSpec(cell=cell, depth=depth, hidden_size=8, input_size=3, output_size=2),
            readout,
            None,
        )
    return cases


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Export every case, then import and check them all in one subprocess without cellsearch."""
    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    for case, (spec, readout, published) in _cases().items():
        model = SequenceModel(spec, readout).eval()
        with torch.no_grad():
            for p in model.parameters():  # trained-looking weights, not the init
                p.add_(0.1 * torch.randn_like(p))
            x = torch.randn(3, 6, spec.input_size)
            y = model(x)[0]
        export_model(model, root / case, name=case, published=published)
        save_file({"x": x, "y": y.contiguous()}, str(root / case / "io.safetensors"))
    fake = root / "fake"
    fake.mkdir()
    (fake / "cellsearch.py").write_text("raise ImportError('cellsearch must not be imported by an export')\n")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(fake), json.dumps(list(_cases())), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return {"root": root, **json.loads(out.stdout.strip().splitlines()[-1])}


def test_child_could_not_import_cellsearch(exported: dict) -> None:
    assert exported["blocked"] and not exported["loaded"]


@pytest.mark.parametrize("case", list(_cases()))
def test_exported_module_matches_and_torch_exports(exported: dict, case: str) -> None:
    result = exported["results"][case]
    assert result["diff"] < 1e-6
    assert result["export_diff"] < 1e-6
    assert result["training"] is False  # load() returns an eval-mode model
    assert result["autocast_diff"] < 0.05  # runs under bf16 autocast (bf16 input GEMM, float32 recurrence)


@pytest.mark.parametrize("case", ["lstm", "asrnn", "deep_io_refined_add"])
def test_exported_source_imports_torch_only(exported: dict, case: str) -> None:
    tree = ast.parse((exported["root"] / case / f"{case}.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= {"__future__", "json", "struct", "pathlib", "torch"}


def test_export_folder_has_spec_and_model_card(exported: dict) -> None:
    import yaml

    folder = exported["root"] / "ur_lstm"
    info = yaml.safe_load((folder / "spec.yaml").read_text())
    assert info["model"]["cell"]["gate"] == "ur" and info["published_cell"] == "ur_lstm"
    assert {"cellsearch", "torch"} <= set(info["versions"])
    card = (folder / "MODEL_CARD.md").read_text()
    assert "ur_lstm.load()" in card and "Gu" in card


def test_plugin_primitive_is_refused_by_name() -> None:
    from cellsearch.primitives.gate import SigmoidGate
    from cellsearch.registry import register_primitive, unregister

    class MyGate(SigmoidGate):
        """g = σ(a) (a test plugin)"""

        name = "my_test_gate"

    register_primitive(MyGate, origin="tests")
    try:
        spec = ModelSpec(
            cell=CellSpec(update="lstm", gate="my_test_gate"), hidden_size=4, input_size=2, output_size=1
        )
        with pytest.raises(ExportError, match="my_test_gate"):
            generate_source(SequenceModel(spec))
    finally:
        unregister("primitive", "my_test_gate", "gate")


def test_export_writes_all_four_files(tmp_path: Path) -> None:
    spec = get_cell_card("star").model_spec(4, input_size=2, output_size=1)
    py = export_model(SequenceModel(spec), tmp_path)
    assert py.name == "star.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "MODEL_CARD.md",
        "spec.yaml",
        "star.py",
        "star.safetensors",
    ]
