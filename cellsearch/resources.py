"""CPU defaults: how many trials run at once and how many torch threads each trial uses.

One rule, chosen once per study from the cores this process may use and the size of the study's largest
model (the numbers are what ``cellsearch run`` prints and the user guide documents):

- **cores**: the CPUs this process may run on (``os.sched_getaffinity``) capped by the cgroup CPU quota
  (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1), at least 1. The
  environment variable ``CELLSEARCH_CORES`` replaces the detection (a container that hides its quota).
- **work per step** of the largest model: ``batch_size × hidden_size² × layers`` (the multiply-adds of one
  recurrent matrix for one time step, up to the cell's number of gate blocks). A ``param_budget`` of P
  counts as ``hidden_size² × layers = P / 4`` (an LSTM's share).
- **threads per trial** = ``work // WORK_PER_THREAD`` (2²¹, about batch 64 × hidden 181²), at least 1 and at
  most the cores: a small recurrent model spends its time in many tiny operations that a second thread
  only slows down (5–6× slower on a loaded 2-core machine), a large one gains from intra-op threads.
- **trials at once** (Optuna's ``n_jobs``) = ``cores // threads``, at least 1 and at most ``n_trials``.
- On a GPU (``train.device`` cuda / mps, or auto with CUDA available) one trial runs at a time and torch
  keeps its own thread count, as before.

Overrides: ``search.n_jobs`` (trials at once) and ``train.threads`` (threads per trial); setting one derives
the other from the cores (``n_jobs: 4`` on 2 cores: 1 thread each). With the Ray backend the threads become
the per-trial ``search.resources.cpu`` (Ray gives a trial that many CPUs and sets its ``OMP_NUM_THREADS``),
and Ray fills the cluster's CPUs; on a remote cluster (``ray_address``) the local cores do not cap it.

Torch-free at import (:func:`applied` imports torch only to set the thread count of a run).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["WORK_PER_THREAD", "Plan", "available_cores", "cgroup_cpu_limit", "plan", "plan_for", "resolve",
           "applied"]

#: multiply-adds per time step (batch × hidden² × layers) that earn a trial one more torch thread
WORK_PER_THREAD = 1 << 21
#: the environment variable that replaces the detected core count
CORES_ENV = "CELLSEARCH_CORES"


@dataclass(frozen=True)
class Plan:
    """The CPU decision of a study: trials at once (``n_jobs``) and torch threads per trial."""

    cores: int
    n_jobs: int
    threads: int | None  # None: torch keeps its own default (a GPU study)
    why: str

    def __str__(self) -> str:
        if self.threads is None:
            return f"{self.n_jobs} trial(s) at once, torch's own threads ({self.why})"
        each = "thread" if self.threads == 1 else "threads"
        return f"{self.n_jobs} trial(s) at once × {self.threads} torch {each} each ({self.why})"


# ------------------------------------------------------------------------------------------------
# cores


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The cgroup CPU quota in cores (``1.5`` for 150 ms per 100 ms), or None when there is none."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "150000 100000"
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # cgroup v1: -1 without a quota
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = float(quota), float(period)
    except ValueError:  # "max"
        return None
    return q / p if q > 0 and p > 0 else None


def available_cores(env: dict[str, str] | None = None, root: str | Path = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: affinity capped by the cgroup quota (``CELLSEARCH_CORES`` wins)."""
    env = os.environ if env is None else env
    given = env.get(CORES_ENV, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            from .errors import UserError

            raise UserError(f"{CORES_ENV}={given!r}: expected a whole number of cores >= 1")
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


# ------------------------------------------------------------------------------------------------
# the rule


def plan(cores: int, work: int, n_trials: int | None = None, n_jobs: int | None = None,
         threads: int | None = None, gpu: bool = False, size: str = "") -> Plan:
    """The rule of the module docstring; ``n_jobs`` / ``threads`` given by the user are kept as they are."""
    where = f"{cores} core{'s' if cores != 1 else ''}" + (f", {size}" if size else "")
    if gpu:
        return Plan(cores, n_jobs or 1, threads, f"GPU; {where}")
    if threads is None:
        by_size = max(1, min(cores, work // WORK_PER_THREAD))
        threads = by_size if n_jobs is None else max(1, min(by_size, cores // n_jobs))
    if n_jobs is None:
        n_jobs = max(1, cores // threads)
        if n_trials is not None:
            n_jobs = max(1, min(n_jobs, n_trials))
    return Plan(cores, n_jobs, threads, where)


def _largest(param: Any, default: float) -> float:
    """The largest numeric value a space :class:`~cellsearch.config.Param` (or a plain value) can take."""
    if param is None:
        return default
    if not hasattr(param, "kind"):
        return float(param) if isinstance(param, (int, float)) and not isinstance(param, bool) else default
    if param.kind != "categorical":
        return float(param.high)
    numbers = [c for c in param.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    return float(max(numbers)) if numbers else default


def model_work(config: Any) -> tuple[int, str]:
    """Work per time step of the study's largest model and a few words saying where it comes from."""
    space = config.space
    searched = dict(space.train) if space is not None else {}
    batch = _largest(searched.get("batch_size"), float(config.train.get("batch_size", 64)))
    layers = float(config.model.num_layers)
    if space is not None and space.depth:
        layers = _largest(space.depth.get("layers"), layers) * _largest(space.depth.get("transition_layers"), 1)
    if config.model.param_budget is not None:
        square = config.model.param_budget / 4
        return int(batch * square), f"batch {batch:g} × {config.model.param_budget} parameters / 4"
    hidden = float(config.model.hidden_size or 64)
    if space is not None and space.hidden_size is not None:
        hidden = _largest(space.hidden_size, hidden)
    layer_words = f"{layers:g} layer{'s' if layers != 1 else ''}"
    return int(batch * hidden * hidden * layers), f"batch {batch:g} × hidden {hidden:g}² × {layer_words}"


def _uses_gpu(config: Any) -> bool:
    device = str(config.train.get("device", "auto"))
    if device == "cpu":
        return False
    if device != "auto":
        return True
    import torch  # only here: whether CUDA is there

    return bool(torch.cuda.is_available())


def plan_for(config: Any, cores: int | None = None, gpu: bool | None = None) -> Plan:
    """The plan of a :class:`~cellsearch.config.StudyConfig` (``search.n_jobs`` / ``train.threads`` kept)."""
    remote = config.search.backend == "ray" and config.search.ray_address not in (None, "local")
    work, size = model_work(config)
    cores = cores if cores is not None else available_cores()
    if remote:  # Ray's cluster has its own cores; only the model size decides the threads
        cores = max(cores, work // WORK_PER_THREAD, 1)
    gpu = _uses_gpu(config) if gpu is None else gpu
    threads = config.train.get("threads")
    return plan(cores, work, config.search.n_trials, config.search.n_jobs, threads, gpu, size)


def resolve(config: Any, cores: int | None = None, gpu: bool | None = None) -> tuple[Any, Plan]:
    """``config`` with ``search.n_jobs`` decided (and, for Ray, ``search.resources.cpu``) and its plan."""
    p = plan_for(config, cores, gpu)
    search = replace(config.search, n_jobs=p.n_jobs)
    if config.search.backend == "ray" and "cpu" not in config.search.resources and p.threads is not None:
        from .spec import FrozenDict

        search = replace(search, resources=FrozenDict({**config.search.resources, "cpu": float(p.threads)}))
    return replace(config, search=search), p


@contextmanager
def applied(config: Any, cores: int | None = None) -> Iterator[tuple[Any, Plan]]:
    """Resolve ``config`` and, for the Optuna backend on CPU, run the block with torch's thread count set
    to the plan's threads per trial (restored after). Trials run as threads of this process (Optuna's
    ``n_jobs``); each new thread takes torch's process-wide count. A ``train.threads`` the study sets is
    applied by each training run itself."""
    resolved, p = resolve(config, cores)
    if config.search.backend != "optuna" or p.threads is None or config.train.get("threads") is not None:
        yield resolved, p
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(p.threads)
    try:
        yield resolved, p
    finally:
        torch.set_num_threads(old)
