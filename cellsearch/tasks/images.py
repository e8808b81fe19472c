"""Pixel-sequence classification: 8×8 digits (bundled with scikit-learn), sMNIST / pMNIST, sCIFAR-10.

An image is read one pixel per step in row-major order (sCIFAR: one RGB pixel, 3 features, per step);
the permuted variants apply one fixed permutation of the steps, drawn from ``permutation_seed``. Labels
are read from the last step (cross-entropy; accuracy). MNIST and CIFAR-10 come from local files under
``data_dir`` (default ``$CELLSEARCH_DATA`` or ``~/.cache/cellsearch/data``): nothing is downloaded.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from ..registry import register_task
from ..spec import SpecError
from .base import ArrayLoader, ClassificationTask, Loaders, Option, data_dir, split_indices
from .files import load_cifar10, load_mnist

__all__ = ["PixelSequenceTask", "SeqDigits", "PermDigits", "PixelMNIST", "PermMNIST", "SeqCIFAR10"]


class PixelSequenceTask(ClassificationTask):
    """Shared machinery: uint8 images as [N, T, C] sequences, a fixed split, optional permutation.

    Subclasses implement :meth:`load` → ``(x_train, y_train, x_test, y_test)`` with x as [N, T, C]
    integers, and set ``scale`` (x / scale ∈ [0, 1]) and optionally per-channel ``mean`` / ``std``.
    """

    permuted: bool = False
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    output_size = 10
    options = {
        "n_valid": Option(5000, "int", low=1, help="validation images split off the training set"),
        "n_train": Option(None, "int", low=1, nullable=True, help="cap on training images (None: all)"),
        "data_seed": Option(0, "int", help="seed of the train/valid split"),
    }

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The raw arrays ``(x_train, y_train, x_test, y_test)``."""
        raise NotImplementedError

    @cached_property
    def arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"train" | "valid" | "test": (x [N, T, C] uint8, y [N] int64)}`` after split and permutation."""
        x, y, x_test, y_test = self.load()
        if self.n_valid >= len(x):
            raise SpecError("task.n_valid", self.n_valid, f"fewer than the {len(x)} training images")
        train, valid, _ = split_indices(len(x), self.n_valid, 0, self.data_seed)
        if self.n_train is not None:
            train = train[:self.n_train]
        order = self.permutation(x.shape[1])
        pick = (lambda a: a[:, order]) if order is not None else (lambda a: a)
        return {"train": (pick(x[train]), y[train]), "valid": (pick(x[valid]), y[valid]),
                "test": (pick(x_test), y_test)}

    def permutation(self, steps: int) -> np.ndarray | None:
        """The fixed step permutation (permuted variants), else None."""
        if not self.permuted:
            return None
        return np.random.default_rng(self.permutation_seed).permutation(steps)

    def collate(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        """Float x [B, T, C] (scaled and normalized) and labels [B]."""
        xf = torch.from_numpy(x.astype(np.float32)) / self.scale
        xf = (xf - torch.tensor(self.mean)) / torch.tensor(self.std)
        return xf, torch.as_tensor(y, dtype=torch.long)

    def make_loaders(self, batch_size: int, seed: int = 0, bptt: int | None = None) -> Loaders:
        """Shuffled training batches (order from ``seed``), fixed validation and test batches."""
        a = self.arrays
        return Loaders(ArrayLoader(a["train"], batch_size, self.collate, shuffle=True, seed=seed),
                       ArrayLoader(a["valid"], batch_size, self.collate),
                       ArrayLoader(a["test"], batch_size, self.collate))


_PERMUTATION = {"permutation_seed": Option(0, "int", help="seed of the fixed pixel permutation")}


@register_task
class SeqDigits(PixelSequenceTask):
    """Sequential 8×8 digits: scikit-learn's bundled digits, one pixel per step (64 steps); accuracy.

    1797 images (values 0..16, standardized to mean 0, std 1 over the whole set); a fixed random split
    (``data_seed``) into ``n_valid`` = 250 validation, ``n_test`` = 250 test and the rest (1297) for
    training. Fully offline.
    """

    name = "seq_digits"
    input_size = 1
    seq_len = 64  # steps per sequence (read by primitives that take it from the task: chrono's T_max)
    scale = 16.0
    mean, std = (4.884 / 16.0,), (6.017 / 16.0,)  # of all 1797 images, so the inputs are standardized
    options = {
        "n_valid": Option(250, "int", low=1, help="validation images"),
        "n_test": Option(250, "int", low=1, help="test images"),
    }

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The digits with the test images split off first (the split fixed by ``data_seed``)."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.images.reshape(len(digits.images), 64, 1).astype(np.uint8)
        y = digits.target.astype(np.int64)
        if self.n_valid + self.n_test >= len(x):
            raise SpecError("task.n_test", self.n_test, f"n_valid + n_test < {len(x)}")
        order = np.random.default_rng([self.data_seed, 7]).permutation(len(x))
        test, rest = order[:self.n_test], order[self.n_test:]
        return x[rest], y[rest], x[test], y[test]


@register_task
class PermDigits(SeqDigits):
    """Permuted sequential 8×8 digits: as seq_digits with one fixed pixel permutation (permutation_seed)."""

    name = "perm_digits"
    permuted = True
    options = _PERMUTATION


class MNISTTask(PixelSequenceTask):
    """MNIST from local files, one pixel per step (784 steps), pixels / 255."""

    input_size = 1
    seq_len = 784  # steps per sequence (chrono's T_max from the task)
    options = {"data_dir": Option(None, "path", nullable=True,
                                  help="folder with mnist.npz or the four IDX files")}

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x [N, 784, 1] uint8 and labels from ``data_dir``."""
        d = load_mnist(data_dir(self.data_dir))
        return (_pixels(d["x_train"]), d["y_train"].astype(np.int64),
                _pixels(d["x_test"]), d["y_test"].astype(np.int64))


@register_task
class PixelMNIST(MNISTTask):
    """Sequential MNIST (sMNIST): 784 steps of one pixel; accuracy; local files under data_dir.

    Expects ``mnist.npz`` (keys x_train, y_train, x_test, y_test) or the IDX files
    train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte
    (optionally gzipped) in ``data_dir``, ``data_dir/mnist`` or ``data_dir/MNIST/raw``. Validation: 5000
    training images (fixed by ``data_seed``).
    """

    name = "pixel_mnist"


@register_task
class PermMNIST(MNISTTask):
    """Permuted sequential MNIST (pMNIST): sMNIST with one fixed pixel permutation (permutation_seed)."""

    name = "perm_mnist"
    permuted = True
    options = _PERMUTATION


@register_task
class SeqCIFAR10(PixelSequenceTask):
    """Sequential CIFAR-10 (sCIFAR): 1024 steps of one RGB pixel (3 features); accuracy; local files.

    Expects the python version of CIFAR-10 (``data_batch_1`` … ``data_batch_5``, ``test_batch``) in
    ``data_dir/cifar-10-batches-py`` or ``data_dir``. Pixels / 255, normalized per channel with the
    training-set mean and standard deviation of CIFAR-10.
    """

    name = "seq_cifar10"
    input_size = 3
    seq_len = 1024  # steps per sequence (chrono's T_max from the task)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    options = {"data_dir": Option(None, "path", nullable=True, help="folder with cifar-10-batches-py")}

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x [N, 1024, 3] uint8 (row-major pixels, RGB features) and labels from ``data_dir``."""
        d = load_cifar10(data_dir(self.data_dir))
        return _rgb_pixels(d["x_train"]), d["y_train"], _rgb_pixels(d["x_test"]), d["y_test"]


def _pixels(images: np.ndarray) -> np.ndarray:
    """[N, H, W] grey images → [N, H·W, 1] row-major pixel sequences."""
    return np.asarray(images, dtype=np.uint8).reshape(len(images), -1, 1)


def _rgb_pixels(images: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] channel-first images → [N, H·W, 3] row-major RGB pixel sequences."""
    return images.reshape(len(images), 3, -1).transpose(0, 2, 1).copy()
