"""A throwaway PostgreSQL server for the scripted checks (``kill_loop.py``, ``throughput.py``).

The same recipe as ``.ci/run`` and ``tests/test_postgres.py``: the server binaries of this machine
(Debian's ``/usr/lib/postgresql/<version>/bin`` or ``initdb`` on PATH) start a cluster in a temporary
folder on a free port, trusted on 127.0.0.1 only (run as the ``postgres`` user when this runs as root:
the server refuses root). Stopped (``-m immediate``) and its folder removed when the ``with`` block ends.
A URL in ``CELLSEARCH_TEST_POSTGRES`` is used as is instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["postgres", "Unavailable"]


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here (the reason is the message)."""


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres(database: str = "cellsearch_chaos") -> Iterator[str]:
    """A PostgreSQL URL (``postgresql://postgres@127.0.0.1:PORT/DB``) valid inside the ``with`` block."""
    url = os.environ.get("CELLSEARCH_TEST_POSTGRES")
    if url:
        yield url
        return
    bindir = _bindir()
    if bindir is None:
        raise Unavailable("no initdb on this machine (install Debian's 'postgresql' package, or set "
                          "CELLSEARCH_TEST_POSTGRES=postgresql://USER@HOST:PORT/DB)")
    root = Path(tempfile.mkdtemp(prefix="cs-chaos-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise Unavailable("running as root and there is no 'postgres' user to run the server as") from None
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        cmd = [*as_user, os.path.join(bindir, args[0]), *args[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")

    data, port = str(root / "data"), _free_port()
    started = False
    try:
        run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        run("pg_ctl", "-D", data, "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start")
        started = True
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            try:
                run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
            except Exception:  # noqa: BLE001 - the folder is removed anyway
                pass
        shutil.rmtree(root, ignore_errors=True)
