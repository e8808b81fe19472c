"""``cellsearch plot STUDY.yaml --out DIR``: history, importances, Pareto front, parallel coordinates.

Each plot is written as PNG (optuna.visualization.matplotlib) and HTML (plotly). A plot that needs more
trials than the study has (importances need two completed trials with varying parameters) is skipped with
a note instead of failing.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .run import add_study_arguments

HELP = "plots of a study (PNG and HTML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")


#: completed trials a plot needs to say anything
MIN_TRIALS = {"importances": 2, "parallel_coordinates": 2}


def _plots(config: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (optuna.visualization function name, keyword arguments)."""
    first = {}
    if config.multi_objective:
        first = {"target": lambda t: t.values[0], "target_name": config.metrics[0]}
    plots = {
        "history": ("plot_optimization_history", dict(first)),
        "importances": ("plot_param_importances", dict(first)),
        "parallel_coordinates": ("plot_parallel_coordinate", dict(first)),
    }
    if config.multi_objective:
        plots["pareto_front"] = ("plot_pareto_front", {"target_names": config.metrics})
    else:
        plots["intermediate_values"] = ("plot_intermediate_values", {})
    return plots


def _write(kind: str, make: Callable[[], Any], path: Path) -> str | None:
    """Make one figure and save it; returns why it was skipped, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure = make()
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if kind == "png":
        import matplotlib.pyplot as plt

        fig = figure.figure if hasattr(figure, "figure") else figure[0].figure  # Axes or array of Axes
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    else:
        figure.write_html(str(path), include_plotlyjs="cdn")
    return None


def make_plots(study: Any, config: Any, out: Path) -> tuple[list[Path], list[str]]:
    """Write every plot that the study has enough trials for; returns (files, skipped notes)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl
    from optuna.trial import TrialState

    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not complete:
        return [], ["all plots: the study has no completed trial yet"]
    for name, (fn, kwargs) in _plots(config).items():
        if complete < MIN_TRIALS.get(name, 1):
            skipped.append(
                f"{name}: needs at least {MIN_TRIALS[name]} completed trials (the study has {complete})"
            )
            continue
        for kind, module, ext in (("png", vis_mpl, "png"), ("html", vis, "html")):
            path = out / f"{name}.{ext}"
            why = _write(kind, lambda m=module, f=fn, k=kwargs: getattr(m, f)(study, **k), path)
            (skipped.append(f"{name}.{ext}: {why}") if why else written.append(path))
    return written, skipped


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..search import load_config
    from ..search.optuna_backend import open_study

    config = load_config(args.study, args.sets, storage=args.storage)
    study = open_study(config, args.storage, create=False)
    written, skipped = make_plots(study, config, Path(args.out))
    console = Console()
    for path in written:
        console.print(f"wrote {path}", markup=False)
    for note in skipped:
        console.print(f"skipped {note}", markup=False)
    return 0
