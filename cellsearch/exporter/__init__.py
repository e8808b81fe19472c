"""Export a trained model as standalone PyTorch source + safetensors weights (torch.fx ``to_folder`` style).

``export_model(model, out_dir)`` writes into ``out_dir``:

- ``<cell>.py`` — imports torch only (never cellsearch): the cell's step as two functions derived from the
  registered primitives' own torch code (:mod:`cellsearch.trace`: ``_prepare`` once per sequence,
  ``_step`` once per time step, in ATen ops) and its initialization (``_init``), the time loop
  (``_recurrence``: a plain loop, a scan under torch.export), a ``Cell`` class (hoisted input GEMM), a
  ``Model(input_size, hidden_size, output_size)`` class (deep input → stacked cells with residual /
  dropout → deep output → readout → linear head), ``param_groups(model, lr)`` (the primitives'
  learning-rate scales) and ``load(weights_path=None) -> nn.Module`` that builds the model at the
  exported sizes and loads the weights beside the file (a small safetensors reader is included, so not
  even the ``safetensors`` package is needed). The step and init are traced with a symbolic hidden size
  and checked at another size against cellsearch's cell there; where they hold, ``Model`` takes any
  size, else it refuses other sizes and says why;
- ``<cell>.safetensors`` — the weights (no pickle);
- ``spec.yaml`` — the ModelSpec, readout, task, study, trial, metrics, versions, weights digest;
- ``MODEL_CARD.md`` — what it is, how it was found, how to use it.

One job per module: :mod:`.codegen` (the source), :mod:`.weights` (names of the weights),
:mod:`.templates` (fixed source every module carries), :mod:`.checks` (what is run on a written export),
:mod:`.card` (MODEL_CARD.md); this module writes the folder, atomically.

No primitive is named here: any registered primitive, a plugin's included, exports through the trace of
its step. The generated forward performs the same tensor operations, in the same order, as the
framework's :class:`~cellsearch.model.SequenceModel`, so outputs agree to float rounding (|Δ| < 1e-6)
and the module passes ``torch.export.export`` with dynamic batch and time (checked at export).
Generated source is the durable artefact: it stays loadable across cellsearch versions.
"""


from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .card import describe_task as _describe_task
from .card import model_card as _model_card
from .checks import CHECK_SHAPES, EXPORT_SHAPE, check_export
from .codegen import generate_source, module_name
from .errors import ExportError
from .weights import export_state_dict

__all__ = ["ExportError", "export", "export_model", "export_state_dict", "generate_source", "module_name",
           "check_export", "CHECK_SHAPES", "EXPORT_SHAPE"]

def _versions() -> dict[str, str]:
    import torch

    from .._version import __version__

    out = {"cellsearch": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import optuna

        out["optuna"] = optuna.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def export_model(
    model: Any,
    out_dir: str | Path,
    name: str | None = None,
    published: str | None = None,
    meta: Mapping[str, Any] | None = None,
    force: bool = False,
    check: bool = True,
) -> Path:
    """Write ``<name>.py``, ``<name>.safetensors``, ``spec.yaml``, ``MODEL_CARD.md``; return the .py path.

    The files are written into a temporary folder beside ``out_dir`` and moved into place at the end, so
    a failure (a full disk, an untraceable cell) leaves no partial export. A non-empty ``out_dir`` is
    refused unless ``force`` (then it is replaced whole). With ``check`` the written module is imported
    and checked before it is moved into place (:func:`check_export`: parity with ``model``, torch.export
    with dynamic batch and time, torch.jit.trace and script, torch.fx); the results go into spec.yaml and
    the card, with how the module's ``Model`` takes other sizes."""
    out = _check_target(Path(out_dir), force)
    name = name or module_name(model, published)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_export(model, tmp, name, published, dict(meta or {}), check)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / f"{name}.py"


def _check_target(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ExportError(f"export: {out} is a file; --out takes a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"export: {out} is not empty; choose an empty or new folder, or pass --force "
                          "(force=True) to replace it")
    return out


def _write_export(model: Any, folder: Path, name: str, published: str | None, meta: dict[str, Any],
                  check: bool) -> None:
    from safetensors.torch import save_file

    weights = folder / f"{name}.safetensors"
    save_file(export_state_dict(model), str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    report: dict[str, Any] = {}
    (folder / f"{name}.py").write_text(generate_source(model, name, published, digest, report), encoding="utf-8")
    meta = {**meta, "sizes": report["sizes"]}
    if check:
        meta = {**meta, "checks": check_export(folder / f"{name}.py", model)}
    if isinstance(meta.get("task"), Mapping) and "task_description" not in meta:
        meta["task_description"] = _describe_task(meta["task"])
    info = json.loads(json.dumps(_spec_info(model, name, published, digest, meta), default=str))
    (folder / "spec.yaml").write_text(yaml.safe_dump(info, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (folder / "MODEL_CARD.md").write_text(_model_card(model, name, published, info), encoding="utf-8")
    mode = 0o666 & ~_umask()
    for path in folder.iterdir():  # one mode for every file (safetensors writes its own 0600 otherwise)
        path.chmod(mode)
    folder.chmod(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old ``out`` (force) is removed only after the move."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _spec_info(model: Any, name: str, published: str | None, digest: str, meta: dict[str, Any]) -> dict:
    from ..api import count_parameters

    return {
        "name": name,
        "published_cell": published,
        "model": model.spec.to_dict(),
        "readout": model.readout,
        "digest": model.spec.digest(),
        "parameters": count_parameters(model),
        "files": {"module": f"{name}.py", "weights": f"{name}.safetensors", "weights_sha256": digest},
        **meta,
        "versions": _versions(),
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def export(study_or_trial: Any, out_dir: str | Path, trial: int | None = None, force: bool = False) -> Path:
    """Export a study's best trial (or ``trial``), a trial, or a model; return the written ``.py`` path.

    ``out_dir`` must be new or empty unless ``force`` (then it is replaced whole, after the export
    succeeded).

    ``study_or_trial`` may be a study file path, a :class:`~cellsearch.study.StudyConfig`, a
    :class:`~cellsearch.search.optuna_backend.StudyResult`, an ``optuna.Study`` created by cellsearch, a
    ``FrozenTrial`` of one, or a :class:`~cellsearch.model.SequenceModel`.
    """
    from torch import nn

    if isinstance(study_or_trial, nn.Module):
        return export_model(study_or_trial, out_dir, force=force)
    from .study import export_from

    return export_from(study_or_trial, out_dir, trial, force)
