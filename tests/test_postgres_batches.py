"""PostgreSQL's group commit: writes arriving together share one transaction and keep their rules.

``PostgresAccessor.batched`` runs the jobs queued while a commit is under way in one transaction,
their pods locked first in name order. A refused job leaves the others; a database error in one
sends every job of the batch to a transaction of its own; two processes batching writes to the
same pods in opposite orders do not deadlock; a publish whose local copy is refused after its
first change keeps nothing of it while the publish beside it in the batch is stored; a COMMIT
that fails fails every job of it, none run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ldp.accessor import ABSENT, VersionMismatch, Write
from ldp.errors import Conflict, NotFound
from ldp.postgres import PostgresAccessor, Tx
from pod.backend import Backend, open_backend
from pod.queue import NewDelivery
from tests.conftest import make_config
from tests.databases import Databases
from tests.test_receipts import TOPIC, receipt

pytestmark = pytest.mark.backends("postgresql")
TXT = "text/plain"


@pytest.fixture
async def opened(backend: Databases, tmp_path: Path) -> AsyncIterator[Backend]:
    result = await open_backend(make_config(tmp_path, demo_pod=""))
    assert isinstance(result.accessor, PostgresAccessor)
    for pod in ("p", "q"):
        await result.accessor.create_pod(pod, [])
    try:
        yield result
    finally:
        await result.close()


def commits(accessor: PostgresAccessor) -> list[tuple[int, str]]:
    """Each group commit's size and outcome ("ok", or the error that sent its jobs one by one)."""
    seen: list[tuple[int, str]] = []
    original = accessor._group_commit

    async def counted(batch: Any) -> list[object]:
        try:
            results = await original(batch)
        except Exception as exc:
            seen.append((len(batch), type(exc).__name__))
            raise
        seen.append((len(batch), "ok"))
        return results

    accessor._group_commit = counted  # type: ignore[method-assign]
    return seen


async def arrivals(accessor: PostgresAccessor, pod: str, container: str) -> list[str]:
    rows = await accessor.pool.fetch(
        "SELECT path FROM resources WHERE pod=$1 AND parent=$2 ORDER BY id", pod, container
    )
    return [str(r["path"]) for r in rows]


async def test_writes_arriving_together_share_one_commit_and_fail_alone(opened: Backend) -> None:
    accessor = opened.accessor
    assert isinstance(accessor, PostgresAccessor)
    old, _ = await accessor.write("p", Write("/b/old", TXT, b"old"))
    await accessor.write("p", Write("/b/dir/", "text/turtle", b""))
    container = await accessor.get("p", "/b/")
    assert container is not None
    seen = commits(accessor)
    results = await asyncio.gather(
        accessor.write("p", Write("/b/1", TXT, b"1")),
        accessor.write("p", Write("/b/old", TXT, b"x", "0000")),  # stale version
        accessor.write("p", Write("/b/old", TXT, b"x", ABSENT)),  # exists
        accessor.write("p", Write("/b/dir", TXT, b"")),  # a container of that name
        accessor.write("nobody", Write("/x", TXT, b"")),  # no such pod
        accessor.delete("p", "/b/gone"),
        accessor.delete("p", "/b/"),  # not empty
        accessor.write("q", Write("/b/2", TXT, b"2")),
        accessor.write("p", Write("/b/3", TXT, b"3")),
        accessor.write("p", Write("/b/old", TXT, b"new", old.version)),
        return_exceptions=True,
    )
    assert seen == [(len(results), "ok")], "the writes did not share one transaction"
    kinds = [type(r) for r in results[1:7]]
    assert kinds == [VersionMismatch, VersionMismatch, Conflict, NotFound, NotFound, Conflict]
    assert all(isinstance(r, tuple) for r in (results[0], *results[7:]))
    assert await arrivals(accessor, "p", "/b/") == ["/b/old", "/b/dir/", "/b/1", "/b/3"]
    assert await accessor.children("q", "/b/") == ["/b/2"]
    record = await accessor.get("p", "/b/old")
    assert record is not None and record.body == b"new"
    after = await accessor.get("p", "/b/")
    assert after is not None and after.version != container.version
    # The next write, alone, is answered by a transaction of its own.
    await accessor.write("p", Write("/b/4", TXT, b"4"))
    assert seen == [(len(results), "ok")]


async def test_a_database_error_sends_each_job_to_its_own_transaction(opened: Backend) -> None:
    accessor = opened.accessor
    assert isinstance(accessor, PostgresAccessor)
    seen = commits(accessor)

    async def broken(tx: Tx) -> None:
        await tx.conn.execute("INSERT INTO resources(pod) VALUES ('p')")  # NOT NULL violated

    results = await asyncio.gather(
        accessor.write("p", Write("/e/1", TXT, b"1")),
        accessor.batched(("p",), broken),
        accessor.write("q", Write("/e/2", TXT, b"2")),
        return_exceptions=True,
    )
    assert seen == [(3, "NotNullViolationError")]
    assert isinstance(results[1], asyncpg.NotNullViolationError)
    assert isinstance(results[0], tuple) and isinstance(results[2], tuple)
    assert await accessor.children("p", "/e/") == ["/e/1"]
    assert await accessor.children("q", "/e/") == ["/e/2"]


async def test_two_processes_batching_opposite_orders_do_not_deadlock(
    opened: Backend, backend: Databases, tmp_path: Path
) -> None:
    """Each group commit locks its pods in one order, whatever order its jobs came in."""
    first = opened.accessor
    assert isinstance(first, PostgresAccessor)
    second = PostgresAccessor(make_config(tmp_path, demo_pod="").database)
    await second.open()
    pods = [f"d{i}" for i in range(6)]
    try:
        for pod in pods:
            await first.create_pod(pod, [])
        first_seen, second_seen = commits(first), commits(second)

        async def wave(accessor: PostgresAccessor, order: list[str], n: int) -> list[Any]:
            return await asyncio.gather(
                *(accessor.write(pod, Write(f"/w/{n}-{pod}", TXT, b"")) for pod in order)
            )

        for n in range(10):
            await asyncio.gather(wave(first, pods, n), wave(second, pods[::-1], n))
        for pod in pods:
            assert len(await first.children(pod, "/w/")) == 10
        failed = [outcome for _, outcome in first_seen + second_seen if outcome != "ok"]
        assert failed == [], "a group commit failed (deadlock?) and its jobs went one by one"
        assert sum(size for size, _ in first_seen) == sum(size for size, _ in second_seen) == 60
    finally:
        await second.close()


async def test_a_refused_publish_keeps_nothing_beside_a_stored_one(opened: Backend) -> None:
    """``DeliveryQueue.commit`` refuses only under its savepoint: in a shared transaction its
    event's document, written before the refusal, is undone with it."""
    accessor = opened.accessor
    assert isinstance(accessor, PostgresAccessor)
    for pod in ("p", "q"):
        for container in ("/inbox/", "/publish/"):
            await accessor.write(pod, Write(container, "text/turtle", b""))
    await accessor.write("p", Write(TOPIC, "text/turtle", b""))
    await accessor.write("q", Write(TOPIC.rstrip("/"), TXT, b""))  # a document where the container goes
    seen = commits(accessor)
    event_p, event_q = "https://a.example/publish/e1", "https://a.example/publish/e2"

    def publish(event: str, pod: str) -> Any:
        return opened.queue.commit(
            "p",
            [Write("/publish/" + event[-2:], "application/ld+json", b"{}")],
            [NewDelivery(event, "p", "inbox", "https://x.example/#me", b"{}", delivered=True)],
            [receipt(pod, event, 0)],
        )

    results = await asyncio.gather(publish(event_p, "p"), publish(event_q, "q"), return_exceptions=True)
    assert seen == [(2, "ok")]
    assert results[0] == [True]
    assert isinstance(results[1], Conflict), results[1]
    assert await accessor.children("p", "/publish/") == ["/publish/e1"]
    assert await opened.queue.for_event(event_q) == []
    assert len(await opened.queue.for_event(event_p)) == 1
    assert await accessor.children("q", "/inbox/") == []


async def test_a_failed_commit_fails_every_job_and_runs_none_again(opened: Backend) -> None:
    """Whether a COMMIT that failed took effect is not known to the client in general, so its jobs
    are answered with the error and not run again (here the commit's own check refuses it)."""
    accessor = opened.accessor
    assert isinstance(accessor, PostgresAccessor)
    seen = commits(accessor)
    runs: list[str] = []

    async def refused_at_commit(tx: Tx) -> None:
        runs.append("deferred")
        await tx.conn.execute(
            "CREATE TEMP TABLE once (x int UNIQUE DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP;"
            " INSERT INTO once VALUES (1), (1)"
        )

    results = await asyncio.gather(
        accessor.write("p", Write("/f/1", TXT, b"1")),
        accessor.batched(("q",), refused_at_commit),
        return_exceptions=True,
    )
    assert seen == [(2, "_CommitFailed")]
    assert all(isinstance(r, asyncpg.UniqueViolationError) for r in results), results
    assert runs == ["deferred"], "a job of the failed commit ran again"
    assert await accessor.get("p", "/f/1") is None
