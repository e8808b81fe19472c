"""The modern cells of issue 14 (minGRU, minLSTM, RG-LRU, sLSTM, JANET, IndRNN) and the parallel scan.

Every new primitive against the independent float64 reference written from its paper's equations
(tests/reference.py), on the reference loop and on the path the cell takes by default; the parallel scan
(cellsearch.fast.scan) against the sequential loop, forward and backward, |Δ| < 1e-5 in float32 and
float64, T from 1 to 4096; the paper-stated properties of the inits and activations; the published cards'
parameter counts and numbers; cross-checks with copied weights against independent implementations where
they are installed (minGRU-pytorch, torchrecurrent). No test asserts a timing.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import pytest
import torch
from fast_paths import assert_same, reference_loop, sequential_scan
from reference import assert_matches_reference, perturb_, reference_rnn
from scipy.stats import kstest

import cellsearch as cs
from cellsearch import CellSpec, fast
from cellsearch.fast import scan

N = 8
MODERN = ["mingru", "minlstm", "rg_lru", "slstm", "janet", "indrnn"]
SCANNED = ["mingru", "minlstm", "rg_lru"]


def _opts(**roles: dict[str, Any]) -> dict[str, Any]:
    return {"options": roles}


CASES: dict[str, dict[str, Any]] = {
    "mingru": dict(update="mingru", saturation="g", recurrence="none"),
    "mingru+identity": dict(update="mingru", saturation="identity", recurrence="none"),
    "mingru+ur+ugi": dict(update="mingru", gate="ur", init="ugi", saturation="g", recurrence="none"),
    "mingru+refined": dict(update="mingru", gate="refined", saturation="identity", recurrence="none"),
    "mingru+free": dict(update="mingru", saturation="g"),                       # gates that see h
    "mingru+tanh+orthogonal": dict(update="mingru", recurrence="orthogonal"),
    "minlstm": dict(update="minlstm", saturation="g", recurrence="none"),
    "minlstm+chrono+identity": dict(update="minlstm", init="chrono", saturation="identity", recurrence="none"),
    "minlstm+orthogonal-init": dict(update="minlstm", init="orthogonal", saturation="g", recurrence="none"),
    "rg_lru": dict(update="rg_lru", init="lru", saturation="identity", recurrence="none"),
    "rg_lru+c2+g": dict(update="rg_lru", saturation="g", recurrence="none", **_opts(update={"c": 2.0})),
    "rg_lru+free": dict(update="rg_lru", init="lru", saturation="identity"),
    "janet": dict(update="janet", init="chrono", saturation="identity"),
    "janet+ur+tanh": dict(update="janet", gate="ur", **_opts(update={"beta": 0.5})),
    "slstm": dict(update="slstm", saturation="identity"),
    "slstm+exp+tanh": dict(update="slstm", **_opts(update={"forget": "exp"})),
    "slstm+refined": dict(update="slstm", gate="refined", saturation="identity"),
    "indrnn": dict(update="vanilla", saturation="relu", recurrence="diagonal"),
    "indrnn+bound": dict(update="vanilla", saturation="relu", recurrence="diagonal",
                         **_opts(recurrence={"low": -1.5, "high": 1.5, "bound": 1.0})),
    "lstm+diagonal+relu": dict(update="lstm", saturation="relu", recurrence="diagonal"),
    "slstm+heads": dict(update="slstm", saturation="identity", recurrence="heads", **_opts(recurrence={"heads": 4})),
    "lstm+heads": dict(update="lstm", recurrence="heads", **_opts(recurrence={"heads": 2})),
    "gru+g": dict(update="gru", saturation="g"),
}


def _rnn(case: str, d: int, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(zlib.crc32(case.encode()))
    return perturb_(cs.create_rnn(CellSpec(**CASES[case]), d, N, num_layers=layers).double())


@pytest.mark.parametrize("d", [5, N], ids=["d!=n", "d=n"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_modern_primitive_matches_reference(case: str, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new update / recurrence / saturation / init, two layers, random weights, random initial state,
    on the primitives' own step loop: output and final states equal the paper's equations (float64,
    6 steps, |Δ| < 1e-6)."""
    rnn = _rnn(case, d)
    with reference_loop(monkeypatch):
        assert_matches_reference(rnn, d)


@pytest.mark.parametrize("case", sorted(CASES))
def test_modern_primitive_default_path_matches_reference(case: str) -> None:
    """The same cases on the path each cell takes by default (the scan for mingru / minlstm / rg_lru with
    recurrence none, else the hand-written or derived path): equal to the reference."""
    rnn = _rnn(case, N)
    with fast.force_derived(False):
        assert_matches_reference(rnn, N)


@pytest.mark.parametrize("name", MODERN)
def test_card_matches_reference_and_its_spec(name: str) -> None:
    """The published card builds the spec its equations describe, and matches the reference (d ≠ n)."""
    torch.manual_seed(MODERN.index(name))
    rnn = perturb_(cs.create_rnn(name, 5, N, num_layers=2).double())
    assert_matches_reference(rnn, 5)


def test_reference_notices_a_wrong_equation() -> None:
    """The new references have power: minGRU's weights read as the plain form (identity) or as minLSTM's
    blocks differ from the g form, and sLSTM's two forget forms differ."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    g_form = perturb_(cs.create_rnn("mingru", 4, N).double())
    with torch.no_grad():
        out = g_form(x)[0]
        assert (out - reference_rnn(g_form, x, saturation="identity")[0]).abs().max() > 1e-3
        sig = perturb_(cs.create_rnn("slstm", 4, N).double())
        exp = cs.create_rnn(CellSpec(update="slstm", saturation="identity", options={"update": {"forget": "exp"}}),
                            4, N).double()
        exp.load_state_dict(sig.state_dict())
        assert (sig(x)[0] - reference_rnn(exp, x)[0]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------
# The parallel scan against the sequential loop

def _scan_case(steps: int, dtype: torch.dtype, positive: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(steps)
    a = torch.rand(steps, 3, 5, generator=g, dtype=dtype)          # decays from 0 to 1: the hard case
    b = torch.rand(steps, 3, 5, generator=g, dtype=dtype) + 0.01 if positive else \
        torch.randn(steps, 3, 5, generator=g, dtype=dtype)
    h0 = torch.rand(3, 5, generator=g, dtype=dtype) if positive else torch.randn(3, 5, generator=g, dtype=dtype)
    w = torch.randn(steps, 3, 5, generator=g, dtype=dtype)
    return a, b, h0, w


def _value_and_grads(fn: Any, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, w: torch.Tensor) -> list:
    leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    out = fn(*leaves)
    (out * w).sum().backward()
    return [out.detach(), *(t.grad for t in leaves)]


@pytest.mark.parametrize("form", ["chunked", "log", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 16, 17, 64, 100, 999, 1024, 4096])
def test_scan_equals_sequential_loop(steps: int, dtype: torch.dtype, form: str) -> None:
    """h, ∂/∂a, ∂/∂b and ∂/∂h0 of the scan equal the sequential loop's to |Δ| < 1e-5 (float32 and float64),
    at lengths that are and are not powers of two (and chunk sizes that do not divide T), in each form
    (the compiled one where the C library builds: tests/test_scan.py checks that it does)."""
    log = form == "log"
    case = _scan_case(steps, dtype, positive=log)
    want = _value_and_grads(sequential_scan, *case)
    got = _value_and_grads(lambda a, b, h0: scan.linear_scan(a, b, h0, log=log, compiled=form == "compiled"),
                           *case)
    for name, x, y in zip(("h", "da", "db", "dh0"), want, got):
        assert (x - y).abs().max().item() < 1e-5, name


def test_log_scan_falls_back_where_a_value_is_not_positive() -> None:
    """The log-space form needs a > 0 and b > 0: with a negative b (or a = 0) the chunked form runs, and
    the result is still the loop's."""
    a, b, h0, _ = _scan_case(50, torch.float64, positive=False)
    a[3] = 0.0
    assert torch.allclose(scan.linear_scan(a, b, h0, log=True), sequential_scan(a, b, h0), atol=1e-12)


def test_scan_chunks_are_about_sqrt_t() -> None:
    assert [scan.chunk_size(t) for t in (1, 2, 4, 5, 100, 2000, 4096)] == [1, 2, 2, 3, 10, 45, 64]
    assert scan.chunk_size(4096, log=True) == scan.LOG_CHUNK


@pytest.mark.parametrize("name", SCANNED)
def test_scan_cells_take_the_scan_and_equal_the_reference_loop(name: str) -> None:
    """mingru / minlstm / rg_lru (recurrence none) take the parallel scan; outputs, final state and every
    gradient (weights, input, initial state) equal the reference loop's, float64 and float32, at T = 1 and
    at a T that no chunk size divides. On the CPU the scans yield to the derived path's C loop where that
    runs (test_pwloop), not at these sizes: the scan runs them."""
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(1)
        model = perturb_(cs.create_rnn(name, 5, 6, num_layers=2).to(dtype), 0.3)
        for layer in model.layers:
            plan = fast.plan(layer)
            if plan.path == "derived":
                assert plan.run is not None
                plan = plan.run.fallback_plan
            assert plan.reason.split(" (")[0] == "parallel scan of h_t = a_t⊙h_(t−1) + b_t"
        for steps in (1, 37):
            x = torch.randn(3, steps, 5, dtype=dtype)
            state = tuple((0.5 * torch.rand(3, 6, dtype=dtype),) for _ in model.layers)
            assert_same(model, x, state)


@pytest.mark.parametrize("spec,why", [
    (CellSpec(update="mingru", saturation="g"), "recurrence 'free': the gates see h"),
    (CellSpec(update="slstm"), "no linear recurrence"),
])
def test_scan_declines_cells_whose_gates_see_h(spec: CellSpec, why: str) -> None:
    """With a recurrent matrix (or a non-linear update) the scan says why and another path runs."""
    from cellsearch.fast.scan import linear

    cell = cs.create_cell(spec, 3, 4)
    offer = linear(cell)
    assert isinstance(offer, str) and why in offer
    assert fast.plan(cell).path in ("derived", "fused")


def test_scan_declines_a_deep_transition() -> None:
    rnn = cs.create_rnn("mingru", 3, 4, depth={"transition": "deep_shortcut"})
    assert "deep transition" in scan.linear(rnn.layers[0])


def test_long_sequence_scan_equals_reference_loop() -> None:
    """A minGRU over T = 2000 (the bench length): the scan and the step loop agree in float32."""
    torch.manual_seed(0)
    model = cs.create_rnn("mingru", 4, 16)
    x = torch.randn(2, 2000, 4)
    with torch.no_grad():
        fast_out = model(x)[0]
        with fast.enabled(False):
            loop_out = model(x)[0]
    assert (fast_out - loop_out).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------------------
# Properties the papers state

def test_lru_init_spreads_a_to_the_c_uniformly_on_the_paper_range() -> None:
    """σ(Λ)^c ~ U[0.9, 0.999] (Griffin §2.4): within the range and uniform (Kolmogorov–Smirnov)."""
    cell = cs.create_cell("rg_lru", 4, 512)
    c = cell.update.decay_exponent
    values = (torch.sigmoid(cell.extra["lambda_"].double()) ** c).detach()
    assert values.min() >= 0.9 - 1e-9 and values.max() <= 0.999 + 1e-9
    assert kstest(((values - 0.9) / 0.099).numpy(), "uniform").pvalue > 1e-3


def test_minlstm_gates_are_normalized_and_g_is_positive() -> None:
    """minLSTM's f' + i' = 1 (so h stays a convex combination); g > 0, continuous at 0, linear above."""
    from cellsearch.primitives.saturation_g import g

    cell = perturb_(cs.create_cell("minlstm", 3, 5).double())
    x = torch.randn(7, 3, dtype=torch.float64)
    a, b = cell.update.coefficients(cell.context(), torch.nn.functional.linear(x, cell.weight_ih, cell.bias),
                                    None, None)
    cand = b / (1 - a)                                             # i'·h̃ / i' with i' = 1 − f'
    assert torch.all((a > 0) & (a < 1)) and torch.all(cand > 0)
    v = torch.tensor([-80.0, -1.0, -1e-9, 0.0, 1e-9, 2.0], dtype=torch.float64)
    assert torch.all(g(v) > 0) and abs(g(v)[2] - g(v)[4]) < 1e-8 and g(v)[-1] == 2.5


def test_diagonal_recurrence_is_diagonal_and_bounded() -> None:
    spec = CellSpec(update="vanilla", saturation="relu", recurrence="diagonal",
                    options={"recurrence": {"low": 0.5, "high": 3.0, "bound": 2.0}})
    cell = cs.create_cell(spec, 3, 6)
    u = cell.recurrence.matrix()
    assert torch.equal(u, torch.diag(torch.diagonal(u)))
    assert torch.diagonal(u).max() <= 2.0 and cell.recurrence.diag.min() >= 0.5


def test_slstm_state_is_stabilized_but_h_is_not_changed_by_it() -> None:
    """The stabilizer m only rescales c and n (eq. 15–17): with the same h, c/n and a shifted m, the next h
    is the same, and after a step max(log f + m, ĩ) = m' holds."""
    torch.manual_seed(0)
    cell = perturb_(cs.create_cell("slstm", 3, 4).double())
    x = torch.randn(2, 3, dtype=torch.float64)
    h, c, n = (torch.randn(2, 4, dtype=torch.float64) for _ in range(3))
    m = torch.zeros(2, 4, dtype=torch.float64)
    shift = 3.0
    h1, _ = cell(x, (h, c.abs() + 0.1, n.abs() + 0.1, m))
    scale = math.exp(-shift)
    h2, _ = cell(x, (h, (c.abs() + 0.1) * scale, (n.abs() + 0.1) * scale, m + shift))
    assert (h1 - h2).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------------
# The cards

COUNTS = {
    "mingru": lambda d, n: 2 * n * (d + 1),
    "minlstm": lambda d, n: 3 * n * (d + 1),
    "rg_lru": lambda d, n: 3 * n * (d + 1) + n,
    "indrnn": lambda d, n: n * (d + 2),
    "janet": lambda d, n: 2 * n * (d + n + 1),
    "slstm": lambda d, n: 4 * n * (d + n + 1),
}


@pytest.mark.parametrize("d,n", [(5, 7), (6, 6)])
@pytest.mark.parametrize("name", MODERN)
def test_modern_card_parameter_count(name: str, d: int, n: int) -> None:
    assert cs.count_parameters(cs.create_rnn(name, d, n)) == COUNTS[name](d, n)


REPORTED = {"janet": [99.0, 92.5, 98.5, 91.0], "mingru": [175], "minlstm": [175], "indrnn": [5000, 21]}


@pytest.mark.parametrize("name", MODERN)
def test_modern_card_carries_citation_and_sourced_numbers(name: str) -> None:
    card = cs.get_cell(name)
    assert card.citation and card.equations and card.formula
    assert sorted(card.reported.values()) == sorted(REPORTED.get(name, []))
    if not card.reported:
        assert "none quoted" in card.notes


def test_minlstm_refuses_gates_that_can_reach_zero() -> None:
    """f + i divides the state: a refined gate (σ(a)⊙x̃ can be 0 or negative) gave 0/0 in a sampled spec;
    the composer refuses it naming both primitives."""
    from cellsearch.cells import IncompatibleSpecError

    with pytest.raises(IncompatibleSpecError, match="minlstm.*refined|refined.*minlstm"):
        cs.create_cell(CellSpec(update="minlstm", gate="refined", recurrence="none"), 4, 4)


def test_modern_space_builds_and_seeds_its_published_cells() -> None:
    from pathlib import Path

    from cellsearch.config import ModelConfig
    from cellsearch.search.checks import load_space
    from cellsearch.search.space import SearchSpace

    root = Path(__file__).resolve().parents[1]
    space = SearchSpace(load_space(root / "spaces" / "modern.yaml"), ModelConfig())
    seeded = {s.user_attrs["published"] for s in space.seed_trials()}
    assert set(MODERN) <= seeded
    assert space.allowed["recurrence"]["slstm"] == ("free", "diagonal")        # none needs input-only gates
    assert "none" in space.allowed["recurrence"]["mingru"]


# ------------------------------------------------------------------------------------------------
# Independent implementations with copied weights (skipped where they are not installed)

def test_mingru_matches_mingru_pytorch() -> None:
    """lucidrains' minGRU-pytorch (log-space, no biases, h̃ = g(·)) with our weights copied in: the same
    outputs and input gradients from a zero state (its first step has no h_0 term)."""
    mingru_pytorch = pytest.importorskip("minGRU_pytorch")
    torch.manual_seed(0)
    theirs = mingru_pytorch.minGRU(6).double()
    ours = cs.create_rnn("mingru", 6, 6).double()
    cell = ours.layers[0]
    with torch.no_grad():
        hidden, gate = theirs.to_hidden_and_gate.weight.chunk(2, 0)
        cell.weight_ih.copy_(torch.cat([gate, hidden]))            # ours: blocks [z, h]
        cell.bias.zero_()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_theirs, out_ours = theirs(x1), ours(x2)[0]
    assert (out_theirs - out_ours).abs().max() < 1e-10
    out_theirs.sum().backward()
    out_ours.sum().backward()
    assert (x1.grad - x2.grad).abs().max() < 1e-10


def _torchrecurrent_cell(name: str) -> Any:
    cells = pytest.importorskip("torchrecurrent.cells")
    return getattr(cells, name)


@pytest.mark.parametrize("kind", ["janet", "indrnn"])
def test_matches_torchrecurrent(kind: str) -> None:
    """torchrecurrent 0.2.5's JANETCell / IndRNNCell (relu) with our weights copied in (their two biases
    summed into our one): the same states over 8 steps from a random state."""
    torch.manual_seed(0)
    d, n = 4, 5
    if kind == "janet":
        theirs = _torchrecurrent_cell("JANETCell")(d, n, beta=1.0).double()
        ours = cs.create_cell("janet", d, n).double()
    else:
        theirs = _torchrecurrent_cell("IndRNNCell")(d, n, nonlinearity="relu").double()
        ours = cs.create_cell("indrnn", d, n).double()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name != "beta":                                      # JANET's β stays 1, as ours
                p.normal_(0, 0.5)
        ours.weight_ih.copy_(theirs.weight_ih)
        ours.bias.copy_(theirs.bias_ih + theirs.bias_hh)
        if kind == "janet":
            ours.recurrence.weight.copy_(theirs.weight_hh)
        else:
            ours.recurrence.diag.copy_(theirs.vector_u.unsqueeze(0))
    h = torch.randn(3, n, dtype=torch.float64).abs()
    mine, c = (h,), h
    with torch.no_grad():
        for _ in range(8):
            x = torch.randn(3, d, dtype=torch.float64)
            if kind == "janet":
                h, c = theirs(x, (h, c))
            else:
                h = theirs(x, h)
            out, mine = ours(x, mine)
            assert (out - h).abs().max() < 1e-10


def test_heads_recurrence_is_block_diagonal_and_needs_a_divisible_size() -> None:
    """xLSTM's heads: each recurrent block is block diagonal (no mixing across heads), R·n²/heads weights;
    a head count that does not divide the hidden size is refused naming the option."""
    spec = CellSpec(update="slstm", saturation="identity", recurrence="heads", options={"recurrence": {"heads": 4}})
    cell = cs.create_cell(spec, 5, N)
    U = cell.recurrence.matrix().detach()
    d = N // 4
    for b in range(4):
        block = U[b * N:(b + 1) * N]
        mask = torch.block_diag(*[torch.ones(d, d)] * 4).bool()
        assert (block[~mask] == 0).all() and (block[mask] != 0).all()
    assert cell.recurrence.weight.numel() == 4 * N * N // 4
    with pytest.raises(cs.SpecError, match="recurrence.heads"):
        cs.create_cell(CellSpec(update="lstm", recurrence="heads", options={"recurrence": {"heads": 3}}), 5, N)
