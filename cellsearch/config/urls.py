"""Storage URLs as the configuration reads them: what is wrong with one, and the same URL with its password
masked (what cellsearch prints, stores and puts in error messages). Torch-free and Optuna-free: the search
layer's :mod:`cellsearch.search.storage` opens the storages.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["mask_url", "redact", "one_line", "url_problem", "sqlite_path", "journal_path", "local_path"]


#: ``scheme://user:PASSWORD@`` (greedy up to the last ``@`` before the path) and ``password=...`` in a query
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^/\s]*@")
_QUERY_PASSWORD = re.compile(r"(\bpassword=)[^&\s'\"]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: what cellsearch prints and stores."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def _password(url: str) -> str | None:
    match = _PASSWORD.search(url)
    return match.group(0)[len(match.group(1)) : -1] if match else None


def redact(text: str, url: str | None = None) -> str:
    """``text`` with every URL password masked, and ``url``'s password wherever it appears (a driver's
    error message may quote it)."""
    secret = _password(url) if url else None
    if secret:
        text = text.replace(secret, "***")
        from urllib.parse import unquote

        if unquote(secret) != secret:
            text = text.replace(unquote(secret), "***")
    return mask_url(text)


_EXAMPLES = "sqlite:///runs/NAME/study.db, postgresql://USER@HOST/DB (password from PGPASSWORD or ~/.pgpass) " \
            "or journal:///PATH/study.log"


def url_problem(url: str) -> str | None:
    """What is wrong with storage ``url`` without touching the disk or a server (None: nothing found).

    Refused: no scheme; an in-memory SQLite database (the study would be lost when the process ends, and
    Optuna's heartbeat thread cannot see it); a SQLite or journal path that names a folder or an empty path.
    """
    if "://" not in url or not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        return f"an Optuna storage URL such as {_EXAMPLES}"
    if url.startswith("sqlite:") and (url in ("sqlite://", "sqlite:///") or ":memory:" in url
                                      or "mode=memory" in url):
        return ("a SQLite file, e.g. sqlite:///runs/NAME/study.db (an in-memory database loses the study when "
                "the process ends)")
    path = local_path(url)
    if url.startswith("journal:") and (not url.startswith("journal:///") or not url[len("journal:///"):]):
        return "journal:///PATH/study.log (a file path after journal:///)"
    if path is not None and (path.is_dir() or url.endswith("/")):
        return f"a file path; {str(path)!r} is a folder (e.g. {url.rstrip('/')}/study.db)"
    if path is not None and any(len(part.encode()) > 255 for part in path.parts):
        return "a path whose every folder and file name is at most 255 bytes"
    return None


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///") :]
    return None if rest in ("", ":memory:") else Path(rest)


def journal_path(url: str) -> Path | None:
    """The log file of a ``journal:///PATH`` URL (None for other URLs)."""
    return Path(url[len("journal:///") :]) if url.startswith("journal:///") else None


def local_path(url: str) -> Path | None:
    """The local file behind a SQLite or journal URL (None for a server URL)."""
    return sqlite_path(url) or journal_path(url)


def one_line(exc: BaseException) -> str:
    """An error message as the command line prints it: storage passwords masked, on one line."""
    return " ".join(redact(str(exc)).split("\n")).strip()
