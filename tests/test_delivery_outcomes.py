"""The delivery worker records the outcomes settled in one turn of the event loop in one write
(a batch answer settles up to a hundred deliveries at once), on a real SQLite queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from acl.documents import Documents
from ldp.identifiers import PodLocator
from ldp.sqlite import SqliteAccessor
from pod.delivery import DeliveryWorker
from pod.outbound import OutboundClient
from pod.queue import NewDelivery, Outcome
from pod.queue_sqlite import SqliteQueue


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
