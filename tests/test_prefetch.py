"""Training batches made ahead in a thread (issue 15: the host must not keep a GPU waiting): the same run,
the same checkpoints, errors surfaced, no thread left behind. Forced on the CPU with CELLSEARCH_PREFETCH=1."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from data_files import write_ptb_char

from cellsearch.tasks.prefetch import ENV, Prefetcher, prefetching

TASK = {"name": "adding", "seq_len": 10, "n_train": 64, "n_valid": 32, "n_test": 32}
CONFIG = {"epochs": 3, "steps_per_epoch": 3, "batch_size": 16, "threads": 1, "progress": False}


def _spec(name: str, task: dict):
    from cellsearch.api import resolve
    from cellsearch.tasks import make_task
    from cellsearch.train import resolve_model_spec

    cell, depth = resolve(name)
    return resolve_model_spec(cell, depth, make_task(task), hidden_size=8)


def _plain(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name == "cellsearch-prefetch"}


def test_the_default_prefetches_on_gpus_only(monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert prefetching(torch.device("cuda")) and not prefetching(torch.device("cpu"))
    monkeypatch.setenv(ENV, "1")
    assert prefetching(torch.device("cpu"))
    monkeypatch.setenv(ENV, "0")
    assert not prefetching(torch.device("cuda"))


@pytest.mark.parametrize("stateful", [False, True])
def test_a_prefetched_run_equals_the_plain_run(stateful: bool, tmp_path: Path, monkeypatch) -> None:
    """Generated batches (adding) and a stateful text stream (char_lm, truncated BPTT): the same history."""
    from cellsearch.train import train

    task = {"name": "char_lm", "path": str(write_ptb_char(tmp_path))} if stateful else TASK
    config = {**CONFIG, "bptt": 10, "batch_size": 4} if stateful else CONFIG
    spec = _spec("gru", task)
    monkeypatch.setenv(ENV, "0")
    plain = train(spec, task, config)
    monkeypatch.setenv(ENV, "1")
    ahead = train(spec, task, config)
    assert _plain(ahead.history) == _plain(plain.history)
    assert not _threads()


def test_a_prefetched_run_resumes_bitwise_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """The checkpoint stores the position of the batch taken, not of the batches made ahead: stopped while
    reporting epoch 3 (its checkpoint already written), the resumed run ends where an uninterrupted one ends."""
    from cellsearch.train import train

    class Stop(Exception):
        pass

    def stop_at_3(epoch: int, metrics: dict) -> None:
        if epoch == 3:
            raise Stop

    monkeypatch.setenv(ENV, "1")
    spec, config = _spec("ur_lstm", TASK), {**CONFIG, "epochs": 4}
    whole = train(spec, TASK, config)
    path = tmp_path / "run.pt"
    with pytest.raises(Stop):
        train(spec, TASK, config, callback=stop_at_3, checkpoint=path)
    assert not _threads()
    resumed = train(spec, TASK, config, checkpoint=path)
    assert resumed.extra == {"resumed_from_epoch": 3}
    assert _plain(resumed.history) == _plain(whole.history)


def _counting(position: list[int]):
    while True:
        position[1] += 1
        if position[1] == 4:
            raise ValueError("batch 4 is broken")
        yield position[1]


def test_the_prefetcher_keeps_the_taken_position_and_surfaces_errors() -> None:
    position = [0, 0]
    ahead = Prefetcher(_counting, position, depth=2)
    assert next(ahead) == 1 and position == [0, 1]
    assert next(ahead) == 2 and position == [0, 2]
    assert next(ahead) == 3 and position == [0, 3]
    for _ in range(2):      # the error, and again on every later call
        with pytest.raises(ValueError, match="batch 4 is broken"):
            next(ahead)
    assert position == [0, 3]
    ahead.close()


def test_the_prefetcher_ends_with_its_source_and_stops_when_closed() -> None:
    ahead = Prefetcher(lambda position: iter(range(3)), [0, 0])
    assert list(ahead) == [0, 1, 2]
    ahead.close()
    endless = Prefetcher(_endless, [0, 0], depth=1)
    assert next(endless) == 0
    endless.close()
    assert not _threads()


def _endless(position: list[int]):
    i = 0
    while True:
        yield i
        i += 1
