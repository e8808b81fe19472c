"""Readers for the standard on-disk dataset formats (MNIST idx / npz, CIFAR-10 python batches, pickles).

Nothing here downloads: every reader takes local files and, when they are absent, raises
:class:`DataNotFoundError` naming the files it looked for.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import SpecError

__all__ = ["DataNotFoundError", "find_file", "read_idx", "load_mnist", "load_cifar10", "safe_pickle_load"]


class DataNotFoundError(SpecError, FileNotFoundError):
    """A dataset's files are not where the task looked; the message names them and the folders searched.

    A :class:`~cellsearch.spec.SpecError` (a user mistake: the CLI prints it as one line) and a
    :class:`FileNotFoundError`.
    """

    def __init__(self, message: str, where: str = "task.data_dir") -> None:
        ValueError.__init__(self, message)
        self.where, self.value, self.allowed = where, None, message


def find_file(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first ``dir/name`` that exists, trying every name in every dir."""
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally gzipped) as a numpy array."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    with _open(Path(path)) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape).astype(dtypes[raw[2]][1:])


_MNIST_IDX = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
MNIST_EXPECTED = ("mnist.npz (x_train, y_train, x_test, y_test) or the four IDX files "
                  "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                  "t10k-labels-idx1-ubyte (optionally .gz)")


def mnist_dirs(root: Path) -> list[Path]:
    """Folders searched for MNIST under ``root`` (plain, ``mnist/``, torchvision's ``MNIST/raw``)."""
    return [root, root / "mnist", root / "MNIST" / "raw", root / "MNIST"]


def load_mnist(root: str | Path) -> dict[str, np.ndarray]:
    """MNIST as ``{"x_train": [N, 28, 28] uint8, "y_train", "x_test", "y_test"}`` from local files."""
    dirs = mnist_dirs(Path(root))
    npz = find_file(dirs, ["mnist.npz"])
    if npz is not None:
        with np.load(npz, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
    out = {}
    for key, stems in _MNIST_IDX.items():
        path = find_file(dirs, [s + ext for s in stems for ext in ("", ".gz")])
        if path is None:
            raise DataNotFoundError(f"MNIST not found: expected {MNIST_EXPECTED} in one of "
                                    f"{[str(d) for d in dirs]}; set the task's data_dir")
        out[key] = read_idx(path)
    return out


CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def load_cifar10(root: str | Path) -> dict[str, np.ndarray]:
    """CIFAR-10 (python version) as ``{"x_train": [N, 3, 32, 32] uint8, "y_train", "x_test", "y_test"}``."""
    root = Path(root)
    dirs = [root / "cifar-10-batches-py", root]
    found = next((d for d in dirs if all((d / f).is_file() for f in CIFAR_FILES)), None)
    if found is None:
        raise DataNotFoundError(f"CIFAR-10 not found: expected the python batches {list(CIFAR_FILES)} in one "
                                f"of {[str(d) for d in dirs]}; set the task's data_dir")
    parts = [_cifar_batch(found / f) for f in CIFAR_FILES]
    x_train = np.concatenate([p[0] for p in parts[:-1]])
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    return {"x_train": x_train, "y_train": y_train, "x_test": parts[-1][0], "y_test": parts[-1][1]}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_pickle_load(path)
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no 'data' / 'labels')")
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "set"), ("builtins", "frozenset"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"), ("builtins", "object"), ("__builtin__", "object"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def safe_pickle_load(path: str | Path) -> Any:
    """A data pickle (Python 2 ones included) restricted to containers, numbers and numpy arrays."""
    with open(path, "rb") as f:
        return _SafeUnpickler(f, encoding="latin1").load()
