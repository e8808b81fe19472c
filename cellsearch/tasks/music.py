"""Polyphonic music modelling (Boulanger-Lewandowski et al. 2012; Pascanu et al. 2014): piano rolls.

A piece is a sequence of frames; a frame is the set of MIDI notes sounding, as an 88-dim binary vector
(piano range A0 = 21 … C8 = 108; notes outside it are dropped). The model reads frame t and predicts
frame t+1 as 88 independent Bernoullis (sigmoid outputs, readout ``all``); the loss and the metric ``nll``
are the negative log-likelihood per time step, −Σ_j log p(v_{t+1,j}), averaged over every predicted step
of every piece (the first frame is given, not predicted). Pieces of a batch are padded and masked.

Data, by the ``path`` option:

- the standard JSB Chorales / Nottingham / MuseData / Piano-midi.de file layout: a pickle (or JSON) of
  ``{"train": [...], "valid": [...], "test": [...]}``, each a list of pieces, each a list of frames, each a
  list of MIDI note numbers;
- nothing (default): Bach chorales built from music21's bundled corpus — the 371 Riemenschneider
  chorales, of which 350 distinct files (repeated numbers are kept once, first occurrence), in catalogue
  order; each piece flattened and sampled on the quarter-note grid (frame k holds every note sounding at
  offset k quarter notes: onset ≤ k < onset + duration). Fixed split by catalogue position i (0-based):
  i mod 5 = 3 → valid, i mod 5 = 4 → test, else train (60 / 20 / 20). The build takes ~1 minute once and is
  cached as JSON (same layout) under ``cache_dir`` (default ``$CELLSEARCH_CACHE`` or
  ``~/.cache/cellsearch``); ``max_pieces`` builds only the first N pieces.

The memoryless baseline is the NLL per step of the validation frames under independent per-note
frequencies estimated on the training frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_task
from ..spec import SpecError
from .base import ArrayLoader, Loaders, Option, Task, cache_dir
from .files import DataNotFoundError, safe_pickle_load

__all__ = ["PolyphonicMusic", "build_bach_chorales", "load_music", "piano_roll", "music_checksum",
           "LOW_NOTE", "N_NOTES"]

LOW_NOTE, N_NOTES = 21, 88
SPLITS = ("train", "valid", "test")
Dataset = dict[str, list[list[list[int]]]]
_CACHE_VERSION = 1


def piano_roll(piece: list[Any]) -> np.ndarray:
    """A piece (frames of MIDI note numbers) as a binary roll [T, 88] (uint8)."""
    roll = np.zeros((len(piece), N_NOTES), dtype=np.uint8)
    for t, frame in enumerate(piece):
        for note in frame:
            j = int(round(float(note))) - LOW_NOTE
            if 0 <= j < N_NOTES:
                roll[t, j] = 1
    return roll


def music_checksum(data: Dataset) -> str:
    """sha256 of the canonical JSON of a dataset."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_music(path: str | Path) -> Dataset:
    """A ``{"train", "valid", "test"}`` music file (pickle, Python 2 pickles included, or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"polyphonic_music: no file {str(path)!r}; expected a pickle or JSON of "
                                "{'train': [...], 'valid': [...], 'test': [...]} (JSB Chorales, Nottingham, "
                                "MuseData, Piano-midi.de layout)", "task.path")
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        raw = safe_pickle_load(path)
    if not isinstance(raw, dict) or any(s not in raw for s in SPLITS):
        raise SpecError("task.path", str(path), "a mapping with keys 'train', 'valid' and 'test'")
    return {s: [[sorted(int(round(float(n))) for n in frame) for frame in piece] for piece in raw[s]]
            for s in SPLITS}


def _chorale_files() -> list[str]:
    from music21 import corpus

    names = corpus.chorales.Iterator(numberingSystem="riemenschneider", returnType="filename")
    return list(dict.fromkeys(str(n) for n in names))


def _quarter_frames(name: str) -> list[list[int]]:
    from music21 import corpus

    flat = corpus.parse(name).flatten()
    steps = int(math.ceil(float(flat.highestTime)))
    frames: list[set[int]] = [set() for _ in range(steps)]
    for element in flat.notes:
        onset, end = float(element.offset), float(element.offset) + float(element.quarterLength)
        for k in range(math.ceil(onset), min(math.ceil(end), steps)):
            frames[k].update(p.midi for p in element.pitches)
    return [sorted(f) for f in frames]


def build_bach_chorales(max_pieces: int | None = None) -> Dataset:
    """Bach chorales from music21's corpus as quarter-note frames, split by catalogue position."""
    names = _chorale_files()[:max_pieces]
    data: Dataset = {s: [] for s in SPLITS}
    for i, name in enumerate(names):
        split = {3: "valid", 4: "test"}.get(i % 5, "train")
        data[split].append(_quarter_frames(name))
    return data


def cached_bach_chorales(max_pieces: int | None = None, directory: str | Path | None = None) -> Dataset:
    """:func:`build_bach_chorales`, built once and cached as JSON."""
    tag = "all" if max_pieces is None else str(max_pieces)
    path = cache_dir(directory) / f"bach_chorales_quarter_{tag}_v{_CACHE_VERSION}.json"
    if path.is_file():
        return load_music(path)
    logging.getLogger("cellsearch").info("building Bach chorales from music21 (once, ~1 min): %s", path)
    data = build_bach_chorales(max_pieces)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)
    return data


@register_task
class PolyphonicMusic(Task):
    """Polyphonic music: 88-note piano rolls, next-frame NLL per step (Pascanu et al. 2014).

    ``path``: a JSB Chorales / Nottingham / MuseData pickle; default: Bach chorales from music21's corpus
    (cached). See :mod:`cellsearch.tasks.music`.
    """

    name = "polyphonic_music"
    input_size, output_size = N_NOTES, N_NOTES
    readout, metric, metric_direction = "all", "nll", "minimize"
    options = {
        "path": Option(None, "path", nullable=True, help="pickle/JSON in the JSB layout; default: music21"),
        "cache_dir": Option(None, "path", nullable=True, help="where the music21 build is cached"),
        "max_pieces": Option(None, "int", low=5, nullable=True, help="build only the first N chorales"),
    }

    @cached_property
    def data(self) -> Dataset:
        """The three splits as lists of pieces of frames of MIDI notes."""
        if self.path is not None:
            return load_music(self.path)
        return cached_bach_chorales(self.max_pieces, self.cache_dir)

    @property
    def checksum(self) -> str:
        """sha256 of the dataset's canonical JSON."""
        return music_checksum(self.data)

    @cached_property
    def rolls(self) -> dict[str, list[np.ndarray]]:
        """Piano rolls [T, 88] of every piece with at least two frames, per split."""
        out = {s: [r for r in map(piano_roll, self.data[s]) if len(r) >= 2] for s in SPLITS}
        for s in ("train", "valid"):
            if not out[s]:
                raise SpecError("task.path", self.path, f"a dataset whose {s} split has a piece of 2+ frames")
        return out

    @cached_property
    def baseline(self) -> float:  # type: ignore[override]
        """NLL per step of the validation targets under per-note training frequencies."""
        train = np.concatenate([r[1:] for r in self.rolls["train"]]).astype(np.float64)
        p = np.clip(train.mean(0), 1e-6, 1 - 1e-6)
        valid = np.concatenate([r[1:] for r in self.rolls["valid"]]).astype(np.float64)
        nll = -(valid * np.log(p) + (1 - valid) * np.log1p(-p)).sum(1)
        return float(nll.mean())

    def collate(self, index: np.ndarray, split: str) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Padded x [B, T, 88], targets (y [B, T, 88], mask [B, T])."""
        rolls = [self.rolls[split][i] for i in index]
        steps = max(len(r) for r in rolls) - 1
        x = torch.zeros(len(rolls), steps, N_NOTES)
        y = torch.zeros(len(rolls), steps, N_NOTES)
        mask = torch.zeros(len(rolls), steps)
        for b, r in enumerate(rolls):
            t = torch.from_numpy(r.astype(np.float32))
            x[b, :len(r) - 1], y[b, :len(r) - 1], mask[b, :len(r) - 1] = t[:-1], t[1:], 1.0
        return x, (y, mask)

    def make_loaders(self, batch_size: int, seed: int = 0, bptt: int | None = None) -> Loaders:
        """Shuffled training pieces (order from ``seed``); validation and test in file order."""
        def loader(split: str, shuffle: bool) -> ArrayLoader | None:
            n = len(self.rolls[split])
            return ArrayLoader([np.arange(n)], batch_size, lambda i: self.collate(i, split),
                               shuffle=shuffle, seed=seed) if n else None
        return Loaders(loader("train", True), loader("valid", False), loader("test", False))

    def loss(self, output: Tensor, target: tuple[Tensor, Tensor]) -> Tensor:
        """Mean over valid steps of −Σ_notes log p (Bernoulli NLL per step)."""
        y, mask = target
        per_step = F.binary_cross_entropy_with_logits(output, y, reduction="none").sum(-1)
        return (per_step * mask).sum() / mask.sum().clamp_min(1.0)

    def metric_value(self, output: Tensor, target: tuple[Tensor, Tensor]) -> float:
        """NLL per time step (nats)."""
        return float(self.loss(output, target))

    def weight(self, target: tuple[Tensor, Tensor]) -> int:
        """Predicted (unpadded) steps in the batch."""
        return int(target[1].sum())
