"""Depth configurations (Pascanu et al. 2014; PRIMITIVES.md §6) against the float64 reference: deep
transition with and without shortcut on every update, deep input, deep output, residual and stacked layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from reference import assert_matches_reference, perturb_, reference_rnn

import cellsearch as cs
from cellsearch import CellSpec, DepthSpec, registry
from cellsearch.exporter import export_model
from cellsearch.model import SequenceModel
from cellsearch.primitives.depth import DepthPrimitive, Part
from cellsearch.spec import ModelSpec, SpecError

N = 8

UPDATES = ["vanilla", "lstm", "lstm_tied", "gru", "mgu", "star"]


@pytest.mark.parametrize("layers", [1, 2], ids=["L=1", "L=2"])
@pytest.mark.parametrize("transition", ["deep", "deep_shortcut"])
@pytest.mark.parametrize("update", UPDATES)
def test_deep_transition_matches_reference(update: str, transition: str, layers: int) -> None:
    """DT / DT(S) on the candidate path of every update, with 1 and 2 extra layers, two stacked cells:
    equal to z_1 = φ(a), z_j = φ(W_j z_{j−1} + b_j), act(W_L z + b_L [+ W_s h]) (|Δ| < 1e-6)."""
    torch.manual_seed(len(update) * 10 + layers)
    depth = DepthSpec(layers=2, transition=transition, transition_layers=layers)
    rnn = perturb_(cs.create_rnn(CellSpec(update=update), 5, N, depth=depth).double())
    assert rnn.layers[0].transition is not None
    assert (rnn.layers[0].transition.shortcut is not None) == (transition == "deep_shortcut")
    assert len(rnn.layers[0].transition.layers) == layers
    assert_matches_reference(rnn, 5)


@pytest.mark.parametrize(
    "depth",
    [
        DepthSpec(layers=3),
        DepthSpec(layers=2, input_layers=2),
        DepthSpec(layers=1, output_layers=2),
        DepthSpec(layers=3, residual=True),
        DepthSpec(layers=2, transition="deep_shortcut", output_layers=1, input_layers=1, residual=True),
    ],
    ids=["stacked", "deep_input", "deep_output", "residual", "dots+input+residual"],
)
@pytest.mark.parametrize("d", [5, N], ids=["d!=n", "d=n"])
@pytest.mark.parametrize("update", ["lstm", "star"])
def test_depth_configuration_matches_reference(update: str, depth: DepthSpec, d: int) -> None:
    """Stacked layers, deep input/output MLPs and residual connections (the first layer is residual only
    when d = n) equal the reference network (|Δ| < 1e-6)."""
    torch.manual_seed(depth.layers + d)
    rnn = perturb_(cs.create_rnn(CellSpec(update=update), d, N, depth=depth).double())
    assert rnn.num_layers == depth.layers
    assert rnn.stages["input"] == (("input_mlp",) if depth.input_layers else ())
    assert rnn.stages["output"] == (("output_mlp",) if depth.output_layers else ())
    assert_matches_reference(rnn, d)


def test_residual_changes_the_output() -> None:
    """Residual stacking is not a no-op: the same weights without it give a different output."""
    torch.manual_seed(0)
    rnn = perturb_(cs.create_rnn("star", N, N, depth=DepthSpec(layers=2, residual=True)).double())
    plain = cs.create_rnn("star", N, N, depth=DepthSpec(layers=2)).double()
    plain.load_state_dict(rnn.state_dict())
    x = torch.randn(2, 5, N, dtype=torch.float64)
    with torch.no_grad():
        assert (rnn(x)[0] - plain(x)[0]).abs().max() > 1e-3
        assert (plain(x)[0] - reference_rnn(plain, x)[0]).abs().max() < 1e-6


# ------------------------------------------------------------------------------------------------------
# A depth primitive of a plugin's own: registered like any primitive, switched on by ``depth.extra``,
# it takes part in the stack, the weights and the export without a line elsewhere naming it.
class LayerScale(torch.nn.Module):
    """A join: each layer's output scaled by a learned per-channel gain (started at ``gain``)."""

    def __init__(self, width: int, gain: float) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.full((width,), float(gain)))

    def forward(self, out: torch.Tensor, inp: torch.Tensor, layer: int, top: bool) -> torch.Tensor:
        return out * self.gain


class LayerScaleDepth(DepthPrimitive):
    """h^(ℓ)_t ← g ⊙ h^(ℓ)_t (test plugin)"""

    name = "layer_scale_test"
    stage = "join"
    order = 50
    defaults = {"gain": 0.5}

    def part(self, depth: DepthSpec, input_size: int, width: int) -> Part | None:
        return Part("layer_scale", LayerScale, (width, self.options["gain"]))


@pytest.fixture()
def layer_scale():
    registry.register_primitive(LayerScaleDepth, origin="package test_depth")
    yield
    registry.unregister("primitive", LayerScaleDepth.name, "depth")


def test_plugin_depth_primitive_takes_part_in_stack_and_export(layer_scale: None, tmp_path: Path) -> None:
    """A join-stage plugin primitive named in ``depth.extra`` with an option: its module sits between the
    residual and the dropout, its gain is a weight of the model, the output equals the arrangement
    computed by hand, and the standalone export writes its class and reproduces the model."""
    torch.manual_seed(0)
    depth = DepthSpec(layers=2, residual=True, extra={"layer_scale_test": {"gain": 0.25}})
    spec = ModelSpec(cell=CellSpec(update="gru"), depth=depth, hidden_size=N, input_size=N, output_size=3)
    model = SequenceModel(spec, "last").eval()
    rnn = model.rnn
    assert rnn.stages["join"] == ("residual", "layer_scale")
    assert torch.equal(rnn.layer_scale.gain, torch.full((N,), 0.25))
    with torch.no_grad():
        rnn.layer_scale.gain.uniform_(0.5, 1.5)
        x = torch.randn(2, 5, N)
        seq = x.transpose(0, 1)
        for layer in rnn.layers:  # by hand: residual, then the gain
            seq = (layer.forward_sequence(seq, None)[0] + seq) * rnn.layer_scale.gain
        assert (rnn(x)[0] - seq.transpose(0, 1)).abs().max() < 1e-6
        path = export_model(model, tmp_path / "out", check=False)
        assert "class LayerScale(" in path.read_text()
        mod = _import(path)
        exported = mod.load()
        assert (exported(x)[0] - model(x)[0]).abs().max() < 1e-6


def test_depth_extra_is_checked(layer_scale: None) -> None:
    """``depth.extra`` takes only registered depth primitives that no field switches on, with their own
    options; its digest and canonical form are unchanged when empty."""
    assert "layer_scale" not in cs.create_rnn("lstm", 3, N, depth={"layers": 2}).stages["join"]  # only when named
    with pytest.raises(SpecError, match=r"depth\.extra\.residual.*layer_scale_test"):
        cs.create_rnn("lstm", 3, N, depth={"extra": {"residual": {}}})
    with pytest.raises(ValueError, match=r"depth\.extra\.layer_scale_test"):
        cs.create_rnn("lstm", 3, N, depth={"extra": {"layer_scale_test": {"gian": 2.0}}})
    assert "extra" not in DepthSpec(layers=2).to_dict()
    assert DepthSpec.from_dict(DepthSpec(extra={"layer_scale_test": {}}).to_dict()).extra == {"layer_scale_test": {}}


def _import(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_deep_mlp_on_onednn_equals_the_modules_in_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepMLP's oneDNN path (float32 on the CPU; here at every size) gives the values and gradients of
    its Linear → tanh modules run in sequence, with the same parameters and state_dict keys."""
    from cellsearch.primitives.depth import DeepMLP

    torch.manual_seed(0)
    mlp = DeepMLP(5, 7, 3)
    assert list(mlp.state_dict()) == [f"{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")]
    x = torch.randn(4, 3, 5)
    monkeypatch.setattr(DeepMLP, "DNN_MIN", 0)
    if not DeepMLP.dnn(x, list(mlp)[0::2]):
        pytest.skip("oneDNN's linear is not available here")

    def run(dnn: bool) -> list[torch.Tensor]:
        mlp.zero_grad()
        xx = x.clone().requires_grad_()
        y = mlp(xx) if dnn else torch.nn.Sequential.forward(mlp, xx)
        (y * y.detach().cos()).sum().backward()
        return [y.detach(), xx.grad, *(p.grad for p in mlp.parameters())]

    for a, b in zip(run(True), run(False)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    x64 = x.double()
    assert not DeepMLP.dnn(x64, list(mlp.double())[0::2])   # other dtypes: the modules in sequence
