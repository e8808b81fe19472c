"""A small pool of large work buffers kept across calls of the fused sequence functions.

With glibc's default allocator every freed block larger than the mmap threshold goes back to the
operating system, so a training loop that allocates its ``[T, B, ·]`` work buffers afresh page-faults
them again at every iteration (PERFORMANCE.md: the pool is worth 22–25 % there). Buffers are *leased*:
:meth:`BufferPool.take` hands one out and forgets it; :meth:`BufferPool.give` returns it once nothing
else refers to it (the fused functions give their buffers back at the end of a backward pass that does
not keep its graph). A leased buffer whose graph is dropped without a backward pass is simply freed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BufferPool", "POOL"]

_Key = tuple[int, torch.dtype, torch.device]


class BufferPool:
    """Free buffers by (number of elements, dtype, device), at most ``max_bytes`` in all (LRU)."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._free: OrderedDict[_Key, list[Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A buffer of ``shape`` (uninitialised contents): a pooled one when one fits exactly."""
        numel = 1
        for s in shape:
            numel *= int(s)
        key = (numel, dtype, torch.device(device))
        with self._lock:
            free = self._free.get(key)
            if free:
                buf = free.pop()
                self._bytes -= buf.numel() * buf.element_size()
                if not free:
                    del self._free[key]
                return buf.view(*shape)
        return torch.empty(*shape, dtype=dtype, device=device)

    def give(self, *buffers: Tensor | None) -> None:
        """Return leased buffers (a view is returned as its base when it covers all of it)."""
        with self._lock:
            for buf in buffers:
                if buf is None:
                    continue
                base = buf._base if buf._base is not None else buf
                if base.numel() != buf.numel() or not base.is_contiguous() or base.numel() == 0:
                    continue
                buf = base
                size = buf.numel() * buf.element_size()
                if size > self.max_bytes:
                    continue
                key = (buf.numel(), buf.dtype, buf.device)
                free = self._free.setdefault(key, [])
                if any(b is buf for b in free):  # given back twice: keep one copy
                    continue
                free.append(buf)
                self._free.move_to_end(key)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    old_key, old = next(iter(self._free.items()))
                    dropped = old.pop(0)
                    self._bytes -= dropped.numel() * dropped.element_size()
                    if not old:
                        del self._free[old_key]

    def clear(self) -> None:
        """Drop every pooled buffer."""
        with self._lock:
            self._free.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by free buffers now."""
        return self._bytes


#: The process-wide pool the fused functions use.
POOL = BufferPool()
