"""The shape every reproduction shares: configs per size, jobs, files, markdown, plot.

A reproduction is a :class:`Reproduction` subclass: its ``configs()`` (``tiny`` / ``cpu`` / ``full``
mappings, see :mod:`cellsearch.reproduce.config`), the paper's ``claim`` and the cards whose citations
and reported numbers the report quotes. :meth:`Reproduction.run` trains every (experiment, variant,
seed) job, then writes into ``out``:

- ``<name>.csv`` — one row per run (final / best / test metrics, parameters, seconds, divergence);
- ``<name>_curves.csv`` — the validation curve of every run;
- ``<name>.md`` — the claim, the setup, one table per experiment (mean ± 95 % CI over seeds);
- ``<name>.png`` — the plot (by default the validation curves of each experiment against the
  memoryless baseline);
- ``<name>.json`` — the command, the timing and the exact config, from which :meth:`Reproduction.replot`
  rebuilds the markdown and the plot without training.

Subclasses add their own analysis by overriding :meth:`extra` (work that is not a training run, e.g.
gradient maps) and :meth:`load_extra` (reading it back), :meth:`sections` and :meth:`figure`, and give
their summary and section of docs/REPRODUCTION.md with :meth:`overview` (see
:mod:`cellsearch.reproduce.overview`).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .config import ReproConfig, parse_config
from .report import experiment_table, plot_curves, read_records, write_records
from .runner import Record, run_jobs

__all__ = ["Reproduction", "Report", "Loaded", "SIZES"]

SIZES = ("tiny", "cpu", "full")


@dataclass
class Loaded:
    """A finished run read back from its files: the parsed config, the records, the extra results (e.g.
    gradient maps) and the metadata of ``<name>.json``."""

    config: ReproConfig
    records: list[Record]
    extra: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class Report:
    """What a reproduction wrote: its files, records, markdown and timings."""

    name: str
    size: str
    files: list[Path]
    records: list[Record]
    markdown: str
    wall_seconds: float
    run_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Reproduction:
    """Base class; see the module docstring."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    claim: ClassVar[str] = ""
    cards: ClassVar[tuple[str, ...]] = ()
    #: where the project's design reference quotes the cards' published numbers (e.g. "PRIMITIVES.md §2")
    reference: ClassVar[str] = ""
    extra_keys: ClassVar[tuple[str, ...]] = ()
    log_curves: ClassVar[bool] = False

    # ------------------------------------------------------------------ configs
    def configs(self) -> dict[str, dict[str, Any]]:
        """The built-in config of each size (``tiny``, ``cpu``, ``full``)."""
        raise NotImplementedError

    def config(self, size: str) -> dict[str, Any]:
        """A fresh copy of the built-in config of ``size``."""
        configs = self.configs()
        if size not in configs:
            from ..errors import UserError

            raise UserError(f"reproduction {self.name!r} has no size {size!r}; sizes: {', '.join(configs)}")
        return copy.deepcopy(configs[size])

    def parse(self, raw: Mapping[str, Any], seeds: int | None = None) -> ReproConfig:
        """Validate a config mapping of this reproduction."""
        return parse_config({"name": self.name, **raw}, self.extra_keys, seeds)

    # ------------------------------------------------------------------ running
    def run(self, raw: Mapping[str, Any], out: str | Path, size: str = "custom", seeds: int | None = None,
            workers: int = 1, on_done: Callable[[Record], None] | None = None,
            command: str | None = None, fresh: bool = False) -> Report:
        """Run the reproduction the config ``raw`` describes and write its files into ``out``.

        Resumable: until the report is written, finished runs are journaled and each run checkpoints
        every evaluation under ``out/.resume/<name>/``, so the same command after a crash or kill trains
        only what was not finished (the interrupted runs from their last evaluation); ``fresh`` discards an
        earlier run's journal. The folder is removed once the report is written."""
        import torch

        config = self.parse(raw, seeds)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        work = out / ".resume" / self.name
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        start = time.perf_counter()
        extra = self.extra(config, out)
        records, resumed = run_jobs(config.jobs(), workers, on_done, work=work)
        wall = time.perf_counter() - start
        stored = {k: v for k, v in config.raw.items() if k not in ("name", "seeds", "first_seed")}
        meta = {"name": self.name, "size": size,
                "command": command or f"cellsearch reproduce {self.name} --size {size} --seeds {len(config.seeds)}",
                "workers": workers, "wall_seconds": round(wall, 1),
                "run_seconds": round(sum(r.seconds for r in records), 1),
                "machine": f"{platform.machine()} with {os.cpu_count()} CPUs", "torch": torch.__version__,
                "config": {"seeds": len(config.seeds), "first_seed": config.seeds[0], **stored}}
        if resumed:
            meta["resumed_runs"] = resumed  # finished by an earlier, interrupted run of the same config
        files = [*extra.pop("files", []), *write_records(out, self.name, records)]
        path = out / f"{self.name}.json"
        path.write_text(json.dumps(meta, indent=1) + "\n")
        report = self.render(config, records, extra, meta, out, [*files, path])
        shutil.rmtree(work, ignore_errors=True)
        _drop_if_empty(out / ".resume")
        return report

    def load(self, out: str | Path) -> Loaded:
        """What a run left in ``out``: ``<name>.json`` (command, timing and the exact config), the CSVs and
        any extra files, read back (no training)."""
        from ..errors import UserError

        out = Path(out)
        path = out / f"{self.name}.json"
        if not path.is_file():
            raise UserError(f"--replot: no {path} (run `cellsearch reproduce {self.name}` first)")
        meta = json.loads(path.read_text())
        config = self.parse(meta["config"])
        records = read_records(out, self.name)
        return Loaded(config, records, self.load_extra(config, out), meta)

    def replot(self, out: str | Path, figure: bool = True) -> Report:
        """Rebuild ``<name>.md`` and (``figure``) ``<name>.png`` from the files a run left in ``out``."""
        run = self.load(out)
        return self.render(run.config, run.records, run.extra, run.meta, Path(out), [], figure)

    def render(self, config: ReproConfig, records: Sequence[Record], extra: dict[str, Any],
               meta: Mapping[str, Any], out: Path, files: list[Path], figure: bool = True) -> Report:
        """Write ``<name>.md`` and (``figure``) ``<name>.png`` from the records (and extra results) of a run."""
        lines = self.header(config, meta)
        lines += self.sections(config, records, extra)
        lines += ["", f"Raw per-seed results: [`{self.name}.csv`]({self.name}.csv); learning curves: "
                      f"[`{self.name}_curves.csv`]({self.name}_curves.csv); command, timing and config: "
                      f"[`{self.name}.json`]({self.name}.json).", ""]
        markdown = "\n".join(lines)
        (out / f"{self.name}.md").write_text(markdown)
        files = [*files, out / f"{self.name}.md"]
        if figure:
            fig = self.figure(config, records, extra)
            fig.savefig(out / f"{self.name}.png", dpi=100)
            files.append(out / f"{self.name}.png")
        return Report(self.name, str(meta["size"]), files, list(records), markdown, float(meta["wall_seconds"]),
                      float(meta["run_seconds"]), extra)

    def load_extra(self, config: ReproConfig, out: Path) -> dict[str, Any]:
        """Read back what :meth:`extra` wrote (for :meth:`replot`; default: nothing)."""
        return {}

    def extra(self, config: ReproConfig, out: Path) -> dict[str, Any]:
        """Work besides the training jobs (default: none); may return ``files`` (written paths)."""
        return {}

    # ------------------------------------------------------------------ the overview (REPRODUCTION.md)
    def overview(self, run: Loaded) -> Any:
        """This reproduction's summary row and section of REPRODUCTION.md (an
        :class:`~cellsearch.reproduce.overview.Overview`), computed from a finished run's files."""
        raise NotImplementedError(f"reproduction {self.name!r} has no overview for REPRODUCTION.md")

    def runs_text(self, run: Loaded) -> str:
        """What the run trained, for the timing table of REPRODUCTION.md (default: the number of runs)."""
        return str(len(run.records))

    # ------------------------------------------------------------------ writing
    def header(self, config: ReproConfig, meta: Mapping[str, Any]) -> list[str]:
        """Title, claim, published numbers, setup and timing."""
        from ..api import get_cell

        lines = [f"# {self.title}", "", f"Generated by `{meta['command']}` (size `{meta['size']}`).", "",
                 "## Claim", "", self.claim, ""]
        reported = [(name, get_cell(name)) for name in self.cards]
        cites = sorted({card.citation for _, card in reported})
        if cites:
            lines += ["Sources: " + "; ".join(cites), ""]
        numbers = [f"- `{name}`: " + "; ".join(f"{k}: {v}" for k, v in card.reported.items())
                   for name, card in reported if card.reported]
        if numbers:
            where = f", as {self.reference} quotes them" if self.reference else ""
            lines += [f"Published numbers (the cell cards' `reported` fields{where}; sources above):", "",
                      *numbers, ""]
        lines += ["## Setup", "", f"Seeds: {', '.join(map(str, config.seeds))}. Every table entry is the mean "
                  "over seeds ± the half-width of the 95 % Student-t confidence interval; the test metric is "
                  "that of the final model (no early stopping).", ""]
        for exp in config.experiments:
            lines.append(f"- **{exp.name}**: task `{_inline(exp.task)}`, model `{_inline(exp.model)}`, "
                         f"train `{_inline(exp.train)}`")
            for v in exp.variants:
                changes = {k: getattr(v, k) for k in ("spec", "options", "depth", "train", "model") if getattr(v, k)}
                if changes:
                    lines.append(f"  - {v.label}: `{_inline(changes)}`")
        lines += ["", f"Wall time {meta['wall_seconds']:.0f} s with {meta['workers']} worker process(es) (sum over "
                  f"runs {meta['run_seconds']:.0f} s) on {meta['machine']}, torch {meta['torch']}."
                  + (f" {meta['resumed_runs']} run(s) were finished by an earlier, interrupted run of the same "
                     "command and taken from its journal (the wall time is the last run's)."
                     if meta.get("resumed_runs") else ""), ""]
        return lines

    def sections(self, config: ReproConfig, records: Sequence[Record], extra: Mapping[str, Any]) -> list[str]:
        """One table per experiment (default)."""
        lines: list[str] = ["## Results", ""]
        for exp in config.experiments:
            baseline = next((r.baseline for r in records if r.experiment == exp.name and r.baseline), None)
            title = exp.title or exp.name
            lines += [f"### {title}", ""]
            if baseline is not None:
                lines += [f"Memoryless baseline of the task: {baseline:.4g}.", ""]
            lines += [*experiment_table(exp, records), ""]
        lines += [f"![{self.name}]({self.name}.png)", ""]
        return lines

    def figure(self, config: ReproConfig, records: Sequence[Record], extra: Mapping[str, Any]) -> Any:
        """Validation curves, one panel per experiment (default)."""
        from matplotlib.figure import Figure

        n = len(config.experiments)
        fig = Figure(figsize=(5.2 * n, 3.8), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, exp in zip(axes, config.experiments):
            plot_curves(ax, exp, records, log=self.log_curves)
        return fig


def _drop_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # absent, or another reproduction's work is still there
        pass


def _inline(value: Any) -> str:
    """A compact one-line rendering of a mapping (flow-style YAML without the braces noise)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
