"""MNIST-1D (Greydanus 2020): 40-step one-dimensional digit signals, 10 classes, generated from code."""

from __future__ import annotations

import random

import numpy as np

from ..registry import register_task
from ..spec import SpecError
from .base import Option
from .images import PixelSequenceTask

__all__ = ["MNIST1D", "generate_mnist1d"]


@register_task
class MNIST1D(PixelSequenceTask):
    """MNIST-1D: 40-step 1-D digit signals from the mnist1d package's generator; accuracy.

    The dataset is built from code with ``mnist1d.data.make_dataset`` and the package's default
    arguments (``num_samples`` = 5000, generator seed 42: the published dataset), never through its
    downloading getter. The package's 80/20 split gives 4000 training and 1000 test sequences;
    ``n_valid`` = 500 training sequences are held out for validation (fixed by ``data_seed``). The signal
    is already standardized (mean 0, std 1).
    """

    name = "mnist1d"
    input_size = 1
    scale = 1.0
    options = {
        "n_valid": Option(500, "int", low=1, help="validation sequences split off the training set"),
        "num_samples": Option(5000, "int", low=20, help="sequences generated (80 % train, 20 % test)"),
        "generator_seed": Option(42, "int", help="seed of the mnist1d generator (42: the published set)"),
    }

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Generated float signals x [N, 40, 1] and labels."""
        d = generate_mnist1d(self.num_samples, self.generator_seed)
        if self.n_valid >= len(d["x"]):
            raise SpecError("task.n_valid", self.n_valid, f"fewer than the {len(d['x'])} training sequences")
        seq = (d["x"].astype(np.float32)[..., None], d["x_test"].astype(np.float32)[..., None])
        return seq[0], d["y"].astype(np.int64), seq[1], d["y_test"].astype(np.int64)


def generate_mnist1d(num_samples: int = 5000, seed: int = 42) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays from the package's builder (no download); global RNG state is restored."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
