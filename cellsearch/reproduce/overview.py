"""docs/REPRODUCTION.md: the overview of every reproduction, rendered from the files the runs left.

``cellsearch reproduce all`` (after training) and ``cellsearch reproduce all --replot`` write it beside the
output folder (``docs/reproduction/`` → ``docs/REPRODUCTION.md``). Nothing in it is typed by hand that the
files hold: the timing table and its total come from ``<name>.json``; every result, seed count and verdict
from the per-seed CSVs (and STAR's gradient maps), through each reproduction's :meth:`overview
<cellsearch.reproduce.base.Reproduction.overview>`; every published number from a cell card's ``reported``
field (:func:`quote`), whose ``citation`` is printed beside it. Edit the prose here or in the
reproduction's module, then re-render; tests/test_docs.py checks that the committed page is what the
committed files render to.

Terms the verdicts use (for a task with a memoryless baseline b): a seed *leaves the baseline* when its
final test metric is below :data:`LEFT` · b; it *solves* the task when its validation metric falls below
the experiment's ``solved_below`` (the first step where it does is its "steps to solve"). Two means are
*resolved* when their 95 % confidence intervals do not overlap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import by_variant, steps_to_solve
from .runner import Record
from .stats import CI, mean_ci

__all__ = ["Overview", "Results", "LEFT", "quote", "quotes", "card_sources", "steps_text", "solves_text",
           "render_overview", "write_overview", "compare", "pct"]

#: a seed leaves the memoryless baseline b when its final test metric is below LEFT · b (a loss metric)
LEFT = 0.9


@dataclass
class Overview:
    """One reproduction's row of the summary table and its section of REPRODUCTION.md."""

    paper: str
    claim: str
    published: str
    result: str
    verdict: str
    heading: str
    section: list[str] = field(default_factory=list)


def quote(card: str, key: str) -> Any:
    """The number a cell card reports under ``key`` (a KeyError names the card when it has none)."""
    from ..api import get_cell

    reported = get_cell(card).reported
    if key not in reported:
        raise KeyError(f"cell card {card!r} reports no {key!r} (it reports: {', '.join(reported)})")
    return reported[key]


def quotes(card: str, keys: Sequence[str] | None = None) -> str:
    """``"key: value; key: value"`` of a card's reported numbers (all of them, or ``keys`` in order)."""
    from ..api import get_cell

    keys = list(get_cell(card).reported) if keys is None else keys
    return "; ".join(f"{key}: {quote(card, key)}" for key in keys)


def card_sources(cards: Sequence[str], reference: str) -> str:
    """One sentence naming where the published numbers of a section come from."""
    from ..api import get_cell

    by_citation: dict[str, list[str]] = {}
    for name in cards:
        by_citation.setdefault(get_cell(name).citation.rstrip("."), []).append(f"`{name}`")
    parts = [f"{', '.join(names)} ({citation})" for citation, names in by_citation.items()]
    where = f", as {reference} quotes them" if reference else ""
    return (f"Published numbers: the `reported` fields of the cell cards {', '.join(parts)}{where}; "
            "`cellsearch show CELL` prints them.")


def pct(value: float, digits: int = 0) -> str:
    """A fraction as a percentage (no sign)."""
    return f"{100 * value:.{digits}f}"


def compare(a: CI, b: CI) -> int:
    """−1 when a's interval lies wholly below b's, +1 wholly above, 0 when they overlap (not resolved)."""
    if not (math.isfinite(a.half) and math.isfinite(b.half)):
        return 0
    if a.high < b.low:
        return -1
    if a.low > b.high:
        return 1
    return 0


class Results:
    """The per-seed records of one run, grouped by experiment and variant, with the verdicts' counts."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)

    def runs(self, experiment: str, variant: str) -> list[Record]:
        """The seeds of one variant (a KeyError when the files have none)."""
        runs = by_variant(self.records, experiment).get(variant)
        if not runs:
            raise KeyError(f"no runs of {variant!r} in experiment {experiment!r}")
        return runs

    def variants(self, experiment: str) -> list[str]:
        """The variant labels of an experiment, in run order."""
        return list(by_variant(self.records, experiment))

    def ci(self, experiment: str, variant: str, key: str = "test_metric") -> CI:
        """Mean ± 95 % CI over seeds of a record field."""
        return mean_ci([getattr(r, key) for r in self.runs(experiment, variant)])

    def n(self, experiment: str, variant: str) -> int:
        """The number of seeds."""
        return len(self.runs(experiment, variant))

    def baseline(self, experiment: str) -> float:
        """The task's memoryless baseline (NaN when it has none)."""
        found = [r.baseline for r in self.records if r.experiment == experiment and r.baseline is not None]
        return float(found[0]) if found else math.nan

    def left(self, experiment: str, variant: str) -> int:
        """Seeds whose final test metric is below LEFT × the baseline."""
        limit = LEFT * self.baseline(experiment)
        return sum(1 for r in self.runs(experiment, variant) if not r.diverged and r.test_metric < limit)

    def solved(self, experiment: str, variant: str, threshold: float) -> tuple[int, CI]:
        """Seeds whose validation metric fell below ``threshold``, and the CI of their steps to solve."""
        steps = [steps_to_solve(r, threshold) for r in self.runs(experiment, variant) if not r.diverged]
        done = [s for s in steps if math.isfinite(s)]
        return len(done), mean_ci(done)

    def seconds(self, experiment: str, variant: str) -> float:
        """Mean seconds per run."""
        runs = self.runs(experiment, variant)
        return sum(r.seconds for r in runs) / len(runs)


def solves_text(count: int, n: int, steps: CI) -> str:
    """"solves 3/3 in 667 ± 143 steps" / "solves 0/3"."""
    return f"solves {count}/{n}" + (f" in {steps_text(count, steps)}" if count else "")


def steps_text(count: int, steps: CI) -> str:
    """"667 ± 143 steps" / "800 steps" (one seed) / "—" (none solved)."""
    if count == 0:
        return "—"
    return f"{steps.format(0)} steps"


# ---------------------------------------------------------------------------------------------------
INTRO = """\
# Reproducing the seed papers' claims

Each seed paper's central claim is one command that runs on a CPU in minutes, with several seeds and
confidence intervals. This page says, for each paper, what it claims, the numbers it publishes, what our
CPU-scale run shows, and whether the two agree — including where they do not.

This page is generated: `cellsearch reproduce all --replot` renders it (and the per-paper pages) from the
committed result files in `docs/reproduction/` (`cellsearch/reproduce/overview.py`); a test re-renders it
and checks that nothing changed. Edit the code, not this file.

    make reproduce                                   # all five at CPU size, 2 worker processes
    cellsearch reproduce NAME [--size tiny|cpu|full] [--seeds S] [--workers N] [--out docs/reproduction]
    cellsearch reproduce NAME --config studies/reproduce/NAME-full.yaml   # an edited config
    cellsearch reproduce NAME --replot               # rebuild the table and plot from the saved files
    cellsearch reproduce all --replot                # ... of all five, and this page

`NAME` is `star`, `gu2020`, `asrnn`, `refined`, `pascanu2014` (or `all`). Each run writes into
`docs/reproduction/`: `NAME.md` (claim, setup, tables), `NAME.png` (plot), `NAME.csv` (one row per run and
seed: final, best and test metrics, parameters, seconds, divergence), `NAME_curves.csv` (the validation
curve of every run) and `NAME.json` (the command, the timing and the exact config).
"""

CONVENTIONS = """\
**Conventions.** Every number below is a mean over {seeds} ± the half-width of the 95 % Student-t
confidence interval over seeds (`cellsearch.reproduce.mean_ci`; a diverged run would be left out and
counted). Test metrics are those of the final model — no early stopping, no selection on the test split.
Within an experiment every model gets the same training recipe and the same budget of optimizer steps;
hidden sizes are equal or, where stated, chosen to match a parameter budget. A seed *leaves the baseline*
when its final test metric is below {left} % of the task's memoryless baseline; it *solves* the task when
its validation metric falls below the experiment's threshold; two means are *resolved* when their CIs do
not overlap. `tiny` exists for CI only (seconds; its numbers mean nothing).

**Published numbers.** Every number called published below is read from a cell card's `reported` field
(`cellsearch show CELL`), and each section names the cards and their citations. The cards hold the
numbers as the project's design reference, PRIMITIVES.md, quotes them (section named in each case); it
does not record the table or figure of each paper they come from.

**Scale.** CPU scale means shorter sequences, smaller models and far fewer optimizer steps than the papers
(each section gives both). "Agrees" below means the *qualitative* claim (which model leaves the baseline,
which is faster, how gradients scale with depth) holds at this scale; no absolute number of a paper is
reproduced here — those need the `full` configs (below) and a GPU.
"""

FULL = """\
## Full-scale configs (for a GPU)

`--size full` runs the papers' scale; the same configs are in `studies/reproduce/NAME-full.yaml`
(regenerate with `cellsearch reproduce NAME --size full --dump-config`; edit and run with `--config`).
They need local datasets — nothing is downloaded:

{full_table}

Where a paper's exact recipe is not known to us (Gu et al.'s MNIST schedule, Pascanu et al.'s SGD
schedule and model sizes), the full configs say so in their docstrings (`cellsearch/reproduce/*.py`) and
use Adam with clipping instead; they have not been run here.

## Confirming a search's winner: `cellsearch confirm`

A search ranks candidates by one training run each. `cellsearch confirm STUDY.yaml --top K --seeds S`
retrains the top-K distinct completed trials of a study from their stored ModelSpec and training config
with S new seeds (1000, 1001, … — never the study's own), ranks them by the mean of the study's first
objective (or `--metric`) with 95 % Student-t CIs, says whether the winner's CI overlaps the runner-up's,
and writes `runs/<study>/confirm/confirm.{md,csv}` (`cellsearch.reproduce.confirm.confirm` in Python).
"""


FULL_ROWS = (
    ("star-full.yaml", "10 × 10 gradient maps at n = 128; sMNIST and pMNIST accuracy vs depth (1, 2, 4, 8, 12, 16 "
     "layers × 128), Adam 1e-3, batch 100, clip 5", "MNIST under `$CELLSEARCH_DATA`"),
    ("gu2020-full.yaml", "copy (Gu) L = 500 and adding T = 2000 at n = 256, 30k steps; sMNIST / pMNIST at n = 512, "
     "150 epochs", "MNIST"),
    ("asrnn-full.yaml", "copy (Arjovsky) L = 1000 and 2000 at 22k parameters with per-model RMSprop learning rates "
     "and clipping; sMNIST / pMNIST at 16k parameters; PTB-char (asRNN n = 1024, LSTM n = 475, BPTT 150)",
     "MNIST; PTB-char files in `~/.cache/cellsearch/data/ptb`"),
    ("refined-full.yaml", "adding T = 200, 400, 1000 at n = 128, 20k steps, 5 seeds", "—"),
    ("pascanu2014-full.yaml", "JSB Chorales, Nottingham, MuseData (standard pickles) and PTB-char at 200k / 1M "
     "parameters", "pickles in `~/.cache/cellsearch/data/music`; PTB-char"),
)


def _seeds_text(seed_lists: Sequence[Sequence[int]]) -> str:
    distinct = {tuple(s) for s in seed_lists}
    if len(distinct) == 1:
        seeds = next(iter(distinct))
        return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return "the seeds each section names"


def _machines(metas: Sequence[dict[str, Any]]) -> str:
    def one(key: str) -> str:
        values = sorted({str(m[key]) for m in metas})
        return " / ".join(values)

    return (f"The committed results were produced on {one('machine')} with torch {one('torch')} and "
            f"{one('workers')} worker process(es), on a machine other jobs were using at the same time: wall "
            "times are pessimistic; each file states its own.")


def render_overview(out: str | Path, page: str | Path) -> str:
    """The markdown of REPRODUCTION.md from the files of every reproduction in ``out``; links are relative
    to ``page``'s folder."""
    from . import get_reproduction, list_reproductions

    out, page = Path(out), Path(page)
    rel = Path(os.path.relpath(out, page.parent)).as_posix()
    rows, sections, timing, metas, seed_lists = [], [], [], [], []
    for number, name in enumerate(list_reproductions(), start=1):
        repro = get_reproduction(name)
        run = repro.load(out)
        ov = repro.overview(run)
        metas.append(run.meta)
        seed_lists.append(run.config.seeds)
        timing.append((name, float(run.meta["wall_seconds"]), repro.runs_text(run)))
        rows.append(f"| {ov.paper} | {ov.claim} | {ov.published} | {ov.result} | {ov.verdict} |")
        sections += [f"## {number}. {ov.heading} ([table]({rel}/{name}.md), ![]({rel}/{name}.png))", "",
                     *ov.section, ""]
    total = sum(t for _, t, _ in timing)
    lines = [INTRO, CONVENTIONS.format(seeds=_seeds_text(seed_lists), left=pct(LEFT)).rstrip("\n"), "",
             f"**Where and how long.** {_machines(metas)}", "",
             "| reproduction | wall time | runs |", "|---|---:|---:|",
             *[f"| {name} | {t:.0f} s | {runs} |" for name, t, runs in timing],
             f"| total | {total:.0f} s (≈ {total / 60:.0f} min) | |", "",
             "## Summary", "",
             "| paper | claim | published | this run (CPU scale) | agrees? |", "|---|---|---|---|---|",
             *rows, "", *sections,
             FULL.replace("{full_table}", "\n".join(["| file | experiments | data |", "|---|---|---|",
                                               *[f"| `{f}` | {e} | {d} |" for f, e, d in FULL_ROWS]]))]
    return "\n".join(lines)


def write_overview(out: str | Path, page: str | Path) -> Path:
    """Render REPRODUCTION.md from the files in ``out`` into ``page``."""
    page = Path(page)
    page.write_text(render_overview(out, page))
    return page
