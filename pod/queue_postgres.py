"""The delivery queue in the PostgreSQL database, next to the resources it delivers.

Rows are written in the same transaction as the resources that caused them, by the accessor's own
write logic on the same connection (``ldp.postgres.write_in``); the tables are part of the
accessor's schema (``ldp.postgres.MIGRATIONS``). Any number of processes run workers on one
database: a claim locks due rows with ``FOR UPDATE SKIP LOCKED`` and leases them in the same
statement, so each row is claimed by one worker; a row whose worker died becomes due again when
its lease runs out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg

from ldp.accessor import NotFresh, Together, Write
from ldp.postgres import PostgresAccessor, Tx, create_fresh_in, write_in
from pod.queue import Delivery, NewDelivery, Outcome, Publish, Receipt, outdated, publishes, to_check
from pod.subscriptions import SUBSCRIPTIONS_PATH

_COLUMNS = (
    "id, event_id, sender, kind, recipient, target, secret, payload, state, attempts, next_attempt,"
    " last_error, created, finished"
)
_INSERT = (
    "INSERT INTO deliveries(event_id, sender, kind, recipient, target, secret, payload, state, attempts,"
    " next_attempt, created, finished) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)"
)


# The errors ``PostgresAccessor.transaction`` answers by running the whole job again (a deadlock, a
# serialization failure, a lost race to create a row): never one receipt's own failure.
_AGAIN = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)
# The path of a pod's copy of an event from a sender (its duplicate guard).
_RECEIVED_AT = "SELECT path FROM received WHERE pod=$1 AND sender=$2 AND event_id=$3"


def _row(r: asyncpg.Record) -> Delivery:
    return Delivery(
        int(r["id"]),
        r["event_id"],
        r["sender"],
        r["kind"],
        r["recipient"],
        r["target"],
        r["secret"],
        bytes(r["payload"]),
        r["state"],
        int(r["attempts"]),
        float(r["next_attempt"]),
        r["last_error"],
        float(r["created"]),
        None if r["finished"] is None else float(r["finished"]),
    )


async def insert_deliveries(tx: Tx, deliveries: Sequence[NewDelivery], now: float) -> None:
    if not deliveries:
        return
    await tx.conn.executemany(
        _INSERT,
        [
            (d.event_id, d.sender, d.kind, d.recipient, d.target, d.secret, d.payload)
            + (("delivered", 1, now, now) if d.delivered else ("pending", 0, now, None))
            for d in deliveries
        ],
    )


async def receive_in(tx: Tx, r: Receipt, now: float) -> str | None:
    """Apply a receipt inside ``tx``: the path of the earlier copy if the pod already has this event
    from this sender, else None once the copy, its link and its forwards are written."""
    # Claim the event id first: a copy being stored by another transaction makes this insert wait
    # for it, and then do nothing if that one committed.
    claimed = await tx.conn.fetchval(
        "INSERT INTO received(pod, sender, event_id, path) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        r.pod,
        r.sender,
        r.event_id,
        r.path,
    )
    if not claimed:
        return str(await tx.conn.fetchval(_RECEIVED_AT, r.pod, r.sender, r.event_id))
    for w in r.writes:
        await write_in(tx, r.pod, w)
    await insert_deliveries(tx, r.forwards, now)
    return None


_RECEIVED_MANY = (
    "INSERT INTO received(pod, sender, event_id, path)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
    " ON CONFLICT DO NOTHING RETURNING 1"
)


async def _store_fresh(
    tx: Tx,
    receipts: Sequence[Receipt],
    now: float,
    writes: Sequence[tuple[str, Write]] = (),
    deliveries: Sequence[NewDelivery] = (),
) -> bool:
    """Store every one of ``receipts``, and ``writes`` and ``deliveries`` with them, in a few
    statements under a savepoint: the rules of ``pod.queue_sqlite._store_fresh``. False, with
    nothing kept, when they do not apply (a duplicate, a missing container, a path taken). The
    caller holds the locks of every pod written."""
    conn = tx.conn
    try:
        async with conn.transaction():
            if receipts:
                claimed = await conn.fetch(
                    _RECEIVED_MANY,
                    [r.pod for r in receipts],
                    [r.sender for r in receipts],
                    [r.event_id for r in receipts],
                    [r.path for r in receipts],
                )
                if len(claimed) != len(receipts):
                    raise NotFresh("a duplicate")
            await create_fresh_in(tx, [*writes, *((r.pod, w) for r in receipts for w in r.writes)], now)
            await insert_deliveries(tx, [*deliveries, *(d for r in receipts for d in r.forwards)], now)
    except NotFresh:
        return False
    return True


async def _publish_alone(tx: Tx, p: Publish) -> list[bool]:
    # Creates lock each pod's tree until the commit. Taken in one order (by name) for every pod
    # this transaction writes, two publishes between the same pods in opposite directions cannot
    # deadlock.
    await tx.lock_pods(p.pods)
    now = time.time()
    if await _store_fresh(tx, p.receipts, now, [(p.pod, w) for w in p.writes], p.deliveries):
        return [True] * len(p.receipts)
    # Under a savepoint, so that a refusal changes nothing: the job may share its transaction
    # with others (``PostgresAccessor.batched``).
    async with tx.conn.transaction():
        for w in p.writes:
            await write_in(tx, p.pod, w)
        await insert_deliveries(tx, p.deliveries, now)
        return [await receive_in(tx, r, now) is None for r in p.receipts]


async def _publish_together(tx: Tx, parts: Sequence[Publish]) -> list[list[bool]] | None:
    """Publishes of one group commit all at once (``ldp.accessor.Together``), or None; their pods
    are locked already (``PostgresAccessor.batched``)."""
    writes, deliveries, receipts, stored = publishes(parts)
    return stored if await _store_fresh(tx, receipts, time.time(), writes, deliveries) else None


async def _together(tx: Tx, receipts: Sequence[Receipt], now: float) -> list[str | Exception | None] | None:
    """Apply ``receipts`` in ``tx`` under one savepoint; None, with nothing of them kept, if one fails."""
    try:
        async with tx.conn.transaction():
            return [await receive_in(tx, r, now) for r in receipts]
    except _AGAIN:
        raise
    except Exception:
        return None


async def _apart(tx: Tx, receipts: Sequence[Receipt], now: float) -> list[str | Exception | None]:
    """Apply ``receipts`` in ``tx`` under a savepoint each: a receipt that fails is undone alone,
    its error standing as its result."""
    results: list[str | Exception | None] = []
    for r in receipts:
        try:
            async with tx.conn.transaction():
                results.append(await receive_in(tx, r, now))
        except _AGAIN:
            raise
        except Exception as exc:
            results.append(exc)
    return results


class PostgresQueue:
    """DeliveryQueue on the PostgreSQL accessor's transactions."""

    def __init__(self, accessor: PostgresAccessor, lease: float = 60.0) -> None:
        self.accessor = accessor
        self.lease = lease

    async def open(self) -> None:
        """Nothing to do: the queue's tables are part of the accessor's schema."""

    async def commit(
        self,
        pod: str,
        writes: Sequence[Write],
        deliveries: Sequence[NewDelivery],
        receipts: Sequence[Receipt] = (),
    ) -> list[bool]:
        part = Publish(pod, writes, deliveries, receipts)
        stored: list[bool] = await self.accessor.batched(
            part.pods, Together(_publish_together, _publish_alone, part)
        )
        return stored

    async def receive_many(self, receipts: Sequence[Receipt]) -> list[str | Exception | None]:
        async def job(tx: Tx) -> list[str | Exception | None]:
            # Every pod's lock first, in one order, as ``commit`` takes them: two batches for the
            # same pods in another order cannot deadlock.
            await tx.lock_pods(r.pod for r in receipts)
            now = time.time()
            current: dict[str, str] = {}
            if pods := to_check(receipts):
                rows = await tx.conn.fetch(
                    "SELECT pod, version FROM resources WHERE path=$1 AND pod = ANY($2::text[])",
                    SUBSCRIPTIONS_PATH,
                    pods,
                )
                current = {str(row["pod"]): str(row["version"]) for row in rows}
            results: list[str | Exception | None] = list(outdated(receipts, current))
            todo = [i for i, result in enumerate(results) if result is None]
            if not todo:
                return results
            # All at once in a few statements first (the usual case); else one by one under one
            # savepoint; only if a receipt fails, each under its own (a round trip or two more per
            # receipt), so that the failure undoes that receipt alone.
            chosen = [receipts[i] for i in todo]
            if await _store_fresh(tx, chosen, now):
                return results  # each None: stored
            together = await _together(tx, chosen, now)
            applied = together if together is not None else await _apart(tx, chosen, now)
            for i, result in zip(todo, applied, strict=True):
                results[i] = result
            return results

        return await self.accessor.batched({r.pod for r in receipts}, job)

    async def claim(self, limit: int, now: float | None = None) -> list[Delivery]:
        at = time.time() if now is None else now
        # Rows another worker is claiming right now are locked: skipped, not waited for. Once that
        # claim commits, their lease keeps them out of every later claim.
        rows = await self.accessor.pool.fetch(
            f"UPDATE deliveries SET lease_until=$2 WHERE id IN ("
            "SELECT id FROM deliveries WHERE state='pending' AND next_attempt<=$1 AND lease_until<=$1"
            " ORDER BY next_attempt LIMIT $3 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_COLUMNS}",
            at,
            at + self.lease,
            limit,
        )
        return sorted((_row(r) for r in rows), key=lambda d: (d.next_attempt, d.id))

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        now = time.time()
        retries = [
            (i, error, next_attempt) for i, state, error, next_attempt in outcomes if state == "pending"
        ]
        done = [(i, state, error, now) for i, state, error, _ in outcomes if state != "pending"]

        async def job(tx: Tx) -> None:
            await tx.conn.executemany(
                "UPDATE deliveries SET attempts=attempts+1, next_attempt=$3, lease_until=0, last_error=$2"
                " WHERE id=$1",
                retries,
            )
            await tx.conn.executemany(
                "UPDATE deliveries SET state=$2, attempts=attempts+1, lease_until=0, last_error=$3,"
                " finished=$4 WHERE id=$1",
                done,
            )

        await self.accessor.batched((), job)

    async def release(self, ids: Sequence[int]) -> None:
        await self.accessor.pool.execute(
            "UPDATE deliveries SET lease_until=0 WHERE id = ANY($1::bigint[])", list(ids)
        )

    async def received_at(self, pod: str, sender: str, event_id: str) -> str | None:
        path = await self.accessor.pool.fetchval(_RECEIVED_AT, pod, sender, event_id)
        return None if path is None else str(path)

    async def for_event(self, event_id: str) -> list[Delivery]:
        rows = await self.accessor.pool.fetch(
            f"SELECT {_COLUMNS} FROM deliveries WHERE event_id=$1 ORDER BY id", event_id
        )
        return [_row(r) for r in rows]

    async def next_due(self) -> float | None:
        due = await self.accessor.pool.fetchval(
            "SELECT MIN(GREATEST(next_attempt, lease_until)) FROM deliveries WHERE state='pending'"
        )
        return None if due is None else float(due)

    async def depth(self) -> int:
        return int(await self.accessor.pool.fetchval("SELECT COUNT(*) FROM deliveries WHERE state='pending'"))

    async def pending_count(self, sender: str) -> int:
        count = await self.accessor.pool.fetchval(
            "SELECT COUNT(*) FROM deliveries WHERE state='pending' AND sender=$1", sender
        )
        return int(count)

    async def replay(self, sender: str | None, since: float, until: float, states: Sequence[str]) -> int:
        query = (
            "UPDATE deliveries SET state='pending', attempts=0, next_attempt=$1, lease_until=0,"
            " last_error='', finished=NULL WHERE created>=$2 AND created<$3 AND state = ANY($4::text[])"
        )
        params: list[object] = [time.time(), since, until, list(states)]
        if sender is not None:
            query += " AND sender=$5"
            params.append(sender)

        async def job(tx: Tx) -> int:
            status = await tx.conn.execute(query, *params)
            return int(status.split()[-1])

        return await self.accessor.transaction(job)
