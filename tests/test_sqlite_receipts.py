"""Receipts stored in a few statements leave exactly what storing them one by one leaves.

SQLite's ``receive_many_in`` (a batch from another server) and ``SqliteQueue.commit`` (a publish
with recipients on this server) first store everything at once (``_store_fresh``: one statement
for the ``received`` rows, one touching the containers, one inserting the documents, one for the
deliveries, with no look-ups), and undo that and go one by one when it does not apply: a
duplicate, a missing container, a path taken. These tests run the same receipts both ways on two
databases made alike and compare every row, and check that the short way is the one taken when it
applies and that each case it does not cover still gets its own answer.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ldp.accessor import Write
from ldp.names import new_name
from ldp.sqlite import SqliteAccessor, write_in
from pod.queue import NewDelivery, Outdated, Receipt
from pod.queue_sqlite import SqliteQueue, insert_deliveries, receive_in, receive_many_in
from tests.test_receipts import JSONLD, TOPIC, receipt

PODS = ("p1", "p2", "p3", "p4")


async def open_pods(path: Path, pods: Sequence[str], topic: bool = True) -> SqliteAccessor:
    accessor = SqliteAccessor(path)
    await accessor.open()
    for pod in pods:
        await accessor.create_pod(pod, [])
        await accessor.write(pod, Write("/inbox/", "text/turtle", b""))
        await accessor.write(pod, Write("/publish/", "text/turtle", b""))
        if topic:
            await accessor.write(pod, Write(TOPIC, "text/turtle", b""))
    return accessor


@pytest.fixture
async def twins(tmp_path: Path) -> AsyncIterator[tuple[SqliteAccessor, SqliteAccessor]]:
    """Two databases with the same pods, each with an inbox and the topic container."""
    first = await open_pods(tmp_path / "wave.sqlite3", PODS)
    second = await open_pods(tmp_path / "single.sqlite3", PODS)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def wave(
    accessor: SqliteAccessor, receipts: Sequence[Receipt]
) -> tuple[list[str | Exception | None], list[str]]:
    """``receive_many_in`` in one job: its results, and the statements it ran."""
    statements: list[str] = []

    def job(conn: sqlite3.Connection) -> list[str | Exception | None]:
        conn.set_trace_callback(statements.append)
        try:
            return receive_many_in(conn, receipts, time.time())
        finally:
            conn.set_trace_callback(None)

    results: list[str | Exception | None] = await accessor.run_job(job)
    return results, statements


async def one_by_one(accessor: SqliteAccessor, receipts: Sequence[Receipt]) -> list[str | None]:
    def job(conn: sqlite3.Connection) -> list[str | None]:
        return [receive_in(conn, r, time.time()) for r in receipts]

    result: list[str | None] = await accessor.run_job(job)
    return result


def rows(accessor: SqliteAccessor) -> dict[str, set[tuple[Any, ...]]]:
    """Everything a receipt writes, but what is drawn at random (versions), row numbers and times."""
    conn = sqlite3.connect(accessor.path)
    try:
        return {
            "resources": set(conn.execute("SELECT pod, path, parent, content_type, body FROM resources")),
            "received": set(conn.execute("SELECT pod, sender, event_id, path FROM received")),
            "deliveries": set(
                conn.execute("SELECT event_id, sender, kind, recipient, payload, state FROM deliveries")
            ),
        }
    finally:
        conn.close()


def versions(accessor: SqliteAccessor) -> dict[tuple[str, str], str]:
    conn = sqlite3.connect(accessor.path)
    try:
        return {
            (pod, path): version
            for pod, path, version in conn.execute("SELECT pod, path, version FROM resources")
        }
    finally:
        conn.close()


def looked_up(statements: list[str]) -> list[str]:
    """The statements that looked a resource up by path (what the one-by-one way runs per write)."""
    return [s for s in statements if re.match(r"SELECT path, version, id FROM resources", s)]


async def test_a_wave_is_stored_in_a_few_statements_as_one_by_one_would_store_it(
    twins: tuple[SqliteAccessor, SqliteAccessor],
) -> None:
    fast, slow = twins
    event = "https://a.example/hub/publish/" + new_name()
    receipts = [receipt(pod, event, i, forwards=i % 3) for i, pod in enumerate(PODS)]
    before = versions(fast)
    started = time.time()

    results, statements = await wave(fast, receipts)
    assert results == [None] * len(receipts)
    assert await one_by_one(slow, receipts) == [None] * len(receipts)

    assert rows(fast) == rows(slow)
    assert not looked_up(statements), "the wave took the one-by-one way"
    after = versions(fast)
    for pod in PODS:
        for container in ("/inbox/", TOPIC):
            assert after[(pod, container)] != before[(pod, container)], f"{pod} {container} was not touched"
    new = [after[(r.pod, w.path)] for r in receipts for w in r.writes]
    assert all(re.fullmatch("[0-9a-f]{16}", v) for v in new), new
    assert len(set(new)) == len(new)
    # What the accessor reads afterwards is what was written (its read cache follows the commit).
    record = await fast.get("p2", receipts[1].writes[1].path)
    assert record is not None and record.body == b'{"n": 1, "link": true}'
    assert receipts[1].writes[1].path in await fast.children("p2", TOPIC)
    assert started <= record.modified <= time.time()


@pytest.mark.parametrize(
    "case",
    [
        "duplicate of an earlier event",
        "same event twice in the wave",
        "missing topic container",
        "path taken",
    ],
)
async def test_what_the_wave_does_not_cover_is_answered_one_by_one(
    case: str, twins: tuple[SqliteAccessor, SqliteAccessor]
) -> None:
    fast, slow = twins
    event = "https://a.example/hub/publish/" + new_name()
    receipts = [receipt(pod, event, i) for i, pod in enumerate(PODS)]
    expected: list[str | None] = [None] * len(receipts)
    prepare: Callable[[SqliteAccessor], Any] | None = None
    if case == "duplicate of an earlier event":
        earlier = receipt("p3", event, 99)
        for accessor in twins:
            assert (await wave(accessor, [earlier]))[0] == [None]
        expected[2] = earlier.path
    elif case == "same event twice in the wave":
        receipts.append(receipt("p1", event, 7))
        expected.append(receipts[0].path)
    elif case == "missing topic container":

        async def prepare(accessor: SqliteAccessor) -> None:
            await accessor.create_pod("p5", [])

        receipts.append(receipt("p5", event, 5))
        expected.append(None)
    else:  # a document already where a copy goes: replaced, as receive_in's write does

        async def prepare(accessor: SqliteAccessor) -> None:
            await accessor.write("p4", Write(receipts[3].path, "text/plain", b"here first"))

    for accessor in twins:
        if prepare is not None:
            await prepare(accessor)

    results, statements = await wave(fast, receipts)
    assert looked_up(statements), "the wave should have gone one by one"
    assert results == expected
    assert await one_by_one(slow, receipts) == expected
    assert rows(fast) == rows(slow)


async def test_a_receipt_whose_subscriptions_changed_is_refused_and_the_others_stored(
    twins: tuple[SqliteAccessor, SqliteAccessor],
) -> None:
    fast, slow = twins
    event = "https://a.example/hub/publish/" + new_name()
    receipts = [receipt(pod, event, i, subscriptions=None) for i, pod in enumerate(PODS)]
    stale = receipt("p2", "https://a.example/hub/publish/" + new_name(), 9, subscriptions="0123456789abcdef")
    results, statements = await wave(fast, [*receipts, stale])
    assert results[:-1] == [None] * len(receipts)
    assert isinstance(results[-1], Outdated)
    assert not looked_up(statements)
    await one_by_one(slow, receipts)
    assert rows(fast) == rows(slow)


@pytest.mark.parametrize("complete", [True, False], ids=["containers there", "a topic container missing"])
async def test_a_publish_with_local_recipients_is_stored_as_one_by_one_would_store_it(
    complete: bool, twins: tuple[SqliteAccessor, SqliteAccessor]
) -> None:
    """``SqliteQueue.commit``: the event in the publisher's /publish/, its deliveries, and the
    recipients' receipts."""
    fast, slow = twins
    if not complete:
        for accessor in twins:
            await accessor.create_pod("p5", [])
    name = new_name()
    event = "https://a.example/p1/publish/" + name
    writes = [Write("/publish/" + name, JSONLD, b'{"event": 1}')]
    recipients = ["p2", "p3"] if complete else ["p2", "p5"]
    receipts = [receipt(pod, event, i) for i, pod in enumerate(recipients)]
    deliveries = [
        NewDelivery(event, "p1", "inbox", f"https://x.example/{pod}/profile/card#me", b"{}", delivered=True)
        for pod in recipients
    ]
    statements: list[str] = []
    await fast.run_job(lambda conn: conn.set_trace_callback(statements.append))
    try:
        assert await SqliteQueue(fast).commit("p1", writes, deliveries, receipts) == [True, True]
    finally:
        await fast.run_job(lambda conn: conn.set_trace_callback(None))

    def job(conn: sqlite3.Connection) -> None:
        write_in(conn, "p1", writes[0])
        insert_deliveries(conn, deliveries, time.time())
        assert [receive_in(conn, r, time.time()) for r in receipts] == [None, None]

    await slow.run_job(job)
    assert rows(fast) == rows(slow)
    assert bool(looked_up(statements)) is not complete
