"""The machine a benchmark ran on: CPU, threads, torch, the allocator setting, the pointwise backend."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["allocator_setting", "machine_info"]


def allocator_setting() -> str:
    """The allocator in effect, in words (:func:`cellsearch.allocator.describe`)."""
    from ..allocator import describe

    return describe()


def _cpu_model() -> str:
    """/proc/cpuinfo's model name, with family/model and the widest vector extension."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                    fields[key] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    vec = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    name = fields.get("model name", platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}, {vec})"


def machine_info(device: str | torch.device = "cpu", build_time: bool = False) -> dict[str, str]:
    """CPU model, cores, torch threads and version, device, allocator, which kernels the fused paths use
    (``build_time``: also time a fresh build of the C library, about a second or two)."""
    from ..fast.fused import onednn_available

    device = torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu",
        "allocator": allocator_setting(),
        "oneDNN linear (fused paths' GEMMs)": "yes" if onednn_available() else "no",
        "fused paths' pointwise kernels": _pointwise_backend(build_time),
    }
    return info


def _pointwise_backend(build_time: bool) -> str:
    """Which pointwise kernels the fused paths use, and what building the C library costs here."""
    from ..fast import csrc

    if csrc.library() is None:
        return f"torch ops (C library unavailable: {csrc.build_error()})"
    seconds = csrc.time_build() if build_time else None
    cost = f"a fresh build takes {seconds:.1f} s" if seconds is not None else "build time not measured"
    return f"C library, compiled once per machine and cached ({cost}; no per-cell compile)"
