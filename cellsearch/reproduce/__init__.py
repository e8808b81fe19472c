"""Reproductions of the seed papers' central claims, each one command (issue 7).

``cellsearch reproduce NAME [--size tiny|cpu|full] [--seeds S] [--out docs/reproduction]`` and
:func:`reproduce` run one; ``make reproduce`` runs all of them at CPU size. Each trains every
(experiment, variant, seed) with the one training loop and writes ``<name>.md`` (claim, setup, tables of
mean ± 95 % Student-t CI over seeds), ``<name>.png``, ``<name>.csv`` (one row per run) and
``<name>_curves.csv`` into the output folder.

| name | paper | what runs |
|---|---|---|
| star | Turkoglu et al. (STAR) | gradient maps at 10 layers; accuracy vs depth on seq_digits |
| gu2020 | Gu et al. 2020 (UGI, UR) | lstm / chrono / u / r / ur LSTM on copy (Gu) and adding |
| asrnn | Nguyen-Duy et al. 2023 | asrnn vs lstm vs vanilla on copy (Arjovsky) at equal parameters |
| refined | Cheng et al. 2020 | refined_{lstm,gru,mgu} vs lstm / gru / mgu on adding |
| refined_ablation | (issue 16) | GRU / MGU refined gate sets and forms, memory at init, keep-bias controls |
| pascanu2014 | Pascanu et al. 2014 | RNN / sRNN / DT / DT(S) / DOT(S) on Bach chorales, NLL per step |

Sizes: ``tiny`` runs end to end in seconds (CI), ``cpu`` in minutes on a laptop (the committed
results under docs/reproduction/), ``full`` is the papers' scale (sMNIST, pMNIST, PTB-char, long
delays) for a GPU; ``studies/reproduce/<name>-full.yaml`` holds the same configs as editable YAML
(``--config``). Each experiment is a study grid (:mod:`cellsearch.reproduce.config`):
:func:`study_files` (``--study-files DIR``) writes them as study files for ``cellsearch run``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .base import SIZES, Report, Reproduction
from .config import ConfigError
from .runner import Job, Record
from .stats import CI, mean_ci

__all__ = ["REPRODUCTIONS", "SIZES", "Report", "Reproduction", "Job", "Record", "CI", "ConfigError",
           "mean_ci", "get_reproduction", "list_reproductions", "reproduce", "config_yaml", "study_files"]

#: reproduction name -> "module:class"
REPRODUCTIONS: dict[str, str] = {
    "star": "cellsearch.reproduce.star:STAR",
    "gu2020": "cellsearch.reproduce.gu2020:Gu2020",
    "asrnn": "cellsearch.reproduce.asrnn:ASRNN",
    "refined": "cellsearch.reproduce.refined:Refined",
    "refined_ablation": "cellsearch.reproduce.refined_ablation:RefinedAblation",
    "pascanu2014": "cellsearch.reproduce.pascanu2014:Pascanu2014",
    "mingru": "cellsearch.reproduce.mingru:MinGRU",
}


def list_reproductions() -> list[str]:
    """The reproduction names, in the order ``make reproduce`` runs them."""
    return list(REPRODUCTIONS)


def get_reproduction(name: str) -> Reproduction:
    """The reproduction called ``name`` (an unknown name raises a ConfigError with "did you mean")."""
    if name not in REPRODUCTIONS:
        from ..registry import did_you_mean

        raise ConfigError(f"unknown reproduction {name!r}; {did_you_mean(name, REPRODUCTIONS)}"
                          f"expected one of {', '.join(REPRODUCTIONS)}")
    module, cls = REPRODUCTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def reproduce(name: str, size: str = "cpu", seeds: int | None = None, out: str | Path = "docs/reproduction",
              workers: int = 1, config: Mapping[str, Any] | None = None,
              on_done: Callable[[Record], None] | None = None, command: str | None = None,
              fresh: bool = False) -> Report:
    """Run reproduction ``name`` at ``size`` (or from ``config``, a mapping) and write its files to ``out``.

    ``seeds`` overrides the number of seeds (≥ 3 for the committed results); ``workers`` > 1 runs the
    training jobs in that many processes (one torch thread each). A run killed or crashed half-way resumes
    when the same command runs again (:meth:`Reproduction.run`); ``fresh`` starts it over.
    """
    repro = get_reproduction(name)
    if size not in SIZES and config is None:
        raise ConfigError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    raw = dict(config) if config is not None else repro.config(size)
    return repro.run(raw, out, size if config is None else "custom config", seeds, workers, on_done, command,
                     fresh)


def _yaml(data: Any) -> str:
    """Block-style YAML, shared sub-mappings written out in full (no &anchors / *aliases)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def config_yaml(name: str, size: str = "full") -> str:
    """The built-in config of ``name`` at ``size`` as YAML (what studies/reproduce/ holds)."""
    repro = get_reproduction(name)
    head = (f"# Reproduction config: cellsearch reproduce {name} --config <this file>\n"
            f"# (the built-in `--size {size}` config; regenerate with "
            f"`cellsearch reproduce {name} --size {size} --dump-config`)\n")
    return head + _yaml({"name": name, **repro.config(size)})


def study_files(name: str, out: str | Path, size: str = "cpu", seeds: int | None = None,
                config: Mapping[str, Any] | None = None, command: str | None = None) -> list[Path]:
    """Write each experiment of reproduction ``name`` (at ``size``, or from ``config``) as a study file
    ``<out>/<name>-<experiment>.yaml``: its grid (the variants × the seeds, as the reproduction trains
    them), which ``cellsearch run`` trains as a study and ``cellsearch validate`` checks. Returns the paths."""
    repro = get_reproduction(name)
    raw = dict(config) if config is not None else repro.config(size)
    parsed = repro.parse(raw, seeds)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    made = command or f"cellsearch reproduce {name} --size {size} --study-files {out}"
    paths = []
    for exp, study in zip(parsed.experiments, parsed.studies()):
        head = (f"# Experiment {exp.name!r} of reproduction {name}: its grid ({len(exp.variants)} cells x "
                f"{len(parsed.seeds)} seeds) as a study;\n# `cellsearch run <this file>` trains it (generated by "
                f"`{made}`)\n")
        path = folder / f"{study.name}.yaml"
        path.write_text(head + _yaml(study.to_file_dict()))
        paths.append(path)
    return paths
