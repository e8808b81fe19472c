"""``cellsearch reproduce NAME``: reproduce a seed paper's central claim (table + plot under ``--out``).

``NAME`` is one of ``star``, ``gu2020``, ``asrnn``, ``refined``, ``pascanu2014`` or ``all`` (each in turn,
what ``make reproduce`` runs). ``--size tiny`` runs in seconds, ``cpu`` (default) in minutes, ``full`` at
the papers' scale (a GPU and local datasets). ``--config FILE`` runs a YAML config instead of a built-in
size (``studies/reproduce/<name>-full.yaml`` are the full ones); ``--dump-config`` prints the built-in
config of ``--size`` as YAML and exits; ``--study-files DIR`` writes each experiment's grid (its cells ×
seeds, as the reproduction trains them) as a study file ``DIR/<name>-<experiment>.yaml`` that
``cellsearch run`` trains and ``cellsearch validate`` checks, and exits; ``--replot`` rebuilds the markdown
and plot from the files of an earlier run in ``--out`` (``<name>.json``, the CSVs) without training.
``all`` (trained or replotted) also renders the overview, ``REPRODUCTION.md`` beside the output folder
(``docs/reproduction`` → ``docs/REPRODUCTION.md``; ``--overview FILE`` elsewhere), from the files of all five
(:mod:`cellsearch.reproduce.overview`). A run killed or crashed half-way resumes when the same command runs
again: finished runs come from its journal and interrupted ones from their last evaluation (both under
``--out``/.resume/, removed once the report is written); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HELP = "reproduce a seed paper's claim (table + plot under docs/reproduction)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..reproduce import SIZES, list_reproductions

    names = [*list_reproductions(), "all"]
    parser.add_argument("name", help=f"one of {', '.join(names)}")
    parser.add_argument("--size", choices=SIZES, default="cpu", help="tiny (seconds), cpu (minutes, default), "
                        "full (the papers' scale, for a GPU)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the config's, 3)")
    parser.add_argument("--out", type=Path, default=Path("docs/reproduction"),
                        help="output folder (default docs/reproduction)")
    parser.add_argument("--workers", type=int, default=1,
                        help="training processes in parallel, one torch thread each (default 1)")
    parser.add_argument("--config", type=Path, default=None, help="a YAML reproduction config to run instead")
    parser.add_argument("--dump-config", action="store_true", help="print the --size config as YAML and exit")
    parser.add_argument("--study-files", type=Path, default=None, metavar="DIR",
                        help="write each experiment's grid (cells x seeds) as a study file into DIR for "
                        "`cellsearch run`, and exit (nothing is trained)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: discard what an interrupted run of the same reproduction left to resume")
    parser.add_argument("--replot", action="store_true",
                        help="rebuild the markdown and plot from the files already in --out (no training)")
    parser.add_argument("--overview", type=Path, default=None,
                        help="with 'all': where to render the overview (default: REPRODUCTION.md beside --out)")


def _validate(args: argparse.Namespace) -> list[str]:
    from ..errors import UserError
    from ..reproduce import get_reproduction, list_reproductions

    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    names = list_reproductions() if args.name == "all" else [args.name]
    for name in names:
        get_reproduction(name)  # unknown name → one line with "did you mean"
    if args.config is not None and len(names) != 1:
        raise UserError("--config runs one reproduction: name it instead of 'all'")
    if args.overview is not None and args.name != "all":
        raise UserError("--overview renders the overview of all reproductions: use it with 'all'")
    return names


def _load_config(path: Path) -> dict[str, Any]:
    import yaml

    from ..errors import UserError

    if not path.is_file():
        raise UserError(f"--config: no file {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    raw.pop("name", None)
    return raw


def run(args: argparse.Namespace) -> int:
    import torch

    from ..reproduce import config_yaml

    names = _validate(args)
    if args.dump_config:
        for name in names:
            sys.stdout.write(config_yaml(name, args.size))
        return 0
    if args.study_files is not None:
        return _study_files(names, args)
    if args.replot:
        from ..reproduce import get_reproduction

        for name in names:
            report = get_reproduction(name).replot(args.out)
            print(f"{name}: rebuilt " + ", ".join(str(p) for p in report.files), flush=True)
        _overview(args)
        return 0
    torch.set_num_threads(1)  # small sequential models: one thread per process is fastest
    config = _load_config(args.config) if args.config is not None else None
    total_start = time.perf_counter()
    for name in names:
        command = _command(name, args)
        report = _run_one(name, args, config, command)
        print(f"{name}: wall {report.wall_seconds:.0f} s, {len(report.records)} runs; wrote "
              + ", ".join(str(p) for p in report.files if p.suffix in (".md", ".png")), flush=True)
    if len(names) > 1:
        print(f"all reproductions: wall {time.perf_counter() - total_start:.0f} s", flush=True)
    _overview(args)
    return 0


def _study_files(names: list[str], args: argparse.Namespace) -> int:
    """``--study-files DIR``: each experiment's grid as a study file (what ``cellsearch run`` trains)."""
    from ..reproduce import study_files

    config = _load_config(args.config) if args.config is not None else None
    for name in names:
        command = " ".join([_command(name, args).replace(f" --workers {args.workers}", ""),
                            f"--study-files {args.study_files}"])
        for path in study_files(name, args.study_files, args.size, args.seeds, config, command):
            print(f"{name}: wrote {path} (cellsearch run {path})", flush=True)
    return 0


def _overview(args: argparse.Namespace) -> None:
    """After ``all``: render REPRODUCTION.md from the files in ``--out``."""
    from ..reproduce.overview import write_overview

    if args.name != "all":
        return
    page = args.overview if args.overview is not None else args.out.parent / "REPRODUCTION.md"
    print(f"overview: wrote {write_overview(args.out, page)}", flush=True)


def _command(name: str, args: argparse.Namespace) -> str:
    parts = ["cellsearch reproduce", name]
    parts.append(f"--config {args.config}" if args.config is not None else f"--size {args.size}")
    if args.seeds is not None:
        parts.append(f"--seeds {args.seeds}")
    if args.workers > 1:
        parts.append(f"--workers {args.workers}")
    return " ".join(parts)


def _run_one(name: str, args: argparse.Namespace, config: dict[str, Any] | None, command: str) -> Any:
    from ..reproduce import get_reproduction, reproduce

    repro = get_reproduction(name)
    raw = config if config is not None else repro.config(args.size)
    total = len(repro.parse(raw, args.seeds).jobs())
    done = [0]
    live = sys.stdout.isatty()
    progress, task = None, None
    if live:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn(f"{name}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                            TimeElapsedColumn(), TextColumn("{task.fields[last]}"), transient=True)
        progress.start()
        task = progress.add_task(name, total=total, last="")

    def on_done(record: Any) -> None:
        done[0] += 1
        value = "diverged" if record.diverged else f"test {record.metric} {record.test_metric:.4g}"
        line = f"{record.experiment} {record.variant} seed {record.seed}: {value} ({record.seconds:.0f} s)"
        if progress is not None:
            progress.update(task, advance=1, last=line)
        else:
            print(f"[{name} {done[0]}/{total}] {line}", flush=True)

    try:
        return reproduce(name, args.size, args.seeds, args.out, args.workers, config, on_done, command, args.fresh)
    finally:
        if progress is not None:
            progress.stop()
