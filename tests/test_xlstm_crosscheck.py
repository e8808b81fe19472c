"""The ``slstm`` update against the ``xlstm`` package's own sLSTM cell (NX-AI, the authors' code), with copied
weights (issue 14).

Theirs: ``xlstm.blocks.slstm.cell.sLSTMCell`` with ``backend="vanilla"`` — the pure-PyTorch cell
(``slstm/src/vanilla/slstm.py``), run on CPU in float64 (the config's dtype names only bf16/fp16/fp32, but
the vanilla path computes in the dtype of its parameters and input, so ``.double()`` is float64 throughout).
Its layout, as copied here:

- the cell takes the input pre-activations W x_t (no input weights of its own), gates concatenated
  [i, f, z, o], each hidden-size wide (``input_shape="BSGNH"``); ours are blocks [o, i, f, z] of ``weight_ih``;
- one bias per unit and gate (external layout [heads, gates, head_dim]); ours is the one ``bias``;
- recurrent kernel (external layout [heads, head_dim_in, gates, head_dim_out]): each head's units see only
  their own head's h — the same block-diagonal R as our ``recurrence: heads`` (one head = our ``free``);
- states (y, c, n, m), zeros at the start; pointwise step: log f = logsigmoid(f̃) (ours ``forget: sigmoid``;
  there is no ``exp`` forget in the package, so that option is not cross-checked), m' = max(ĩ, log f + m),
  i' = min(exp(ĩ − m'), 1), f' = min(exp(log f + m − m'), 1), c' = f'c + i' tanh(z̃), n' = f'n + i',
  y' = σ(õ) c'/n' — our equations; the min(·, 1) is a no-op since m' bounds both exponents.

The one difference, and why it does not show in h: when every entry of n is 0 (the zero start) their code
takes m_1 = ĩ_1 (a branch on tensor values, ``torch.all(n == 0)``); ours always uses m_0 = 0, so
m_1 = max(log f_1, ĩ_1). The stabilized c, n, m then differ by a per-unit factor exp(m), but they stand for
the same unstabilized state: c/n and log n + m agree at every step, and so does h = o⊙c/n. Measured over 10
steps from the zero state (float64, weights ~ N(0, 0.5²), biases ~ N(0, 1); about 60/40 of the unit-steps
take the ĩ / log f + m arm of the max), 1, 2 and 4 heads: |Δh|, |Δ(c/n)|, |Δ(log n + m)| ≤ 9e-16 and the
input gradients ≤ 7e-16 (rounding only), while |Δm| is up to 4.0 at step 1 and reaches 0 within 2–6 steps;
asserted < 1e-10 as the other cross-checks in tests/test_modern.py.

Not compared (not part of the cell): the sLSTM *layer* around the cell in the package — head-wise
(block-diagonal) input projections, a causal convolution + SiLU feeding i and f, and a multi-head group norm
on the output; ours has one full W and no normalisation (the ``slstm`` card says it is the cell only).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import cellsearch as cs
from cellsearch import CellSpec, fast

xlstm_cell = pytest.importorskip("xlstm.blocks.slstm.cell",
                                 reason="the xlstm package is not installed (pip install xlstm)")

THEIRS = ("i", "f", "z", "o")          # the package's gate order; ours is the cell's blocks [o, i, f, z]


def _pair(heads: int, d: int = 5, n: int = 8) -> tuple[Any, Any]:
    """Our cell (``slstm`` card for one head, ``recurrence: heads`` otherwise) with random weights, and the
    package's vanilla cell with the same recurrent kernel and bias copied in; both float64."""
    torch.manual_seed(heads)
    if heads == 1:
        ours = cs.create_cell("slstm", d, n)
    else:
        ours = cs.create_cell(CellSpec(update="slstm", saturation="identity", recurrence="heads",
                                       options={"recurrence": {"heads": heads}}), d, n)
    ours = ours.double()
    assert [b.name for b in ours.blocks] == ["o", "i", "f", "z"]
    config = xlstm_cell.sLSTMCellConfig(hidden_size=n, num_heads=heads, backend="vanilla",
                                        input_shape="BSGNH", output_shape="BSH")
    theirs = xlstm_cell.sLSTMCell(config).double()
    assert type(theirs).__name__ == "sLSTMCell_vanilla"
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.5)
        ours.bias.normal_(0, 1)
        dh = n // heads
        # ours: block b's recurrent matrix is blockdiag over heads of [dh_out, dh_in]
        rec = ours.recurrence.weight.view(4, heads, dh, dh)
        order = [ours.block_slice(g).start // n for g in THEIRS]
        ext = rec[order].permute(1, 3, 0, 2)                    # [heads, dh_in, gates, dh_out]
        theirs.recurrent_kernel[...] = ext
        bias = torch.stack([ours.bias[ours.block_slice(g)].view(heads, dh) for g in THEIRS], 1)
        theirs.bias[...] = bias                                  # [heads, gates, dh]
        assert torch.equal(theirs.recurrent_kernel[...], ext) and torch.equal(theirs.bias[...], bias)
    return ours, theirs


def _preactivations(ours: Any, x: torch.Tensor) -> torch.Tensor:
    """W x in the package's input layout [..., (i, f, z, o) × hidden]; the bias lives in its cell."""
    w = torch.cat([ours.weight_ih[ours.block_slice(g)] for g in THEIRS])
    return x @ w.t()


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_slstm_states_match_xlstm_vanilla_cell(heads: int) -> None:
    """Step by step from the zero state over 10 steps: h agrees, and the stabilized states stand for the
    same unstabilized (c, n) (c/n and log n + m agree) although m itself differs after the first step
    where log f_1 > ĩ_1 (their m_1 = ĩ_1, ours max(log f_1, ĩ_1)). Both arms of the max occur."""
    ours, theirs = _pair(heads)
    B, T, d = 3, 10, ours.input_size
    x = torch.randn(T, B, d, dtype=torch.float64)
    zero = torch.zeros(B, ours.hidden_size, dtype=torch.float64)
    mine, state = (zero, zero, zero, zero), None
    took_input = took_forget = 0
    with torch.no_grad():
        for t in range(T):
            h_prev, m_prev = mine[0], mine[3]
            out, state = theirs(_preactivations(ours, x[t]).unsqueeze(1), state)
            h, mine = ours(x[t], mine)
            y, c, n, m = state
            h_o, c_o, n_o, m_o = mine
            assert (out[:, 0] - h).abs().max() < 1e-10
            assert (y - h_o).abs().max() < 1e-10
            assert (c / n - c_o / n_o).abs().max() < 1e-10
            assert (n.log() + m - (n_o.log() + m_o)).abs().max() < 1e-10
            # which arm of our m' = max(log f + m, ĩ) this step took
            a = torch.nn.functional.linear(x[t], ours.weight_ih, ours.bias) + h_prev @ ours.recurrence.matrix().t()
            i_raw = a[:, ours.block_slice("i")]
            log_f_m = torch.nn.functional.logsigmoid(a[:, ours.block_slice("f")]) + m_prev
            took_input += int((i_raw > log_f_m).sum())
            took_forget += int((i_raw < log_f_m).sum())
    assert took_input > 0 and took_forget > 0


@pytest.mark.parametrize("heads", [1, 4])
def test_slstm_sequence_and_input_gradients_match_xlstm(heads: int) -> None:
    """A whole 10-step sequence in one call on each side (ours on its default path and on the reference
    loop): the same outputs and the same gradients with respect to the input x."""
    ours, theirs = _pair(heads)
    B, T, d = 2, 10, ours.input_size
    x = torch.randn(T, B, d, dtype=torch.float64)
    probe = torch.randn(T, B, ours.hidden_size, dtype=torch.float64)
    x_theirs = x.clone().requires_grad_(True)
    out_theirs, _ = theirs(_preactivations(ours, x_theirs).transpose(0, 1))
    out_theirs = out_theirs.transpose(0, 1)                     # [T, B, n]
    (out_theirs * probe).sum().backward()
    for default_path in (True, False):
        x_ours = x.clone().requires_grad_(True)
        with fast.enabled(default_path):
            out_ours, _ = ours.forward_sequence(x_ours)
        (out_ours * probe).sum().backward()
        assert (out_ours - out_theirs).abs().max() < 1e-10
        assert (x_ours.grad - x_theirs.grad).abs().max() < 1e-10
