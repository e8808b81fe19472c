"""Depth configurations (Pascanu et al. 2014; PRIMITIVES.md §6) against the float64 reference: deep
transition with and without shortcut on every update, deep input, deep output, residual and stacked layers."""

from __future__ import annotations

import pytest
import torch
from reference import assert_matches_reference, perturb_, reference_rnn

import cellsearch as cs
from cellsearch import CellSpec, DepthSpec

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
    assert (rnn.input_mlp is not None) == (depth.input_layers > 0)
    assert (rnn.output_mlp is not None) == (depth.output_layers > 0)
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
