"""Character-level language modelling (PTB-char layout), bits per character, truncated BPTT.

Corpus sources, by the ``path`` option:

- a folder holding ``train.txt`` / ``valid.txt`` / ``test.txt`` or PTB-char's ``ptb.char.train.txt`` /
  ``ptb.char.valid.txt`` / ``ptb.char.test.txt``;
- a single text file: split by position into the first 90 % (train), next 5 % (valid), last 5 % (test);
- nothing (default): the Python standard library's own top-level ``*.py`` sources, in file-name order,
  concatenated until ``max_chars`` (default 3 000 000) characters, characters outside printable ASCII and
  newline replaced by ``?``, split by position 90 / 5 / 5. Deterministic for a given Python installation;
  :attr:`CharLM.checksum` identifies the exact corpus.

Tokens are characters, except for PTB-char files (``tokens: symbols``, chosen automatically for
``ptb.char.*`` names): there every whitespace-separated symbol of a line is a token (``_`` marks word
boundaries) and each line ends with an ``<eos>`` token, as in the standard PTB-char setup. The vocabulary
is every token of the three splits, sorted. Inputs are one-hot; the model predicts the next token at every
step (readout ``all``); the loss is the mean cross-entropy in nats, the metric BPC = loss / ln 2.

The training stream is cut into ``batch_size`` parallel streams (``batchify``) and read in chunks of
``bptt`` steps; consecutive chunks continue each other, so the trainer carries the state across them
(``stateful``). The memoryless baseline is the entropy (bits) of the validation split under the
training split's unigram distribution.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_task
from ..spec import SpecError
from .base import Loaders, Option, Task, one_hot
from .files import DataNotFoundError

__all__ = ["CharLM", "Corpus", "stdlib_corpus", "read_corpus", "StreamLoader", "EOS"]

EOS = "<eos>"
SPLITS = ("train", "valid", "test")
_LAYOUTS = (("train.txt", "valid.txt", "test.txt"),
            ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt"))
_PRINTABLE = {chr(c) for c in range(32, 127)} | {"\n"}


class Corpus:
    """Three token lists (train / valid / test), their sorted vocabulary and a checksum."""

    def __init__(self, splits: dict[str, list[str]], source: str) -> None:
        self.splits, self.source = splits, source
        self.vocab = sorted(set().union(*(set(s) for s in splits.values())))
        self.index = {t: i for i, t in enumerate(self.vocab)}
        digest = hashlib.sha256()
        for name in SPLITS:
            digest.update(f"{name}:{len(splits[name])}:".encode())
            digest.update("\x00".join(splits[name]).encode())
        self.checksum = digest.hexdigest()

    def ids(self, split: str) -> np.ndarray:
        """The token ids of one split."""
        return np.fromiter((self.index[t] for t in self.splits[split]), dtype=np.int64,
                           count=len(self.splits[split]))


def _clean(text: str) -> str:
    return "".join(c if c in _PRINTABLE else "?" for c in text)


def _split_positions(tokens: Sequence[str]) -> dict[str, list[str]]:
    n = len(tokens)
    a, b = int(n * 0.9), int(n * 0.95)
    return {"train": list(tokens[:a]), "valid": list(tokens[a:b]), "test": list(tokens[b:])}


def stdlib_corpus(max_chars: int = 3_000_000) -> Corpus:
    """The default corpus: the standard library's top-level ``*.py`` files (see the module docstring)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        text = _clean(path.read_text(encoding="utf-8", errors="replace"))
        parts.append(text[:max_chars - total])
        total += len(parts[-1])
        if total >= max_chars:
            break
    return Corpus(_split_positions("".join(parts)), f"Python {sysconfig.get_python_version()} stdlib {root}")


def _tokenize(text: str, symbols: bool) -> list[str]:
    if not symbols:
        return list(text)
    out: list[str] = []
    for line in text.splitlines():
        out += line.split()
        out.append(EOS)
    return out


def read_corpus(path: str | Path, tokens: str = "auto", max_chars: int | None = None) -> Corpus:
    """A corpus from a folder (train/valid/test files) or one text file (split 90/5/5)."""
    path = Path(path)
    if path.is_dir():
        files = next((names for names in _LAYOUTS if all((path / n).is_file() for n in names)), None)
        if files is None:
            raise DataNotFoundError(f"char_lm: {path} holds none of the layouts "
                                    f"{[list(names) for names in _LAYOUTS]}", "task.path")
        symbols = tokens == "symbols" or (tokens == "auto" and files[0].startswith("ptb.char"))
        texts = [(path / n).read_text(encoding="utf-8", errors="replace")[:max_chars] for n in files]
        return Corpus({s: _tokenize(t, symbols) for s, t in zip(SPLITS, texts)}, str(path))
    if not path.is_file():
        raise DataNotFoundError(f"char_lm: no such file or folder {str(path)!r} (expected a text file or a "
                                f"folder with {list(_LAYOUTS[0])} or {list(_LAYOUTS[1])})", "task.path")
    symbols = tokens == "symbols" or (tokens == "auto" and path.name.startswith("ptb.char"))
    text = path.read_text(encoding="utf-8", errors="replace")[:max_chars]
    return Corpus(_split_positions(_tokenize(text, symbols)), str(path))


class StreamLoader:
    """Truncated-BPTT batches: ``ids`` as ``batch_size`` parallel streams read ``bptt`` steps at a time.

    Yields ``(one_hot(x) [B, l, V], y [B, l])`` with ``y`` the next token of every position; chunk ``i+1``
    continues chunk ``i`` in every stream. Deterministic (no shuffling).
    """

    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, vocab: int) -> None:
        streams = max(1, min(batch_size, (len(ids) - 1) // 2))
        width = (len(ids) - 1) // streams
        if width < 1:
            raise SpecError("task.path", len(ids), "a split with at least 2 tokens")
        self.x = torch.as_tensor(ids[:streams * width].reshape(streams, width))
        self.y = torch.as_tensor(ids[1:streams * width + 1].reshape(streams, width))
        self.bptt, self.vocab = bptt, vocab

    def __len__(self) -> int:
        return -(-self.x.shape[1] // self.bptt)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, self.x.shape[1], self.bptt):
            yield one_hot(self.x[:, i:i + self.bptt], self.vocab), self.y[:, i:i + self.bptt]


@register_task
class CharLM(Task):
    """Character-level language model: next-character prediction, bits per character, truncated BPTT.

    ``path``: PTB-char folder, a train/valid/test folder or any text file; default: the Python standard
    library's sources (a few MB, deterministic). See :mod:`cellsearch.tasks.text`.
    """

    name = "char_lm"
    readout, metric, metric_direction, stateful = "all", "bpc", "minimize", True
    options = {
        "path": Option(None, "path", nullable=True, help="text file or folder; default: stdlib sources"),
        "tokens": Option("auto", "str", choices=("auto", "chars", "symbols")),
        "max_chars": Option(None, "int", low=100, nullable=True,
                            help="characters read (default corpus: 3 000 000; files: all)"),
        "bptt": Option(100, "int", low=1, help="truncated-BPTT length (TrainConfig.bptt overrides it)"),
    }

    @cached_property
    def corpus(self) -> Corpus:
        """The corpus, read once."""
        if self.path is None:
            return stdlib_corpus(self.max_chars or 3_000_000)
        return read_corpus(self.path, self.tokens, self.max_chars)

    @property
    def checksum(self) -> str:
        """sha256 of the corpus splits (identifies the exact data)."""
        return self.corpus.checksum

    @property
    def input_size(self) -> int:  # type: ignore[override]
        """Vocabulary size (one-hot inputs)."""
        return len(self.corpus.vocab)

    @property
    def output_size(self) -> int:  # type: ignore[override]
        """Vocabulary size (next-token logits)."""
        return len(self.corpus.vocab)

    @cached_property
    def baseline(self) -> float:  # type: ignore[override]
        """Bits per token of the validation split under the training split's unigram distribution."""
        counts = Counter(self.corpus.splits["train"])
        total, v = sum(counts.values()), len(self.corpus.vocab)
        valid = Counter(self.corpus.splits["valid"])
        n = sum(valid.values())
        nats = -sum(c * math.log((counts.get(t, 0) + 1) / (total + v)) for t, c in valid.items())
        return nats / max(n, 1) / math.log(2)

    def make_loaders(self, batch_size: int, seed: int = 0, bptt: int | None = None) -> Loaders:
        """Stream loaders of every split (train in ``batch_size`` streams); ``bptt`` overrides the option."""
        length, v = bptt or self.bptt, len(self.corpus.vocab)
        return Loaders(*(StreamLoader(self.corpus.ids(s), batch_size, length, v) for s in SPLITS))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean next-token cross-entropy (nats)."""
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def metric_value(self, output: Tensor, target: Tensor) -> float:
        """Bits per character."""
        return float(self.loss(output, target)) / math.log(2)

    def weight(self, target: Tensor) -> int:
        """Predicted tokens in the batch."""
        return int(target.numel())
