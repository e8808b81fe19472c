"""The training recipe a study's ``train`` mapping names: :class:`TrainConfig`, validated key by key.

Torch-free, so that reading a study file checks its training settings without importing the trainer
(:mod:`cellsearch.train` runs them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import did_you_mean
from ..spec import SpecError
from .options import Option

__all__ = ["TrainConfig", "OPTIMIZERS", "PRECISIONS"]

OPTIMIZERS = ("adam", "rmsprop", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

_RULES: dict[str, Option] = {
    "epochs": Option(3, "int", low=1),
    "steps": Option(None, "int", low=1, nullable=True),
    "steps_per_epoch": Option(None, "int", low=1, nullable=True),
    "batch_size": Option(64, "int", low=1),
    "lr": Option(1e-3, "float", gt=0),
    "optimizer": Option("adam", "str", choices=OPTIMIZERS),
    "momentum": Option(0.0, "float", low=0, lt=1),
    "weight_decay": Option(0.0, "float", low=0),
    "clip": Option(1.0, "float", gt=0, nullable=True),
    "dropout": Option(0.0, "float", low=0, lt=1),
    "seed": Option(0, "int", low=0),
    "device": Option("auto", "str"),
    "threads": Option(None, "int", low=1, nullable=True),
    "progress": Option(None, "bool", nullable=True),
    "bptt": Option(None, "int", low=1, nullable=True),
    "eval_batches": Option(None, "int", low=1, nullable=True),
    "test": Option(False, "bool"),
    "precision": Option("fp32", "str", choices=PRECISIONS),
    "tf32": Option(True, "bool"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (validated; ``from_dict`` names a bad key as ``train.<key>``).

    ``steps`` (a total step budget) overrides ``epochs``; ``steps_per_epoch`` caps the batches between
    evaluations; ``clip`` is the gradient-norm bound (None: no clipping); ``dropout`` applies between
    stacked layers; ``device`` is auto | cpu | cuda | cuda:N; ``threads`` sets torch's CPU threads for
    the run; ``progress`` None shows a bar only on a terminal; ``bptt`` overrides a stateful task's
    truncated-BPTT length; ``eval_batches`` caps validation batches per evaluation; ``test`` also
    evaluates the test split at the end (``final["test_loss"]``, ``final["test_<metric>"]``);
    ``precision`` fp32 | bf16 | fp16 runs forward passes under autocast (fp16 with a gradient scaler; each
    recurrent cell keeps its state in float32 on its fast path); ``tf32`` lets CUDA matrix products use
    TF32 (on by default; no effect on the CPU).
    """

    epochs: int = 3
    steps: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip: float | None = 1.0
    dropout: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool | None = None
    bptt: int | None = None
    eval_batches: int | None = None
    test: bool = False
    precision: str = "fp32"
    tf32: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _RULES[f.name].check(f.name, getattr(self, f.name), "train"))
        if not _DEVICE.match(self.device):
            raise SpecError("train.device", self.device, "one of auto, cpu, cuda, cuda:N, mps")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TrainConfig:
        """A config from a mapping; unknown keys raise SpecError(``train.<key>``)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise SpecError("train", data, f"a mapping with keys {sorted(_RULES)}")
        for key in data:
            if key not in _RULES:
                raise SpecError(f"train.{key}", key, f"{did_you_mean(key, _RULES)}one of {sorted(_RULES)}")
        return cls(**dict(data))

    @classmethod
    def coerce(cls, config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
        """A TrainConfig from a TrainConfig, a mapping or None (the defaults)."""
        return config if isinstance(config, TrainConfig) else cls.from_dict(config)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict."""
        return asdict(self)
