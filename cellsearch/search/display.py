"""Progress of a running study: a rich live panel on a terminal, one plain line per trial otherwise.

Shows trials done / running / pruned / failed against the budget, the distinct cells they evaluated and
the proposals of already-evaluated cells answered from storage (duplicates, outside the budget), the best
value so far and its trial, the running trials with their epoch, and an ETA from the mean duration of this
session's trials; at the end, why a run stopped before its budget ("space exhausted: ...").
Thread-safe (Optuna's ``n_jobs`` runs trials in threads).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import StudyConfig
from .storage import mask_url

__all__ = ["Display"]


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Display:
    """Study progress. ``quiet`` prints nothing; ``live`` None picks rich live output on a terminal."""

    def __init__(
        self,
        config: StudyConfig,
        quiet: bool = False,
        live: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self.config, self.quiet = config, quiet
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.live_mode = self.console.is_terminal if live is None else live
        self._lock = threading.Lock()
        self._running: dict[int, dict[str, Any]] = {}
        self._durations: list[float] = []
        self._live: Live | None = None
        self.study: Any = None
        self.remaining: int | None = None
        self._finished_here = 0
        self._start = time.time()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(
        self, study: Any, remaining: int | None, resumed: int = 0, failed_dead: list[int] | None = None
    ) -> None:
        """Begin showing progress for ``remaining`` trials (``resumed`` already counted)."""
        self.study, self.remaining, self._start = study, remaining, time.time()
        if self.quiet:
            return
        c = self.config
        head = f"study {c.name!r}: {c.task.name}, objective {', '.join(c.metrics)}, storage {mask_url(c.storage_url)}"
        self.console.print(head, markup=False)
        if resumed:
            self.console.print(f"continuing: {resumed} trial(s) already done", markup=False)
        if failed_dead:
            self.console.print(
                f"marked FAIL (their process died) and re-queued: trials {failed_dead}", markup=False
            )
        if remaining == 0:
            self.console.print(
                "budget already complete; nothing to run (raise --n-trials to run more)", markup=False
            )
            return
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()

    def stop(self, reason: str | None = None) -> None:
        """Stop the live panel and print a one-line summary (and ``reason``: why the run stopped early)."""
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None
        if not self.quiet and self.study is not None:
            if reason:
                self.console.print(reason, markup=False)
            self.console.print(self._status_line(), markup=False)

    # -- events ------------------------------------------------------------------------------------
    def trial_started(self, number: int, summary: str) -> None:
        with self._lock:
            self._running[number] = {"summary": summary, "epoch": 0, "start": time.time(), "metrics": {}}
        self._refresh()

    def trial_epoch(self, number: int, epoch: int, metrics: dict[str, Any]) -> None:
        with self._lock:
            if number in self._running:
                self._running[number].update(epoch=epoch, metrics=metrics)
        self._refresh()

    def trial_finished(self, study: Any, trial: Any) -> None:
        """Optuna callback after each trial."""
        with self._lock:
            info = self._running.pop(trial.number, None)
            if "reused_from" not in trial.user_attrs:  # a duplicate takes no time and no budget slot
                if info is not None:
                    self._durations.append(time.time() - info["start"])
                self._finished_here += 1
        if self._live is not None:
            self._live.console.print(self._trial_line(trial, status=False), markup=False)
        elif not self.quiet and not self.live_mode:
            self.console.print(self._trial_line(trial), markup=False)
        self._refresh()

    # -- rendering ---------------------------------------------------------------------------------
    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _counts(self) -> dict[str, int]:
        from optuna.trial import TrialState

        from .ledger import distinct_cells, is_duplicate, retried, uses_budget

        out = {s.name: 0 for s in TrialState}
        out["interrupted"] = 0  # FAIL because their process was killed: they do not use the budget
        trials = self.study.get_trials(deepcopy=False)
        again = retried(trials)  # failed by a heartbeat, re-queued
        out["duplicates"] = 0  # answered from storage: counted apart from the states
        for t in trials:
            if is_duplicate(t) and t.state != TrialState.RUNNING:
                out["duplicates"] += 1
                continue
            out[t.state.name] += 1
            out["interrupted"] += bool(
                t.state == TrialState.FAIL and (t.user_attrs.get("interrupted") or t.number in again)
            )
        out["done"] = sum(1 for t in trials if uses_budget(t, again))
        out["distinct"] = distinct_cells(trials)
        return out

    def _best(self) -> str:
        from .results import best_trials

        best = best_trials(self.study, self.config)
        if not best:
            return "best: none yet"
        if self.config.multi_objective:
            return f"Pareto front: {len(best)} trial(s)"
        t = best[0]
        summary = t.user_attrs.get("summary", "")
        return f"best {self.config.metrics[0]} {t.values[0]:.4g} (trial {t.number}: {summary})"

    def _eta(self) -> float | None:
        if self.remaining is None or not self._durations:
            return None
        left = max(0, self.remaining - self._finished_here)
        mean = sum(self._durations) / len(self._durations)
        return left * mean / max(1, self.config.search.n_jobs)

    def _status_line(self) -> str:
        n = self._counts()
        budget = self.config.search.n_trials
        total = f"/{budget}" if budget is not None else ""
        dup = f", {n['duplicates']} duplicate proposal(s) answered from storage" if n["duplicates"] else ""
        return (
            f"done {n['done']}{total} ({n['distinct']} distinct cell(s){dup}): complete "
            f"{n['COMPLETE']}, pruned {n['PRUNED']}, failed {n['FAIL']}"
            + (f" ({n['interrupted']} interrupted)" if n["interrupted"] else "")
            + ", "
            f"running {n['RUNNING']} | {self._best()} | elapsed {_fmt_time(time.time() - self._start)}, "
            f"ETA {_fmt_time(self._eta())}"
        )

    def _trial_line(self, trial: Any, status: bool = True) -> str:
        attrs = trial.user_attrs
        value = ", ".join(f"{m}={v:.4g}" for m, v in zip(self.config.metrics, trial.values or []))
        why = attrs.get("fail_reason") or attrs.get("prune_reason") or ""
        reused = f" (duplicate of trial {attrs['reused_from']}: not counted)" if "reused_from" in attrs else ""
        end = trial.datetime_complete
        secs = (end - trial.datetime_start).total_seconds() if end and trial.datetime_start else 0.0
        summary = attrs.get("summary", "")
        line = f"trial {trial.number} {trial.state.name} {value} {summary}{reused} {secs:.1f}s {why}"
        return line.rstrip() + (" | " + self._status_line() if status else "")

    def _render(self) -> Any:
        table = Table("trial", "candidate", "epoch", "last metrics", "time", title="running", expand=False)
        with self._lock:
            running = sorted(self._running.items())
        for number, info in running:
            metrics = " ".join(f"{k}={_fmt(v)}" for k, v in info["metrics"].items() if k.startswith("val_"))
            table.add_row(
                str(number),
                info["summary"],
                str(info["epoch"]),
                metrics,
                _fmt_time(time.time() - info["start"]),
            )
        status = Text(self._status_line() if self.study is not None else "starting")
        return Group(status, table) if running else status
