"""Compile the derived step graphs with Inductor (C++ kernels on the CPU), cached in the private cache.

A forward or backward step graph (aten ops, from :mod:`cellsearch.fast.derived`) is functionalized,
decomposed with Inductor's decomposition table and handed to Inductor's graph compiler
(``compile_fx_inner``) directly: no TorchDynamo, no guards and no AOTAutograd wrapper around the call
(that wrapper alone cost ~70 µs a call here). The matrix products stay calls into torch (MKL /
oneDNN); the pointwise work of a step becomes one or two generated C++ loops.

Inductor's on-disk cache (generated sources, compiled libraries, the FX graph cache) is pointed at
``<cellsearch cache>/inductor`` (:func:`cellsearch.fast.cache.private_dir`, mode 0700) for the duration
of a compile only; before the first use in a process the tree is checked, and if it holds a file that
is not the user's own or that others can write, a fresh private temporary directory is used instead (a
warning), so nothing planted there is loaded. ``CELLSEARCH_DERIVED_COMPILE=0`` turns compilation off
(and with it the derived path: uncompiled step graphs are slower than the reference loop).
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx

from .._env import env_var

__all__ = ["unavailable", "turned_off", "compile_graph", "cache_dir", "stats", "preload"]

_lock = threading.RLock()
#: Inductor settings for step graphs: single-threaded C++ loops (a step's [B, ·] pointwise work is too
#: small to split, and an OpenMP team waiting on a descheduled thread stalls every step on a shared
#: machine), compiled in this process (no worker pool to start for two small graphs)
_CONFIG: dict[str, Any] = {"cpp.threads": 1, "compile_threads": 1}
_dir: Path | None = None
#: seconds spent compiling in this process, and the number of graphs compiled
stats: dict[str, float] = {"seconds": 0.0, "graphs": 0}


def turned_off() -> str | None:
    """Why no step graph is compiled at all (``CELLSEARCH_DERIVED_COMPILE=0``), or None."""
    flag = os.environ.get("CELLSEARCH_DERIVED_COMPILE", "1").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return "compilation turned off by CELLSEARCH_DERIVED_COMPILE=0"
    return None


def unavailable(device: torch.device | str = "cpu") -> str | None:
    """Why step graphs are not compiled here (None: they are)."""
    off = turned_off()
    if off is not None:
        return off
    if torch.device(device).type != "cpu":
        return f"Inductor compilation of derived steps is only used on the CPU (not {torch.device(device).type})"
    if not _cxx_found(os.environ.get("CXX") or "g++"):
        return "no C++ compiler found (set CXX)"
    return None


@functools.cache
def _cxx_found(first: str) -> bool:
    """Whether a C++ compiler is on the PATH (looked up once per ``CXX``: every derived call asks)."""
    return any(shutil.which(c) for c in (first, "g++", "clang++", "c++"))


_preloading: threading.Thread | None = None


def preload() -> None:
    """Import Inductor's compiler in a background thread (a few seconds in a fresh process), so that a
    cell whose first calls run the reference loop finds it imported when it switches to the derived
    path."""
    global _preloading
    with _lock:
        if _preloading is not None or unavailable() is not None:
            return

        def load() -> None:
            try:
                import torch._inductor.compile_fx  # noqa: F401
                import torch._inductor.decomposition  # noqa: F401
            except Exception:  # pragma: no cover - the compile reports it
                pass

        _preloading = threading.Thread(target=load, name="cellsearch-inductor-preload", daemon=True)
        _preloading.start()


def cache_dir() -> Path:
    """Inductor's cache directory for cellsearch (private; checked once per process)."""
    global _dir
    from .cache import UnsafeCacheWarning, fresh_private_dir, private_dir, untrusted_files

    with _lock:
        if _dir is None:
            d = private_dir("inductor")
            bad = untrusted_files(d)
            if bad:
                warnings.warn(f"cellsearch: not using the Inductor cache {d}: {len(bad)} file(s) there are not "
                              f"private to this user (e.g. {bad[0]}); compiling into a private temporary "
                              f"directory instead", UnsafeCacheWarning, stacklevel=2)
                d = fresh_private_dir("inductor")
            _dir = d
        return _dir


def _reset_cache_dir() -> None:
    """Forget the checked directory (tests)."""
    global _dir
    with _lock:
        _dir = None


@contextmanager
def _cache_env() -> Iterator[None]:
    with _lock, env_var("TORCHINDUCTOR_CACHE_DIR", str(cache_dir())):
        yield


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Tensor]) -> Callable[..., Any]:
    """``gm`` compiled by Inductor for inputs shaped and strided like ``example_inputs``; called with
    the same positional tensors, returns the same tuple."""
    import torch._inductor.config
    from torch._guards import TracingContext, tracing
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    t0 = time.perf_counter()
    # a fake mode with a shape environment in the tracing context: what Inductor's FX graph cache keys on
    mode = FakeTensorMode(shape_env=ShapeEnv())
    with torch.no_grad():
        fake = [mode.from_tensor(t.detach(), static_shapes=True) for t in example_inputs]
        with mode:
            graph = make_fx(torch.func.functionalize(gm, remove="mutations"),
                            decomposition_table=select_decomp_table())(*fake)
        with _cache_env(), torch._inductor.config.patch(_CONFIG), tracing(TracingContext(mode)):
            compiled = compile_fx_inner(graph, fake)
    stats["seconds"] += time.perf_counter() - t0
    stats["graphs"] += 1

    def call(*args: Any) -> Any:
        return compiled(list(args))

    return call
