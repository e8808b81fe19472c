"""The private per-user cache of compiled artifacts (the C kernels, Inductor's generated code).

Compiled code found on disk is loaded into the process, so the cache must be writable by its user
only: :func:`private_dir` returns a directory that is owned by the user and has mode 0700 (created so,
or tightened when the user owns it); a directory that another user owns, or that is a symbolic link,
is refused and a fresh private temporary directory is used instead (with a warning). :func:`trusted`
says whether one file may be loaded: a regular file (not a link) owned by the user and writable by
nobody else; :func:`untrusted_files` lists the files of a tree that fail that test (a cache directory
holding one is not used).

Where: ``$CELLSEARCH_CACHE``, else ``$XDG_CACHE_HOME/cellsearch``, else ``~/.cache/cellsearch``.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["cache_root", "private_dir", "trusted", "untrusted_files", "UnsafeCacheWarning"]

_lock = threading.Lock()
_fallback: dict[str, Path] = {}


class UnsafeCacheWarning(UserWarning):
    """A cache directory or file was not private to the user and was not used."""


def cache_root() -> Path:
    """The root of the cellsearch cache (not created here)."""
    root = os.environ.get("CELLSEARCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cellsearch")
    return Path(root)


def _uid() -> int | None:
    getuid = getattr(os, "getuid", None)
    return getuid() if getuid is not None else None


def _private(st: os.stat_result) -> bool:
    uid = _uid()
    return (uid is None or st.st_uid == uid) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def trusted(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` may be loaded: a regular file owned by the user, not group- or world-writable."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and _private(st)


def untrusted_files(root: str | os.PathLike[str]) -> list[Path]:
    """Files and directories under ``root`` that are not the user's own and private (links included)."""
    bad: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or not _private(st):
                bad.append(p)
    return bad


def _make_private(path: Path) -> bool:
    """Create ``path`` (and missing parents) and make it 0700; False if it is not the user's."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(path)
    except OSError:
        return False
    uid = _uid()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid):
        return False
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            os.chmod(path, 0o700)
        except OSError:
            return False
    return stat.S_IMODE(os.lstat(path).st_mode) == 0o700


def private_dir(*parts: str) -> Path:
    """``cache_root()/parts…``, created with mode 0700 and owned by the user; when that is impossible
    (a directory of another user, a link) a private temporary directory for this process, with a
    warning."""
    root = cache_root()
    path = root.joinpath(*parts)
    with _lock:
        if all(_make_private(p) for p in (root, path)):
            return path
        key = "/".join(parts)
        if key not in _fallback:
            warnings.warn(f"cellsearch: the cache directory {path} is not private to this user (owned by "
                          f"another user, a link, or not 0700); compiled code is kept in a temporary "
                          f"directory for this process instead", UnsafeCacheWarning, stacklevel=2)
            _fallback[key] = Path(tempfile.mkdtemp(prefix="cellsearch-" + key.replace("/", "-") + "-"))
        return _fallback[key]


def fresh_private_dir(tag: str) -> Path:
    """A new private temporary directory (mode 0700) for this process."""
    with _lock:
        key = "fresh:" + tag
        if key not in _fallback:
            _fallback[key] = Path(tempfile.mkdtemp(prefix=f"cellsearch-{tag}-"))
        return _fallback[key]
