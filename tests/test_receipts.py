"""On each backend, receipts and publishes are stored all at once when they can be, one by one when not.

``DeliveryQueue.receive_many`` (a batch from another server) and ``DeliveryQueue.commit`` (a publish
with recipients on this server) store new documents at fresh names in containers that exist: each
backend first writes all of them in a few statements (``create_fresh_in``), and goes back to its
one-by-one ``write_in`` when that does not apply. These tests check, through the queue and the
accessor, that the short way is taken when it applies and stores every copy, link, forward and
container change, and that a duplicate or a missing container is still answered as before.
Publishes arriving together go in one ``create_fresh_in`` for all (``ldp.accessor.Together``);
when one of them cannot, each goes its own way.
(``tests/test_sqlite_receipts.py`` compares SQLite's rows both ways, row for row.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ldp.accessor import Write
from ldp.names import new_name
from pod import queue_postgres, queue_sqlite
from pod.backend import Backend, open_backend
from pod.queue import NewDelivery, Receipt
from tests.conftest import make_config, spy
from tests.databases import Databases

SENDER = "https://a.example/hub/profile/card#me"
TOPIC = "/event/topic/realestate/contact/"
PODS = ("p1", "p2", "p3")
JSONLD = "application/ld+json"


@pytest.fixture
async def opened(backend: Databases, tmp_path: Path) -> AsyncIterator[Backend]:
    """The configured backend with pods p1..p3, each with an inbox, /publish/ and the topic container."""
    result = await open_backend(make_config(tmp_path, demo_pod=""))
    for pod in PODS:
        await result.accessor.create_pod(pod, [])
        for container in ("/inbox/", "/publish/", TOPIC):
            await result.accessor.write(pod, Write(container, "text/turtle", b""))
    try:
        yield result
    finally:
        await result.close()


@pytest.fixture
def one_by_one(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths each backend's queue wrote one by one (``write_in``) rather than all at once."""
    written: list[str] = []
    spy(monkeypatch, (queue_sqlite, queue_postgres), "write_in", lambda tx, pod, w: written.append(w.path))
    return written


def receipt(pod: str, event_id: str, n: int, forwards: int = 0, subscriptions: str | None = None) -> Receipt:
    """A receipt as ``Inbox.receipt`` makes them: a copy and a topic link at a fresh name."""
    name = new_name()
    return Receipt(
        pod,
        SENDER,
        event_id,
        "/inbox/" + name,
        (
            Write("/inbox/" + name, JSONLD, b'{"n": %d, "copy": true}' % n),
            Write(TOPIC + name, JSONLD, b'{"n": %d, "link": true}' % n),
        ),
        tuple(
            NewDelivery(event_id, pod, "inbox", f"https://s{k}.example/profile/card#me", b'{"n": %d}' % n)
            for k in range(forwards)
        ),
        subscriptions,
    )


async def versions(
    opened: Backend, containers: tuple[str, ...] = ("/inbox/", TOPIC)
) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for pod in PODS:
        for container in containers:
            record = await opened.accessor.get(pod, container)
            assert record is not None
            found[(pod, container)] = record.version
    return found


async def assert_stored(opened: Backend, r: Receipt) -> None:
    for w in r.writes:
        record = await opened.accessor.get(r.pod, w.path)
        assert record is not None, f"{r.pod} {w.path} missing"
        assert (record.content_type, record.body) == (w.content_type, w.body)
        container = w.path[: w.path.rindex("/") + 1]
        assert w.path in await opened.accessor.children(r.pod, container)


async def test_a_wave_of_receipts_is_stored_at_once_with_its_forwards(
    opened: Backend, one_by_one: list[str]
) -> None:
    event = "https://a.example/hub/publish/" + new_name()
    receipts = [receipt(pod, event, i, forwards=i) for i, pod in enumerate(PODS)]
    before = await versions(opened)
    assert await opened.queue.receive_many(receipts) == [None, None, None]
    assert one_by_one == [], "the wave was written one by one"
    for r in receipts:
        await assert_stored(opened, r)
    after = await versions(opened)
    assert all(after[key] != before[key] for key in before), "a container's version did not change"
    forwards = await opened.queue.for_event(event)
    assert sorted((d.sender, d.recipient) for d in forwards) == sorted(
        (r.pod, d.recipient) for r in receipts for d in r.forwards
    )

    # The same event again (as a sender retrying would send it): each pod answers with its copy.
    again = [receipt(pod, event, 9) for pod in PODS]
    assert await opened.queue.receive_many(again) == [r.path for r in receipts]
    for r in again:
        assert await opened.accessor.get(r.pod, r.path) is None


async def test_a_wave_with_a_pod_lacking_the_topic_container_is_stored_one_by_one(
    opened: Backend, one_by_one: list[str]
) -> None:
    await opened.accessor.create_pod("p4", [])
    event = "https://a.example/hub/publish/" + new_name()
    receipts = [receipt(pod, event, i) for i, pod in enumerate((*PODS, "p4"))]
    assert await opened.queue.receive_many(receipts) == [None] * 4
    assert one_by_one, "the missing containers need the one-by-one way"
    for r in receipts:
        await assert_stored(opened, r)
    assert await opened.accessor.get("p4", TOPIC) is not None


async def test_the_same_event_twice_in_a_wave_is_stored_once(opened: Backend, one_by_one: list[str]) -> None:
    event = "https://a.example/hub/publish/" + new_name()
    first, second = receipt("p1", event, 1), receipt("p1", event, 2)
    assert await opened.queue.receive_many([first, second]) == [None, first.path]
    await assert_stored(opened, first)
    assert await opened.accessor.get("p1", second.path) is None


async def test_a_publish_with_local_recipients_is_stored_at_once(
    opened: Backend, one_by_one: list[str]
) -> None:
    name = new_name()
    event = "https://a.example/p1/publish/" + name
    published = Write("/publish/" + name, JSONLD, b'{"event": 1}')
    receipts = [receipt(pod, event, i, forwards=1) for i, pod in enumerate(PODS[1:])]
    deliveries = [
        NewDelivery(event, "p1", "inbox", f"https://x.example/{r.pod}/profile/card#me", b"{}", delivered=True)
        for r in receipts
    ]
    before = await versions(opened, ("/publish/",))
    assert await opened.queue.commit("p1", [published], deliveries, receipts) == [True, True]
    assert one_by_one == []
    record = await opened.accessor.get("p1", published.path)
    assert record is not None and record.body == published.body
    assert (await versions(opened, ("/publish/",)))[("p1", "/publish/")] != before[("p1", "/publish/")]
    for r in receipts:
        await assert_stored(opened, r)
    states = sorted((d.recipient, d.state) for d in await opened.queue.for_event(event))
    assert states == sorted(
        [(d.recipient, "delivered") for d in deliveries]
        + [(d.recipient, "pending") for r in receipts for d in r.forwards]
    )


@pytest.fixture
def fresh_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many documents each call of a backend's ``create_fresh_in`` was given."""
    calls: list[int] = []
    spy(
        monkeypatch,
        (queue_sqlite, queue_postgres),
        "create_fresh_in",
        lambda _, items, *rest: calls.append(len(items)),
    )
    return calls


def a_publish(opened: Backend, pod: str, recipients: tuple[str, ...]) -> tuple[Any, Write, list[Receipt]]:
    """``DeliveryQueue.commit`` of one event of ``pod`` with a local copy for each recipient pod."""
    name = new_name()
    event = f"https://a.example/{pod}/publish/{name}"
    published = Write("/publish/" + name, JSONLD, b'{"event": "%s"}' % name.encode())
    receipts = [receipt(r, event, i) for i, r in enumerate(recipients)]
    deliveries = [
        NewDelivery(event, pod, "inbox", f"https://x.example/{r}/profile/card#me", b"{}", delivered=True)
        for r in recipients
    ]
    return opened.queue.commit(pod, [published], deliveries, receipts), published, receipts


async def test_publishes_arriving_together_are_stored_in_one_go(
    opened: Backend, fresh_calls: list[int], one_by_one: list[str]
) -> None:
    made = [a_publish(opened, pod, tuple(p for p in PODS if p != pod)) for pod in PODS]
    results = await asyncio.gather(*(commit for commit, _, _ in made))
    assert results == [[True, True]] * 3
    assert fresh_calls == [3 * (1 + 2 * 2)], "the publishes were not stored in one go"
    assert one_by_one == []
    for pod, (_, published, receipts) in zip(PODS, made, strict=True):
        record = await opened.accessor.get(pod, published.path)
        assert record is not None and record.body == published.body
        for r in receipts:
            await assert_stored(opened, r)


async def test_one_publish_that_cannot_go_with_the_others_sends_each_its_own_way(
    opened: Backend, fresh_calls: list[int], one_by_one: list[str]
) -> None:
    await opened.accessor.create_pod("p4", [])  # no inbox, no topic container
    for container in ("/publish/",):
        await opened.accessor.write("p4", Write(container, "text/turtle", b""))
    made = [
        a_publish(opened, "p1", ("p2",)),
        a_publish(opened, "p2", ("p4",)),
        a_publish(opened, "p3", ("p1",)),
    ]
    results = await asyncio.gather(*(commit for commit, _, _ in made))
    assert results == [[True]] * 3
    # once all together (refused: p4 lacks its containers), then each alone; only p4's copy and
    # link, and the event beside it, took the one-by-one way
    assert fresh_calls[0] == 3 * 3
    _, beside, refused = made[1]
    assert sorted(one_by_one) == sorted([beside.path, *(w.path for w in refused[0].writes)])
    for pod, (_, published, receipts) in zip(("p1", "p2", "p3"), made, strict=True):
        record = await opened.accessor.get(pod, published.path)
        assert record is not None and record.body == published.body
        for r in receipts:
            await assert_stored(opened, r)
