"""The process allocator for training: glibc malloc tuned so that work buffers are reused, not re-mapped.

Why (PERFORMANCE.md, issue 17): with glibc's default settings every allocation above the dynamic mmap
threshold is a fresh ``mmap`` and every free an ``munmap``, so a kernel that allocates its work buffers
per call (``torch.nn.LSTM``'s oneDNN kernel does, at every forward and backward) page-faults them in
again each time. Measured at H = 256, T = 200, B = 64 on 2 cores: nn.LSTM ran 1.4–2× faster with the
settings below, which is why speed comparisons against it are only fair when both run under them.

:func:`tune` sets, through ``mallopt`` in this process (the same parameters as the environment
variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=… MALLOC_TOP_PAD_=…``, which only work when set
before the process starts):

- ``M_MMAP_MAX = 0``: no allocation is served by its own mmap (large ones come from the heap; a thread
  arena that cannot grow still falls back to mmap, so nothing fails for lack of it);
- ``M_TRIM_THRESHOLD = 2 GiB`` (``mallopt`` takes an int): freed memory stays in the process;
- ``M_TOP_PAD = 1 GiB``: the heap grows in large steps (address space; pages are touched only when used).

The cost: a training process keeps its peak heap until it exits, rather than returning freed memory to
the system. cellsearch tunes the allocator when a training run starts (:func:`cellsearch.train.train`,
so every trial in every backend and worker) and in ``cellsearch bench``. It leaves the allocator alone
where it is not glibc, where another allocator is preloaded (jemalloc, tcmalloc, mimalloc), where the
user set any ``MALLOC_*`` / ``GLIBC_TUNABLES`` variable, or with ``CELLSEARCH_ALLOCATOR=default``
(the off switch). Torch-free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import threading

__all__ = ["tune", "describe", "TUNED", "MALLOC_VARS", "ENV"]

#: the environment variable that turns tuning off (``default``) or on (``tuned``, the default)
ENV = "CELLSEARCH_ALLOCATOR"
#: glibc's environment variables for the same settings: any of them set means the user chose
MALLOC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_",
               "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
#: mallopt parameter numbers (glibc's malloc.h) and the values cellsearch sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
TUNED = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 2**30}
_PARAMS = {"M_MMAP_MAX": _M_MMAP_MAX, "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD, "M_TOP_PAD": _M_TOP_PAD}
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_lock = threading.Lock()
_state: dict[str, str] = {}   # "done": what tune() did, in words


def _skip_reason() -> str | None:
    choice = os.environ.get(ENV, "tuned").strip().lower()
    if choice in ("default", "0", "off", "no", "false"):
        return f"{ENV}={os.environ[ENV]}"
    if choice not in ("tuned", "1", "on", "yes", "true", ""):
        return f"{ENV}={os.environ[ENV]!r} is not one of default, tuned (left alone)"
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _PRELOADED:
        if name in preload:
            return f"{name} is preloaded"
    chosen = [k for k in MALLOC_VARS if k in os.environ]
    if chosen:
        return f"set by the environment ({', '.join(chosen)})"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    return None


def tune() -> str:
    """Tune glibc malloc for training in this process (once; later calls return the same words).
    Returns what was done, e.g. ``"tuned by cellsearch (M_MMAP_MAX=0 …)"`` or why nothing was."""
    with _lock:
        if "done" in _state:
            return _state["done"]
        why = _skip_reason()
        if why is None:
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                ok = all(libc.mallopt(_PARAMS[k], v) == 1 for k, v in TUNED.items())
            except (OSError, AttributeError) as exc:
                ok, why = False, f"mallopt unavailable ({exc})"
            if ok:
                _state["done"] = "tuned by cellsearch (" + " ".join(f"{k}={v}" for k, v in TUNED.items()) + ")"
                return _state["done"]
            why = why or "mallopt refused a setting"
        _state["done"] = f"default settings ({why})" if not why.startswith("set by") else why
        return _state["done"]


def describe() -> str:
    """The allocator in effect, in words: a preloaded allocator, glibc's tunables from the environment,
    cellsearch's tuning, or the defaults."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _PRELOADED:
        if name in preload:
            return f"{name} (LD_PRELOAD)"
    libc = " ".join(platform.libc_ver()) if sys.platform.startswith("linux") else sys.platform
    tunables = [f"{k}={os.environ[k]}" for k in MALLOC_VARS if k in os.environ]
    if tunables:
        return f"{libc} malloc, " + " ".join(tunables)
    done = _state.get("done")
    if done is not None and done.startswith("tuned"):
        return f"{libc} malloc, {done}"
    return f"{libc} malloc, default settings"
