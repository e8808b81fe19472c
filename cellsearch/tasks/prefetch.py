"""Training batches made ahead of the step that uses them, in a background thread, pinned for a GPU copy.

On a GPU the step's kernels run asynchronously, so the host is free while they run; making the next
batch then (the synthetic tasks generate every batch with numpy) and copying it from page-locked
memory (``pin_memory`` + ``non_blocking``) keeps the device from waiting on the host. On a CPU the
batch maker and the model would share the same cores, so nothing is made ahead there by default.

:func:`prefetching` decides: ``CELLSEARCH_PREFETCH`` unset or ``auto`` prefetches on the devices whose
losses stay on the device (cuda, mps), ``1`` always (tests use it on the CPU), ``0`` never.
Batches are pinned only for a CUDA device with CUDA available.

Why not generate on the device: the tasks' batches are defined once, in numpy, with an explicit
generator per batch (:class:`~cellsearch.tasks.base.GeneratedLoader`); a second, torch copy of every
task's rule would be a second definition to keep equal, and a batch takes about 0.25 ms to make on one
core here (adding at T = 784 and copy, batch 128), off the step's path once it is made ahead.

The order and content of batches are unchanged (the same iterator runs, only earlier), and
:class:`Prefetcher` keeps the caller's ``position`` at the batch *taken*, not the batch made, so a
checkpoint written between steps resumes where the training stream really was.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .base import map_tensors

__all__ = ["Prefetcher", "prefetching", "ENV"]

ENV = "CELLSEARCH_PREFETCH"
_DEVICES = ("cuda", "mps")


def prefetching(device: torch.device) -> bool:
    """Whether training batches for ``device`` are made ahead (see the module docstring)."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return device.type in _DEVICES


class Prefetcher:
    """``source(position)``'s items, made up to ``depth`` ahead in a daemon thread.

    ``source`` is called once with a private copy of ``position`` and must keep that list current as it
    yields (as the trainer's stream does); each item taken sets the caller's ``position`` to the value
    it had right after that item was made. ``pin``: page-lock the items' tensors for an asynchronous copy.
    An exception in the thread (including the end of the source) is raised by the ``next`` that reaches
    it, and again by every later one. :meth:`close` stops the thread.
    """

    def __init__(self, source: Callable[[list[int]], Iterator[Any]], position: list[int], depth: int = 2,
                 pin: bool = False) -> None:
        self.position = position
        self._own = list(position)
        self._source = source(self._own)
        self._pin = pin
        self._queue: queue.Queue[tuple[bool, Any, list[int]]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name="cellsearch-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                item = next(self._source)
                if self._pin:
                    item = map_tensors(item, lambda t: t.pin_memory())
                self._put((True, item, list(self._own)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, StopIteration included
            self._put((False, exc, []))

    def _put(self, entry: tuple[bool, Any, list[int]]) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._error is not None:
            raise self._error
        ok, item, position = self._queue.get()
        if not ok:
            self._error = item
            raise item
        self.position[:] = position
        return item

    def close(self) -> None:
        """Stop making items (the one being made is finished and dropped); wait for the thread."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10.0)
        close = getattr(self._source, "close", None)
        if close is not None and not self._thread.is_alive():
            close()
