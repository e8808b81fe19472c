"""Exactly-LSTM and exactly-GRU layers on torch's native RNN kernels (oneDNN on CPU, cuDNN on CUDA).

Our weights are re-ordered into torch's layout once per call (the autograd graph of that re-ordering
carries the gradients back to our parameters):

- LSTM: our blocks [i, f, o, u] → torch's [i, f, g, o] (g = our u); our single bias goes in ``b_ih``,
  ``b_hh`` is zero (its gradient is discarded).
- GRU: our blocks [r, z, h] already are torch's [r, z, n]; ``b_ih`` = our bias and
  ``b_hh`` = [0, 0, b_hn] with our extra candidate bias b_hn.

The recurrent matrix is whatever the recurrence primitive forms (free or orthogonal): it is built once
per sequence by autograd, outside the kernel.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["lstm_sequence", "gru_sequence"]

State = tuple[Tensor, ...]


def _lstm_order(w: Tensor, n: int) -> Tensor:
    i_f, o, u = w[: 2 * n], w[2 * n: 3 * n], w[3 * n: 4 * n]
    return torch.cat([i_f, u, o], 0)


@contextmanager
def _quiet(x: Tensor) -> Iterator[None]:
    """cuDNN warns that re-ordered weights are "not part of single contiguous chunk": expected here."""
    if not x.is_cuda:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
        yield


def lstm_sequence(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
    """x [T, B, d] → (out [T, B, n], (h_T, c_T)) with ``torch.lstm``."""
    n = cell.hidden_size
    w_ih = _lstm_order(cell.weight_ih, n)
    w_hh = _lstm_order(cell.recurrence.matrix(), n)
    b_ih = _lstm_order(cell.bias, n)
    h0, c0 = state
    weights = [w_ih, w_hh, b_ih, torch.zeros_like(b_ih)]
    with _quiet(x):
        out, h, c = torch.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)), weights, True, 1, 0.0,
                               torch.is_grad_enabled(), False, False)
    return out, (h[0], c[0])


def gru_sequence(cell: Any, x: Tensor, state: State) -> tuple[Tensor, State]:
    """x [T, B, d] → (out [T, B, n], (h_T,)) with ``torch.gru``."""
    n = cell.hidden_size
    b_hn = cell.extra["bias_hn"]
    b_hh = torch.cat([b_hn.new_zeros(2 * n), b_hn])
    (h0,) = state
    with _quiet(x):
        out, h = torch.gru(x, h0.unsqueeze(0), [cell.weight_ih, cell.recurrence.matrix(), cell.bias, b_hh],
                           True, 1, 0.0, torch.is_grad_enabled(), False, False)
    return out, (h[0],)
