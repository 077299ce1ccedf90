"""The SQLite accessor's read cache: what it serves from memory is never older than the database.

Two accessors on one file stand for two server processes (or the CLI beside a server): a commit
through either must be seen by the other's next read, whatever it had cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from acl.apikeys import ApiKey
from ldp.accessor import Write
from ldp.readcache import MISS, ReadCache
from ldp.sqlite import SqliteAccessor

TTL = "text/turtle"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteAccessor, SqliteAccessor]]:
    first, second = SqliteAccessor(tmp_path / "pod.sqlite3"), SqliteAccessor(tmp_path / "pod.sqlite3")
    await first.open()
    await second.open()
    await first.create_pod("p", [])
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def _read_twice(accessor: SqliteAccessor, path: str) -> bytes | None:
    """Read, then read again from a later loop pass, so the second answer comes from the cache."""
    await accessor.get("p", path)
    await asyncio.sleep(0)
    hits = accessor.cache.hits
    record = await accessor.get("p", path)
    assert accessor.cache.hits == hits + 1, "the repeated read was not served from the cache"
    return None if record is None else record.body


async def test_a_write_through_another_connection_is_seen_at_once(
    pair: tuple[SqliteAccessor, SqliteAccessor],
) -> None:
    reader, writer = pair
    await writer.write("p", Write("/r.ttl", TTL, b"<#a> <#b> 1 ."))
    assert await _read_twice(reader, "/r.ttl") == b"<#a> <#b> 1 ."
    await writer.write("p", Write("/r.ttl", TTL, b"<#a> <#b> 2 ."))
    record = await reader.get("p", "/r.ttl")
    assert record is not None and record.body == b"<#a> <#b> 2 ."
    await writer.delete("p", "/r.ttl")
    assert await reader.get("p", "/r.ttl") is None


async def test_a_cached_absence_ends_when_the_resource_is_created(
    pair: tuple[SqliteAccessor, SqliteAccessor],
) -> None:
    reader, writer = pair
    assert await _read_twice(reader, "/new.ttl") is None
    await writer.write("p", Write("/new.ttl", TTL, b"<#a> <#b> 3 ."))
    assert await reader.get("p", "/new.ttl") is not None


async def test_own_writes_are_read_back(pair: tuple[SqliteAccessor, SqliteAccessor]) -> None:
    accessor, _ = pair
    await accessor.write("p", Write("/own.ttl", TTL, b"<#a> <#b> 1 ."))
    assert await _read_twice(accessor, "/own.ttl") == b"<#a> <#b> 1 ."
    await accessor.write("p", Write("/own.ttl", TTL, b"<#a> <#b> 2 ."))
    record = await accessor.get("p", "/own.ttl")
    assert record is not None and record.body == b"<#a> <#b> 2 ."


async def test_acl_epoch_listings_and_keys_follow_other_writers(
    pair: tuple[SqliteAccessor, SqliteAccessor],
) -> None:
    reader, writer = pair
    epoch = await reader.acl_epoch()
    assert await reader.children("p", "/") == []
    key = ApiKey("k1", "p", "https://app.example/#me", time.time(), False, "")
    await writer.insert_key(key, "hash")
    await asyncio.sleep(0)
    assert await reader.acl_epoch() == epoch  # now cached
    found = await reader.key_record("k1")
    assert found is not None and not found[0].revoked

    await writer.write("p", Write("/c/.acl", TTL, b""))
    await writer.write("p", Write("/c/x.ttl", TTL, b""))
    assert await reader.acl_epoch() > epoch
    assert await reader.children("p", "/") == ["/c/"]
    assert [r.path for _, r, _ in await reader.arrivals("p", "/c/", 0, 0.0, 10)] == ["/c/x.ttl"]
    await writer.revoke_key("p", "k1")
    found = await reader.key_record("k1")
    assert found is not None and found[0].revoked


def test_bounds_by_entries_and_bytes() -> None:
    stamp = [1]
    cache = ReadCache(lambda: stamp[0], max_entries=3, max_bytes=1000, max_item_bytes=600)
    for i in range(5):
        assert cache.get(i) is MISS
        cache.put(i, f"v{i}", 10)
    assert [cache.get(i) for i in range(5)] == [MISS, MISS, "v2", "v3", "v4"]  # oldest dropped
    cache.put("big", "x", 700)  # larger than one item may be: not kept
    assert cache.get("big") is MISS
    cache.put("a", "a", 500)
    cache.put("b", "b", 500)  # over the byte bound: the least recently used go first
    assert cache.get("b") == "b" and cache.get("a") is MISS


def test_a_new_stamp_empties_the_cache() -> None:
    stamp = [1]
    cache = ReadCache(lambda: stamp[0])
    cache.get("k")
    cache.put("k", "old")
    assert cache.get("k") == "old"
    stamp[0] = 2
    assert cache.get("k") is MISS  # no running loop: the stamp is checked on every read


def test_a_value_read_across_a_change_is_not_kept() -> None:
    """A value computed after an await (the page of an inbox, say) is kept only if the cache was
    not emptied in between: the database may have changed after it was read."""
    stamp = [1]
    cache = ReadCache(lambda: stamp[0])
    assert cache.get("page") is MISS
    generation = cache.generation
    stamp[0] = 2
    assert cache.get("other") is MISS  # the change is noticed: the cache is emptied
    cache.put("page", "read before the change", generation=generation)
    assert cache.get("page") is MISS
    generation = cache.generation
    cache.put("page", "read after it", generation=generation)
    assert cache.get("page") == "read after it"
