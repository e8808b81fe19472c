"""The configuration floor: study and space files read into frozen, typed configs (torch-free).

- :mod:`.yamlio` — strict YAML reading and dotted ``--set`` overrides;
- :mod:`.reader` — the one validation system of the files (:class:`Reader`, :class:`Param`);
- :mod:`.options` — :class:`Option`, the rule of one scalar option (``train.*`` keys, a task's options);
- :mod:`.train` — the training recipe (:class:`TrainConfig`);
- :mod:`.space`, :mod:`.study` — the space and study schemas;
- :mod:`.variants` — the cells of a grid (a study's ``cells:``, a reproduction's experiment): a name or a
  variant with overrides;
- :mod:`.urls` — storage URLs: what is wrong with one, and its password masked.

This floor sits beside :mod:`cellsearch.spec` at the bottom of the house and imports nothing above it: no
torch, no Optuna, no registry. What needs those (registered names, a task's options, whether a space builds,
sampler arguments Optuna accepts) is checked on top of it by :func:`cellsearch.search.load_config`.
"""

from __future__ import annotations

from ..errors import StudyError
from .options import Option
from .reader import Param, Reader
from .space import SpaceConfig, default_space_from_cell, load_space, space_from_mapping
from .study import (
    BACKENDS,
    DIRECTIONS,
    FORCEABLE_KEYS,
    IDENTITY_KEYS,
    PRUNERS,
    SAMPLERS,
    SCHEDULERS,
    ModelConfig,
    ObjectiveConfig,
    SearchConfig,
    StudyConfig,
    TaskConfig,
    load_study,
    metric_label,
    study_from_mapping,
)
from .train import TrainConfig
from .variants import Variant, read_variants
from .yamlio import apply_overrides, builtin_spaces_dir, parse_set, read_yaml

__all__ = [
    "StudyError", "Option", "Param", "Reader", "TrainConfig", "Variant", "read_variants",
    "SpaceConfig", "load_space", "space_from_mapping", "default_space_from_cell",
    "TaskConfig", "ModelConfig", "ObjectiveConfig", "SearchConfig", "StudyConfig",
    "load_study", "study_from_mapping", "metric_label",
    "BACKENDS", "DIRECTIONS", "PRUNERS", "SAMPLERS", "SCHEDULERS", "IDENTITY_KEYS", "FORCEABLE_KEYS",
    "apply_overrides", "builtin_spaces_dir", "parse_set", "read_yaml",
]
