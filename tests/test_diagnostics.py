"""Gradient-flow diagnostics, checked on cells whose gradients are known in closed form.

The linear vanilla cell h_t = W x_t + U h_{t−1} + b (saturation identity) with U = c·I has, for the
linear objective L = Σ_{s∈S} mean_b ⟨r, h_{b,s}⟩, the backpropagated error ∂L/∂a_{b,t} = e_t r / B with
e_t = Σ_{s∈S, s≥t} c^{s−t}; so the per-step parameter gradients are ∂L/∂b_t = e_t r,
∂L/∂W_t = e_t r x̄_tᵀ and ∂L/∂U_t = e_t r h̄_{t−1}ᵀ (x̄, h̄: batch means). The tests compare the maps with
these formulas (and the backpropagated error ∂L/∂h_t = e_t r / B for the state-gradient map), check that
the per-step gradients sum to the ordinary gradient for every kind of parameter, then the pre-screen
flags, the saturation statistics and the CLI.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import cellsearch as cs
from cellsearch.cli import main
from cellsearch.depth import StackedRNN
from cellsearch.diagnostics import (
    build,
    gradient_map,
    gradient_score,
    layer_step_gradients,
    layer_step_state_gradients,
    per_step_gradients,
    saturation_stats,
    score_map,
    state_gradient_map,
    unroll,
)
from cellsearch.spec import CellSpec

LINEAR = CellSpec(update="vanilla", saturation="identity")
LINEAR_ORTHO = CellSpec(update="vanilla", saturation="identity", recurrence="orthogonal",
                        options={"recurrence": {"skew_init": "zero"}})


def linear_model(c: float, layers: int = 1, n: int = 4, d: int = 4, orthogonal: bool = False) -> StackedRNN:
    """Linear vanilla stack with U = c·I (orthogonal: U = exp(0) = I, c must be 1) and zero biases."""
    model = cs.create_rnn(LINEAR_ORTHO if orthogonal else LINEAR, d, n, num_layers=layers).double()
    with torch.no_grad():
        for cell in model.layers:
            cell.bias.zero_()
            if orthogonal:
                assert c == 1.0
            else:
                cell.recurrence.weight.copy_(c * torch.eye(n))
            assert torch.allclose(cell.recurrence.matrix(), c * torch.eye(n, dtype=torch.float64))
    return model


def expected_linear_map(model: StackedRNN, x: torch.Tensor, r: torch.Tensor, c: float, loss: str,
                        orthogonal: bool) -> np.ndarray:
    """The closed form of the module docstring for a one-layer linear model."""
    (cell,) = model.layers
    w = cell.weight_ih.detach()
    steps = x.shape[1]
    reads = range(steps) if loss == "all" else [steps - 1]
    e = [sum(c ** (s - t) for s in reads if s >= t) for t in range(steps)]
    count = sum(p.numel() for p in cell.parameters())
    h_bar = torch.zeros(w.shape[0], dtype=torch.float64)
    out = []
    for t in range(steps):
        x_bar = x[:, t].mean(0)
        grad_u = torch.outer(r, h_bar)
        if orthogonal:  # ∂L/∂v for U = exp(S), S = upper(v) − upper(v)ᵀ at S = 0: M_ij − M_ji, i < j
            i, j = torch.triu_indices(len(r), len(r), offset=1)
            u_part = (grad_u[i, j] - grad_u[j, i]).abs().sum()
        else:
            u_part = grad_u.abs().sum()
        total = r.abs().sum() + torch.outer(r, x_bar).abs().sum() + u_part
        out.append(e[t] * float(total) / count)
        h_bar = w @ x_bar + c * h_bar
    return np.array([out])


@pytest.mark.parametrize("loss", ["last", "all"])
@pytest.mark.parametrize(("c", "orthogonal"), [(1.0, True), (1.0, False), (0.5, False), (1.5, False)])
def test_linear_cell_map_matches_closed_form(c: float, orthogonal: bool, loss: str) -> None:
    torch.manual_seed(0)
    model = linear_model(c, orthogonal=orthogonal)
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    r = torch.randn(4, dtype=torch.float64)
    got = layer_step_gradients(model, x, loss, readout=r).numpy()
    np.testing.assert_allclose(got, expected_linear_map(model, x, r, c, loss, orthogonal), rtol=1e-10)


def _balanced_constant_input(batch_half: int, steps: int, d: int) -> torch.Tensor:
    """x_b constant in time with batch mean 0 (x and −x): h̄ = 0, so only the bias gradient remains."""
    v = torch.randn(batch_half, 1, d, dtype=torch.float64).expand(batch_half, steps, d)
    return torch.cat([v, -v])


def test_identity_recurrence_preserves_gradient_magnitude_exactly() -> None:
    torch.manual_seed(1)
    model = linear_model(1.0, orthogonal=True)
    r = torch.randn(4, dtype=torch.float64)
    g = layer_step_gradients(model, _balanced_constant_input(2, 8, 4), "last", readout=r).numpy()[0]
    count = cs.count_parameters(model.layers[0])
    np.testing.assert_allclose(g, np.full(8, float(r.abs().sum()) / count), rtol=1e-12)


def test_contractive_recurrence_decays_geometrically_with_its_factor() -> None:
    torch.manual_seed(2)
    model = linear_model(0.5)
    g = layer_step_gradients(model, _balanced_constant_input(2, 8, 4), "last").numpy()[0]
    np.testing.assert_allclose(g[:-1] / g[1:], np.full(7, 0.5), rtol=1e-12)


def test_two_identity_layers_accumulate_paths_linearly_in_time() -> None:
    """U = I in both layers: δ^(2)_t = r/B, δ^(1)_t = (T − t) W₂ᵀ r/B (one path per later step)."""
    torch.manual_seed(3)
    steps = 5
    model = linear_model(1.0, layers=2, orthogonal=True)
    r = torch.randn(4, dtype=torch.float64)
    g = layer_step_gradients(model, _balanced_constant_input(2, steps, 4), "last", readout=r).numpy()
    count = cs.count_parameters(model.layers[0])
    top = float(r.abs().sum()) / count
    bottom = float((model.layers[1].weight_ih.detach().t() @ r).abs().sum()) / count
    np.testing.assert_allclose(g[1], np.full(steps, top), rtol=1e-12)
    np.testing.assert_allclose(g[0], bottom * np.arange(steps, 0, -1), rtol=1e-12)


CELLS_WITH_EVERY_PARAMETER_KIND = ["lstm", "star", "asrnn", "dts_rnn", "ur_gru", "refined_mgu"]


@pytest.mark.parametrize("name", CELLS_WITH_EVERY_PARAMETER_KIND)
@pytest.mark.parametrize(("loss", "objective"), [("last", "linear"), ("all", "mse")])
def test_per_step_gradients_sum_to_the_ordinary_gradient(name: str, loss: str, objective: str) -> None:
    torch.manual_seed(4)
    depth = {"residual": True, "input_layers": 1, "output_layers": 1}
    model = cs.create_rnn(name, 3, 5, num_layers=2, depth=depth).double().eval()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    r = torch.randn(5, dtype=torch.float64)
    targets = torch.randn(2, 4, dtype=torch.float64)
    y, _ = model(x)
    np.testing.assert_allclose(unroll(model, x).detach(), y.detach(), atol=1e-10)
    proj = y @ r
    if loss == "last":
        proj, tgt = proj[:, -1:], targets[:, -1:]
    else:
        tgt = targets
    value = proj.mean(0).sum() if objective == "linear" else (proj - tgt).pow(2).mean(0).sum()
    split = per_step_gradients(model, x, loss, objective, readout=r, targets=targets)
    for i, cell in enumerate(model.layers):
        names, params = zip(*cell.named_parameters(), strict=True)
        full = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        for pname, g in zip(names, full, strict=True):
            summed = sum(split[i][t][pname] for t in range(4))
            expect = torch.zeros_like(summed) if g is None else g
            torch.testing.assert_close(summed, expect, rtol=1e-9, atol=1e-12, msg=f"{name} layer {i} {pname}")
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", cs.list_cells())
def test_every_cell_gives_a_finite_nonnegative_map_of_shape_layers_by_steps(name: str) -> None:
    g = gradient_map(name, layers=3, steps=4, hidden_size=6, batch=2, seeds=0)
    assert g.shape == (3, 4)
    assert np.isfinite(g).all() and (g >= 0).all() and (g > 0).any()


def test_map_is_the_mean_over_seeds_and_reproducible() -> None:
    kw = {"layers": 2, "steps": 3, "hidden_size": 5, "batch": 2, "loss": "all"}
    a, b = gradient_map("gru", seeds=0, **kw), gradient_map("gru", seeds=1, **kw)
    np.testing.assert_allclose(gradient_map("gru", seeds=[0, 1], **kw), (a + b) / 2, rtol=1e-12)
    np.testing.assert_array_equal(gradient_map("gru", seeds=0, **kw), a)
    assert not np.allclose(a, b)


def test_given_model_is_not_modified_and_sizes_must_match() -> None:
    model = linear_model(0.5)
    before = [p.detach().clone() for p in model.parameters()]
    gradient_map(model, steps=3, seeds=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    with pytest.raises(ValueError, match="layers=3"):
        build(model, layers=3)
    with pytest.raises(ValueError, match="loss"):
        gradient_map("gru", layers=1, steps=2, loss="first")


@pytest.mark.parametrize(("c", "vanishing", "exploding"), [(0.25, True, False), (1.0, False, False),
                                                           (3.0, False, True)])
def test_prescreen_flags_contractive_and_expansive_linear_cells(c: float, vanishing: bool,
                                                                exploding: bool) -> None:
    score = gradient_score(linear_model(c, orthogonal=c == 1.0), steps=10, seeds=(0, 1))
    assert (score.vanishing, score.exploding, score.ok) == (vanishing, exploding, not (vanishing or exploding))
    # one layer: the depth ratio is 1; the error reaching step 1 is c^(T−1) times the last step's
    assert score.ratio_first_to_last_layer == pytest.approx(1.0)
    assert score.ratio_first_to_last_step == pytest.approx(c**9, rel=1e-9)


@pytest.mark.parametrize("loss", ["last", "all"])
@pytest.mark.parametrize("c", [1.0, 0.5, 2.0])
def test_state_gradient_map_of_linear_cell_is_the_backpropagated_error(c: float, loss: str) -> None:
    """E[0, t] = mean_b,i |∂L/∂h_{b,t,i}| = e_t · mean|r| / B, whatever the inputs."""
    torch.manual_seed(5)
    model = linear_model(c)
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    r = torch.randn(4, dtype=torch.float64)
    reads = range(6) if loss == "all" else [5]
    e = np.array([sum(c ** (s - t) for s in reads if s >= t) for t in range(6)])
    got = layer_step_state_gradients(model, x, loss, readout=r).numpy()[0]
    np.testing.assert_allclose(got, e * float(r.abs().mean()) / 3, rtol=1e-12)


def test_expanding_linear_cell_shows_in_state_gradients_not_in_parameter_ratios() -> None:
    """Why the pre-screen scores E: G's last step carries ∂L/∂U = δ h_{T−2}ᵀ, which grows like c^T too."""
    model = linear_model(3.0)
    g = gradient_map(model, steps=10, seeds=0)
    e = state_gradient_map(model, steps=10, seeds=0)
    assert not score_map(g).exploding
    assert score_map(e).exploding and e[0, 0] / e[0, -1] == pytest.approx(3.0**9, rel=1e-9)


def test_score_map_ratios_and_thresholds() -> None:
    g = np.array([[1e-4, 2e-4], [1.0, 3.0]])  # layer 1 (bottom), layer 2 (top)
    s = score_map(g)
    assert s.ratio_first_to_last_layer == pytest.approx(1.5e-4 / 2.0)
    assert s.ratio_first_to_last_step == pytest.approx((1.0001 / 2) / (3.0002 / 2))
    assert s.vanishing and not s.exploding
    assert not score_map(g, vanish=1e-5).vanishing
    assert score_map(np.array([[1.0, np.inf]])).exploding
    assert score_map(np.zeros((2, 2))).vanishing
    assert set(s.as_dict()) == {"ratio_first_to_last_layer", "ratio_first_to_last_step", "vanishing", "exploding"}


def test_saturation_fractions_of_pinned_gates() -> None:
    model = cs.create_rnn("lstm", 3, 4, num_layers=2)
    with torch.no_grad():
        for cell in model.layers:
            cell.weight_ih.zero_()
            cell.recurrence.weight.zero_()
            cell.bias.zero_()
            cell.block_bias("i").fill_(-10.0)  # σ ≈ 5e-5: always below 0.05
            cell.block_bias("f").fill_(10.0)   # always above 0.95
    stats = saturation_stats(model, steps=7, batch=3)
    assert stats.gates == ("i", "f", "o")
    np.testing.assert_array_equal(stats.low, [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(stats.high, [[0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(stats.saturated, [[1, 1, 0], [1, 1, 0]])
    assert stats.state_norm.shape == (2, 7)


def test_state_norm_grows_linearly_with_identity_recurrence_and_constant_drive() -> None:
    model = linear_model(1.0, orthogonal=True)
    v = torch.tensor([3.0, 0.0, 4.0, 0.0])
    with torch.no_grad():
        model.layers[0].weight_ih.zero_()
        model.layers[0].bias.copy_(v)  # h_t = h_{t−1} + v: ‖h_t‖ = (t + 1)·5
    stats = saturation_stats(model, steps=6, batch=2)
    assert stats.gates == ()
    np.testing.assert_allclose(stats.state_norm[0], 5.0 * np.arange(1, 7), rtol=1e-12)
    np.testing.assert_allclose(stats.growth, [6.0], rtol=1e-12)


def _read_csv(path: Path) -> list[list[str]]:
    with path.open() as fh:
        return list(csv.reader(fh))


def test_cli_writes_maps_saturation_and_score(tmp_path: Path) -> None:
    argv = ["diagnose", "vanilla", "--layers", "2", "--steps", "3", "--hidden", "4", "--batch", "2",
            "--seeds", "1", "--seed", "5", "--sat-steps", "6", "--out", str(tmp_path)]
    assert main(argv) == 0
    for mode in ("last", "all"):
        assert (tmp_path / f"gradient_map_{mode}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rows = _read_csv(tmp_path / f"gradient_map_{mode}.csv")
        assert rows[0] == ["layer", "t1", "t2", "t3"] and [r[0] for r in rows[1:]] == ["1", "2"]
        expect = gradient_map("vanilla", layers=2, steps=3, hidden_size=4, batch=2, loss=mode, seeds=5)
        np.testing.assert_allclose(np.array(rows[1:], dtype=float)[:, 1:], expect, rtol=1e-6)
    assert (tmp_path / "saturation.png").read_bytes()[:4] == b"\x89PNG"
    assert len(_read_csv(tmp_path / "state_norm.csv")) == 7
    assert (tmp_path / "score.json").exists()


def test_cli_single_loss_mode_and_gates_csv(tmp_path: Path) -> None:
    argv = ["diagnose", "gru", "--layers", "2", "--steps", "2", "--hidden", "4", "--batch", "2",
            "--seeds", "1", "--sat-steps", "3", "--loss", "all", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert not (tmp_path / "gradient_map_last.csv").exists() and (tmp_path / "gradient_map_all.csv").exists()
    rows = _read_csv(tmp_path / "saturation_gates.csv")
    assert [r[:2] for r in rows[1:]] == [["1", "r"], ["1", "z"], ["2", "r"], ["2", "z"]]


def test_cli_unknown_cell_and_bad_sizes_are_one_line_errors(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "lstn", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'lstm'" in err and len(err.strip().splitlines()) == 1
    assert main(["diagnose", "lstm", "--layers", "0", "--out", str(tmp_path)]) == 2
    assert "--layers must be >= 1" in capsys.readouterr().err
