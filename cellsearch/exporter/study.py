"""Exporting from a search: a study's best trial (or any trial) as a standalone module.

The trial's trained weights are read back (or, where they were not saved, the trial is retrained with its
stored settings: :func:`cellsearch.search.results.trial_model`) and written by :func:`export_model` with the
study's record (task, objective, values, training settings, search) for the model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna import Study
from optuna.trial import FrozenTrial

from ..config import StudyConfig
from ..errors import UserError
from ..search.checks import load_study
from ..search.results import config_of, pick_trial, trial_model
from ..search.studies import StudyResult, open_study
from . import export_model
from .codegen import module_name

__all__ = ["export_trial", "export_from"]


def export_trial(study: Study, config: StudyConfig, out_dir: str | Path, number: int | None = None,
                 force: bool = False) -> Path:
    """Export trial ``number`` (default: the best) of a study into ``out_dir`` (a non-empty folder only
    with ``force``)."""

    trial = pick_trial(study, config, number)
    model = trial_model(trial, config)
    attrs = trial.user_attrs
    meta = {
        "study": config.name,
        "study_file": config.source,
        "trial": trial.number,
        "state": trial.state.name,
        "task": config.task.to_dict(),
        "objective": [o.to_dict() for o in config.objective],
        "values": dict(zip(config.metrics, trial.values)),
        "metrics": attrs.get("metrics"),
        "train": attrs.get("train"),
        "params": dict(trial.params),
        "search": {
            "sampler": config.search.sampler,
            "pruner": config.search.pruner,
            "n_trials": config.search.n_trials,
        },
    }
    label = attrs.get("variant")      # a grid variant that changed its card: named by its label, no card
    name = module_name(model, label) if label else None
    return export_model(model, out_dir, name=name, published=attrs.get("published"), meta=meta, force=force)


def export_from(obj: Any, out_dir: str | Path, number: int | None = None, force: bool = False) -> Path:
    """Export from a study file path, StudyConfig, StudyResult, optuna.Study or FrozenTrial."""
    if isinstance(obj, (str, Path)):
        obj = load_study(obj)
    if isinstance(obj, StudyConfig):
        return export_trial(open_study(obj, create=False), obj, out_dir, number, force)
    if isinstance(obj, StudyResult):
        return export_trial(obj.study, obj.config, out_dir, number, force)
    if isinstance(obj, Study):
        return export_trial(obj, config_of(obj), out_dir, number, force)
    if isinstance(obj, FrozenTrial):
        return _export_frozen(obj, out_dir, force)
    raise TypeError(
        f"cannot export a {type(obj).__name__}; expected a study path, StudyConfig, StudyResult, "
        "optuna.Study, FrozenTrial or SequenceModel"
    )


def _export_frozen(trial: FrozenTrial, out_dir: str | Path, force: bool = False) -> Path:
    from ..model import SequenceModel
    from ..spec import ModelSpec

    path = trial.user_attrs.get("weights")
    if not path or not Path(path).is_file():
        raise UserError(f"trial {trial.number} has no saved weights; export it through its study instead")
    from safetensors.torch import load_file

    spec = ModelSpec.from_json(trial.user_attrs["spec"])
    model = SequenceModel(spec, trial.user_attrs.get("readout", "last"))
    model.load_state_dict(load_file(path), strict=True)
    return export_model(
        model.eval(),
        out_dir,
        published=trial.user_attrs.get("published"),
        meta={"trial": trial.number, "metrics": trial.user_attrs.get("metrics")},
        force=force,
    )
