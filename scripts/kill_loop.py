"""Kill -9 at random moments, then check the storage (issue 12, "must show"; ``make chaos``).

For each repetition a new tiny study (adding, T = 10, hidden 8, a few seconds a trial; a seeded TPE
sampler over four cells and a log-uniform learning rate; the published cells enqueued) is run by
``cellsearch run STUDY.yaml --storage URL --quiet`` worker processes, as the README starts them: two on
one PostgreSQL database, one (or ``--sqlite-workers``) on a SQLite file. One to three times per
repetition, at a moment drawn uniformly from [0, ``--horizon``] seconds after the workers started (their
start-up, the study's creation, seeding, training, saving: wherever it falls), one worker or all of them
get SIGKILL; the missing workers are started again and, after the last kill, run until they end; a
rerun follows while the budget is not complete (at most ``--max-reruns``). Then the storage is read:

- **budget**: trials that use the budget (``cellsearch.search.ledger.uses_budget``) = ``n_trials``;
- **lost**: trials seen finished right after a kill that are gone or changed at the end, plus COMPLETE
  trials whose weights file is missing;
- **duplicates**: keys (spec + training + task) trained more than once, plus interrupted trials
  re-queued more than once;
- **replays**: sampled trials (not enqueued, not re-queued) whose sampled learning rate repeats an
  earlier trial's (a continued seeded study redrawing its first points), plus proposals answered from
  storage (``reused_from``: a point already evaluated proposed again);
- **waiting** / **running**: WAITING or RUNNING trials left;
- **unretried**: trials interrupted by a kill whose parameters were never trained again.

Every worker exits 0 after the last kill, or the repetition fails. Results: one line per repetition and
a table (``--out FILE`` writes the table and the JSON records). PostgreSQL: ``CELLSEARCH_TEST_POSTGRES``
or a throwaway server started here (``scripts/pgserver.py``); skipped with the reason when there is none.

    python scripts/kill_loop.py --backend both --reps 10 --out docs/reliability/kill_loop.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgserver import Unavailable, postgres  # noqa: E402

TASK = {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32}
#: how long a worker may take to end after the last kill (a heartbeat grace period of 3 s plus training)
FINISH_S = 400


@dataclass
class Rep:
    """What one repetition did and found."""

    backend: str
    rep: int
    workers: int
    budget: int
    kills: list[dict[str, Any]] = field(default_factory=list)
    reruns: int = 0
    trials: int = 0
    used: int = 0
    lost: int = 0
    duplicates: int = 0
    replays: int = 0
    waiting: int = 0
    running: int = 0
    unretried: int = 0
    interrupted: int = 0
    exit_codes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def study_file(folder: Path, name: str, budget: int, steps: int) -> Path:
    raw = {
        "name": name,
        "task": dict(TASK),
        "space": {
            "cell": {"update": ["lstm", "gru", "star", "mgu"]},
            "train": {"lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True}},
        },
        "model": {"hidden_size": 8},
        "train": {"epochs": 2, "steps_per_epoch": steps, "batch_size": 16, "threads": 1},
        "objective": "val_mse",
        "search": {"sampler": "tpe", "pruner": "none", "n_trials": budget, "seed": 0, "n_jobs": 1,
                   "enqueue_published": True},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cellsearch_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("cellsearch")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cellsearch.cli"]


class Workers:
    """The worker processes of one repetition (logs in its folder)."""

    def __init__(self, path: Path, url: str, folder: Path) -> None:
        self.path, self.url, self.folder = path, url, folder
        self.live: list[subprocess.Popen] = []
        self.started = 0
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLSEARCH_CORES": "1",
                    "CELLSEARCH_HEARTBEAT_S": "1", "CELLSEARCH_GRACE_S": "3"}

    def fill(self, n: int) -> None:
        """Start workers until ``n`` are alive."""
        self.live = [p for p in self.live if p.poll() is None]
        while len(self.live) < n:
            self.started += 1
            log = open(self.folder / f"worker{self.started}.log", "w")  # noqa: SIM115 - closed with the process
            cmd = [*cellsearch_cmd(), "run", str(self.path), "--storage", self.url, "--quiet"]
            proc = subprocess.Popen(cmd, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            proc._cs_log = log  # type: ignore[attr-defined]
            self.live.append(proc)

    def kill(self, rng: random.Random, mode: str) -> int:
        """SIGKILL one live worker (``one``) or every live worker (``all``); returns how many were killed."""
        alive = [p for p in self.live if p.poll() is None]
        victims = alive if mode == "all" else rng.sample(alive, min(1, len(alive)))
        for p in victims:
            p.send_signal(signal.SIGKILL)
        for p in victims:
            p.wait()
            p._cs_log.close()  # type: ignore[attr-defined]
        self.live = [p for p in self.live if p not in victims]
        return len(victims)

    def finish(self, timeout: float) -> list[int]:
        """Wait for every live worker; their exit codes (a worker still running at ``timeout`` is killed: -9)."""
        codes, end = [], time.monotonic() + timeout
        for p in self.live:
            try:
                codes.append(p.wait(timeout=max(1.0, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(-9)
            p._cs_log.close()  # type: ignore[attr-defined]
        self.live = []
        return codes

    def stop(self) -> None:
        for p in self.live:
            if p.poll() is None:
                p.kill()
                p.wait()
            p._cs_log.close()  # type: ignore[attr-defined]
        self.live = []


def load(url: str, name: str) -> Any:
    """The study as a reader sees it, or None while it does not exist yet."""
    import optuna

    from cellsearch.search.storage import make_storage

    try:
        return optuna.load_study(study_name=name, storage=make_storage(url, create=False))
    except Exception:  # noqa: BLE001 - not created yet (or being created)
        return None


def finished_snapshot(study: Any) -> dict[int, Any]:
    """number -> (state, values, params) of every finished trial."""
    from optuna.trial import TrialState

    if study is None:
        return {}
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return {t.number: (t.state.name, t.values, t.params) for t in study.get_trials(deepcopy=False) if t.state in done}


def phase(study: Any) -> str:
    """Where the study stood right after a kill."""
    from optuna.trial import TrialState

    if study is None:
        return "no study yet"
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    training = sum(1 for t in trials if t.state == TrialState.RUNNING and "key" in t.user_attrs)
    return (f"{count[TrialState.COMPLETE]} complete, {count[TrialState.RUNNING]} running ({training} training), "
            f"{count[TrialState.WAITING]} waiting")


def check(rep: Rep, study: Any, seen: dict[int, Any], folder: Path) -> None:
    """Fill in rep's counts from the final storage (see the module doc)."""
    from optuna.trial import TrialState

    from cellsearch.search.ledger import point, retried, uses_budget

    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    rep.trials = len(trials)
    rep.used = sum(1 for t in trials if uses_budget(t, again))
    final = finished_snapshot(study)
    rep.lost = sum(1 for n, v in seen.items() if final.get(n) != v)
    for t in trials:
        if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs:
            weights = t.user_attrs.get("weights")
            if not weights or not (folder / weights).is_file():
                rep.lost += 1
    trained = [t.user_attrs.get("key") for t in trials if uses_budget(t, again)]
    requeues = [t.user_attrs["retry_of"] for t in trials if isinstance(t.user_attrs.get("retry_of"), int)]
    rep.duplicates = (len(trained) - len(set(trained))) + (len(requeues) - len(set(requeues)))
    reused = sum(1 for t in trials if "reused_from" in t.user_attrs)
    drawn: set[Any] = set()
    replays = 0
    for t in sorted(trials, key=lambda t: t.number):
        if "retry_of" in t.user_attrs or "proposed_by" in t.user_attrs:
            continue
        fixed = t.system_attrs.get("fixed_params") or {}
        floats = point({k: v for k, v in t.params.items() if k not in fixed and isinstance(v, float)})
        if floats:
            replays += floats in drawn
            drawn.add(floats)
    rep.replays = replays + reused
    rep.waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    rep.running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    interrupted = [t for t in trials
                   if t.state == TrialState.FAIL and (t.number in again or t.user_attrs.get("interrupted"))]
    rep.interrupted = len(interrupted)
    retrained = {t.user_attrs["retry_of"] for t in trials if isinstance(t.user_attrs.get("retry_of"), int)
                 and t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    # a trial interrupted, re-queued, whose retry was interrupted and re-queued again: followed to the end
    def retrained_in_the_end(number: int, depth: int = 0) -> bool:
        if number in retrained:
            return True
        nxt = [t.number for t in trials if t.user_attrs.get("retry_of") == number]
        return depth < 10 and any(retrained_in_the_end(n, depth + 1) for n in nxt)

    rep.unretried = sum(1 for t in interrupted if not retrained_in_the_end(t.number))
    # a trial FAIL with no reason, not re-queued: killed between its FAIL and its re-queue
    rep.unretried += sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in again
                         and not t.user_attrs.get("fail_reason"))
    if rep.used != rep.budget:
        rep.problems.append(f"budget: {rep.used} of {rep.budget} trials use it")
    for name in ("lost", "duplicates", "replays", "waiting", "running", "unretried"):
        if getattr(rep, name):
            rep.problems.append(f"{name}: {getattr(rep, name)}")
    if any(code != 0 for code in rep.exit_codes):
        rep.problems.append(f"worker exit codes after the last kill: {rep.exit_codes}")


def one_rep(backend: str, rep_no: int, url_for: Any, args: argparse.Namespace, rng: random.Random,
            root: Path) -> Rep:
    workers_n = args.pg_workers if backend == "postgresql" else args.sqlite_workers
    budget = args.pg_budget if backend == "postgresql" else args.sqlite_budget
    rep = Rep(backend, rep_no, workers_n, budget)
    name = f"chaos_{backend[:2]}{rep_no}_{uuid.uuid4().hex[:6]}"
    folder = root / name
    folder.mkdir()
    url = url_for(folder)
    path = study_file(folder, name, budget, args.steps)
    workers = Workers(path, url, folder)
    seen: dict[int, Any] = {}
    from cellsearch.search.ledger import counted

    start = time.monotonic()
    try:
        for _ in range(rng.randint(1, args.max_kills)):
            workers.fill(workers_n)
            delay = rng.uniform(0.0, args.horizon)
            time.sleep(delay)
            mode = "all" if workers_n == 1 else rng.choice(["one", "all"])
            killed = workers.kill(rng, mode)
            study = load(url, name)
            seen.update(finished_snapshot(study))
            rep.kills.append({"after_s": round(delay, 2), "mode": mode, "killed": killed, "state": phase(study)})
            if study is not None and counted(study) >= budget:
                break  # nothing left to interrupt
        workers.fill(workers_n)
        rep.exit_codes = workers.finish(FINISH_S)
        study = load(url, name)
        while study is not None and counted(study) < budget and rep.reruns < args.max_reruns:
            rep.reruns += 1
            workers.fill(workers_n)
            rep.exit_codes += workers.finish(FINISH_S)
            study = load(url, name)
        if study is None:
            rep.problems.append("the study was never created")
        else:
            check(rep, study, seen, folder)
    finally:
        workers.stop()
        rep.seconds = round(time.monotonic() - start, 1)
    if rep.ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return rep


def table(reps: list[Rep]) -> str:
    head = ("| backend | workers | rep | kills (s after start: one/all, what was running) | reruns | trials | "
            "budget used | lost | duplicates | replays | waiting | running | interrupted → retrained | s | ok |")
    lines = [head, "|" + "---|" * 15]
    for r in reps:
        kills = "; ".join(f"{k['after_s']} s {k['mode']}: {k['killed']} killed ({k['state']})" for k in r.kills)
        verdict = "yes" if r.ok else "**no**: " + "; ".join(r.problems)
        lines.append(
            f"| {r.backend} | {r.workers} | {r.rep} | {kills} | {r.reruns} | {r.trials} | {r.used}/{r.budget} | "
            f"{r.lost} | {r.duplicates} | {r.replays} | {r.waiting} | {r.running} | "
            f"{r.interrupted} → {r.interrupted - r.unretried} | {r.seconds} | {verdict} |"
        )
    return "\n".join(lines)


def summary(reps: list[Rep]) -> str:
    out = []
    for backend in sorted({r.backend for r in reps}):
        mine = [r for r in reps if r.backend == backend]
        out.append(
            f"{backend}: {len(mine)} repetitions, {sum(len(r.kills) for r in mine)} kills, "
            f"{sum(r.ok for r in mine)} passed; budget exact in {sum(r.used == r.budget for r in mine)}; "
            f"lost {sum(r.lost for r in mine)}, duplicates {sum(r.duplicates for r in mine)}, "
            f"replays {sum(r.replays for r in mine)}, waiting {sum(r.waiting for r in mine)}, "
            f"running {sum(r.running for r in mine)}, interrupted {sum(r.interrupted for r in mine)} "
            f"(retrained {sum(r.interrupted - r.unretried for r in mine)})"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="of the kill schedule (default: random, printed)")
    parser.add_argument("--horizon", type=float, default=15.0, help="kills fall in [0, HORIZON] s after a start")
    parser.add_argument("--max-kills", type=int, default=3, help="kills per repetition: 1 to this")
    parser.add_argument("--max-reruns", type=int, default=2)
    parser.add_argument("--pg-workers", type=int, default=2)
    parser.add_argument("--sqlite-workers", type=int, default=1)
    parser.add_argument("--pg-budget", type=int, default=8)
    parser.add_argument("--sqlite-budget", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1200, help="training steps per epoch (2 epochs a trial)")
    parser.add_argument("--out", type=Path, default=None, help="write the table and the JSON records here")
    parser.add_argument("--keep", action="store_true", help="keep the folders of passing repetitions too")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    root = Path(tempfile.mkdtemp(prefix="cs-chaos-", dir="/tmp"))
    import cellsearch

    print(f"kill loop: seed {seed}, folder {root}, cellsearch from {Path(cellsearch.__file__).parent}", flush=True)
    reps: list[Rep] = []
    skipped: list[str] = []
    try:
        for backend in backends:
            try:
                if backend == "sqlite":
                    for i in range(args.reps):
                        reps.append(one_rep(backend, i + 1, lambda f: f"sqlite:///{f / 'study.db'}", args, rng, root))
                        print(json.dumps(asdict(reps[-1]) | {"ok": reps[-1].ok}), flush=True)
                else:
                    with postgres() as url:
                        for i in range(args.reps):
                            reps.append(one_rep(backend, i + 1, lambda f, u=url: u, args, rng, root))
                            print(json.dumps(asdict(reps[-1]) | {"ok": reps[-1].ok}), flush=True)
            except Unavailable as exc:
                skipped.append(f"{backend}: skipped: {exc}")
                print(skipped[-1], flush=True)
    finally:
        if not any(p.is_dir() for p in root.iterdir()):
            shutil.rmtree(root, ignore_errors=True)
    text = f"{table(reps)}\n\n{summary(reps)}\n" + "".join(f"{s}\n" for s in skipped)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"kill schedule seed {seed}\n\n{text}")
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) | {"ok": r.ok} for r in reps], indent=1))
    return 0 if reps and all(r.ok for r in reps) else 1


if __name__ == "__main__":
    sys.exit(main())
