"""Synthetic memory tasks (PRIMITIVES.md §7): the adding problem and two copy-task variants.

Training batches are fresh samples (batch ``i`` of epoch ``e`` is drawn from ``rng([seed, e, i])``, so a
run is deterministic given the training seed); the validation and test sets are fixed by ``data_seed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_task
from .base import ArrayLoader, GeneratedLoader, Loaders, Option, Task, one_hot

__all__ = ["AddingTask", "CopyTask", "adding_batch", "copy_batch", "BLANK", "MARKER", "N_SYMBOLS"]

#: Copy-task alphabet: 0 = blank, 1..8 = data symbols, 9 = marker / cue.
BLANK, MARKER, N_SYMBOLS = 0, 9, 8

_SIZES = {
    "n_train": Option(10_000, "int", low=1, help="training samples per epoch (fresh every batch)"),
    "n_valid": Option(1_000, "int", low=1, help="validation samples (fixed by data_seed)"),
    "n_test": Option(1_000, "int", low=1, help="test samples (fixed by data_seed)"),
    "data_seed": Option(0, "int", help="seed of the fixed validation and test sets"),
}


class SyntheticTask(Task):
    """Shared loaders of the synthetic tasks: fresh training samples, fixed valid/test sets."""

    options = _SIZES

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples ``(x, y)`` drawn with ``rng``."""
        raise NotImplementedError

    def collate(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        """Arrays of one batch → tensors."""
        raise NotImplementedError

    def fixed_split(self, split: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The fixed validation (split 1) or test (split 2) set."""
        return self.generate(np.random.default_rng([self.data_seed, split]), n)

    def make_loaders(self, batch_size: int, seed: int = 0, bptt: int | None = None) -> Loaders:
        """Fresh training batches from ``seed``; validation and test fixed by ``data_seed``."""
        train = GeneratedLoader(self.generate, self.n_train, batch_size, self.collate, seed)
        valid = ArrayLoader(self.fixed_split(1, self.n_valid), batch_size, self.collate)
        test = ArrayLoader(self.fixed_split(2, self.n_test), batch_size, self.collate)
        return Loaders(train, valid, test)


@register_task
class AddingTask(SyntheticTask):
    """Adding problem: sum the two marked values of a T-step sequence; MSE (baseline 1/6).

    x ∈ R^{T×2}: x[:, 0] ~ U[0, 1]; x[:, 1] is 0 except two 1s, one at i1 ∈ [0, T/2) and one at
    i2 ∈ [T/2, T); the target is x[i1, 0] + x[i2, 0], read from the last step. Predicting the mean 1
    gives MSE Var(U₁ + U₂) = 1/6 ≈ 0.167; "solved" is MSE < 0.01.
    """

    name = "adding"
    options = {"seq_len": Option(50, "int", low=2, help="sequence length T")}
    input_size, output_size = 2, 1
    readout, metric, metric_direction = "last", "mse", "minimize"
    baseline = 1.0 / 6.0

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` adding samples of length ``seq_len``."""
        return adding_batch(rng, n, self.seq_len)

    def collate(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        """Float tensors x [B, T, 2], y [B, 1]."""
        return torch.from_numpy(x), torch.from_numpy(y)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean squared error of the last-step prediction."""
        return F.mse_loss(output, target)

    def metric_value(self, output: Tensor, target: Tensor) -> float:
        """Mean squared error."""
        return float(F.mse_loss(output, target))


def adding_batch(rng: np.random.Generator, n: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` adding-problem samples: x [n, T, 2] float32, y [n, 1] float32 (see :class:`AddingTask`)."""
    half = (seq_len + 1) // 2  # i1 < T/2 <= i2 for integer indices
    x = np.zeros((n, seq_len, 2), dtype=np.float32)
    x[:, :, 0] = rng.random((n, seq_len), dtype=np.float32)
    rows = np.arange(n)
    i1 = rng.integers(0, half, n)
    i2 = rng.integers(half, seq_len, n)
    x[rows, i1, 1] = 1.0
    x[rows, i2, 1] = 1.0
    y = (x[rows, i1, 0] + x[rows, i2, 0])[:, None]
    return x, y.astype(np.float32)


@register_task
class CopyTask(SyntheticTask):
    """Copy task: recall K symbols after a delay of L blanks; cross-entropy (baseline by variant).

    Alphabet (input one-hot of size 10): 0 = blank, 1..8 = data symbols, 9 = marker/cue. Outputs are
    logits over 9 classes (0 = blank, 1..8 = symbols). Both variants have length L + 2K and start with the
    K data symbols (uniform over 1..8):

    - ``arjovsky`` (Arjovsky et al. 2016): K data, L − 1 blanks, one marker at step K + L − 1, K blanks;
      the target is blank for the first L + K steps and the K data symbols for the last K; the loss is
      averaged over **every** step. Memoryless baseline (blanks, then uniform over 8):
      K·ln 8 / (L + 2K).
    - ``gu`` (Gu et al. 2020): K data, L blanks, then K cue tokens (9); the loss is averaged over the
      last K outputs only, which must reproduce the data. Memoryless baseline ln 8 ≈ 2.079.

    The metric ``xent`` is the mean cross-entropy (nats) over the scored steps.
    """

    name = "copy"
    options = {
        "delay": Option(100, "int", low=1, help="L, the number of blank steps between data and recall"),
        "k": Option(10, "int", low=1, help="K, the number of symbols to copy"),
        "variant": Option("arjovsky", "str", choices=("arjovsky", "gu")),
    }
    input_size, output_size = N_SYMBOLS + 2, N_SYMBOLS + 1
    readout, metric, metric_direction = "all", "xent", "minimize"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seq_len = self.delay + 2 * self.k
        self.baseline = (self.k * math.log(N_SYMBOLS) / self.seq_len if self.variant == "arjovsky"
                         else math.log(N_SYMBOLS))

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` copy samples of this variant."""
        return copy_batch(rng, n, self.delay, self.k, self.variant)

    def collate(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        """One-hot x [B, L+2K, 10] and integer targets y."""
        return one_hot(x, self.input_size), torch.as_tensor(y, dtype=torch.long)

    def scored(self, output: Tensor) -> Tensor:
        """The outputs the loss reads: every step (arjovsky) or the last K (gu)."""
        return output if self.variant == "arjovsky" else output[:, -self.k:]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy over the scored steps."""
        out = self.scored(output)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    def metric_value(self, output: Tensor, target: Tensor) -> float:
        """Mean cross-entropy (nats) over the scored steps."""
        return float(self.loss(output, target))

    def weight(self, target: Tensor) -> int:
        """Scored steps in the batch."""
        return int(target.numel())


def copy_batch(rng: np.random.Generator, n: int, delay: int, k: int, variant: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` copy samples: x [n, L+2K] int64 tokens, y [n, L+2K] (arjovsky) or [n, K] (gu) labels."""
    length = delay + 2 * k
    data = rng.integers(1, N_SYMBOLS + 1, (n, k))
    x = np.full((n, length), BLANK, dtype=np.int64)
    x[:, :k] = data
    if variant == "arjovsky":
        x[:, k + delay - 1] = MARKER
        y = np.full((n, length), BLANK, dtype=np.int64)
        y[:, -k:] = data
        return x, y
    x[:, k + delay:] = MARKER
    return x, data.astype(np.int64)
