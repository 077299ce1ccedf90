"""A replay guard shared by every server process on one database.

Signed pod-to-pod requests and DPoP proofs may each be used once. Each process remembers what it
accepted in memory; when several processes serve the same pods (``--workers``, or several
machines on PostgreSQL) that is not enough — a replay sent to another process would pass — so
accepted keys are also claimed in a table all processes share. A single process skips the table.

On SQLite the table lives in its own file (``replay.sqlite3``) with ``synchronous=OFF``: a claim
need not survive a crash (proofs are short-lived), and must not cost an fsync on the request path.
Processes claim one at a time under the file's writer lock (``ldp.sqlite.WriterLock``): a claim
holds it for microseconds, whereas SQLite's own answer to a locked file, retrying after sleeps of
up to 100 ms, would sleep on the event loop (two processes claiming as fast as they could: one
claim waited 330 ms).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from ldp.sqlite import WriterLock


class SharedClaims(Protocol):
    async def claim_once(self, key: bytes, expires: float, now: float) -> bool: ...


class SqliteClaims:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(path)
        self._lock.open()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS replay_keys (key BLOB PRIMARY KEY, expires REAL NOT NULL)"
        )

    async def claim_once(self, key: bytes, expires: float, now: float) -> bool:
        # One short statement on the loop thread: cheaper than a thread hop, and never fsync'd.
        with self._lock.held():
            cur = self._conn.execute(
                "INSERT INTO replay_keys(key, expires) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET expires = excluded.expires WHERE replay_keys.expires <= ?",
                (key, expires, now),
            )
            if cur.rowcount > 0 and key[-1] == 0:  # now and then (1 claim in 256) drop what has expired
                self._conn.execute("DELETE FROM replay_keys WHERE expires <= ?", (now,))
        return cur.rowcount > 0

    def close(self) -> None:
        self._conn.close()
        self._lock.close()


class SharedSignatureReplay:
    """``acl.signatures.ReplayCache`` that claims in the shared table (after the verifier's checks)."""

    def __init__(self, claims: SharedClaims) -> None:
        self.claims = claims

    async def claim(self, key: bytes, expires_at: float, now: float) -> bool:
        return await self.claims.claim_once(b"sig:" + key, expires_at, now)
