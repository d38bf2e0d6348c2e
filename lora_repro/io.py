"""Atomic file writes: readers never see half a file, and a killed writer leaves no target behind.

One helper for every writer in the suite (records, method weights, tokenised-data caches, tables,
scorer input files). The data goes to a hidden temporary file beside the target, is fsynced, and
then renamed over the target (``os.replace``), which is atomic on POSIX file systems.

A writer killed between creating and renaming its temporary file leaves it behind; the file's name
says which host and process wrote it (``.<target>.<host>-<pid>.<random>.tmp``), so
:func:`clean_stale_temps` (called when a store opens and a run starts) removes exactly the ones no
live writer owns: a temporary of a process that is gone on this host, or one older than
``STALE_AFTER_S`` (a writer on another host, or from before names carried a pid). A live
concurrent writer's file is never touched: it is younger than that and its pid is running.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
SHARED_MODE = 0o644  # mkstemp creates 0600; records, weights and tables are meant to be shared
STALE_AFTER_S = 15 * 60  # far longer than any single write here (the largest, a tokenised MNLI, takes seconds)


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def make_temp_beside(path: Path) -> tuple[int, str]:
    """A new world-readable temporary file beside ``path`` (fd, name), named by this host and pid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=TMP_SUFFIX)
    os.fchmod(fd, SHARED_MODE)
    return fd, tmp


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = make_temp_beside(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), binary=True)


def _writer_gone(name: str) -> bool:
    """Whether the name's writer ran on this host and its process no longer exists."""
    parts = name.split(".")
    host, _, pid = parts[-3].rpartition("-") if len(parts) >= 4 else ("", "", "")
    if host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def clean_stale_temps(folder: str | os.PathLike, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the hidden ``.<name>.*.tmp`` files in ``folder`` that no live writer owns; return them."""
    removed = []
    now = time.time()
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        try:
            if _writer_gone(tmp.name) or now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # its writer finished (renamed it) or another cleaner got there first
            continue
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed
