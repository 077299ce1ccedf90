"""Online backups of the SQLite database (``pod backup FILE``).

Copying ``pod.sqlite3`` while the server runs is not a backup: the newest commits live in the
``-wal`` file until a checkpoint moves them, and a copy taken during a checkpoint is torn.
``VACUUM INTO`` instead reads the database inside one read transaction, so the copy is exactly
the state of one moment, with every commit acknowledged before it, while the server goes on
writing (WAL readers do not block the writer). The copy is also compacted.

SQLite's online backup API would be the other way, but it restarts whenever another connection
writes during the copy, so under steady traffic it may never finish.

The copy holds every pod's private signing key, so it is created readable by its owner only,
under a temporary name, checked (``PRAGMA quick_check``), synced and only then renamed into place:
a backup that exists is complete. An existing file is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    """The backup could not be made; nothing was left at the destination."""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size: int
    pods: int
    resources: int
    seconds: float


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(database: Path, dest: Path) -> BackupReport:
    """Copy ``database`` to ``dest`` (which must not exist) as one consistent snapshot."""
    started = time.monotonic()
    if not database.is_file():
        raise BackupError(f"there is no database at {database}")
    if dest.exists():
        raise BackupError(f"{dest} exists; a backup never overwrites a file")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is not a directory")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    # VACUUM INTO writes into an empty file it finds in place, keeping its owner-only mode.
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        source = sqlite3.connect(database, isolation_level=None, timeout=30.0)
        try:
            source.execute("PRAGMA busy_timeout=30000")
            source.execute("VACUUM INTO ?", (str(partial),))
        finally:
            source.close()
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            (verdict,) = copy.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise BackupError(f"the copy failed its check: {verdict}")
            (pods,) = copy.execute("SELECT count(*) FROM pods").fetchone()
            (resources,) = copy.execute("SELECT count(*) FROM resources").fetchone()
        finally:
            copy.close()
        _fsync(partial)
        os.link(partial, dest)  # fails rather than replace a file that appeared meanwhile
        _fsync(dest.parent, directory=True)
    except sqlite3.Error as exc:
        raise BackupError(str(exc)) from exc
    except FileExistsError:
        raise BackupError(f"{dest} exists; a backup never overwrites a file") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return BackupReport(dest, dest.stat().st_size, int(pods), int(resources), time.monotonic() - started)
