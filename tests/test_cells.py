"""Cells: parity with torch.nn.LSTM / nn.GRU, parameter counts, the published cells against the float64
reference, and the contract every registered cell keeps (parametrized over the registry, like timm's
test_models.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from fast_paths import fast_paths_of, forced, reference_loop
from reference import assert_matches_reference, perturb_
from torch import nn

import cellsearch as cs

PUBLISHED = ["lstm", "gru", "mgu", "vanilla", "star", "ur_lstm", "ur_gru", "u_lstm", "r_lstm", "chrono_lstm",
             "refined_lstm", "refined_gru", "refined_mgu", "asrnn", "dt_rnn", "dts_rnn", "dots_rnn"]
CELLS = cs.list_cells()
D, N, B, T = 5, 8, 3, 6


def test_every_published_cell_is_registered() -> None:
    """The 17 cells of PRIMITIVES.md §8 are registered (through the root pyproject's entry points)."""
    assert set(PUBLISHED) <= set(CELLS)
    assert cs.plugin_errors() == []


# ----------------------------------------------------------------------------------------------------
# Parity with torch.nn
def _reorder(t: torch.Tensor, order: list[int]) -> torch.Tensor:
    return torch.cat([t.chunk(len(order))[j] for j in order])


LSTM_ORDER = [0, 1, 3, 2]  # ours [i, f, o, u] from torch's chunks [i, f, g, o]


def _copy_from_lstm(ref: nn.LSTM, rnn: nn.Module) -> None:
    with torch.no_grad():
        for l, layer in enumerate(rnn.layers):
            assert [b.name for b in layer.blocks] == ["i", "f", "o", "u"]
            p = {k: getattr(ref, f"{k}_l{l}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            layer.weight_ih.copy_(_reorder(p["weight_ih"], LSTM_ORDER))
            layer.recurrence.weight.copy_(_reorder(p["weight_hh"], LSTM_ORDER))
            layer.bias.copy_(_reorder(p["bias_ih"] + p["bias_hh"], LSTM_ORDER))


def _copy_from_gru(ref: nn.GRU, rnn: nn.Module) -> None:
    with torch.no_grad():
        for l, layer in enumerate(rnn.layers):
            assert [b.name for b in layer.blocks] == ["r", "z", "h"]
            p = {k: getattr(ref, f"{k}_l{l}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            layer.weight_ih.copy_(p["weight_ih"])
            layer.recurrence.weight.copy_(p["weight_hh"])
            n = layer.hidden_size
            layer.bias.copy_(torch.cat([p["bias_ih"][:2 * n] + p["bias_hh"][:2 * n], p["bias_ih"][2 * n:]]))
            layer.extra["bias_hn"].copy_(p["bias_hh"][2 * n:])


def _loss(out: torch.Tensor, h_n: torch.Tensor, c_n: torch.Tensor | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + (h_n * torch.randn(h_n.shape, generator=g)).sum()
    return loss if c_n is None else loss + (c_n * torch.randn(c_n.shape, generator=g)).sum()


def _grads_lstm(layer: nn.Module, ref: nn.LSTM, l: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = {k: getattr(ref, f"{k}_l{l}").grad for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return [(layer.weight_ih.grad, _reorder(g["weight_ih"], LSTM_ORDER)),
            (layer.recurrence.weight.grad, _reorder(g["weight_hh"], LSTM_ORDER)),
            (layer.bias.grad, _reorder(g["bias_ih"], LSTM_ORDER)),
            (layer.bias.grad, _reorder(g["bias_hh"], LSTM_ORDER))]


def _grads_gru(layer: nn.Module, ref: nn.GRU, l: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = {k: getattr(ref, f"{k}_l{l}").grad for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    n = layer.hidden_size
    return [(layer.weight_ih.grad, g["weight_ih"]), (layer.recurrence.weight.grad, g["weight_hh"]),
            (layer.bias.grad, g["bias_ih"]), (layer.bias.grad[:2 * n], g["bias_hh"][:2 * n]),
            (layer.extra["bias_hn"].grad, g["bias_hh"][2 * n:])]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_parity_with_torch_nn(kind: str) -> None:
    """Composed lstm / gru with weights copied from torch.nn.LSTM / nn.GRU (two layers, 7 steps, float32):
    outputs, final states and the gradients of every weight and of the input agree to 1e-5."""
    torch.manual_seed(0)
    d, n, steps = 5, 16, 7
    ref = (nn.LSTM if kind == "lstm" else nn.GRU)(d, n, num_layers=2, batch_first=True)
    rnn = cs.create_rnn(kind, d, n, num_layers=2)
    (_copy_from_lstm if kind == "lstm" else _copy_from_gru)(ref, rnn)
    x = torch.randn(4, steps, d)
    x_ref = x.clone().requires_grad_(True)
    x.requires_grad_(True)
    out_ref, st_ref = ref(x_ref)
    out, states = rnn(x)
    h_n = torch.stack([s[0] for s in states])
    c_n = torch.stack([s[1] for s in states]) if kind == "lstm" else None
    if kind == "lstm":
        h_ref, c_ref = st_ref
        assert (c_n - c_ref).abs().max() < 1e-5
    else:
        h_ref, c_ref = st_ref, None
    assert (out - out_ref).abs().max() < 1e-5 and (h_n - h_ref).abs().max() < 1e-5
    _loss(out, h_n, c_n).backward()
    _loss(out_ref, h_ref, c_ref).backward()
    assert (x.grad - x_ref.grad).abs().max() < 1e-5
    grads = _grads_lstm if kind == "lstm" else _grads_gru
    for l, layer in enumerate(rnn.layers):
        for mine, theirs in grads(layer, ref, l):
            assert (mine - theirs).abs().max() < 1e-5


# ----------------------------------------------------------------------------------------------------
# Parameter counts
def _dt(d: int, n: int) -> int:
    return n * (d + n + 1) + n * (n + 1)


COUNTS: dict[str, Callable[[int, int], int]] = {
    "vanilla": lambda d, n: n * (d + n + 1),
    "lstm": lambda d, n: 4 * n * (d + n + 1),
    "chrono_lstm": lambda d, n: 4 * n * (d + n + 1),
    "ur_lstm": lambda d, n: 4 * n * (d + n + 1),
    "r_lstm": lambda d, n: 4 * n * (d + n + 1),
    "u_lstm": lambda d, n: 3 * n * (d + n + 1),
    "mgu": lambda d, n: 2 * n * (d + n + 1),
    "star": lambda d, n: n * (2 * d + n + 2),
    "gru": lambda d, n: 3 * n * (d + n + 1) + n,  # PyTorch's b_hn is kept (GRU docstring)
    "ur_gru": lambda d, n: 4 * n * (d + n + 1) + n,
    "refined_lstm": lambda d, n: 4 * n * (d + n + 1) + (n * d if d != n else 0),
    "refined_gru": lambda d, n: 3 * n * (d + n + 1) + n + (n * d if d != n else 0),
    "refined_mgu": lambda d, n: 2 * n * (d + n + 1) + (n * d if d != n else 0),
    "asrnn": lambda d, n: n * (d + n + 1),  # free parameters
    "dt_rnn": _dt,
    "dts_rnn": lambda d, n: _dt(d, n) + n * n,
    "dots_rnn": lambda d, n: _dt(d, n) + n * n + n * (n + 1),
}


@pytest.mark.parametrize("d,n", [(5, 7), (6, 6)])
@pytest.mark.parametrize("name", PUBLISHED)
def test_count_parameters_matches_formula(name: str, d: int, n: int) -> None:
    """cs.count_parameters of a one-layer network equals the card's formula (PRIMITIVES.md §1–§6), for
    d ≠ n and d = n; a second layer adds the formula at d = n (without a second deep output)."""
    assert cs.count_parameters(cs.create_rnn(name, d, n)) == COUNTS[name](d, n)
    two = cs.count_parameters(cs.create_rnn(name, d, n, num_layers=2))
    extra_out = n * (n + 1) if name == "dots_rnn" else 0
    assert two == COUNTS[name](d, n) + COUNTS[name](n, n) - extra_out


def test_counts_quoted_in_primitives_md() -> None:
    """d = n = 128: STAR 49,408; GRU 98,688 (+128 for the kept b_hn, as the GRU docstring and card say);
    LSTM 131,584."""
    from cellsearch.primitives.update import GRU

    assert cs.count_parameters(cs.create_cell("star", 128, 128)) == 49_408
    assert cs.count_parameters(cs.create_cell("gru", 128, 128)) == 98_688 + 128
    assert cs.count_parameters(cs.create_cell("lstm", 128, 128)) == 131_584
    assert "b_hn" in (GRU.__doc__ or "") and "3n(d+n+1) + n" in cs.get_cell("gru").equations


REPORTED = {"star": [1.30, 92.7], "ur_lstm": [99.28, 96.96, 97.58, 74.4, 34.6], "asrnn": [1.46],
            "dts_rnn": [3.206, 8.278, 6.988, 1.409], "dots_rnn": [3.215, 8.437, 6.973, 1.386]}


@pytest.mark.parametrize("name", CELLS)
def test_card_carries_formula_equations_citation(name: str) -> None:
    """Every registered cell has a formula, equations and a citation; published cards carry the numbers
    PRIMITIVES.md quotes."""
    card = cs.get_cell(name)
    assert card.name == name and card.formula and card.equations and card.citation
    assert set(REPORTED.get(name, [])) <= set(card.reported.values())


# ----------------------------------------------------------------------------------------------------
# Published cells against the reference
def _published_rnn(name: str, d: int) -> nn.Module:
    torch.manual_seed(PUBLISHED.index(name))
    rnn = perturb_(cs.create_rnn(name, d, N, num_layers=2).double())
    assert rnn.depth == cs.get_cell(name).depth.replace(layers=2)
    return rnn


@pytest.mark.parametrize("d", [D, N], ids=["d!=n", "d=n"])
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_cell_matches_reference(name: str, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each published cell (with its card's depth), two layers, random weights, on the primitives' own step
    loop (fast paths off): outputs and final states equal the float64 reference written from PRIMITIVES.md
    (6 steps, |Δ| < 1e-6)."""
    rnn = _published_rnn(name, d)
    with reference_loop(monkeypatch):
        assert_matches_reference(rnn, d)


FAST_PUBLISHED = [pytest.param(name, path, id=f"{name}-{path}")
                  for name in PUBLISHED for path in fast_paths_of(name, D, N, num_layers=2)]


@pytest.mark.parametrize("d", [D, N], ids=["d!=n", "d=n"])
@pytest.mark.parametrize("name,path", FAST_PUBLISHED)
def test_published_cell_fast_path_matches_reference(name: str, path: str, d: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each published cell on every fast path it can take (native torch kernels, fused with C pointwise
    kernels, fused with torch ops; tests/fast_paths.py), against the same float64 reference."""
    rnn = _published_rnn(name, d)
    with forced(path, rnn, monkeypatch):
        assert_matches_reference(rnn, d)


# ----------------------------------------------------------------------------------------------------
# The contract of every registered cell
@pytest.mark.parametrize("name", CELLS)
def test_cell_forward_backward_reaches_every_parameter(name: str) -> None:
    """Forward on [B, T, d] gives [B, T, n], finite; one backward gives every parameter a finite, non-zero
    gradient."""
    torch.manual_seed(0)
    rnn = cs.create_rnn(name, D, N, num_layers=2)
    out, state = rnn(torch.randn(B, T, D))
    assert out.shape == (B, T, N) and len(state) == 2
    assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for layer in state for s in layer)
    out.pow(2).mean().backward()
    for pname, p in rnn.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: zero gradient at {pname}"


@pytest.mark.parametrize("name", CELLS)
def test_one_step_cell_equals_sequence_path(name: str) -> None:
    """cs.create_cell stepped by hand equals its whole-sequence path and the network's first layer
    (same parameter names), from a zero and from a given state."""
    torch.manual_seed(0)
    cell = perturb_(cs.create_cell(name, D, N).double())
    rnn = cs.create_rnn(name, D, N).double()
    assert cell.state_dict().keys() == rnn.layers[0].state_dict().keys()
    x = torch.randn(T, B, D, dtype=torch.float64)
    with torch.no_grad():
        for state in (None, tuple(torch.randn(B, N, dtype=torch.float64) for _ in cell.initial_state(B, x))):
            st, outs = state, []
            for x_t in x:
                h, st = cell(x_t, st)
                outs.append(h)
            seq_out, seq_state = cell.forward_sequence(x, state)
            assert (torch.stack(outs) - seq_out).abs().max() < 1e-12
            assert all((a - b).abs().max() < 1e-12 for a, b in zip(st, seq_state, strict=True))


@pytest.mark.parametrize("name", CELLS)
def test_cell_trains_under_autocast(name: str) -> None:
    """Under CPU bf16 autocast every cell runs forward and backward: the input GEMM runs in bf16, the
    recurrence in float32 (the parameters' dtype), so the state is float32 and the output stays within bf16
    rounding of the float32 run."""
    torch.manual_seed(0)
    rnn = cs.create_rnn(name, D, N, num_layers=2)
    x = torch.randn(B, T, D)
    reference, _ = rnn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = rnn(x)
    assert all(s.dtype == torch.float32 for layer in state for s in layer)
    assert (out.float() - reference).abs().max() < 0.05
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rnn.parameters())


@pytest.mark.parametrize("name", CELLS)
def test_block_layout_is_addressable(name: str) -> None:
    """Block names are unique (block_slice reaches each one, e.g. UR-GRU's reset gate r and refine block),
    recurrent blocks lead the layout, and the slices tile weight_ih, bias and the recurrent matrix."""
    cell = cs.create_cell(name, D, N)
    names = [b.name for b in cell.blocks]
    assert len(set(names)) == len(names)
    recurrent = [b.recurrent for b in cell.blocks]
    assert recurrent == sorted(recurrent, reverse=True)
    assert [cell.block_slice(b).start for b in names] == list(range(0, len(names) * N, N))
    assert cell.weight_ih.shape == (len(names) * N, D) and cell.bias.shape == (len(names) * N,)
    assert cell.recurrence.matrix().shape == (sum(recurrent) * N, N)


@pytest.mark.parametrize("name", ["ur_lstm", "refined_gru", "asrnn", "dots_rnn"])
def test_a_built_model_pickles_and_keeps_its_outputs(name: str) -> None:
    """Models travel through pickle (Ray, multiprocessing, torch.save of a whole module) unchanged."""
    import pickle

    torch.manual_seed(0)
    rnn = cs.create_rnn(name, 3, 5, num_layers=2)
    x = torch.randn(2, 4, 3)
    copy = pickle.loads(pickle.dumps(rnn))
    assert torch.equal(copy(x)[0], rnn(x)[0])
