"""Peak memory of one forward + backward run (CUDA: max allocated; Linux CPU: resident high-water mark)."""

from __future__ import annotations

import ctypes
import gc
import sys

import torch
from torch import Tensor, nn

from ..timing import clear_grads, forward_backward

__all__ = ["peak_memory"]


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    from ..fast.pool import POOL

    POOL.clear()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def peak_memory(model: nn.Module, x: Tensor, repeats: int = 3) -> float | None:
    """Peak memory (MB) of one forward + backward run: the least of ``repeats`` measurements.

    See the module docstring for the method; the allocator's state adds noise only upwards (a freed
    block that is not reused, a heap that grew earlier), hence the minimum.
    """
    xs = x.detach().clone().requires_grad_(True)
    clear_grads(model, xs)
    forward_backward(model, xs)                      # warm: lazily built plans, oneDNN primitives, grads allocated
    peaks = []
    for _ in range(max(1, repeats)):
        clear_grads(model, xs)
        _trim()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            base = torch.cuda.memory_allocated(x.device)
            forward_backward(model, xs)
            torch.cuda.synchronize(x.device)
            peaks.append((torch.cuda.max_memory_allocated(x.device) - base) / 2**20)
            continue
        base_kb = _status_kb("VmRSS")
        if base_kb is None or not _reset_peak_rss():
            return None
        forward_backward(model, xs)
        peak = _status_kb("VmHWM")
        if peak is None:
            return None
        peaks.append(max(0, peak - base_kb) / 1024)
    return min(peaks)
