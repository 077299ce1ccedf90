"""Full garbage collections at quiet moments (``pod.collector``), with the interpreter's real collector."""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pod.app import create_app
from pod.collector import DEFERRED, WORTH_IT, QuietCollector
from pod.state import COLLECTOR
from tests.conftest import make_config


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)  # whatever a failing test left


def age_into_oldest_generation() -> None:
    """What a busy server does between full collections: middle-generation collections."""
    for _ in range(WORTH_IT):
        gc.collect(1)


async def test_full_collections_wait_for_a_quiet_moment(thresholds: tuple[int, int, int]) -> None:
    busy = itertools.count()
    active = True

    def activity() -> int:
        return next(busy) if active else 0

    collector = QuietCollector(activity, quiet=0.02, min_interval=0.0, max_interval=3600.0)
    collector.start()
    try:
        assert gc.get_threshold() == (thresholds[0], thresholds[1], DEFERRED)
        assert gc.get_freeze_count() > 0  # the startup heap is out of the collector's sight
        age_into_oldest_generation()
        await asyncio.sleep(0.2)
        assert collector.collections == 0  # work went on all the time
        active = False
        await asyncio.sleep(0.2)
        assert collector.collections == 1
        assert gc.get_count()[2] == 0
        await asyncio.sleep(0.1)
        assert collector.collections == 1  # nothing new reached the oldest generation
    finally:
        await collector.stop()
    assert gc.get_threshold() == thresholds


async def test_constant_work_still_gets_a_full_collection_after_max_interval() -> None:
    busy = itertools.count()
    collector = QuietCollector(lambda: next(busy), quiet=0.02, min_interval=0.0, max_interval=0.15)
    collector.start()
    try:
        age_into_oldest_generation()
        await asyncio.sleep(0.05)
        assert collector.collections == 0
        await asyncio.sleep(0.3)
        assert collector.collections == 1
        assert collector.pause_seconds > 0
    finally:
        await collector.stop()


async def test_cycles_among_survivors_are_freed() -> None:
    """Deferring full collections must not leak: a cycle that aged into the oldest generation
    before it became garbage is freed by the collector's next full collection."""
    collector = QuietCollector(lambda: 0, quiet=0.02, min_interval=0.0, max_interval=3600.0)
    collector.start()
    try:

        class Node:
            other: Node

        a, b = Node(), Node()
        a.other, b.other = b, a
        age_into_oldest_generation()
        assert gc.is_tracked(a)
        alive = {id(a), id(b)}
        del a, b
        await asyncio.sleep(0.2)
        assert collector.collections >= 1
        assert not any(id(o) in alive and isinstance(o, Node) for o in gc.get_objects())
    finally:
        await collector.stop()


async def test_the_server_runs_one_and_gives_the_thresholds_back(
    tmp_path: Path, thresholds: tuple[int, int, int]
) -> None:
    app = create_app(make_config(tmp_path, database=""))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert isinstance(app[COLLECTOR], QuietCollector)
        assert gc.get_threshold()[2] == DEFERRED
        response = await client.get("/.health")
        assert response.status == 200
        assert app[COLLECTOR].activity() >= 1  # answered requests count as activity
    finally:
        await client.close()
    assert gc.get_threshold() == thresholds
