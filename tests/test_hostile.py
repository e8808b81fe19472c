"""Hostile input (issue 12): every case is exactly one line on stderr, exit status 2, nothing written.

The corpus: malformed and malicious study files (alias bombs, tags, binary, huge, duplicate keys), bad
values a user can type (sampler / pruner arguments Optuna would refuse or accept wrongly, huge or negative
seed counts, names that are not folder names, sizes that would hang building the model), storages that
would lose the study or cannot be written (in-memory SQLite, a folder, a file that is not a database, a
path through a file, a server that refuses, with its password never shown), and data files that are
missing, empty, folders or corrupt. Every case runs through ``cellsearch run`` (in process, the real
``main``); a selection runs again as real ``cellsearch`` processes (memory and wall time bounded by the
process limits), and every file case through one ``cellsearch validate`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellsearch.cli import main

BASE = """\
name: hostile
task: {name: adding, seq_len: 10, n_train: 64, n_valid: 32, n_test: 32}
cells: [lstm]
model: {hidden_size: 8}
train: {epochs: 1, steps_per_epoch: 2, batch_size: 16, threads: 1}
search: {sampler: random, n_trials: 1}
"""

_BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]
                  + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]"
                     for i in range(8)]) + "\n" + BASE

#: (id, study file text (str or bytes; None: BASE), extra arguments, fragment of the one line)
#: ``{data}`` in arguments is the folder of data files made by the ``data`` fixture
CASES: list[tuple[str, str | bytes | None, list[str], str]] = [
    # the study file itself
    ("alias_bomb", _BOMB, [], "YAML alias *a is not allowed"),
    ("duplicate_key", BASE + "name: again\n", [], "duplicate key 'name'"),
    ("huge_file", BASE + "#" * (1 << 20) + "\n", [], "at most 1,048,576"),
    ("python_tag", "!!python/object/apply:os.system ['touch pwned']\n", [], "YAML tag"),
    ("not_a_mapping", "- lstm\n- gru\n", [], "a YAML mapping with study keys"),
    ("binary_garbage", bytes(range(256)) * 8, [], "cannot be read"),
    ("latin1_bytes", BASE.encode() + "description: caf\xe9\n".encode("latin-1"), [], "cannot be read"),
    ("empty_file", "", [], "a YAML mapping with study keys"),
    ("tab_indent", "name: x\ntask:\n\tname: adding\n", [], "malformed YAML"),
    ("unknown_top_key", BASE + "sampler: tpe\n", [], "unknown key"),
    # values (issue 12 item 8 and more)
    ("tpe_negative_startup", None, ["--set", "search.sampler={name: tpe, n_startup_trials: -1}"],
     "search.sampler.n_startup_trials: -1 is not allowed; expected an integer >= 0"),
    ("nsga2_population_1", None, ["--set", "search.sampler={name: nsga2, population_size: 1}"],
     "search.sampler.population_size: 1 is not allowed; expected an integer >= 2"),
    ("nsga2_mutation_prob_2", None, ["--set", "search.sampler={name: nsga2, mutation_prob: 2}"],
     "search.sampler.mutation_prob: 2 is not allowed; expected a number in [0.0, 1.0]"),
    ("halving_reduction_1", None, ["--set", "search.pruner={name: successive_halving, reduction_factor: 1}"],
     "search.pruner.reduction_factor: 1 is not allowed; expected an integer >= 2"),
    ("hyperband_reduction_1", None, ["--set", "search.pruner={name: hyperband, reduction_factor: 1}"],
     "search.pruner.reduction_factor: 1 is not allowed"),
    ("tpe_gamma_not_callable", None, ["--set", "search.sampler={name: tpe, gamma: 3}"],
     "search.sampler.gamma: 'gamma' is not allowed; expected an argument of tpe"),
    ("median_interval_0", None, ["--set", "search.pruner={name: median, interval_steps: 0}"],
     "search.pruner.interval_steps: 0 is not allowed"),
    ("seeds_huge", None, ["--set", "seeds=100000000000"], "seeds: 100000000000 is not allowed"),
    ("seeds_negative", None, ["--set", "seeds=-3"], "seeds: -3 is not allowed"),
    ("seeds_repeated", None, ["--set", "seeds=[1, 1]"], "distinct seeds"),
    ("name_300_chars", None, ["--set", "name=" + "a" * 300], "expected 1 to 100 letters"),
    ("name_trailing_newline", None, ["--set", 'name="hostile\\n"'], "name: 'hostile\\n' is not allowed"),
    ("name_path_traversal", None, ["--set", "name=../../etc"], "name: '../../etc' is not allowed"),
    ("name_empty", None, ["--set", 'name=""'], "name: '' is not allowed"),
    ("transition_layers_1e9", None,
     ["--set", "cells=null", "--set", "space={cell: {update: [lstm]}, depth: {transition: [deep], "
                                      "transition_layers: 1000000000}}"],
     "depth.transition_layers: 1000000000 is not allowed; expected an integer from 1 to 64"),
    ("hidden_size_1e8", None, ["--set", "model.hidden_size=100000000"], "model.hidden_size: 100000000"),
    ("num_layers_1e6", None, ["--set", "model.num_layers=1000000"], "model.num_layers: 1000000"),
    ("n_trials_zero", None, ["--set", "search.n_trials=0"], "search.n_trials: 0 is not allowed"),
    ("n_trials_negative_flag", None, ["--n-trials", "-5"], "search.n_trials: -5 is not allowed"),
    ("timeout_negative", None, ["--set", "search.timeout=-5"], "search.timeout: -5"),
    ("lr_nan", None, ["--set", "train.lr=.nan"], "train.lr"),
    ("set_without_equals", None, ["--set", "train.epochs"], "KEY=VALUE"),
    ("unknown_task", None, ["--set", "task=nosuchtask"], "nosuchtask"),
    ("unknown_cell", None, ["--set", "cells=[lstm, nosuchcell]"], "nosuchcell"),
    ("missing_space_file", None, ["--set", "cells=null", "--set", "space=nope.yaml"], "nope.yaml"),
    ("negative_cpu", None, ["--set", "search.resources={cpu: -1}"], "search.resources.cpu"),
    # storages
    ("sqlite_in_memory", None, ["--storage", "sqlite:///:memory:"], "an in-memory database loses the study"),
    ("journal_folder", None, ["--storage", "journal:///{data}"], "is a folder"),
    ("storage_not_a_url", None, ["--storage", "runs/study.db"], "expected an Optuna storage URL"),
    ("sqlite_not_a_database", None, ["--storage", "sqlite:///{data}/garbage.bin"], "is not a SQLite database"),
    ("sqlite_through_a_file", None, ["--storage", "sqlite:///{data}/garbage.bin/study.db"], "is a file, so"),
    ("postgres_refused_password_hidden", None, ["--storage", "postgresql://u:hunter2@127.0.0.1:1/db"],
     "postgresql://u:***@127.0.0.1:1/db' cannot be opened"),
    # data files (checked before the study is created)
    ("char_lm_missing", None, ["--set", "task={name: char_lm, path: {data}/nope.txt}"], "no such file or folder"),
    ("char_lm_empty", None, ["--set", "task={name: char_lm, path: {data}/empty.txt}"],
     "a split with at least 2 tokens"),
    ("char_lm_folder", None, ["--set", "task={name: char_lm, path: {data}/empty_dir}"], "holds none of the layouts"),
    ("music_garbage", None, ["--set", "task={name: polyphonic_music, path: {data}/garbage.bin}"],
     "the data cannot be read"),
    ("music_empty_splits", None, ["--set", "task={name: polyphonic_music, path: {data}/music_empty.json}"],
     "a piece of 2+ frames"),
    ("music_not_json", None, ["--set", "task={name: polyphonic_music, path: {data}/broken.json}"],
     "the data cannot be read (JSONDecodeError"),
    ("mnist_missing", None, ["--set", "task={name: pixel_mnist, data_dir: {data}/empty_dir}"], "MNIST not found"),
    ("mnist_corrupt", None, ["--set", "task={name: pixel_mnist, data_dir: {data}/mnist_bad}"],
     "not an IDX file"),
    ("cifar_missing", None, ["--set", "task={name: seq_cifar10, data_dir: {data}/empty_dir}"], "CIFAR-10 not found"),
]

#: cases run again as real ``cellsearch run`` processes
SUBPROCESS = ["alias_bomb", "seeds_huge", "sqlite_in_memory", "postgres_refused_password_hidden", "mnist_corrupt"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data files a hostile user points tasks and storages at."""
    folder = tmp_path_factory.mktemp("hostile_data")
    (folder / "empty.txt").write_text("")
    (folder / "garbage.bin").write_bytes(bytes(range(256)) * 16)
    (folder / "empty_dir").mkdir()
    (folder / "music_empty.json").write_text('{"train": [], "valid": [], "test": []}')
    (folder / "broken.json").write_text('{"train": [[[60]]')
    bad = folder / "mnist_bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad / name).write_bytes(b"\xff\xfe not an idx file")
    return folder


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")}


def _setup(case: tuple, tmp_path: Path, data: Path) -> tuple[Path, list[str]]:
    _, text, args, _ = case
    study = tmp_path / "study.yaml"
    text = BASE if text is None else text
    study.write_bytes(text if isinstance(text, bytes) else text.encode())
    return study, [a.replace("{data}", str(data)) for a in args]


def test_the_corpus_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_nothing_written(case: tuple, tmp_path: Path, data: Path,
                                                         monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    study, args = _setup(case, tmp_path, data)
    before, data_before = _files(tmp_path), _files(data)
    code = main(["run", str(study), *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("cellsearch run: error: ") and case[3] in lines[0], lines[0]
    assert "hunter2" not in err
    assert _files(tmp_path) == before and _files(data) == data_before  # no runs/, no study.db
    assert not (tmp_path / "pwned").exists()


def _cli() -> str:
    return str(Path(sys.executable).with_name("cellsearch"))


#: runs argv[2:] as its child and writes the child's peak resident KiB to argv[1]. Linux carries a
#: process's resident high-water mark across fork and exec (``signal->maxrss``), so a command forked
#: straight from a large pytest worker would report the worker's size; forked from this small launcher
#: it reports its own.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_measured(cmd: list[str], cwd: Path) -> tuple[int, str, str, int]:
    """Run ``cmd``; (exit status, stdout, stderr, its peak resident memory in KiB); killed after 60 s."""
    import signal

    out, err = cwd.parent / f"{cwd.name}.out", cwd.parent / f"{cwd.name}.err"
    peak = cwd.parent / f"{cwd.name}.maxrss"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(peak), *cmd], cwd=cwd, stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out.read_text(), err.read_text(), int(peak.read_text() or 0) if peak.exists() else 1 << 30


@pytest.mark.parametrize("name", SUBPROCESS)
def test_hostile_input_through_a_real_process(name: str, tmp_path: Path, data: Path) -> None:
    """The same one line from a real ``cellsearch run`` process, within 60 s and under 1 GB of memory."""
    case = next(c for c in CASES if c[0] == name)
    study, args = _setup(case, tmp_path, data)
    before = _files(tmp_path)
    code, out, err, peak_kib = _run_measured([_cli(), "run", str(study), *args], tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert case[3] in lines[0] and "hunter2" not in err + out
    assert _files(tmp_path) == before
    assert peak_kib < 1 << 20, f"{peak_kib / 1024:.0f} MiB resident"


def test_validate_reports_every_bad_file_on_its_own_line(tmp_path: Path, data: Path) -> None:
    """Every file case and every data case (its task written into the file) through one ``cellsearch
    validate`` process: one line per file, naming it; nothing written."""
    paths = []
    for case in CASES:
        task = case[2][1][len("task="):] if len(case[2]) == 2 and case[2][1].startswith("task=") else None
        if case[1] is None and task is None:
            continue
        if task is not None:  # a data case: its task written into the file (validate reads the data too)
            case = (case[0], BASE.replace(BASE.splitlines()[1], f"task: {task}"), [], case[3])
        study, _ = _setup(case, tmp_path, data)
        text = study.read_bytes().replace(b"{data}", str(data).encode())
        study.unlink()
        (tmp_path / f"{case[0]}.yaml").write_bytes(text)
        paths.append(tmp_path / f"{case[0]}.yaml")
    before = _files(tmp_path)
    run = subprocess.run([_cli(), "validate", *map(str, paths)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert _files(tmp_path) == before
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == len(paths), run.stderr
    for path, line in zip(paths, lines):
        assert path.name in line and next(c[3] for c in CASES if c[0] == path.stem) in line, line
