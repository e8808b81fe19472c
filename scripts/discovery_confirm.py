"""The held-out search against the published cells (docs/DISCOVERY.md, part 3).

    nice -n 19 .venv/bin/cellsearch run studies/discovery_perm_digits.yaml
    nice -n 19 .venv/bin/cellsearch confirm studies/discovery_perm_digits.yaml --top 5 --seeds 5
    nice -n 19 .venv/bin/python scripts/discovery_confirm.py

Reads what ``cellsearch confirm`` wrote (runs/<study>/confirm/confirm.csv: the top 5 distinct trials
retrained with 5 new seeds), retrains the best published cells of the same study (same parameter budget,
same training, ranked by their study value) with the same new seeds where confirm did not already, and
compares each confirmed candidate with the best published cell: mean ± 95 % Student-t CI per cell, and the
paired (same seed) difference with its CI. Writes benchmarks/discovery_perm_digits_confirm.{json,md} and
every trial of the search to benchmarks/discovery_perm_digits_trials.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "discovery_perm_digits.yaml"
OUT = ROOT / "benchmarks" / "discovery_perm_digits_confirm"
TITLE = "# discovery_perm_digits: confirmed top 5 against the best published cells\n\n"


def confirmed(path: Path, metric: str) -> dict[int, dict]:
    """Trial number → summary and per-seed values, from confirm.csv."""
    out: dict[int, dict] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            entry = out.setdefault(int(row["trial"]), {"summary": row["summary"], "values": {}})
            entry["values"][int(row["seed"])] = float(row[metric])
    return out


def published_trials(config, count: int) -> list:
    """The ``count`` best COMPLETE trials of published cells, best first."""
    from cellsearch.search.results import ranked
    from cellsearch.search.studies import open_study

    trials = ranked(open_study(config, create=False), config)
    return [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("published")][:count]


def retrain_published(config, trials: list, seeds: list[int], metric: str, workers: int) -> dict[int, dict]:
    """Trial number → name and per-seed values of ``trials`` retrained with ``seeds``."""
    from cellsearch.jobs import run_parallel
    from cellsearch.reproduce.confirm import RetrainJob, retrain

    task = config.task.to_dict()
    jobs = [RetrainJob(t.number, t.user_attrs["spec"], task, dict(t.user_attrs["train"]), s, metric)
            for t in trials for s in seeds]
    results = run_parallel(retrain, jobs, workers)
    out: dict[int, dict] = {t.number: {"summary": t.user_attrs["published"], "values": {}} for t in trials}
    for job, (value, _) in zip(jobs, results):
        out[job.trial]["values"][job.seed] = value
    return out


def compare(cells: dict[int, dict], reference: int, seeds: list[int]) -> list[dict]:
    """Every cell's mean ± CI and its paired difference from ``reference`` (best mean first)."""
    from cellsearch.reproduce.stats import mean_ci

    rows = []
    for trial, cell in cells.items():
        ci = mean_ci([cell["values"][s] for s in seeds])
        diff = mean_ci([cell["values"][s] - cells[reference]["values"][s] for s in seeds])
        rows.append({"trial": trial, "cell": cell["summary"], "published": cell.get("published", False),
                     "mean": ci.mean, "ci": ci.half, "diff": diff.mean, "diff_ci": diff.half,
                     "per_seed": [cell["values"][s] for s in seeds]})
    return sorted(rows, key=lambda r: -r["mean"])


def markdown(rows: list[dict], reference: str, seeds: list[int]) -> str:
    lines = [f"Seeds {', '.join(map(str, seeds))}; difference: paired by seed, against {reference}.", "",
             "| cell | trial | published | mean val_accuracy ± 95 % CI | − best published ± 95 % CI | per seed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "reference" if r["cell"] == reference else f"{r['diff']:+.4f} ± {r['diff_ci']:.4f}"
        lines.append(f"| {r['cell']} | {r['trial']} | {'yes' if r['published'] else ''} | "
                     f"{r['mean']:.4f} ± {r['ci']:.4f} | {diff} | "
                     f"{', '.join(f'{v:.3f}' for v in r['per_seed'])} |")
    return "\n".join(lines) + "\n"


def export_trials(config, path: Path) -> None:
    """Every trial of the study, one CSV row each: state, cell, parameters, value, published name."""
    from cellsearch.search.studies import open_study

    trials = open_study(config, create=False).get_trials(deepcopy=False)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "cell", "published", "n_params", config.objective[0].metric,
                         "epochs", "reused_from"])
        for t in trials:
            a = t.user_attrs
            value = t.values[0] if t.values else (max(t.intermediate_values.items())[1]
                                                  if t.intermediate_values else "")
            writer.writerow([t.number, t.state.name, a.get("summary", ""), a.get("published", ""),
                             a.get("n_params", ""), value, len(t.intermediate_values), a.get("reused_from", "")])


def main(argv: list[str] | None = None) -> int:
    from cellsearch.search import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--published", type=int, default=3, help="best published cells to retrain (default 3)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="render the .md from the .json only")
    args = parser.parse_args(argv)
    if args.report_only:
        data = json.loads(OUT.with_suffix(".json").read_text())
        text = markdown(data["rows"], data["reference"]["cell"], data["seeds"])
        OUT.with_suffix(".md").write_text(TITLE + text)
        print(text)
        return 0
    config = load_config(str(STUDY))
    metric = config.objective[0].metric
    export_trials(config, OUT.with_name("discovery_perm_digits_trials.csv"))
    cells = confirmed(config.directory / "confirm" / "confirm.csv", metric)
    seeds = sorted(next(iter(cells.values()))["values"])
    pub = published_trials(config, args.published)
    for t in pub:
        if t.number in cells:
            cells[t.number]["summary"] = t.user_attrs["published"]
    cells.update(retrain_published(config, [t for t in pub if t.number not in cells], seeds, metric, args.workers))
    for t in pub:
        cells[t.number]["published"] = True
    means = {n: sum(c["values"].values()) / len(seeds) for n, c in cells.items() if c.get("published")}
    reference = max(means, key=means.get)
    rows = compare(cells, reference, seeds)
    OUT.with_suffix(".json").write_text(json.dumps(
        {"study": str(STUDY.relative_to(ROOT)), "metric": metric, "seeds": seeds,
         "reference": {"trial": reference, "cell": cells[reference]["summary"]}, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, cells[reference]["summary"], seeds)
    OUT.with_suffix(".md").write_text(TITLE + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
