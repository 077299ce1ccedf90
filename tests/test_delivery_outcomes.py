"""The delivery worker records the outcomes settled in one turn of the event loop in one write
(a batch answer settles up to a hundred deliveries at once), on a real SQLite queue."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import rdflib

from acl.documents import Documents
from ldp.identifiers import PodLocator
from ldp.sqlite import SqliteAccessor
from pod.delivery import DeliveryWorker
from pod.outbound import OutboundClient
from pod.queue import NewDelivery, Outcome
from pod.queue_sqlite import SqliteQueue

LDP_INBOX = "http://www.w3.org/ns/ldp#inbox"


class CountingQueue(SqliteQueue):
    def __init__(self, accessor: SqliteAccessor) -> None:
        super().__init__(accessor)
        self.writes: list[int] = []
        self.fail = False

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        self.writes.append(len(outcomes))
        if self.fail:
            raise RuntimeError("disk on fire")
        await super().finish(outcomes)


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[CountingQueue]:
    accessor = SqliteAccessor(tmp_path / "pod.sqlite3")
    await accessor.open()
    try:
        yield CountingQueue(accessor)
    finally:
        await accessor.close()


def worker_for(queue: CountingQueue) -> DeliveryWorker:
    async def unused(*_: Any) -> Any:
        raise AssertionError("not called")

    documents, outbound = cast(Documents, None), cast(OutboundClient, None)
    return DeliveryWorker(queue, PodLocator("http://pod.test/"), documents, outbound, unused, unused)


async def test_outcomes_settled_together_are_one_write(queue: CountingQueue) -> None:
    deliveries = [
        NewDelivery(f"http://pod.test/a/publish/{i}", "a", "inbox", f"http://x.test/{i}#me", b"{}")
        for i in range(150)
    ]
    await queue.commit("a", [], deliveries)
    claimed = await queue.claim(150)
    worker = worker_for(queue)
    outcomes: list[tuple[int, str, str, float | None]] = [
        (d.id, "delivered", "", None) if d.id % 3 else (d.id, "failed", "HTTP 403: no", None) for d in claimed
    ]
    await asyncio.gather(*(worker._record(o) for o in outcomes[:100]))
    await asyncio.gather(*(worker._record(o) for o in outcomes[100:]))
    assert queue.writes == [100, 50]
    states = {d.id: (d.state, d.last_error) for e in deliveries for d in await queue.for_event(e.event_id)}
    assert states == {i: ("delivered", "") if i % 3 else ("failed", "HTTP 403: no") for i, *_ in outcomes}


async def test_a_failed_write_fails_every_delivery_in_it(queue: CountingQueue) -> None:
    worker = worker_for(queue)
    queue.fail = True
    results = await asyncio.gather(
        *(worker._record((i, "delivered", "", None)) for i in range(5)), return_exceptions=True
    )
    assert queue.writes == [5]
    assert all(isinstance(r, RuntimeError) for r in results)
    queue.fail = False
    await worker._record((1, "delivered", "", None))  # the next turn writes again
    assert queue.writes == [5, 1]


async def test_remembered_inboxes_do_not_keep_profiles_alive(queue: CountingQueue) -> None:
    """The inbox found in a profile is remembered while the documents cache holds that profile,
    and only then: the worker must not keep graphs the cache has let go."""
    webid = "https://bob.example/profile#me"

    class OneProfile:
        graph: rdflib.Graph | None = None

        async def graph_of(self, url: str) -> rdflib.Graph:
            if self.graph is None:
                self.graph = rdflib.Graph()
                self.graph.parse(
                    data=f"<{webid}> <{LDP_INBOX}> <https://bob.example/inbox/> .", format="turtle"
                )
            return self.graph

    profiles = OneProfile()
    worker = worker_for(queue)
    worker.documents = cast(Documents, type("D", (), {"graph": staticmethod(profiles.graph_of)})())
    assert await worker._discover_inbox(webid) == "https://bob.example/inbox/"
    first = weakref.ref(profiles.graph)
    assert await worker._discover_inbox(webid) == "https://bob.example/inbox/"  # remembered
    profiles.graph = None  # the cache let the profile go
    gc.collect()
    assert first() is None
    assert await worker._discover_inbox(webid) == "https://bob.example/inbox/"  # found again


async def test_a_fan_out_leaving_in_batches_is_claimed_in_large_rounds(
    queue: CountingQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once everything a claim took has joined batches, the next claims take up to ``batch_claim``
    each, round after round: the worker waits for a claim's deliveries to finish joining rather
    than claiming the slots the first of them free. A fan-out of 700 whose deliveries join over a
    few turns of the loop is claimed as 64 (``concurrency``), then 256 at a time."""
    claims: list[int] = []
    original = queue.claim

    async def counting(limit: int, now: float | None = None) -> Any:
        taken = await original(limit, now)
        if taken:
            claims.append(len(taken))
        return taken

    monkeypatch.setattr(queue, "claim", counting)
    event = "http://pod.test/a/publish/e"
    await queue.commit(
        "a", [], [NewDelivery(event, "a", "inbox", f"https://s{i}.test/#me", b"{}") for i in range(700)]
    )
    worker = worker_for(queue)
    answered = asyncio.Event()
    joined = 0

    async def into_a_batch(delivery: Any, batched: Any = None) -> None:
        nonlocal joined
        # Deliveries join their batches over a few turns of the loop (finding the inbox and key,
        # the batch being formed), so the worker looks for room before all of them have.
        for _ in range(delivery.id % 4):
            await asyncio.sleep(0)
        batched()
        joined += 1
        await answered.wait()  # the receiver works on the batch

    monkeypatch.setattr(worker, "_inbox", into_a_batch)
    worker.start()
    try:
        async with asyncio.timeout(10):
            while joined < 700:
                await asyncio.sleep(0.01)
        assert claims == [64, 256, 256, 124]
    finally:
        answered.set()
        await worker.stop()
    assert {d.state for d in await queue.for_event(event)} == {"delivered"}
