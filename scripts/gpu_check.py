"""The GPU checks of issues 10 and 15 in one run, for a session whose task is lent a GPU machine.

The prepared script docs/bench/GPU.md points to, so that a lease (15 minutes of device time in all) goes to
measuring, not to setting up; its first use (an H200, 2026-12-04) is in docs/bench/gpu/.

Here, before asking for the machine (its image has torch, triton, numpy, pyyaml, rich, scikit-learn,
matplotlib and safetensors, but not optuna and its needs, nor cellsearch itself)::

    .venv/bin/python scripts/gpu_check.py prepare      # wheels into .whl/ (ignored by git), ~3 MB

Then one device call, carrying ``.whl``, with a timeout that leaves room for a second try::

    python3 scripts/gpu_check.py run                   # results into $OUT (or --out DIR)

``run`` installs the wheels into /tmp/site, then runs the steps ``--steps`` names (all by default), each
step's output kept in ``$OUT/gpu_check.log``:

- ``bench``: ``cellsearch bench`` on the GPU at H = 256, T = 784, batch 128 against cuDNN ``nn.LSTM``
  (target: composed ``ur_lstm`` >= 0.5x), each cell also forced onto the derived path
  (``$OUT/bench.json``, ``BENCH.md``);
- ``eager``: the same with the derived path's loops step by step, ``CELLSEARCH_CUDA_GRAPHS=0``
  (``$OUT/eager/``);
- ``tests``: ``pytest tests/test_cuda.py`` — every registered cell on the GPU against the float64
  reference, the CUDA Graph loops against the step-by-step ones, precision, pinned prefetching,
  checkpoints, ``bench --device`` (``$OUT/test_cuda.xml``);
- ``trials``: trials per hour of a small study (``--trials``, 16) with 1 and with 4 worker processes
  sharing the one GPU (target: >= 3x), and with 4 trial threads in one process (``$OUT/trials.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what cellsearch needs at import and for the optuna backend that the GPU image lacks (pure Python wheels
#: and greenlet/sqlalchemy for CPython 3.12, the image's Python)
WHEELS = ["optuna==5.1.0", "alembic==1.20.1", "sqlalchemy==2.1.9", "greenlet==3.2.4", "colorlog==6.12.0",
          "mako==1.4.3", "cmaes==0.13.1"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
SITE = Path("/tmp/site")


def prepare() -> None:
    """Download the wheels for the GPU image's Python (3.12) and build cellsearch's own wheel, into .whl/."""
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.whl/" not in (exclude.read_text().split() if exclude.exists() else []):
        with exclude.open("a") as f:
            f.write("/.whl/\n")
    out = ROOT / ".whl"
    out.mkdir(exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(out), *WHEELS], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True)
    print(f"wheels in {out}: carry '.whl' in the device call")


def _step(log: Path, title: str, cmd: list[str], env: dict[str, str], timeout: float) -> int:
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n## {title}\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        f.write(f"-> exit {rc} in {time.perf_counter() - t0:.1f} s\n")
    print(f"{title}: exit {rc} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rc


def _trials_per_hour(env: dict[str, str], device: str, workers: int, trials: int, threads: int = 1) -> float:
    """A fresh small study (adding T = 100, hidden 64, 2 x 50 steps, no pruning) with ``workers`` processes
    of ``threads`` trial threads each (``search.n_jobs``)."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        study = {
            "name": f"gpu_share_{workers}", "task": {"name": "adding", "seq_len": 100, "n_valid": 256},
            "cells": ["ur_lstm", "gru", "star", "lstm"], "seeds": trials // 4,
            "model": {"hidden_size": 64}, "objective": "val_mse",
            "train": {"epochs": 2, "steps_per_epoch": 50, "batch_size": 64, "device": device, "threads": 1},
            "search": {"backend": "optuna", "n_trials": trials, "n_jobs": threads, "pruner": "none"},
            "storage": f"sqlite:///{tmp}/study.db",
        }
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cellsearch.cli", "run", str(path), "--workers", str(workers),
                        "--quiet"], env=env, cwd=ROOT, check=True, timeout=150)
        return trials / ((time.perf_counter() - t0) / 3600)


def run(out: Path, device: str, install: bool, seq: int, steps: set[str], trials: int = 16) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CELLSEARCH_TEST_DEVICE": device}
    if install:
        wheels = sorted(str(p) for p in (ROOT / ".whl").glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(SITE), *wheels], check=True)
        env["PYTHONPATH"] = f"{SITE}:{os.environ.get('PYTHONPATH', '')}"
    log = out / "gpu_check.log"
    machine = ("import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', "
               "torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'); "
               "import triton; print('triton', triton.__version__)")
    _step(log, "machine", [sys.executable, "-c", machine], env, 60)
    bench = [sys.executable, "-m", "cellsearch.cli", "bench", "ur_lstm", "gru", "star", "lstm", "mingru", "asrnn",
             "--device", device, "--hidden", "256", "--seq", str(seq), "--batch", "128", "--repeats", "5",
             "--max-load", "0", "--no-memory", "--derived"]
    tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
             "--durations=15", f"--junitxml={out / 'test_cuda.xml'}"]
    rcs = []
    if "bench" in steps:
        rcs.append(_step(log, "bench", [*bench, "--out", str(out)], env, 180))
    if "eager" in steps:                  # the same with the derived path's loops step by step (no CUDA Graphs)
        (out / "eager").mkdir(exist_ok=True)
        rcs.append(_step(log, "bench, CELLSEARCH_CUDA_GRAPHS=0", [*bench, "--out", str(out / "eager")],
                         {**env, "CELLSEARCH_CUDA_GRAPHS": "0"}, 180))
        (out / "eager" / "bench.png").unlink(missing_ok=True)
    if "tests" in steps:
        rcs.append(_step(log, "GPU tests", tests, env, 240))
    if "trials" not in steps:
        return max(rcs, default=0)
    try:
        # processes time-slice one GPU; threads of one process share its context (and the GIL)
        rate = {"1 process": _trials_per_hour(env, device, 1, trials),
                "4 processes": _trials_per_hour(env, device, 4, trials),
                "1 process, 4 threads": _trials_per_hour(env, device, 1, trials, threads=4)}
        one = rate["1 process"]
        (out / "trials.json").write_text(json.dumps({"trials": trials, "trials_per_hour": rate,
                                                     "ratio": {k: v / one for k, v in rate.items()}}))
        print("trials/hour: " + ", ".join(f"{k} {v:.0f} ({v / one:.2f}x)" for k, v in rate.items()))
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"trials/hour: failed ({exc})")
        rcs.append(1)
    return max(rcs, default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["prepare", "run"])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the same steps without a GPU")
    parser.add_argument("--no-install", action="store_true", help="use the packages already importable")
    parser.add_argument("--seq", type=int, default=784, help="the bench's sequence length (default 784)")
    parser.add_argument("--trials", type=int, default=16, help="trials per study of the trials step")
    parser.add_argument("--steps", default="tests,bench,eager,trials", help="which steps to run (comma-separated)")
    args = parser.parse_args()
    if args.what == "prepare":
        prepare()
        return 0
    return run(Path(args.out), args.device, not args.no_install, args.seq, set(args.steps.split(",")), args.trials)


if __name__ == "__main__":
    sys.exit(main())
