"""Tiny dataset files in the standard on-disk formats, written by the tests (no downloads, no mocks)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An IDX file (MNIST's format): magic 0,0,0x08 (uint8), ndim, big-endian dims, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def mnist_arrays(n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28×28 uint8 images and labels 0..9."""
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}


def write_mnist_idx(root: Path, gz: bool = False, **sizes: int) -> dict[str, np.ndarray]:
    """The four MNIST IDX files in ``root`` (optionally gzipped); returns the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    a = mnist_arrays(**sizes)
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for key, name in names.items():
        write_idx(root / name, a[key], gz)
    return a


def write_mnist_npz(root: Path, **sizes: int) -> dict[str, np.ndarray]:
    """``mnist.npz`` (Keras layout) in ``root``; returns the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    a = mnist_arrays(**sizes)
    np.savez(root / "mnist.npz", **a)
    return a


def write_cifar10(root: Path, per_batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-10 python batches (protocol-2 pickles, bytes keys) in ``root/cifar-10-batches-py``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=2)
        xs.append(data)
        ys.append(labels)
    return {"x_train": np.concatenate(xs[:5]), "y_train": np.concatenate(ys[:5]), "x_test": xs[5],
            "y_test": np.asarray(ys[5])}


PTB_LINES = {
    "train": ["a e r _ b a n k n o t e", "t h e _ c a t _ s a t", "o n _ t h e _ m a t _ a g a i n"] * 20,
    "valid": ["t h e _ m a t", "a _ c a t _ s a t"] * 5,
    "test": ["b a n k _ n o t e", "t h e _ e n d"] * 5,
}


def write_ptb_char(root: Path) -> Path:
    """PTB-char files ``ptb.char.{train,valid,test}.txt``: space-separated characters, ``_`` between words."""
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in PTB_LINES.items():
        (root / f"ptb.char.{split}.txt").write_text("".join(f" {line} \n" for line in lines))
    return root


def music_dataset() -> dict[str, list[list[tuple[float, ...]]]]:
    """A JSB-style dataset: pieces of frames of MIDI note numbers (floats, as in the original pickle)."""
    rng = np.random.default_rng(0)

    def piece(length: int) -> list[tuple[float, ...]]:
        return [tuple(float(n) for n in sorted(rng.choice(np.arange(40, 90), rng.integers(0, 5), False)))
                for _ in range(length)]

    return {"train": [piece(n) for n in (9, 5, 12, 7)], "valid": [piece(n) for n in (6, 11, 3)],
            "test": [piece(n) for n in (8, 4)]}


def write_music_pickle(path: Path) -> dict[str, list[list[tuple[float, ...]]]]:
    """A protocol-2 pickle of :func:`music_dataset` (the JSB Chorales / Nottingham layout)."""
    data = music_dataset()
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return data
