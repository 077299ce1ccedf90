"""The durable delivery queue, in the pod's own database.

Every copy of an event the server promised to send (to a recipient's inbox, a subscriber's inbox
or a webhook) is a row here, written in the same transaction as the resource that caused it: once
``/publish/`` or an inbox has answered 2xx, the deliveries are on disk and survive a crash. Workers
claim due rows with a lease, so a row claimed by a process that dies becomes due again when the
lease runs out; receivers drop duplicates by event id, so a redelivery stores nothing twice.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ldp.accessor import Write
from ldp.sqlite import SqliteAccessor, write_in

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,          -- the event's shared id (its URL at the publishing pod)
    sender TEXT NOT NULL,            -- pod whose key signs the delivery
    kind TEXT NOT NULL,              -- 'inbox' or 'webhook'
    recipient TEXT NOT NULL,         -- WebID of the receiving agent
    target TEXT NOT NULL DEFAULT '', -- inbox URL ('' = discover from the WebID) or webhook URL
    secret TEXT NOT NULL DEFAULT '', -- webhook HMAC secret
    payload BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE TABLE IF NOT EXISTS received (
    pod TEXT NOT NULL,
    sender TEXT NOT NULL,
    event_id TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (pod, sender, event_id)
);
"""


@dataclass(frozen=True)
class NewDelivery:
    event_id: str
    sender: str
    kind: str
    recipient: str
    payload: bytes
    target: str = ""
    secret: str = ""


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    sender: str
    kind: str
    recipient: str
    target: str
    secret: str
    payload: bytes
    state: str
    attempts: int
    next_attempt: float
    last_error: str
    created: float
    finished: float | None

    def as_json(self) -> dict[str, object]:
        from pod.events import now_fields

        doc: dict[str, object] = {"recipient": self.recipient, "state": self.state, "attempts": self.attempts}
        if self.kind == "webhook":
            doc["target"] = self.target
        if self.state == "pending":
            doc["state"] = "retrying" if self.attempts else "queued"
            doc["nextAttempt"] = now_fields(self.next_attempt)["time"]
        if self.state == "delivered" and self.finished is not None:
            doc["deliveredAt"] = now_fields(self.finished)["time"]
        if self.last_error:
            doc["lastError"] = self.last_error
        return doc


_COLUMNS = (
    "id, event_id, sender, kind, recipient, target, secret, payload, state, attempts, next_attempt,"
    " last_error, created, finished"
)


def _row(row: Sequence[object]) -> Delivery:
    return Delivery(
        int(row[0]),  # type: ignore[call-overload]
        str(row[1]),
        str(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
        bytes(row[7]),  # type: ignore[call-overload]
        str(row[8]),
        int(row[9]),  # type: ignore[call-overload]
        float(row[10]),  # type: ignore[arg-type]
        str(row[11]),
        float(row[12]),  # type: ignore[arg-type]
        None if row[13] is None else float(row[13]),  # type: ignore[arg-type]
    )


def insert_deliveries(conn: sqlite3.Connection, deliveries: Sequence[NewDelivery], now: float) -> None:
    conn.executemany(
        "INSERT INTO deliveries(event_id, sender, kind, recipient, target, secret, payload,"
        " next_attempt, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (d.event_id, d.sender, d.kind, d.recipient, d.target, d.secret, d.payload, now, now)
            for d in deliveries
        ],
    )


def backoff(attempts: int, base: float = 1.0, cap: float = 600.0) -> float:
    """Exponential backoff with full jitter: spreads retries of many deliveries to one host."""
    delay: float = min(cap, base * 2 ** max(0, attempts - 1))
    return random.uniform(0.5, 1.0) * delay


class DeliveryQueue:
    def __init__(self, accessor: SqliteAccessor, lease: float = 60.0) -> None:
        self.accessor = accessor
        self.lease = lease

    async def open(self) -> None:
        def job(conn: sqlite3.Connection) -> None:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

        await self.accessor.run_job(job)

    async def commit(self, pod: str, writes: Sequence[Write], deliveries: Sequence[NewDelivery]) -> None:
        """Store resources and queue their deliveries in one durable transaction."""

        def job(conn: sqlite3.Connection) -> None:
            for w in writes:
                write_in(conn, pod, w)
            insert_deliveries(conn, deliveries, time.time())

        await self.accessor.run_job(job)

    async def claim(self, limit: int, now: float | None = None) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries to this process."""
        at = time.time() if now is None else now

        def job(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM deliveries"
                " WHERE state='pending' AND next_attempt<=? AND lease_until<=? ORDER BY next_attempt LIMIT ?",
                (at, at, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET lease_until=? WHERE id=?", [(at + self.lease, r[0]) for r in rows]
            )
            return [_row(r) for r in rows]

        claimed: list[Delivery] = await self.accessor.run_job(job)
        return claimed

    async def finish(self, outcomes: Sequence[tuple[int, str, str, float | None]]) -> None:
        """Record outcomes: (id, state, error, next attempt). ``pending`` with a time is a retry."""
        now = time.time()

        def job(conn: sqlite3.Connection) -> None:
            for delivery_id, state, error, next_attempt in outcomes:
                if state == "pending":
                    conn.execute(
                        "UPDATE deliveries SET attempts=attempts+1, next_attempt=?, lease_until=0,"
                        " last_error=? WHERE id=?",
                        (next_attempt, error, delivery_id),
                    )
                else:
                    conn.execute(
                        "UPDATE deliveries SET state=?, attempts=attempts+1, lease_until=0, last_error=?,"
                        " finished=? WHERE id=?",
                        (state, error, now, delivery_id),
                    )

        await self.accessor.run_job(job)

    async def release(self, ids: Sequence[int]) -> None:
        """Give claimed deliveries back (graceful shutdown) so another worker takes them at once."""
        await self.accessor.run_job(
            lambda conn: conn.executemany(
                "UPDATE deliveries SET lease_until=0 WHERE id=?", [(i,) for i in ids]
            )
        )

    def for_event(self, event_id: str) -> list[Delivery]:
        rows = (
            self.accessor.read_connection()
            .execute(f"SELECT {_COLUMNS} FROM deliveries WHERE event_id=? ORDER BY id", (event_id,))
            .fetchall()
        )
        return [_row(r) for r in rows]

    def next_due(self) -> float | None:
        row = (
            self.accessor.read_connection()
            .execute("SELECT MIN(MAX(next_attempt, lease_until)) FROM deliveries WHERE state='pending'")
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def depth(self) -> int:
        row = (
            self.accessor.read_connection()
            .execute("SELECT COUNT(*) FROM deliveries WHERE state='pending'")
            .fetchone()
        )
        return int(row[0])

    def pending_count(self, sender: str) -> int:
        row = (
            self.accessor.read_connection()
            .execute("SELECT COUNT(*) FROM deliveries WHERE state='pending' AND sender=?", (sender,))
            .fetchone()
        )
        return int(row[0])

    async def replay(self, sender: str | None, since: float, until: float, states: Sequence[str]) -> int:
        """Queue failed or past deliveries created in [since, until) again; returns how many."""
        marks = ",".join("?" for _ in states)

        def job(conn: sqlite3.Connection) -> int:
            params: list[object] = [time.time(), since, until, *states]
            query = (
                "UPDATE deliveries SET state='pending', attempts=0, next_attempt=?, lease_until=0,"
                f" last_error='', finished=NULL WHERE created>=? AND created<? AND state IN ({marks})"
            )
            if sender is not None:
                query += " AND sender=?"
                params.append(sender)
            return conn.execute(query, params).rowcount

        count: int = await self.accessor.run_job(job)
        return count
