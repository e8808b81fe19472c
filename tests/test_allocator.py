"""The training allocator (cellsearch.allocator): glibc malloc tuned in-process, with an off switch.

Each case runs in a fresh interpreter (the setting is process-wide and once only). The effect is
checked, not only the return value: after tuning, a 100 MB malloc is not served by its own mmap
(glibc's ``mallinfo2().hblks`` does not grow); with the defaults it is.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt / mallinfo2 only")

PROBE = r"""
import ctypes, sys
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MI; libc.malloc.restype = ctypes.c_void_p
import cellsearch.allocator as a
said = a.{call}
before = libc.mallinfo2().hblks
p = libc.malloc(100 << 20)
print(said); print(a.describe()); print(libc.mallinfo2().hblks - before)
"""


def _probe(call: str = "tune()", **env: str) -> tuple[str, str, int]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "CELLSEARCH_ALLOCATOR")}
    res = subprocess.run([sys.executable, "-c", PROBE.replace("{call}", call)], capture_output=True, text=True,
                         env={**clean, **env}, timeout=120, check=True)
    said, described, mapped = res.stdout.strip().splitlines()
    return said, described, int(mapped)


def test_tuning_stops_large_allocations_from_being_mapped_one_by_one() -> None:
    said, described, mapped = _probe()
    assert said.startswith("tuned by cellsearch") and "M_MMAP_MAX=0" in said
    assert "tuned by cellsearch" in described
    assert mapped == 0


def test_without_tuning_glibc_maps_a_large_allocation() -> None:
    said, described, mapped = _probe("describe()")
    assert described.endswith("default settings") and mapped == 1


@pytest.mark.parametrize("env,why", [
    ({"CELLSEARCH_ALLOCATOR": "default"}, "CELLSEARCH_ALLOCATOR=default"),
    ({"MALLOC_TOP_PAD_": "1000"}, "set by the environment (MALLOC_TOP_PAD_)"),
    ({"CELLSEARCH_ALLOCATOR": "fast"}, "is not one of default, tuned"),
])
def test_the_off_switch_and_a_users_own_settings_are_respected(env: dict[str, str], why: str) -> None:
    said, described, mapped = _probe(**env)
    assert why in said and "tuned by cellsearch" not in described
    if "MALLOC_TOP_PAD_" not in env:
        assert mapped == 1


def test_a_training_run_tunes_its_process(tmp_path) -> None:
    code = ("import cellsearch as cs, cellsearch.allocator as a\nfrom cellsearch.train import train\n"
            "train(cs.ModelSpec(cell=cs.CellSpec(update='gru'), hidden_size=4), "
            "{'name': 'adding', 'seq_len': 5}, {'steps': 1, 'batch_size': 2})\n"
            "print(a.describe())\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CELLSEARCH_ALLOCATOR"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "tuned by cellsearch" in res.stdout.strip().splitlines()[-1]
