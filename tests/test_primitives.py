"""Every cell primitive against the independent float64 reference (tests/reference.py), and the
statistical / algebraic properties PRIMITIVES.md states for UGI, chrono, the UR gate and asRNN."""

from __future__ import annotations

import math
import zlib
from typing import Any

import pytest
import torch
from fast_paths import fast_paths_of, forced, reference_loop
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import GATES, KEEP, assert_matches_reference, orthogonal_from_entries, perturb_, reference_rnn
from scipy.stats import kstest

import cellsearch as cs
from cellsearch import CellSpec
from cellsearch.primitives.gate import refine
from cellsearch.primitives.orthogonal import cayley_skew_, expm, henaff_skew_, orthogonal_from_skew

N = 8


def _opts(**roles: dict[str, Any]) -> dict[str, Any]:
    return {"options": roles}


# Each update with the gates, inits, saturations and recurrences that apply to it.
PRIMITIVE_CASES: dict[str, dict[str, Any]] = {
    "vanilla": dict(update="vanilla"),
    "vanilla+identity": dict(update="vanilla", saturation="identity"),
    "vanilla+adaptive-expm": dict(update="vanilla", saturation="adaptive"),
    "vanilla+adaptive-cayley": dict(update="vanilla", saturation="adaptive",
                                    **_opts(saturation={"method": "cayley", "eps": 0.01})),
    "vanilla+orthogonal-expm": dict(update="vanilla", recurrence="orthogonal"),
    "vanilla+orthogonal-cayley": dict(update="vanilla", recurrence="orthogonal",
                                      **_opts(recurrence={"method": "cayley", "skew_init": "cayley"})),
    "vanilla+orthogonal-init": dict(update="vanilla", init="orthogonal"),
    "lstm": dict(update="lstm"),
    "lstm+ur": dict(update="lstm", gate="ur"),
    "lstm+refined-mul": dict(update="lstm", gate="refined"),
    "lstm+refined-add-f": dict(update="lstm", gate="refined", **_opts(gate={"mode": "add", "gates": ["f"]})),
    "lstm+ugi": dict(update="lstm", bias="ugi"),
    "lstm+chrono": dict(update="lstm", bias="chrono", **_opts(bias={"t_max": 30})),
    "lstm+constant": dict(update="lstm", bias="constant", **_opts(bias={"value": 2.0})),
    "lstm+orthogonal-init": dict(update="lstm", init="orthogonal"),
    "lstm+identity-init+chrono": dict(update="lstm", init="identity", bias="chrono"),
    "lstm+identity": dict(update="lstm", saturation="identity"),
    "lstm+orthogonal-expm": dict(update="lstm", recurrence="orthogonal"),
    "lstm+orthogonal-cayley": dict(update="lstm", recurrence="orthogonal", **_opts(recurrence={"method": "cayley"})),
    "lstm_tied": dict(update="lstm_tied"),
    "lstm_tied+ur+ugi": dict(update="lstm_tied", gate="ur", bias="ugi"),
    "lstm_tied+refined": dict(update="lstm_tied", gate="refined", **_opts(gate={"gates": ["f", "o"]})),
    "gru": dict(update="gru"),
    "gru+ur+ugi": dict(update="gru", gate="ur", bias="ugi"),
    "gru+refined-mul": dict(update="gru", gate="refined"),
    "gru+refined-add": dict(update="gru", gate="refined", **_opts(gate={"mode": "add"})),
    "gru+refined-center-r": dict(update="gru", gate="refined", **_opts(gate={"center": True, "gates": ["r"]})),
    "mgu+refined-center": dict(update="mgu", gate="refined", **_opts(gate={"center": True, "p_scale": 0.5})),
    "gru+adaptive": dict(update="gru", saturation="adaptive"),
    "gru+identity": dict(update="gru", saturation="identity"),
    "gru+orthogonal": dict(update="gru", recurrence="orthogonal"),
    "mgu": dict(update="mgu"),
    "mgu+ur": dict(update="mgu", gate="ur"),
    "mgu+ur+chrono": dict(update="mgu", gate="ur", bias="chrono"),
    "mgu+refined": dict(update="mgu", gate="refined"),
    "mgu+adaptive": dict(update="mgu", saturation="adaptive"),
    "star": dict(update="star"),
    "star+ur+ugi": dict(update="star", gate="ur", bias="ugi"),
    "star+refined-mul": dict(update="star", gate="refined"),
    "star+refined-add": dict(update="star", gate="refined", **_opts(gate={"mode": "add"})),
    "star+beta1": dict(update="star", **_opts(update={"beta": 1.0})),
    "star+beta0": dict(update="star", **_opts(update={"beta": 0.0})),
    "star+identity": dict(update="star", saturation="identity"),
    "star+adaptive": dict(update="star", saturation="adaptive"),
    "star+chrono": dict(update="star", bias="chrono"),
    "star+orthogonal-init": dict(update="star", init="orthogonal"),
    "star+authors-code": dict(update="star", init="orthogonal", bias="chrono", **_opts(update={"beta": 1.0})),
    "star+orthogonal-cayley": dict(update="star", recurrence="orthogonal", **_opts(recurrence={"method": "cayley"})),
}


def _case_rnn(case: str, d: int) -> torch.nn.Module:
    torch.manual_seed(zlib.crc32(case.encode()))
    return perturb_(cs.create_rnn(CellSpec(**PRIMITIVE_CASES[case]), d, N, num_layers=2).double())


@pytest.mark.parametrize("d", [5, N], ids=["d!=n", "d=n"])
@pytest.mark.parametrize("case", sorted(PRIMITIVE_CASES))
def test_primitive_matches_reference(case: str, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each update × gate/init/saturation/recurrence, two stacked layers, random weights, on the primitives'
    own step loop (fast paths off): the output and final states equal the PRIMITIVES.md equations (float64,
    6 steps, |Δ| < 1e-6); d ≠ n exercises P x."""
    rnn = _case_rnn(case, d)
    with reference_loop(monkeypatch):
        assert_matches_reference(rnn, d)


FAST_CASES = [pytest.param(case, path, id=f"{case}-{path}")
              for case in sorted(PRIMITIVE_CASES) for path in fast_paths_of(CellSpec(**PRIMITIVE_CASES[case]))]


@pytest.mark.parametrize("d", [5, N], ids=["d!=n", "d=n"])
@pytest.mark.parametrize("case,path", FAST_CASES)
def test_primitive_fast_path_matches_reference(case: str, path: str, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same cases on every fast path each can take (native torch kernels, fused with C pointwise kernels,
    fused with torch ops; tests/fast_paths.py), each against the same float64 reference."""
    rnn = _case_rnn(case, d)
    with forced(path, rnn, monkeypatch):
        assert_matches_reference(rnn, d)


def test_reference_notices_a_wrong_equation() -> None:
    """The reference check has power: an LSTM and a UR-LSTM with the same weight tensors differ, so the
    reference of one does not pass for the other."""
    torch.manual_seed(0)
    lstm = perturb_(cs.create_rnn("lstm", 4, N).double())
    ur = cs.create_rnn("ur_lstm", 4, N).double()
    ur.load_state_dict(lstm.state_dict())
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    with torch.no_grad():
        assert (lstm(x)[0] - reference_rnn(ur, x)[0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------
# UGI, chrono, UR init
def _keep_coefficient(cell: Any) -> torch.Tensor:
    name, polarity = KEEP[cell.spec.update]
    return torch.sigmoid(polarity * cell.block_bias(name).double())


@pytest.mark.parametrize("update", ["lstm_tied", "star"])
def test_ugi_keep_gate_is_uniform_on_1_over_n(update: str) -> None:
    """UGI: σ(b_f) ~ U[1/n, 1 − 1/n] at n = 2000 (Kolmogorov–Smirnov), for a gate that keeps (LSTM f) and
    one that writes (STAR k, whose keep coefficient is 1 − k); the default init fails the same test."""
    n = 2000
    torch.manual_seed(0)
    keep = _keep_coefficient(cs.create_cell(CellSpec(update=update, init="ugi"), 1, n)).numpy()
    assert keep.min() >= 1 / n - 1e-9 and keep.max() <= 1 - 1 / n + 1e-9
    assert kstest(keep, "uniform", args=(1 / n, 1 - 2 / n)).pvalue > 1e-3
    default = _keep_coefficient(cs.create_cell(CellSpec(update=update), 1, n)).numpy()
    assert kstest(default, "uniform", args=(1 / n, 1 - 2 / n)).pvalue < 1e-6


def test_ugi_is_resampled_per_cell() -> None:
    """UGI draws new biases for every cell built (and every hidden size)."""
    a, b = (cs.create_cell(CellSpec(update="lstm_tied", init="ugi"), 2, 64) for _ in range(2))
    assert not torch.equal(a.block_bias("f"), b.block_bias("f"))


@pytest.mark.parametrize("update", ["lstm", "star"])
def test_chrono_bias_range_and_tied_input_gate(update: str) -> None:
    """Chrono: the keep logit b_f ∈ [0, log(T_max − 1)], spread over the range; b_i = −b_f where there is an
    input gate (LSTM)."""
    t_max = 50
    torch.manual_seed(0)
    cell = cs.create_cell(CellSpec(update=update, init="chrono", options={"init": {"t_max": t_max}}), 3, 256)
    name, polarity = KEEP[update]
    logit = polarity * cell.block_bias(name)
    assert logit.min() >= 0.0 and logit.max() <= math.log(t_max - 1) + 1e-6
    assert logit.max() - logit.min() > 0.5 * math.log(t_max - 1)
    if update == "lstm":
        assert torch.equal(cell.block_bias("i"), -cell.block_bias("f"))


@pytest.mark.parametrize("update", ["lstm", "lstm_tied", "gru", "mgu", "star"])
def test_ur_refine_bias_is_minus_keep_logit(update: str) -> None:
    """UR: at init the refine block's bias is −(keep logit) (b_r = −b_f in keep polarity), after UGI."""
    cell = cs.create_cell(CellSpec(update=update, gate="ur", init="ugi"), 3, N)
    (refine_block,) = [b.name for b in cell.blocks if b.kind == "gate" and b.name not in GATES[update]]
    name, polarity = KEEP[update]
    assert torch.allclose(cell.block_bias(refine_block), -polarity * cell.block_bias(name))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=1, max_size=32))
def test_ur_refined_gate_lies_between_f_squared_and_its_mirror(pairs: list[tuple[float, float]]) -> None:
    """UR: for all f, r ∈ [0, 1], f² ≤ g(f, r) ≤ 1 − (1 − f)², and g = r(1 − (1 − f)²) + (1 − r) f²."""
    f, r = torch.tensor(pairs, dtype=torch.float64).T
    g = refine(f, r)
    assert torch.all(f**2 - 1e-12 <= g) and torch.all(g <= 1 - (1 - f) ** 2 + 1e-12)
    assert torch.allclose(g, r * (1 - (1 - f) ** 2) + (1 - r) * f**2, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Orthogonal maps and asRNN
def _orthogonality_error(m: torch.Tensor) -> float:
    eye = torch.eye(m.shape[-1], dtype=m.dtype)
    return (m @ m.transpose(-1, -2) - eye).abs().max().item()


@pytest.mark.parametrize("method", ["expm", "cayley"])
def test_orthogonal_map_matches_scipy(method: str) -> None:
    """exp(A − Aᵀ) and the Cayley map of random skew entries are orthogonal and equal scipy's
    (both from the strict upper triangle in row-major order)."""
    n = 7
    v = torch.randn(n * (n - 1) // 2, dtype=torch.float64)
    mine = orthogonal_from_skew(v, n, method)
    assert _orthogonality_error(mine) < 1e-12
    assert (mine - orthogonal_from_entries(v, n, method)).abs().max().item() < 1e-10


def _random_skew(n: int, norm: float, batch: tuple[int, ...] = (), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, n, n, dtype=torch.float64, generator=g)
    s = a - a.transpose(-1, -2)
    return s * (norm / s.abs().sum(-2).amax().item()) if norm else s * 0.0


@pytest.mark.parametrize("norm", [0.0, 1e-3, 0.4, 3.0, 40.0])
def test_expm_value_and_gradient_match_torch_and_scipy_in_float64(norm: float) -> None:
    """The scaling-and-squaring Taylor exponential (autograd through it) against torch.linalg.matrix_exp
    and its gradient, and against scipy's Fréchet derivative (Al-Mohy & Higham), float64, ‖S‖₁ from 0 to
    40 (many squarings). torch's own gradient exponentiates [[Sᵀ, G], [0, Sᵀ]], whose scaling follows
    ‖G‖: it is ~3e-13 (relative) from scipy's at n = 48, hence the looser bound against torch."""
    import scipy.linalg

    s = _random_skew(48, norm, seed=int(norm * 10))
    g = torch.randn(48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mine, theirs = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    value = expm(mine)
    (value * g).sum().backward()
    (torch.linalg.matrix_exp(theirs) * g).sum().backward()
    frechet = torch.from_numpy(scipy.linalg.expm_frechet(s.t().numpy(), g.numpy(), compute_expm=False))
    scale = frechet.abs().max()
    assert (value - torch.linalg.matrix_exp(s)).abs().max() < 1e-13
    assert (value - torch.from_numpy(scipy.linalg.expm(s.numpy()))).abs().max() < 1e-13
    assert (mine.grad - frechet).abs().max() / scale < 1e-13
    assert (mine.grad - theirs.grad).abs().max() / scale < 1e-11


def test_expm_float32_batched_and_twice_differentiable() -> None:
    """float32 and a batch of matrices (the orthogonal recurrence's blocks) to float32 rounding of the
    float64 values and gradients; the gradient is itself differentiable (gradgradcheck, float64)."""
    s = _random_skew(24, 3.0, batch=(3,), seed=2)
    g = torch.randn(3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = s.clone().requires_grad_(True)
    (torch.linalg.matrix_exp(ref) * g).sum().backward()
    x = s.float().requires_grad_(True)
    value = expm(x)
    (value * g.float()).sum().backward()
    assert (value.double() - torch.linalg.matrix_exp(s)).abs().max() < 2e-6
    # with a gradient to record, the series' value: within float32 rounding of torch's; without one,
    # torch's bit for bit (evaluation equals the exported module, whose traced graphs hold torch's op)
    assert (value.detach() - torch.linalg.matrix_exp(x.detach())).abs().max() < 2e-6
    with torch.no_grad():
        assert torch.equal(expm(x), torch.linalg.matrix_exp(x.detach()))
    assert (x.grad.double() - ref.grad).abs().max() / ref.grad.abs().max() < 2e-6
    small = _random_skew(4, 2.0, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(expm, (small,)) and torch.autograd.gradgradcheck(expm, (small,))
    tangent = _random_skew(4, 1.0, seed=7)                           # forward-mode AD (the reference loop's)
    _, jvp = torch.func.jvp(torch.linalg.matrix_exp, (small.detach(),), (tangent,))
    with torch.autograd.forward_ad.dual_level():
        mine = torch.autograd.forward_ad.unpack_dual(expm(torch.autograd.forward_ad.make_dual(small.detach(),
                                                                                                 tangent)))
    assert (mine.tangent - jvp).abs().max() < 1e-13


def test_expm_is_torch_matrix_exp_under_tracing() -> None:
    """Traced (make_fx, symbolic sizes: the derived path and the exporter) the exponential is one
    ``linalg_matrix_exp`` op, with no value-dependent choice of the number of squarings baked in."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(expm, tracing_mode="symbolic")(_random_skew(6, 3.0))
    ops = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert ops == {"aten.linalg_matrix_exp.default"}
    s = _random_skew(6, 20.0, seed=5)
    assert (gm(s) - torch.linalg.matrix_exp(s)).abs().max() < 1e-14
    batch = _random_skew(6, 3.0, batch=(4,), seed=6)                 # vmap: torch's op, per matrix
    assert (torch.vmap(expm)(batch) - torch.linalg.matrix_exp(batch)).abs().max() < 1e-14


@pytest.mark.parametrize("init", [henaff_skew_, cayley_skew_])
def test_block_skew_inits_give_rotations(init: Any) -> None:
    """The Henaff and Cayley block inits give orthogonal matrices that are not the identity."""
    n = 8
    v = init(torch.empty(2, n * (n - 1) // 2, dtype=torch.float64), n)
    for method in ("expm", "cayley"):
        m = orthogonal_from_skew(v, n, method)
        assert _orthogonality_error(m) < 1e-12 and not torch.allclose(m, torch.eye(n, dtype=m.dtype))


@pytest.mark.parametrize("method", ["expm", "cayley"])
def test_asrnn_matrices_are_orthogonal(method: str) -> None:
    """asRNN: W_hh and U_f are orthogonal to 1e-5 (float32), at init and after the skew parameters move,
    and equal the reference's matrices built from the raw skew entries."""
    spec = cs.get_cell("asrnn").spec
    options = {"recurrence": {**spec.options_for("recurrence"), "method": method},
               "saturation": {"method": method}}
    cell = cs.create_cell(spec.replace(options=options), 4, 16)
    for moved in (False, True):
        if moved:
            perturb_(cell)
        w_hh, u_f = cell.recurrence.matrix(), cell.saturation.orthogonal()
        assert _orthogonality_error(w_hh) < 1e-5 and _orthogonality_error(u_f) < 1e-5
        assert (w_hh - orthogonal_from_entries(cell.recurrence.skew[0], 16, method)).abs().max() < 1e-5
        assert (u_f - orthogonal_from_entries(cell.saturation.skew, 16, method)).abs().max() < 1e-5
    assert torch.allclose(cell.saturation.scale(), cell.saturation.s.abs() + 1e-3)


def _asrnn(d: int, **saturation: Any) -> Any:
    spec = cs.get_cell("asrnn").spec
    spec = spec.replace(options={"recurrence": spec.options_for("recurrence"), "saturation": saturation})
    torch.manual_seed(0)
    return perturb_(cs.create_rnn(spec, d, N).double())


def test_asrnn_with_vanishing_d_is_the_linear_orthogonal_rnn() -> None:
    """asRNN: D_f → 0 (s = 0, ε = 1e-9) gives h' = W_xh x + W_hh h + b, the linear orthogonal RNN, which is
    far from the tanh RNN on the same weights."""
    rnn = _asrnn(3, eps=1e-9)
    with torch.no_grad():
        rnn.layers[0].saturation.s.zero_()
    assert_matches_reference(rnn, 3, saturation="identity")
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    assert (reference_rnn(rnn, x, saturation="identity")[0] - reference_rnn(rnn, x, saturation="tanh")[0]
            ).abs().max() > 1e-2


def test_asrnn_with_identity_d_and_u_is_the_tanh_rnn() -> None:
    """asRNN: D_f = U_f = I gives h' = tanh(W_xh x + W_hh h + b)."""
    rnn = _asrnn(3)
    sat = rnn.layers[0].saturation
    with torch.no_grad():
        sat.skew.zero_()
        sat.s.fill_(1.0 - 1e-3)
    assert torch.allclose(sat.scale(), torch.ones(N, dtype=torch.float64))
    assert_matches_reference(rnn, 3, saturation="tanh")


def test_asrnn_skew_trains_ten_times_slower() -> None:
    """asRNN: parameter_groups puts the recurrent skew parameter in a group at 0.1× the learning rate."""
    rnn = cs.create_rnn("asrnn", 3, N)
    groups = cs.parameter_groups(rnn, lr=1e-3)
    slow = [g for g in groups if g["lr_scale"] == pytest.approx(0.1)]
    assert len(slow) == 1 and slow[0]["lr"] == pytest.approx(1e-4)
    assert [id(p) for p in slow[0]["params"]] == [id(rnn.layers[0].recurrence.skew)]
    assert sum(len(g["params"]) for g in groups) == len(list(rnn.parameters()))


@pytest.mark.parametrize("update", ["lstm", "gru", "star"])
def test_constant_init_sets_the_keep_logit(update: str) -> None:
    """constant(value): the keep coefficient's logit is `value` (in keep polarity); other biases untouched."""
    cell = cs.create_cell(CellSpec(update=update, init="constant", options={"init": {"value": 2.5}}), 3, N)
    name, polarity = KEEP[update]
    assert torch.allclose(polarity * cell.block_bias(name), torch.full((N,), 2.5))
    others = [b.name for b in cell.blocks if b.name != name]
    assert all(cell.block_bias(o).abs().max() <= N**-0.5 for o in others)


def test_default_init_is_pytorch_uniform() -> None:
    """default: every weight and bias lies in U(−1/√n, 1/√n), like torch.nn.LSTM."""
    cell = cs.create_cell(CellSpec(update="lstm"), 3, 16)
    for p in cell.parameters():
        assert p.abs().max() <= 16**-0.5 and p.abs().max() > 0.5 * 16**-0.5


@pytest.mark.parametrize("d", [3, 12])
def test_orthogonal_init_gives_orthogonal_blocks(d: int) -> None:
    """orthogonal: each block's W (n × d) has orthonormal rows or columns, each free U block is orthogonal,
    biases are zero, and deep-transition layers are orthogonal too."""
    n = 8
    cell = cs.create_cell(CellSpec(update="star", init="orthogonal"), d, n, transition="deep_shortcut").double()
    for w in cell.weight_ih.split(n):
        gram = w @ w.T if d >= n else w.T @ w  # rows orthonormal (wide) or columns orthonormal (tall)
        assert (gram - torch.eye(min(n, d), dtype=gram.dtype)).abs().max() < 1e-6
    for u in cell.recurrence.matrix().split(n):
        assert _orthogonality_error(u) < 1e-6
    assert torch.equal(cell.bias, torch.zeros_like(cell.bias))
    for lin in [*cell.transition.layers, cell.transition.shortcut]:
        assert _orthogonality_error(lin.weight) < 1e-6


def _covered(role: str) -> set[str]:
    from test_modern import CASES as MODERN_CASES  # the modern cells' primitives (tests/test_modern.py)

    names = {case.get(role) for case in (*PRIMITIVE_CASES.values(), *MODERN_CASES.values())}
    defaults = {"gate": "sigmoid", "init": "default", "bias": "default", "saturation": "tanh", "recurrence": "free"}
    return names | {defaults.get(role)}


@pytest.mark.parametrize("role", ["update", "gate", "init", "bias", "saturation", "recurrence"])
def test_every_builtin_primitive_has_a_reference_case(role: str) -> None:
    """Every built-in cell primitive is exercised by a reference case above (a new one needs its equations in
    tests/reference.py), and its docstring starts with its formula and then gives its equations."""
    from cellsearch import registry

    for name in cs.list_primitives(role):
        if registry.origin_of("primitive", name, role) != "cellsearch (built-in)":
            continue
        assert name in _covered(role), f"{role} primitive {name!r} has no reference case"
        cls = registry.get_primitive(role, name)
        doc = [line for line in (cls.__doc__ or "").strip().splitlines() if line.strip()]
        assert cls.formula() and len(doc) >= 2, f"{role}/{name}: formula line and equations expected"
