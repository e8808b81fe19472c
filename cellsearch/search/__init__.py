"""Search backends behind one entry point, :func:`run_study`.

A backend is a :class:`~cellsearch.search.backend.Backend` (one abstract method, ``run``) named in
:data:`BACKENDS`: ``optuna`` (:mod:`cellsearch.search.optuna_backend`: trials in this process) and ``ray``
(:mod:`cellsearch.search.ray_backend`: Ray Tune wrapping the same ``sample(trial)`` with OptunaSearch,
trials stopped by a scheduler recorded as PRUNED). Both write their trials through the same backend-neutral
modules: :mod:`.studies` (the study in its storage), :mod:`.trials` (what each trial records) and
:mod:`.ledger` (the budget's rules). A backend whose module is missing is refused with a clear message.
Importing this package imports neither Optuna nor Ray; a backend module is imported only when a study runs
on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError
from .backend import Backend

__all__ = ["BACKENDS", "get_backend", "run_study", "load_config"]

#: backend name -> the module whose ``BACKEND`` is that :class:`~cellsearch.search.backend.Backend`
BACKENDS: dict[str, str] = {
    "optuna": "cellsearch.search.optuna_backend",
    "ray": "cellsearch.search.ray_backend",
}

_RUN_OPTIONS = {
    "n_trials": "search.n_trials",
    "backend": "search.backend",
    "storage": "storage",
    "timeout": "search.timeout",
    "n_jobs": "search.n_jobs",
    "sampler": "search.sampler",
    "pruner": "search.pruner",
    "seed": "search.seed",
    "name": "name",
    "output_dir": "output_dir",
}


def get_backend(name: str) -> Backend:
    """The :class:`~cellsearch.search.backend.Backend` named ``name``."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as exc:
        if exc.name == BACKENDS[name]:
            raise UserError(
                f"backend {name!r} is not available in this version of cellsearch; use backend: optuna"
            ) from None
        raise
    return module.BACKEND


def _overrides(options: Mapping[str, Any], sets: Iterable[str]) -> list[tuple[str, Any]] | list[str]:
    items: list[Any] = list(sets)
    for key, value in options.items():
        if value is None:
            continue
        dotted = _RUN_OPTIONS.get(key, key.replace("__", "."))
        items.append((dotted, value))
    return items


def load_config(path_or_config: Any, sets: Iterable[str] = (), **options: Any) -> Any:
    """A validated :class:`~cellsearch.config.StudyConfig` from a path or config plus overrides: the config
    floor's reading (:mod:`cellsearch.config`) followed by the checks that need the registry and Optuna
    (:mod:`cellsearch.search.checks`).

    ``sets`` are ``"a.b=v"`` strings; ``options`` are ``n_trials``, ``backend``, ``storage``, ``timeout``,
    ``n_jobs``, ``sampler``, ``pruner``, ``seed``, ``name``, ``output_dir`` or dotted keys written with
    ``__`` (``train__epochs=1``).
    """
    from ..config import StudyConfig, parse_set
    from .checks import check_study, load_study, study_from_mapping

    items = _overrides(options, sets)
    pairs = dict(parse_set(i) if isinstance(i, str) else i for i in items)
    if isinstance(path_or_config, (str, Path)):
        return load_study(path_or_config, pairs)
    if isinstance(path_or_config, StudyConfig):
        if not pairs:
            return check_study(path_or_config)
        raw = path_or_config.to_dict()
        raw = {k: v for k, v in raw.items() if v is not None}
        return study_from_mapping(raw, source=path_or_config.source, overrides=pairs)
    if isinstance(path_or_config, Mapping):
        return study_from_mapping(dict(path_or_config), overrides=pairs)
    raise TypeError(
        f"expected a study file path, a StudyConfig or a mapping, got {type(path_or_config).__name__}"
    )


def run_study(path_or_config: Any, *, set: Iterable[str] = (), display: str = "auto", **options: Any) -> Any:
    """Run (or continue) a study; the same as ``cellsearch run``. Returns a ``StudyResult``.

    ``display``: ``auto`` (rich live panel on a terminal, plain lines otherwise), ``live``, ``plain`` or
    ``quiet``. ``force_continue=True`` continues a stored study whose training settings or model size
    changed (otherwise refused: "this is a different study"). Other keywords: see :func:`load_config`.
    """
    force_continue = bool(options.pop("force_continue", False))
    config = load_config(path_or_config, set, **options)
    backend = get_backend(config.search.backend)
    from .display import Display

    if display not in ("auto", "live", "plain", "quiet"):
        raise UserError(f"display {display!r}: expected one of auto, live, plain, quiet")
    from ..resources import applied

    with applied(config) as (config, plan):  # search.n_jobs and torch threads from the cores (CPU defaults)
        shown = Display(config, quiet=display == "quiet", live={"live": True, "plain": False}.get(display))
        if not shown.quiet:
            shown.console.print(f"cpu: {plan}", markup=False)
        return backend.run(config, display=shown, force_continue=force_continue)
