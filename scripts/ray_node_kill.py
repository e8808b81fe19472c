"""A Ray node killed mid-trial: its spec is the next one trained, and the budget completes (issue 19).

A three-node Ray cluster on this machine, each node its own ``ray start ... --block`` process (as the
README starts them, under a private ``--temp-dir``): a head with no CPU (so no trial can land there; the
driver and its weights store live there) and two worker nodes with one CPU each. A ``cellsearch run``
driver joins it (``--set search.ray_address=127.0.0.1:PORT``) for a study of four published cells (one
trial at a time, four epochs of about a second). Once a trial has reported an epoch while the published
cells behind it still wait, the node it runs on is killed: SIGKILL to that node's ``ray start`` process,
its raylet and every process under it (the trial's actor included). Then the script checks:

- the driver exits 0 and the budget (4) is complete: 4 trials use it, 4 distinct keys;
- the killed trial is FAIL ``interrupted: its Ray worker failed`` and does not use the budget;
- its re-queued retry (``retry_of``) has the same parameters and key, is the **first trial started after
  the kill** (before the published cells still waiting), ran on the node that is left, and is COMPLETE;
- nothing is left WAITING or RUNNING.

Every Ray process of the cluster is found by its private temporary folder (named on its command line)
and by the process trees of the ``ray start`` processes, and killed at the end; ``ray stop`` is never
used (it stops every Ray instance of the machine, other users' included). Prints one JSON record and a
verdict; exit 0 when every check holds. Repetitions: ``--reps N``.

    python scripts/ray_node_kill.py --reps 3 --out docs/reliability/ray_node_kill.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

TASK = {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32}


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux ``/proc``)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return out


def _tree(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    """``root`` and every process under it."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found.append(pid)
            todo += [p for p, (parent, _) in table.items() if parent == pid]
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


class Cluster:
    """Ray nodes started with ``ray start --block`` under one private temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = Path(tempfile.mkdtemp(prefix="csrk-", dir="/tmp"))  # short: Ray's socket paths
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_TMPDIR": str(self.tmp), "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                    "RAY_raylet_start_wait_time_s": "120"}  # Ray's 30 s is short on a loaded 2-core machine
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.ids: dict[str, str] = {}  # Ray node id -> a / b / head

    def start(self, name: str, *args: str) -> None:
        log = open(self.root / f"ray-{name}.log", "w")  # noqa: SIM115 - kept open for the node's life
        cmd = [_bin("ray"), "start", "--block", "--disable-usage-stats", *args]
        self.nodes[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def start_all(self, timeout: float = 180) -> None:
        self.start("head", "--head", f"--port={self.port}", f"--temp-dir={self.tmp}", "--num-cpus=0",
                   "--include-dashboard=false", "--node-ip-address=127.0.0.1")
        self.wait_nodes(1, timeout)
        for count, name in enumerate(("a", "b"), start=2):  # one at a time: a loaded machine times out two
            self.start(name, f"--address={self.address}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                       f"--resources={json.dumps({f'node_{name}': 1})}")
            nodes = self.wait_nodes(count, timeout)
        self.ids = {n["id"]: next((k[5:] for k in n["res"] if k.startswith("node_")), "head") for n in nodes}

    def alive_nodes(self) -> list[dict[str, Any]]:
        code = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
                "print(json.dumps([{'id': n['NodeID'], 'res': n['Resources']} for n in ray.nodes() if n['Alive']]))")
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return []
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray node {name} exited: see {self.root / f'ray-{name}.log'}")
            nodes = self.alive_nodes()
            if len(nodes) >= n:
                return nodes
            time.sleep(1)
        raise RuntimeError(f"{n} Ray nodes not up within {timeout:.0f} s")

    def node_of(self, pid: int) -> str | None:
        """The node (``a``/``b``/``head``) whose ``ray start`` process is an ancestor of ``pid``."""
        table = _processes()
        roots = {proc.pid: name for name, proc in self.nodes.items()}
        while pid in table and pid not in roots:
            pid = table[pid][0]
        return roots.get(pid)

    def kill_node(self, name: str) -> int:
        """SIGKILL the node's ``ray start`` process and every process under it; how many were killed."""
        proc = self.nodes[name]
        tree = _tree(proc.pid, _processes())
        _signal(tree, signal.SIGKILL)
        proc.wait()
        return len(tree)

    def mine(self) -> list[int]:
        """Every process of this cluster: the ``ray start`` trees and any naming the private folder."""
        table = _processes()
        found = {pid for proc in self.nodes.values() if proc.poll() is None for pid in _tree(proc.pid, table)}
        found |= {pid for pid, (_, cmdline) in table.items() if str(self.tmp) in cmdline}
        found.discard(os.getpid())
        return sorted(found)

    def stop(self) -> int:
        """Stop every process of this cluster (SIGTERM, then SIGKILL after 10 s); returns how many were left
        after that (0 expected); removes the temporary folder."""
        _signal(self.mine(), signal.SIGTERM)
        end = time.monotonic() + 10
        while self.mine() and time.monotonic() < end:
            for proc in self.nodes.values():
                proc.poll()
            time.sleep(0.5)
        _signal(self.mine(), signal.SIGKILL)
        time.sleep(1)
        for proc in self.nodes.values():
            proc.poll()
        left = len(self.mine())
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left


def study_file(folder: Path, name: str, address: str, epochs: int, steps: int) -> Path:
    raw = {
        "name": name,
        "task": dict(TASK),
        "space": {"cell": {"update": ["lstm", "gru", "star", "mgu"]}},
        "model": {"hidden_size": 8},
        "train": {"epochs": epochs, "steps_per_epoch": steps, "batch_size": 16, "threads": 1},
        "objective": "val_mse",
        "search": {"backend": "ray", "ray_address": address, "sampler": "tpe", "pruner": "none", "n_trials": 4,
                   "seed": 0, "enqueue_published": True, "resources": {"cpu": 1}, "max_concurrent_trials": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trials_of(db: Path, name: str) -> list[Any]:
    import optuna

    if not db.exists():
        return []
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True)
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception:  # noqa: BLE001 - being created
        return []


def victim(trials: list[Any], epochs: int) -> Any | None:
    """A RUNNING trial that reported an epoch (its node is known) and is not near its end, with a WAITING
    trial behind it (so 'trained next' means something)."""
    from optuna.trial import TrialState

    if not any(t.state == TrialState.WAITING for t in trials):
        return None
    for t in trials:
        history = t.user_attrs.get("history") or []
        if t.state == TrialState.RUNNING and "ray_node" in t.user_attrs and 1 <= len(history) <= epochs - 2:
            return t
    return None


def one_rep(rep: int, root: Path, epochs: int, steps: int) -> dict[str, Any]:
    from optuna.trial import TrialState

    from cellsearch.search.ledger import retried, uses_budget

    folder = root / f"rep{rep}"
    folder.mkdir()
    cluster = Cluster(folder)
    out: dict[str, Any] = {"rep": rep, "problems": []}
    start = time.monotonic()
    try:
        cluster.start_all()
        out["cluster_up_s"] = round(time.monotonic() - start, 1)
        name = f"nodekill{rep}"
        path = study_file(folder, name, cluster.address, epochs, steps)
        db = folder / "runs" / name / "study.db"
        log = open(folder / "driver.log", "w")  # noqa: SIM115
        cmd = [_bin("cellsearch"), "run", str(path), "--set", "search.backend=ray",
               "--set", f"search.ray_address={cluster.address}", "--quiet"]
        driver = subprocess.Popen(cmd, cwd=folder, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
        target = None
        end = time.monotonic() + 300
        while target is None and time.monotonic() < end and driver.poll() is None:
            target = victim(trials_of(db, name), epochs)
            if target is None:
                time.sleep(0.2)
        if target is None:
            driver.kill()
            driver.wait()
            out["problems"].append("no trial caught mid-training (driver ended or 300 s passed)")
            return out
        pid = target.user_attrs["ray_node"].get("pid")
        node = cluster.node_of(pid)
        if node not in ("a", "b"):
            driver.kill()
            driver.wait()
            out["problems"].append(f"trial {target.number} runs in pid {pid}, not under a worker node ({node})")
            return out
        if cluster.ids.get(target.user_attrs["ray_node"].get("node_id")) != node:
            out["problems"].append(f"pid {pid} is under node {node} but the trial names another node id")
        killed_at = time.time()
        out.update(killed_trial=target.number, killed_node=node, killed_processes=cluster.kill_node(node),
                   epochs_done_at_kill=len(target.user_attrs.get("history") or []))
        try:
            code = driver.wait(timeout=400)
        except subprocess.TimeoutExpired:
            driver.kill()
            code = driver.wait()
        log.close()
        out["driver_exit"] = code
        out["seconds"] = round(time.monotonic() - start, 1)
        trials = trials_of(db, name)
        again = retried(trials)
        by_number = {t.number: t for t in trials}
        dead = by_number[target.number]
        used = [t for t in trials if uses_budget(t, again)]
        out["trials"] = [(t.number, t.state.name, t.user_attrs.get("published"), t.user_attrs.get("retry_of"))
                         for t in trials]
        retries = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
        started_after = sorted((t for t in trials if t.datetime_start and t.datetime_start.timestamp() > killed_at
                                and t.number != dead.number), key=lambda t: t.datetime_start)
        out["fail_reason"] = dead.user_attrs.get("fail_reason")
        out["failed_after_s"] = (round(dead.datetime_complete.timestamp() - killed_at, 2)
                                 if dead.datetime_complete else None)
        out["next_started"] = started_after[0].number if started_after else None
        problems = out["problems"]
        if code != 0:
            problems.append(f"driver exit {code}")
        if dead.state != TrialState.FAIL or "its Ray worker failed" not in str(dead.user_attrs.get("fail_reason")):
            problems.append(f"killed trial {dead.number}: {dead.state.name} {dead.user_attrs.get('fail_reason')}")
        if dead in used:
            problems.append("the killed trial uses the budget")
        if len(retries) != 1:
            problems.append(f"{len(retries)} retries of trial {dead.number}")
        else:
            retry = retries[0]
            out["retry"] = retry.number
            out["retry_node"] = cluster.ids.get(retry.user_attrs.get("ray_node", {}).get("node_id"), "?")
            if retry.params != dead.params or retry.user_attrs.get("key") != dead.user_attrs.get("key"):
                problems.append("the retry trained other parameters")
            if retry.state != TrialState.COMPLETE:
                problems.append(f"the retry ended {retry.state.name}")
            if out["next_started"] != retry.number:
                problems.append(f"trial {out['next_started']} started first after the kill, not the retry")
            if retry.user_attrs.get("ray_node", {}).get("node_id") == dead.user_attrs["ray_node"].get("node_id"):
                problems.append("the retry ran on the killed node")
        if len(used) != 4 or len({t.user_attrs.get("key") for t in used}) != 4:
            problems.append(f"budget: {len(used)} trials use it, {len({t.user_attrs.get('key') for t in used})} keys")
        left = [t.number for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
        if left:
            problems.append(f"trials left WAITING/RUNNING: {left}")
        return out
    except Exception as exc:  # noqa: BLE001 - reported in the record, the folder kept
        out["problems"].append(f"{type(exc).__name__}: {exc}")
        return out
    finally:
        out["ray_processes_left"] = cluster.stop()
        if out["ray_processes_left"]:
            out["problems"].append(f"{out['ray_processes_left']} Ray processes left after the teardown")
        out["ok"] = not out["problems"]
        if out["ok"]:
            shutil.rmtree(folder, ignore_errors=True)


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| rep | cluster up (s) | killed trial (epochs done) | node | processes killed | trial failed after (s) "
             "| next trial started | retry (node) | budget | driver exit | total (s) | ok |", "|" + "---|" * 12]
    for r in records:
        used = sum(1 for _, state, _, _ in r.get("trials", []) if state == "COMPLETE")
        verdict = "yes" if r["ok"] else "**no**: " + "; ".join(r["problems"])
        lines.append(
            f"| {r['rep']} | {r.get('cluster_up_s')} | {r.get('killed_trial')} ({r.get('epochs_done_at_kill')}) | "
            f"{r.get('killed_node')} | {r.get('killed_processes')} | {r.get('failed_after_s')} | "
            f"{r.get('next_started')} | {r.get('retry')} ({r.get('retry_node')}) | {used} COMPLETE of 4 | "
            f"{r.get('driver_exit')} | {r.get('seconds')} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600, help="training steps per epoch")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="cs-nodekill-", dir="/tmp"))
    records = []
    try:
        for rep in range(1, args.reps + 1):
            records.append(one_rep(rep, root, args.epochs, args.steps))
            print(json.dumps(records[-1], default=str), flush=True)
    finally:
        if not any(root.iterdir()):
            shutil.rmtree(root, ignore_errors=True)
    text = table(records)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(records, indent=1, default=str))
    return 0 if records and all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
