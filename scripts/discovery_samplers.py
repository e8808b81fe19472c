"""Summarize the tabular benchmark and compare Optuna's samplers offline against it (docs/DISCOVERY.md).

    nice -n 19 .venv/bin/python scripts/discovery_samplers.py       # 20 repetitions per sampler

Reads benchmarks/gating_adding30.csv (scripts/discovery_table.py), replays TPE, CMA-ES, random and GP on
the same space as the real search (the table's mean over seeds is the objective), counts the distinct
cells each needs to reach the table's top 1 %, and writes benchmarks/gating_adding30_samplers.json (every
replay, the summaries and the table's summary) and prints both as Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from discovery_table import SEEDS, STUDY, TABLE  # noqa: E402


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def table_summary(rows: list[dict], table: dict[str, float]) -> dict:
    """Size, compute, spread, seed-to-seed agreement, the best cells and the published cells' ranks."""
    by = {(r["key"], r["seed"]): r for r in rows}
    keys = sorted(table, key=table.get)
    pairs = [(by[k, SEEDS[0]]["value"], by[k, SEEDS[1]]["value"]) for k in keys
             if all(not by[k, s]["diverged"] for s in SEEDS[:2])]
    finite = [table[k] for k in keys if math.isfinite(table[k])]
    published = {r["key"]: r["published"] for r in rows if r["published"]}
    n = len(keys)
    return {
        "cells": n, "rows": len(rows), "diverged_rows": sum(r["diverged"] for r in rows),
        "train_seconds": round(sum(r["seconds"] for r in rows), 1),
        "quantiles": {q: round(statistics.quantiles(finite, n=100, method="inclusive")[q - 1], 6)
                      for q in (1, 10, 25, 50, 75, 90)},
        "solved_fraction": sum(v < 0.01 for v in finite) / n,
        "seed_spearman": round(_spearman([a for a, _ in pairs], [b for _, b in pairs]), 3),
        "top": [{"rank": i + 1, "key": k, "mean": round(table[k], 6), "published": published.get(k, ""),
                 "per_seed": [by[k, s]["value"] for s in SEEDS]} for i, k in enumerate(keys[:10])],
        "published": [{"name": published[k], "key": k, "rank": keys.index(k) + 1, "mean": round(table[k], 6)}
                      for k in keys if k in published],
        "top_1pct": sorted(_top(table)),
    }


def _top(table: dict[str, float]) -> set[str]:
    from cellsearch.search.tabular import top_keys

    return top_keys(table, 0.01)


def _against_random(samplers: dict, label: str) -> str:
    """Two-sided Mann-Whitney U p-value of ``label``'s distinct counts against random's (same target)."""
    from scipy.stats import mannwhitneyu

    name, _, rest = label.partition("+") if "+" in label else label.partition("@")
    other = "random" + label[len(name):]
    if name == "random" or other not in samplers:
        return "—"
    a, b = ([r["distinct"] for r in samplers[k]["replays"] if r["distinct"] is not None] for k in (label, other))
    if len(set(a) | set(b)) < 2:
        return "—"
    return f"{mannwhitneyu(a, b, alternative='two-sided').pvalue:.2g}"


def _markdown(summary: dict, samplers: dict) -> str:
    lines = ["| sampler | target | published enqueued | median | IQR | range | missed | mean Optuna trials "
             "| p vs random |", "|---|---|---|---|---|---|---|---|---|"]
    for label, result in samplers.items():
        s = result["summary"]
        head, _, target = label.partition("@")
        name, _, enq = head.partition("+")
        lines.append(f"| {name} | {target or 'top 1 %'} | {'yes' if enq else 'no'} | {s.get('median', '—')} | "
                     f"{s.get('q1', '—')}–{s.get('q3', '—')} | {s.get('min', '—')}–{s.get('max', '—')} | "
                     f"{s['missed']}/{s['repetitions']} | {s.get('mean_trials', math.nan):.1f} | "
                     f"{_against_random(samplers, label)} |")
    return json.dumps({k: v for k, v in summary.items() if k != "top"}, indent=1) + "\n\n" + "\n".join(lines)


def _save(out: Path, table: Path, summary: dict, label: str, result: dict) -> dict:
    """Merge one sampler's result into ``out`` (read again first: another process may add its own)."""
    data = json.loads(out.read_text()) if out.exists() else {}
    where = table.resolve()
    data.update({"table": str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else where),
                 "fraction": 0.01, "summary": summary})
    data.setdefault("samplers", {})[label] = result
    out.write_text(json.dumps(data, indent=1) + "\n")
    return data["samplers"]


def main(argv: list[str] | None = None) -> int:
    from cellsearch.search.tabular import TableDefinition, compare_samplers, read_table, scores, summarize

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--samplers", default="tpe,cmaes,random,gp")
    parser.add_argument("--enqueue", choices=("no", "yes", "both"), default="both",
                        help="published cells enqueued first, as a real search does (default: both ways)")
    parser.add_argument("--target", choices=("fraction", "beat_published"), default="fraction",
                        help="the table's top 1 %% (default), or the cells better than every published one")
    parser.add_argument("--out", type=Path, default=TABLE.with_name(TABLE.stem + "_samplers.json"))
    parser.add_argument("--report-only", action="store_true", help="print what --out holds, run nothing")
    args = parser.parse_args(argv)
    definition = TableDefinition(STUDY, SEEDS, str(ROOT))
    rows = read_table(args.table)
    summary = table_summary(rows, scores(rows))
    for enqueue in () if args.report_only else {"no": (False,), "yes": (True,), "both": (False, True)}[args.enqueue]:
        for name in args.samplers.split(","):
            label = name + ("+published" if enqueue else "") + ("" if args.target == "fraction" else "@beat_published")
            start, done = time.perf_counter(), []

            def save(replay, label=label, start=start, done=done) -> dict:
                """Save after every repetition, so a stopped comparison keeps what it measured."""
                done.append(replay)
                result = {"summary": summarize(done), "seconds": round(time.perf_counter() - start, 1),
                          "complete": len(done) == args.repetitions,
                          "replays": [{"seed": r.seed, "distinct": r.distinct, "trials": r.trials} for r in done]}
                print(f"[{result['seconds']:6.0f} s] {label} seed {replay.seed}: {replay.distinct} distinct cells "
                      f"({replay.trials} trials)", flush=True)
                return _save(args.out, args.table, summary, label, result)

            compare_samplers(definition, rows, [name], args.repetitions, enqueue_published=enqueue, on_replay=save,
                             target=args.target)
    summaries = json.loads(args.out.read_text())["samplers"]
    print(_markdown(summary, summaries))  # every sampler the file holds
    if not args.report_only:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
