"""The delivery queue in the SQLite database, next to the resources it delivers.

Rows are written by the accessor's group-commit writer, in the same transaction as the resources
that caused them; the tables are part of the accessor's schema (``ldp.sqlite.MIGRATIONS``). Workers
lease due rows (``lease_until``), so a row claimed by a process that dies becomes due again when the
lease runs out; SQLite's single writer makes each claim exclusive.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from ldp.accessor import NotFresh, Together, Write
from ldp.sqlite import SqliteAccessor, create_fresh_in, fresh, write_in
from pod.queue import Delivery, NewDelivery, Outcome, Publish, Receipt, outdated, publishes, to_check
from pod.subscriptions import SUBSCRIPTIONS_PATH

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
    if not deliveries:
        return
    conn.executemany(
        "INSERT INTO deliveries(event_id, sender, kind, recipient, target, secret, payload, state, attempts,"
        " next_attempt, created, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (d.event_id, d.sender, d.kind, d.recipient, d.target, d.secret, d.payload)
            + (("delivered", 1, now, now, now) if d.delivered else ("pending", 0, now, now, None))
            for d in deliveries
        ],
    )


# A receipt's row in ``received``; inserting it is what finds a duplicate (nothing is inserted).
_RECEIVED = "INSERT INTO received(pod, sender, event_id, path) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"


def _received_at(conn: sqlite3.Connection, pod: str, sender: str, event_id: str) -> str | None:
    row = conn.execute(
        "SELECT path FROM received WHERE pod=? AND sender=? AND event_id=?", (pod, sender, event_id)
    ).fetchone()
    return None if row is None else str(row[0])


def receive_in(conn: sqlite3.Connection, r: Receipt, now: float) -> str | None:
    """Apply a receipt inside a job's transaction: the path of the earlier copy if the pod already
    has this event from this sender, else None once the copy, its link and its forwards are written.

    The ``received`` row goes first: inserting it is what finds the event already there, so a
    duplicate is known before anything else is written.
    """
    stored = conn.execute(
        _RECEIVED,
        (r.pod, r.sender, r.event_id, r.path),
    ).rowcount
    if not stored:
        return str(_received_at(conn, r.pod, r.sender, r.event_id))
    for w in r.writes:
        write_in(conn, r.pod, w)
    insert_deliveries(conn, r.forwards, now)
    return None


_IN_LIMIT = 500  # pods named in one statement (SQLite takes up to 32,766 parameters)


def _versions(conn: sqlite3.Connection, pods: Sequence[str]) -> dict[str, str]:
    """The versions of ``pods``' subscriptions documents, read a few hundred pods at a time."""
    versions: dict[str, str] = {}
    for at in range(0, len(pods), _IN_LIMIT):
        chunk = pods[at : at + _IN_LIMIT]
        versions.update(
            conn.execute(
                f"SELECT pod, version FROM resources WHERE path=? AND pod IN ({','.join('?' * len(chunk))})",
                (SUBSCRIPTIONS_PATH, *chunk),
            ).fetchall()
        )
    return versions


def _store_fresh(
    conn: sqlite3.Connection,
    receipts: Sequence[Receipt],
    now: float,
    writes: Sequence[tuple[str, Write]] = (),
    deliveries: Sequence[NewDelivery] = (),
) -> bool:
    """Store every one of ``receipts`` — and ``writes`` (pod, write) and ``deliveries`` with them
    — in a few statements, as ``receive_in`` one by one would: the usual case of a fan-out wave or
    a publish, where no receipt is a duplicate, every document is new at a fresh name (the events
    of ``Publisher.publish``, the copies and links of ``Inbox.receipt``) and their containers
    exist. Under a savepoint of its own: False, with nothing kept, when that is not the case, and
    the caller takes the one-by-one way."""

    def store() -> None:
        if receipts:
            before = conn.total_changes
            conn.executemany(_RECEIVED, [(r.pod, r.sender, r.event_id, r.path) for r in receipts])
            if conn.total_changes - before != len(receipts):
                raise NotFresh("a duplicate (or the same event twice in the batch)")
        create_fresh_in(conn, [*writes, *((r.pod, w) for r in receipts for w in r.writes)], now)
        insert_deliveries(conn, [*deliveries, *(d for r in receipts for d in r.forwards)], now)

    return fresh(conn, store)


def _publish_alone(conn: sqlite3.Connection, p: Publish) -> list[bool]:
    now = time.time()
    if _store_fresh(conn, p.receipts, now, [(p.pod, w) for w in p.writes], p.deliveries):
        return [True] * len(p.receipts)
    for w in p.writes:
        write_in(conn, p.pod, w)
    insert_deliveries(conn, p.deliveries, now)
    return [receive_in(conn, r, now) is None for r in p.receipts]


def _publish_together(conn: sqlite3.Connection, parts: Sequence[Publish]) -> list[list[bool]] | None:
    """Publishes of one group commit all at once (``ldp.accessor.Together``), or None."""
    writes, deliveries, receipts, stored = publishes(parts)
    return stored if _store_fresh(conn, receipts, time.time(), writes, deliveries) else None


def receive_many_in(
    conn: sqlite3.Connection, receipts: Sequence[Receipt], now: float
) -> list[str | Exception | None]:
    """``receive_in`` for each receipt inside one job's transaction; a receipt whose subscriptions
    changed is refused (``Outdated``) before anything is written, and one whose writes fail is
    undone alone, its error returned in its place.

    The receipts are first stored all at once (``_store_fresh``), which is the whole of the
    work when none is a duplicate and every container is there. Otherwise nothing of that is kept
    and they are applied one by one under one savepoint: a savepoint around each receipt would undo a
    failure directly, but each one copies every page the receipt touches (the same few index
    pages, over and over) into the savepoint journal, a third more work per receipt. Only if one
    of them fails (a rare event: a document where a container must go, say) is that undone too
    and each applied again under a savepoint of its own.
    """
    results: list[str | Exception | None] = list(outdated(receipts, _versions(conn, to_check(receipts))))
    todo = [i for i, result in enumerate(results) if result is None]
    if not todo:
        return results
    try:
        if _store_fresh(conn, [receipts[i] for i in todo], now):
            return results
    except Exception:
        pass  # nothing kept: one by one below, where a receipt that fails is refused alone
    conn.execute("SAVEPOINT receipts")
    try:
        for i in todo:
            results[i] = receive_in(conn, receipts[i], now)
    except Exception:
        conn.execute("ROLLBACK TO receipts")
        for i in todo:
            conn.execute("SAVEPOINT receipt")
            try:
                results[i] = receive_in(conn, receipts[i], now)
            except Exception as exc:
                conn.execute("ROLLBACK TO receipt")
                results[i] = exc
            conn.execute("RELEASE receipt")
    conn.execute("RELEASE receipts")
    return results


class SqliteQueue:
    """DeliveryQueue on the SQLite accessor's group-commit writer."""

    def __init__(self, accessor: SqliteAccessor, lease: float = 60.0) -> None:
        self.accessor = accessor
        self.lease = lease

    async def open(self) -> None:
        """Nothing to do: the queue's tables are part of the accessor's schema (``ldp.sqlite``)."""

    async def commit(
        self,
        pod: str,
        writes: Sequence[Write],
        deliveries: Sequence[NewDelivery],
        receipts: Sequence[Receipt] = (),
    ) -> list[bool]:
        part = Publish(pod, writes, deliveries, receipts)
        stored: list[bool] = await self.accessor.run_job(Together(_publish_together, _publish_alone, part))
        return stored

    async def claim(self, limit: int, now: float | None = None) -> list[Delivery]:
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

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
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
        await self.accessor.run_job(
            lambda conn: conn.executemany(
                "UPDATE deliveries SET lease_until=0 WHERE id=?", [(i,) for i in ids]
            )
        )

    async def receive_many(self, receipts: Sequence[Receipt]) -> list[str | Exception | None]:
        results: list[str | Exception | None] = await self.accessor.run_job(
            lambda conn: receive_many_in(conn, receipts, time.time())
        )
        return results

    async def received_at(self, pod: str, sender: str, event_id: str) -> str | None:
        return _received_at(self.accessor.read_connection(), pod, sender, event_id)

    async def for_event(self, event_id: str) -> list[Delivery]:
        rows = (
            self.accessor.read_connection()
            .execute(f"SELECT {_COLUMNS} FROM deliveries WHERE event_id=? ORDER BY id", (event_id,))
            .fetchall()
        )
        return [_row(r) for r in rows]

    async def next_due(self) -> float | None:
        row = (
            self.accessor.read_connection()
            .execute("SELECT MIN(MAX(next_attempt, lease_until)) FROM deliveries WHERE state='pending'")
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def depth(self) -> int:
        row = (
            self.accessor.read_connection()
            .execute("SELECT COUNT(*) FROM deliveries WHERE state='pending'")
            .fetchone()
        )
        return int(row[0])

    async def pending_count(self, sender: str) -> int:
        row = (
            self.accessor.read_connection()
            .execute("SELECT COUNT(*) FROM deliveries WHERE state='pending' AND sender=?", (sender,))
            .fetchone()
        )
        return int(row[0])

    async def replay(self, sender: str | None, since: float, until: float, states: Sequence[str]) -> int:
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
