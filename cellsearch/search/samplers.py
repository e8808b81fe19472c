"""Samplers and pruners by name, for every backend (the Ray backend hands the same sampler to OptunaSearch).

A seeded sampler is reseeded before every trial from ``search.seed`` and the trial's number
(:class:`_PerTrialSeed`), so a fresh run is reproducible while a continued run (or another worker) draws new
points instead of replaying the first ones.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from ..config import StudyConfig
from ..errors import UserError

__all__ = ["constructor_arguments", "construct", "make_sampler", "make_pruner"]

_SAMPLERS: dict[str, Callable[[], Any]] = {
    "tpe": lambda: _per_trial(optuna.samplers.TPESampler),
    "random": lambda: _per_trial(optuna.samplers.RandomSampler),
    "cmaes": lambda: _per_trial(optuna.samplers.CmaEsSampler),
    "gp": lambda: _per_trial(optuna.samplers.GPSampler),
    "nsga2": lambda: _per_trial(optuna.samplers.NSGAIISampler),
}
_PRUNERS: dict[str, Callable[[], Any]] = {
    "median": lambda: optuna.pruners.MedianPruner,
    "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": lambda: optuna.pruners.HyperbandPruner,
    "none": lambda: optuna.pruners.NopPruner,
}



def constructor_arguments(kind: str, name: str) -> set[str]:
    """Keyword arguments the Optuna class behind sampler / pruner ``name`` accepts."""
    cls = (_SAMPLERS if kind == "sampler" else _PRUNERS)[name]()
    return {p for p in inspect.signature(cls).parameters if p not in ("self", "seed")}


def construct(kind: str, name: str, args: Any = ()) -> Any:
    """A sampler / pruner built from its name and keyword arguments (unseeded: validation builds one to
    let Optuna check the arguments before anything runs)."""
    cls = (_SAMPLERS if kind == "sampler" else _PRUNERS)[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API warnings
        return cls(**dict(args))


class _PerTrialSeed:
    """Sampler mixin: with a seed, every random state of the sampler (and of the samplers it delegates to)
    is reseeded before each trial from (seed, trial number). A fresh run draws what the same seed drew
    before; a continued study, or another worker on the same study, gets other trial numbers and so new
    points (a sampler seeded once per process would replay the first run's draws)."""

    _cs_seed: int | None = None
    _cs_lock = threading.Lock()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._cs_seed is not None:
            with self._cs_lock:
                _reseed(self, f"{self._cs_seed}/{trial.number}")
        super().before_trial(study, trial)  # type: ignore[misc]


_PER_TRIAL: dict[type, type] = {}


def _per_trial(cls: type) -> type:
    """``cls`` with :class:`_PerTrialSeed` (one subclass per sampler class, named like it)."""
    if cls not in _PER_TRIAL:
        sub = type(cls.__name__, (_PerTrialSeed, cls), {"__doc__": cls.__doc__})
        sub.__qualname__ = f"_per_trial.{cls.__name__}"
        _PER_TRIAL[cls] = sub
    return _PER_TRIAL[cls]


def _reseed(sampler: Any, salt: str, seen: set[int] | None = None) -> None:
    """Seed every ``LazyRandomState`` / ``RandomState`` of ``sampler`` and of its nested samplers from
    ``salt`` and the attribute's path (in place: shared references stay shared)."""
    import numpy as np
    from optuna.samplers._lazy_random_state import LazyRandomState

    seen = set() if seen is None else seen
    if id(sampler) in seen:
        return
    seen.add(id(sampler))
    for name, value in sorted(vars(sampler).items()):
        seed = int.from_bytes(hashlib.sha256(f"{salt}/{name}".encode()).digest()[:4], "little")
        if isinstance(value, LazyRandomState):
            value.rng.seed(seed)
        elif isinstance(value, np.random.RandomState):
            value.seed(seed)
        elif isinstance(value, optuna.samplers.BaseSampler):
            _reseed(value, f"{salt}/{name}", seen)


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded with ``search.seed`` (reseeded per trial: :class:`_PerTrialSeed`)."""
    s = config.search
    if s.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("search.sampler 'cmaes' needs the 'cmaes' package (pip install cmaes)") from None
    cls = _SAMPLERS[s.sampler]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = cls(seed=s.seed, **dict(s.sampler_args))
    sampler._cs_seed = s.seed
    return sampler


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The configured pruner (none for multi-objective studies: Optuna cannot prune them)."""
    name = "none" if config.multi_objective else config.search.pruner
    return _PRUNERS[name]()(**dict(config.search.pruner_args if name != "none" else {}))
