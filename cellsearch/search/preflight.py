"""Preflight: what a run needs, checked before its study is created or opened for writing.

:func:`preflight` builds the task's loaders (data files exist, are not empty, parse) and draws their first
batches, builds the sampler and the pruner, and checks the storage (its URL, and that a local file can be
created or written). Any problem is one :class:`~cellsearch.cli.UserError` line naming the file or key and
what is allowed, so ``cellsearch run`` exits with status 2 and nothing is written: no ``runs/<name>``
folder, no ``study.db``, no trial spent on a path typo. A server storage (PostgreSQL, MySQL) is opened by
the backend right after, its failure one line too.

:func:`infrastructure_failure` tells a trial's failure that is not the cell's fault (disk full, out of
memory, data files gone) from one that is; the backends record such a trial with its reason, outside the
budget, and stop the run with a non-zero exit.
"""

from __future__ import annotations

import errno
from typing import Any

from ..errors import RunStopped, UserError
from ..spec import SpecError
from .storage import check_writable, mask_url, url_problem

__all__ = ["preflight", "check_task_data", "check_storage", "infrastructure_failure", "InfrastructureError"]


class InfrastructureError(RunStopped):
    """A run stopped because the machine failed a trial (disk full, out of memory, data gone): not the
    cell's fault. The trial was recorded with the reason and does not use the budget."""


def preflight(config: Any, task: Any, storage_url: str | None = None) -> None:
    """Everything a backend's ``run`` needs, checked before anything is written."""
    check_storage(config, storage_url or config.storage_url)
    _check_search(config)
    check_task_data(config, task)


def check_storage(config: Any, url: str) -> None:
    """The storage URL is usable and its local file (SQLite, journal) could be created or written."""
    problem = url_problem(url)
    if problem is not None:
        raise UserError(f"{config.source}: storage: {mask_url(url)!r} is not allowed; expected {problem}")
    try:
        check_writable(url)
    except UserError as exc:
        raise UserError(f"{config.source}: {exc}") from None


def _check_search(config: Any) -> None:
    """The sampler and pruner build (validation checked their arguments; a missing package shows here)."""
    from .samplers import make_pruner, make_sampler

    for key, make in (("search.sampler", make_sampler), ("search.pruner", make_pruner)):
        try:
            make(config)
        except UserError:
            raise
        except (ValueError, TypeError, ImportError) as exc:
            raise UserError(f"{config.source}: {key}: cannot be built ({_line(exc)})") from None


def _data_keys(task: Any) -> str:
    """The task's options that name files (``task.path``, ``task.data_dir``) with their values."""
    options = getattr(type(task), "options", {}) or {}
    keys = [k for k, o in options.items() if getattr(o, "kind", None) == "path"]
    shown = [f"task.{k} = {getattr(task, k)!r}" for k in keys if getattr(task, k, None) is not None]
    return f" ({', '.join(shown)})" if shown else ""


def check_task_data(config: Any, task: Any) -> None:
    """Build the task's loaders as training will and draw the first batch of the train and valid splits:
    a missing, empty, unreadable or corrupt data file is one line naming the task key and the file."""
    from ..train import TrainConfig

    train = TrainConfig.from_dict(config.train_dict())
    try:
        loaders = task.make_loaders(train.batch_size, train.seed, bptt=train.bptt)
        for split in ("train", "valid"):
            iterable = getattr(loaders, split)
            if iterable is None:
                continue
            if next(iter(iterable), None) is None:
                raise SpecError(f"task ({split} split)", None, "a task whose train and valid splits hold data")
    except SpecError as exc:
        where = str(exc.where) if str(exc.where).startswith("task") else f"task.{exc.where}"
        files = "" if exc.value is None else _data_keys(task)
        raise UserError(f"{config.source}: {where}: {_spec_message(exc)}{files}") from None
    except MemoryError:
        raise UserError(f"{config.source}: task {task.name!r}{_data_keys(task)}: the data do not fit in "
                        "memory; expected a smaller data set or split") from None
    except Exception as exc:  # a corrupt file: whatever its parser raises
        raise UserError(f"{config.source}: task {task.name!r}{_data_keys(task)}: the data cannot be read "
                        f"({_line(exc)}); expected the files the task documents "
                        f"(cellsearch list tasks {task.name})") from None


def _spec_message(exc: SpecError) -> str:
    if exc.value is None and exc.allowed:
        return str(exc.allowed)
    return f"{exc.value!r} is not allowed; expected {exc.allowed}"


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def infrastructure_failure(exc: BaseException) -> str | None:
    """The reason when ``exc`` is the machine's failure rather than the cell's (None otherwise):
    disk full or quota exceeded, out of memory, a data file gone or unreadable, a read-only file system."""
    if isinstance(exc, MemoryError):
        return f"out of memory ({_line(exc)})"
    if isinstance(exc, OSError):
        code = exc.errno
        if code in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full ({_line(exc)})"
        if code == errno.EFBIG:
            return f"file size limit reached ({_line(exc)})"
        if code == errno.EROFS:
            return f"read-only file system ({_line(exc)})"
        if code in (errno.ENOENT, errno.EACCES, errno.EIO, errno.ESTALE):
            return f"a file the run needs is gone or unreadable ({_line(exc)})"
    text = str(exc)
    if type(exc).__name__ in ("OutOfMemoryError",) or "CUDA out of memory" in text:
        return f"out of memory ({_line(exc)})"
    if "database or disk is full" in text or "No space left on device" in text:
        return f"disk full ({_line(exc)})"
    return None
