"""``cellsearch plot STUDY.yaml --out DIR``: history, importances, Pareto front, parallel coordinates.

Each plot is written as PNG (optuna.visualization.matplotlib) and HTML (plotly, its JavaScript embedded so
the file opens offline). Axes name the objective's metric (with its unit where known) instead of "Objective
Value", curves are labelled with their cell instead of "Trial0", epochs and trial numbers are integer ticks.
A plot that needs more trials than the study has is skipped with a note instead of failing: importances need
:data:`MIN_TRIALS` ``["importances"]`` completed trials (fewer rank parameters by noise).
"""

from __future__ import annotations

import argparse
import re
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
MIN_TRIALS = {"importances": 20, "parallel_coordinates": 2}
_WHY = {"importances": "fewer rank the parameters by noise", "parallel_coordinates": "one trial draws no lines"}


def _plots(config: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (optuna.visualization function name, keyword arguments)."""
    from ..config import metric_label

    first = {"target_name": metric_label(config.metrics[0])}
    if config.multi_objective:
        first["target"] = lambda t: t.values[0]
    plots = {
        "history": ("plot_optimization_history", dict(first)),
        "importances": ("plot_param_importances", dict(first)),
        "parallel_coordinates": ("plot_parallel_coordinate", dict(first)),
    }
    if config.multi_objective:
        plots["pareto_front"] = ("plot_pareto_front", {"target_names": [metric_label(m) for m in config.metrics]})
    else:
        plots["intermediate_values"] = ("plot_intermediate_values", {})
    return plots


def _cell_names(study: Any) -> dict[int, str]:
    """Trial number -> ``#N cell`` (the trial's cell summary)."""
    trials = study.get_trials(deepcopy=False)
    return {t.number: f"#{t.number} {t.user_attrs.get('summary', '')}".strip() for t in trials}


def _trial_label(text: str, names: dict[int, str]) -> str:
    match = re.fullmatch(r"Trial(\d+)", text or "")
    return names.get(int(match.group(1)), text) if match else text


def _relabel_plotly(name: str, figure: Any, config: Any, names: dict[int, str]) -> None:
    from ..config import metric_label

    for trace in figure.data:
        if getattr(trace, "name", None):
            trace.name = _trial_label(trace.name, names)
    if name == "intermediate_values":
        figure.update_layout(xaxis_title="epoch", yaxis_title=metric_label(config.metrics[0]))
        figure.update_xaxes(tick0=1, dtick=1)
    elif name == "history":
        figure.update_xaxes(title="trial", tickformat="d")


def _relabel_matplotlib(name: str, axes: Any, config: Any, names: dict[int, str]) -> None:
    from matplotlib.ticker import MaxNLocator

    from ..config import metric_label

    for ax in getattr(axes, "flat", [axes]):
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        for line in lines:
            line.set_label(_trial_label(line.get_label(), names))
        if name == "intermediate_values":
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric_label(config.metrics[0]))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if lines:
                ax.legend(loc="upper right", fontsize="x-small")
        elif name == "history":
            ax.set_xlabel("trial")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _write(kind: str, make: Callable[[], Any], path: Path, relabel: Callable[[Any], None]) -> str | None:
    """Make one figure, relabel it and save it; returns why it was skipped, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure = make()
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
    relabel(figure)
    if kind == "png":
        import matplotlib.pyplot as plt

        fig = figure.figure if hasattr(figure, "figure") else figure.flat[0].figure  # Axes or array of Axes
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    else:
        figure.write_html(str(path), include_plotlyjs=True)  # self-contained: opens offline
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
    names = _cell_names(study)
    relabel = {"png": _relabel_matplotlib, "html": _relabel_plotly}
    for name, (fn, kwargs) in _plots(config).items():
        if complete < MIN_TRIALS.get(name, 1):
            skipped.append(f"{name}: needs at least {MIN_TRIALS[name]} completed trials (the study has "
                           f"{complete}; {_WHY[name]})")
            continue
        for kind, module in (("png", vis_mpl), ("html", vis)):
            path = out / f"{name}.{kind}"
            why = _write(kind, lambda m=module, f=fn, k=kwargs: getattr(m, f)(study, **k), path,
                         lambda fig, r=relabel[kind], n=name: r(n, fig, config, names))
            (skipped.append(f"{name}.{kind}: {why}") if why else written.append(path))
    return written, skipped


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..search import load_config
    from ..search.studies import open_study

    config = load_config(args.study, args.sets, storage=args.storage)
    study = open_study(config, args.storage, create=False)
    written, skipped = make_plots(study, config, Path(args.out))
    console = Console()
    for path in written:
        console.print(f"wrote {path}", markup=False)
    for note in skipped:
        console.print(f"skipped {note}", markup=False)
    return 0
