"""Reading a finished (or running) study: best trials, leaderboard rows, rebuilding and exporting a trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna import Study
from optuna.trial import FrozenTrial, TrialState

from ..config import StudyConfig
from ..errors import UserError

__all__ = ["best_trials", "leaderboard_rows", "trial_model", "pick_trial", "config_of", "load_study",
           "load_trial_model"]


def _sort_key(config: StudyConfig, trial: FrozenTrial) -> tuple[float, float]:
    """Best first by the first objective; ties (equal accuracy is common) broken by the lower val_loss."""
    value = trial.values[0]
    loss = (trial.user_attrs.get("metrics") or {}).get("val_loss")
    tie = float(loss) if isinstance(loss, (int, float)) and loss == loss else float("inf")
    return (value if config.objective[0].direction == "minimize" else -value), tie


def best_trials(study: Study, config: StudyConfig) -> list[FrozenTrial]:
    """Single objective: the best COMPLETE trial; multi-objective: the Pareto front by the first objective."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if config.multi_objective:
        return sorted(study.best_trials, key=lambda t: _sort_key(config, t))
    return [min(complete, key=lambda t: _sort_key(config, t))]


def ranked(study: Study, config: StudyConfig) -> list[FrozenTrial]:
    """COMPLETE trials, best first (the Pareto front first for multi-objective), then PRUNED and FAIL."""
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: _sort_key(config, t)
    )
    if config.multi_objective:
        front = {t.number for t in best_trials(study, config)}
        complete = [t for t in complete if t.number in front] + [t for t in complete if t.number not in front]
    rest = study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING))
    return complete + sorted(rest, key=lambda t: t.number)


def _groups(study: Study, config: StudyConfig) -> list[tuple[FrozenTrial, list[FrozenTrial]]]:
    """(representative, duplicates) per distinct cell, best first.

    The evaluations of one key (spec + training + task) form a group: the trial that trained it (its
    representative) and the proposals answered from storage (``reused_from``). A trial killed with its
    process (or not run) evaluated nothing: it keeps a group of its own, saying which trial re-ran it.
    """
    from .ledger import is_duplicate, retried

    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    by_key: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        key = t.user_attrs.get("key")
        if key is not None and not t.user_attrs.get("interrupted") and t.number not in again:
            by_key.setdefault(key, []).append(t)
    out, done = [], set()
    for t in ranked(study, config):
        key = t.user_attrs.get("key")
        group = by_key.get(key, []) if key is not None else []
        if t.number not in {g.number for g in group}:
            out.append((t, []))
            continue
        if key in done:
            continue
        done.add(key)
        head = min(group, key=lambda g: (is_duplicate(g), g.number))
        out.append((head, sorted((g for g in group if g is not head), key=lambda g: g.number)))
    return out


def leaderboard_rows(study: Study, config: StudyConfig, top: int | None = 10) -> list[dict[str, Any]]:
    """One dict per distinct cell, best first: number (the trial that trained it), state, summary, params,
    objectives, metrics, ``proposed`` (how often the search proposed it), ``duplicates`` (the trials
    answered from storage), note. A trial killed with its process has a row of its own."""
    rows = []
    front = {t.number for t in best_trials(study, config)} if config.multi_objective else set()
    # a trial Optuna failed by heartbeat is finished before cellsearch can write on it: its reason and
    # its retry are on the retry trial (``retry_of``, ``retry_reason``)
    retries = {
        t.user_attrs["retry_of"]: t for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs
    }
    for t, duplicates in _groups(study, config)[: top if top else None]:
        attrs = t.user_attrs
        metrics = attrs.get("metrics") or (attrs.get("history") or [{}])[-1]
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "summary": attrs.get("summary", ""),
                "params": attrs.get("n_params"),
                "objectives": dict(zip(config.metrics, t.values)) if t.values else {},
                "metrics": {k: v for k, v in metrics.items() if k.startswith("val_")},
                "seconds": attrs.get("seconds"),
                "pareto": t.number in front or any(d.number in front for d in duplicates),
                "proposed": 1 + len(duplicates),
                "duplicates": [d.number for d in duplicates],
                "note": _note(t, retries.get(t.number)),
            }
        )
    return rows


def _note(trial: FrozenTrial, retry: FrozenTrial | None = None) -> str:
    attrs = trial.user_attrs
    if "reused_from" in attrs:  # a group whose trained trial is gone (e.g. deleted): its duplicate stands in
        return f"same cell as trial {attrs['reused_from']}"
    note = str(attrs.get("fail_reason") or attrs.get("prune_reason") or "")
    if retry is not None:
        why = note or str(retry.user_attrs.get("retry_reason") or "interrupted")
        return f"{why}; re-run as trial {retry.number}"
    return note


def pick_trial(study: Study, config: StudyConfig, number: int | None) -> FrozenTrial:
    """Trial ``number``, or the best one; refuses trials that did not complete."""
    trials = study.get_trials(deepcopy=False)
    if number is None:
        best = best_trials(study, config)
        if not best:
            raise UserError(f"study {config.name!r} has no completed trial to export yet")
        return best[0]
    match = [t for t in trials if t.number == number]
    if not match:
        raise UserError(f"study {config.name!r} has no trial {number}; trials are 0..{len(trials) - 1}")
    if match[0].state != TrialState.COMPLETE:
        raise UserError(
            f"trial {number} of study {config.name!r} is {match[0].state.name}, not COMPLETE; "
            "export a completed trial"
        )
    return match[0]


def trial_model(trial: FrozenTrial, config: StudyConfig) -> Any:
    """The trained model of a COMPLETE trial: its stored weights, else retrained from spec + seed."""
    import torch

    from ..model import SequenceModel
    from ..spec import ModelSpec
    from ..tasks import make_task

    spec = ModelSpec.from_json(trial.user_attrs["spec"])
    task = make_task(config.task.to_dict())
    path = _weights_path(trial, config)
    if path is None:
        return _retrain(trial, config, spec, task)
    from safetensors.torch import load_file

    with torch.random.fork_rng(devices=[]):
        model = SequenceModel(spec, task.readout)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def load_study(path_or_config: Any, storage: str | None = None, **overrides: Any) -> Any:
    """An existing study, ready to read: a :class:`~cellsearch.search.studies.StudyResult`.

    ``path_or_config`` is a study file (or a ``StudyConfig`` / mapping); ``storage`` an Optuna storage URL
    (default: the study's own, ``sqlite:///runs/<name>/study.db``); ``overrides`` as in
    :func:`cellsearch.run_study` (``name=...``, ``train__epochs=1``). The result has ``.study`` (the
    ``optuna.Study``), ``.config``, ``.trials``, ``.best_trials`` and ``.leaderboard()``;
    ``cellsearch.export(result, out_dir)`` exports its best trial.
    Raises a one-line error when the study was never run. Nothing is created or written.
    """
    from . import load_config
    from .studies import StudyResult, open_study

    config = load_config(path_or_config, storage=storage, **overrides)
    return StudyResult(config, open_study(config, storage, create=False), storage or config.storage_url)


def load_trial_model(study: Any, trial: int | FrozenTrial | None = None) -> Any:
    """The trained model of one COMPLETE trial (default: the best), in eval mode, ready to run.

    ``study``: a study file, a ``StudyConfig``, a ``StudyResult`` or an ``optuna.Study`` made by cellsearch.
    ``trial``: a trial number, a ``FrozenTrial`` or None (the best; the first of the Pareto front). The
    model is a :class:`~cellsearch.model.SequenceModel` (``model(x [B, T, d]) -> (out, state)``) with the
    trial's saved weights, or retrained from its spec and seed when the weights are gone::

        model = cs.load_trial_model("studies/quickstart.yaml")
        out, state = model(torch.randn(4, 50, 2))
    """
    from .studies import StudyResult

    if isinstance(study, Study):
        result_study, config = study, config_of(study)
    else:
        result = study if isinstance(study, StudyResult) else load_study(study)
        result_study, config = result.study, result.config
    if isinstance(trial, FrozenTrial):
        trial = trial.number
    return trial_model(pick_trial(result_study, config, trial), config)


def _weights_path(trial: FrozenTrial, config: StudyConfig) -> Path | None:
    stored = trial.user_attrs.get("weights")
    candidates = [Path(stored)] if stored else []
    source = trial.user_attrs.get("reused_from", trial.number)
    candidates.append(config.directory / "trials" / f"{source}.safetensors")
    return next((p for p in candidates if p.is_file()), None)


def _retrain(trial: FrozenTrial, config: StudyConfig, spec: Any, task: Any) -> Any:
    """The trial trained again from its spec and stored training settings (seed included)."""
    from ..jobs import Job, run_job

    record = run_job(Job(spec, task, trial.user_attrs.get("train", config.train_dict())), keep_model=True)
    if record.diverged:
        raise UserError(f"trial {trial.number} has no saved weights and retraining it diverged ({record.error})")
    return record.model.eval()


def config_of(study: Study) -> StudyConfig:
    """The validated config a study created by cellsearch stored (its ``config`` attribute)."""
    from .checks import study_from_mapping

    raw = study.user_attrs.get("config")
    if not raw:
        raise UserError(f"study {study.study_name!r} was not created by cellsearch (no stored config)")
    return study_from_mapping(_raw_from_stored(raw), source=f"study {study.study_name!r}")


def _raw_from_stored(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored ``StudyConfig.to_dict()`` back into study-file form."""
    out = {k: v for k, v in raw.items() if v is not None and k != "description"}
    if out.get("space"):
        space = dict(out["space"])
        out["space"] = {k: v for k, v in space.items() if v not in (None, {}, [])}
    return out
