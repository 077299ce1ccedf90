"""Resource writes keep their rules however few statements they take.

The SQLite writer finds a resource, its twin and its container in one statement, looks at the
other ancestors only when the container is missing, touches only the nearest existing container,
and runs resource writes without a savepoint because they check everything before their first
change. These tests pin the rules that shortcut must keep: intermediate containers, container
versions on membership changes (and not on ACL changes), the ACL epoch, arrival order, refused
writes changing nothing, and jobs of one group commit failing alone. The rules shared with
PostgreSQL run on both backends; the group-commit ones on SQLite's accessor itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ldp.accessor import ABSENT, Record, VersionMismatch, Write
from ldp.errors import Conflict, NotFound
from ldp.names import new_name
from ldp.sqlite import SqliteAccessor, write_in
from tests.conftest import spy

TTL = "text/turtle"
TXT = "text/plain"


@pytest.fixture
async def accessor(tmp_path: Path) -> AsyncIterator[SqliteAccessor]:
    opened = SqliteAccessor(tmp_path / "pod.sqlite3")
    await opened.open()
    await opened.create_pod("p", [])
    try:
        yield opened
    finally:
        await opened.close()


async def version(store: Any, path: str) -> str:
    record: Record | None = await store.get("p", path)
    assert record is not None, f"{path} is missing"
    return record.version


async def sequence(store: Any, container: str, path: str) -> int:
    """The arrival number of ``path`` in ``container``."""
    for number, record, _ in await store.arrivals("p", container, 0, 0.0, 100):
        if record.path == path:
            return int(number)
    raise AssertionError(f"{path} did not arrive in {container}")


# -- rules on both backends ---------------------------------------------------------------------------


async def test_missing_containers_are_created_in_order_and_the_nearest_existing_one_changes(
    store: Any,
) -> None:
    await store.write("p", Write("/a/", TTL, b""))
    root, a = await version(store, "/"), await version(store, "/a/")
    record, created = await store.write("p", Write("/a/b/c/doc", "text/plain", b"x", ABSENT))
    assert created and record.version == await version(store, "/a/b/c/doc")
    assert await version(store, "/a/") != a  # it gained a member
    assert await version(store, "/") == root  # its membership did not change
    for container, member in (("/a/", "/a/b/"), ("/a/b/", "/a/b/c/"), ("/a/b/c/", "/a/b/c/doc")):
        assert await store.children("p", container) == [member]
    new = await store.get("p", "/a/b/")
    assert new is not None and (new.content_type, new.body) == (TTL, b"")
    # the containers arrive before what they contain
    assert (
        await sequence(store, "/a/", "/a/b/")
        < await sequence(store, "/a/b/", "/a/b/c/")
        < await sequence(store, "/a/b/c/", "/a/b/c/doc")
    )
    # a member of an existing container changes that container only
    b, c = await version(store, "/a/b/"), await version(store, "/a/b/c/")
    await store.write("p", Write("/a/b/c/other", "text/plain", b"y"))
    assert await version(store, "/a/b/c/") != c
    assert await version(store, "/a/b/") == b
    # an ACL below a missing container creates it, and changes the nearest existing one
    a = await version(store, "/a/")
    epoch = await store.acl_epoch()
    await store.write("p", Write("/a/d/.acl", TTL, b""))
    assert await store.children("p", "/a/d/") == []  # an ACL is no member
    assert await version(store, "/a/") != a
    assert await store.acl_epoch() != epoch


async def test_membership_changes_the_container_version_and_acls_the_epoch(store: Any) -> None:
    await store.write("p", Write("/c/", TTL, b""))
    before = await store.get("p", "/c/")
    assert before is not None
    await store.write("p", Write("/c/x", "text/plain", b"1"))
    added = await store.get("p", "/c/")
    assert added is not None and added.version != before.version and added.modified >= before.modified
    await store.write("p", Write("/c/x", "text/plain", b"2"))  # a member changed: membership did not
    assert await version(store, "/c/") == added.version
    # ACLs are no members: the container keeps its version, every process drops its ACL cache
    epoch = await store.acl_epoch()
    await store.write("p", Write("/c/.acl", TTL, b""))
    await store.write("p", Write("/c/x.acl", TTL, b""))
    assert await version(store, "/c/") == added.version
    assert await store.acl_epoch() != epoch
    epoch = await store.acl_epoch()
    await store.write("p", Write("/c/x.acl", TTL, b"<#a> <#b> <#c> ."))  # replacing an ACL
    assert await store.acl_epoch() != epoch
    # deleting a member changes the container; deleting a resource takes its ACL with it
    epoch = await store.acl_epoch()
    await store.delete("p", "/c/x")
    assert await store.get("p", "/c/x.acl") is None
    assert await store.acl_epoch() != epoch
    assert await version(store, "/c/") != added.version
    current, epoch = await version(store, "/c/"), await store.acl_epoch()
    await store.delete("p", "/c/.acl")
    assert await version(store, "/c/") == current
    assert await store.acl_epoch() != epoch


async def test_a_refused_write_or_delete_changes_nothing(store: Any) -> None:
    await store.write("p", Write("/d", "text/plain", b"doc"))
    await store.write("p", Write("/c/m", "text/plain", b"m"))
    root, c, m = await version(store, "/"), await version(store, "/c/"), await version(store, "/c/m")
    refused: list[tuple[Write, type[Exception]]] = [
        (Write("/d/e/f", "text/plain", b""), Conflict),  # /d is a document
        (Write("/d/", TTL, b""), Conflict),  # its twin
        (Write("/c", "text/plain", b""), Conflict),  # the twin of a container
        (Write("/c/m", "text/plain", b"other", "0000"), VersionMismatch),
        (Write("/c/m", "text/plain", b"other", ABSENT), VersionMismatch),
        (Write("/c/new", "text/plain", b"", "0000"), VersionMismatch),
        (Write("/c/new/", TTL, b"", "*"), VersionMismatch),
    ]
    for w, error in refused:
        with pytest.raises(error):
            await store.write("p", w)
    with pytest.raises(NotFound):
        await store.write("nobody", Write("/x/y", "text/plain", b""))
    with pytest.raises(Conflict):
        await store.delete("p", "/c/")  # not empty
    with pytest.raises(VersionMismatch):
        await store.delete("p", "/c/m", "0000")
    with pytest.raises(NotFound):
        await store.delete("p", "/c/gone")
    for path in ("/d/", "/d/e/", "/c", "/c/new", "/c/new/"):
        assert await store.get("p", path) is None, path
    assert (await version(store, "/"), await version(store, "/c/"), await version(store, "/c/m")) == (
        root,
        c,
        m,
    )
    assert await store.children("p", "/") == ["/c/", "/d"]
    assert await store.children("p", "/c/") == ["/c/m"]


async def test_a_container_write_made_before_a_member_arrived_is_refused(store: Any) -> None:
    seen = await version(store, "/")
    await store.write("p", Write("/member", "text/plain", b""))
    with pytest.raises(VersionMismatch):
        await store.write("p", Write("/", TTL, b"", seen))
    record, created = await store.write("p", Write("/", TTL, b"", await version(store, "/")))
    assert not created and record.version == await version(store, "/")


async def test_http_a_put_creates_the_containers_and_a_stale_container_etag_is_refused(
    client: TestClient[Any, Any],
) -> None:
    root = (await client.get("/alice/")).headers["ETag"]
    put = await client.put("/alice/x/y/z.ttl", headers={"Content-Type": TTL}, data="<#a> <#b> <#c> .")
    assert put.status == 201
    assert (await client.get("/alice/")).headers["ETag"] != root
    listing = await client.get("/alice/x/", headers={"Accept": "application/n-triples"})
    assert "<http://pod.test/alice/x/y/>" in await listing.text()
    container = (await client.get("/alice/x/y/")).headers["ETag"]
    posted = await client.post("/alice/x/y/", headers={"Content-Type": TTL}, data="<#a> <#b> <#c> .")
    assert posted.status == 201
    stale = await client.put("/alice/x/y/", headers={"Content-Type": TTL, "If-Match": container}, data="")
    assert stale.status == 412
    fresh = (await client.get("/alice/x/y/")).headers["ETag"]
    assert fresh != container
    put = await client.put("/alice/x/y/", headers={"Content-Type": TTL, "If-Match": fresh}, data="")
    assert put.status == 204 and put.headers["ETag"] == (await client.get("/alice/x/y/")).headers["ETag"]


# -- SQLite's group commit ----------------------------------------------------------------------------


def batches(accessor: SqliteAccessor) -> list[int]:
    """Record the number of jobs of each group commit from now on."""
    sizes: list[int] = []
    commit = accessor._commit

    def counted(jobs: Any) -> Any:
        sizes.append(len(jobs))
        return commit(jobs)

    accessor._commit = counted  # type: ignore[method-assign]
    return sizes


async def test_jobs_of_one_batch_fail_alone(accessor: SqliteAccessor) -> None:
    await accessor.write("p", Write("/b/old", "text/plain", b"old"))
    await accessor.write("p", Write("/b/dir/", TTL, b""))
    container = await version(accessor, "/b/")

    def half_done(conn: sqlite3.Connection) -> None:
        write_in(conn, "p", Write("/b/half", "text/plain", b""))
        write_in(conn, "p", Write("/b/old", "text/plain", b"", ABSENT))  # refused after a change

    def refused_first(conn: sqlite3.Connection) -> None:
        write_in(conn, "p", Write("/b/dir", "text/plain", b""))  # refused before any change

    sizes = batches(accessor)
    results = await asyncio.gather(
        accessor.write("p", Write("/b/1", "text/plain", b"1")),
        accessor.write("p", Write("/b/old", "text/plain", b"x", "0000")),
        accessor.run_job(half_done),
        accessor.write("p", Write("/b/dir", "text/plain", b"")),
        accessor.run_job(refused_first, savepoint=False),
        accessor.write("nobody", Write("/x", "text/plain", b"")),
        accessor.delete("p", "/b/gone"),
        accessor.delete("p", "/b/"),
        accessor.write("p", Write("/b/2", "text/plain", b"2")),
        return_exceptions=True,
    )
    assert sizes == [len(results)], "the jobs did not share one transaction"
    kinds = [type(r) for r in results]
    assert kinds[1:8] == [VersionMismatch, VersionMismatch, Conflict, Conflict, NotFound, NotFound, Conflict]
    assert isinstance(results[0], tuple) and isinstance(results[8], tuple)
    assert await accessor.children("p", "/b/") == ["/b/1", "/b/2", "/b/dir/", "/b/old"]
    old = await accessor.get("p", "/b/old")
    assert old is not None and old.body == b"old"
    assert await version(accessor, "/b/") != container


async def test_concurrent_creates_of_one_nested_path_in_one_batch(accessor: SqliteAccessor) -> None:
    sizes = batches(accessor)
    results = await asyncio.gather(
        *(accessor.write("p", Write("/n/e/w", "text/plain", b"x", ABSENT)) for _ in range(6)),
        *(accessor.write("p", Write("/u/e/w", "text/plain", str(i).encode())) for i in range(6)),
        return_exceptions=True,
    )
    assert sizes == [12]
    assert [isinstance(r, VersionMismatch) for r in results[:6]] == [False] + [True] * 5
    assert [r[1] for r in results[6:] if isinstance(r, tuple)] == [True] + [False] * 5
    for top in ("/n/", "/u/"):
        assert await accessor.children("p", top) == [top + "e/"]
        assert await accessor.children("p", top + "e/") == [top + "e/w"]
    last = await accessor.get("p", "/u/e/w")
    assert last is not None and last.body == b"5"


async def test_a_member_and_a_stale_container_write_in_one_batch(accessor: SqliteAccessor) -> None:
    await accessor.write("p", Write("/s/", TTL, b""))
    seen = await version(accessor, "/s/")
    sizes = batches(accessor)
    member, stale = await asyncio.gather(
        accessor.write("p", Write("/s/m", "text/plain", b"")),
        accessor.write("p", Write("/s/", TTL, b"", seen)),
        return_exceptions=True,
    )
    assert sizes == [2]
    assert isinstance(member, tuple) and isinstance(stale, VersionMismatch)


async def test_a_job_without_savepoint_that_fails_after_a_change_fails_its_batch(
    accessor: SqliteAccessor,
) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        write_in(conn, "p", Write("/f/made", "text/plain", b""))
        raise RuntimeError("failed after a change")

    sizes = batches(accessor)
    results = await asyncio.gather(
        accessor.write("p", Write("/f/1", "text/plain", b"")),
        accessor.run_job(broken, savepoint=False),
        accessor.write("p", Write("/f/2", "text/plain", b"")),
        return_exceptions=True,
    )
    assert sizes == [3]
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert await accessor.get("p", "/f/") is None
    # the writer goes on with the next batch
    _, created = await accessor.write("p", Write("/f/1", "text/plain", b""))
    assert created and await accessor.children("p", "/f/") == ["/f/1"]


async def statements(accessor: SqliteAccessor, action: Any) -> list[str]:
    """The first word of each statement the writer ran for ``action``, without BEGIN and COMMIT."""
    seen: list[str] = []
    await accessor.run_job(lambda conn: conn.set_trace_callback(seen.append), savepoint=False)
    start = len(seen)
    try:
        await action
    finally:
        await accessor.run_job(lambda conn: conn.set_trace_callback(None), savepoint=False)
    words = [s.split()[0].upper() for s in seen[start:]]
    return [w for w in words if w not in ("BEGIN", "COMMIT")]


async def test_the_statements_of_a_write(accessor: SqliteAccessor) -> None:
    """What the writer thread runs per write is its largest cost: keep it this short."""
    await accessor.write("p", Write("/c/", TTL, b""))
    create = accessor.write("p", Write("/c/new", "text/plain", b"", ABSENT))
    assert await statements(accessor, create) == ["SELECT", "INSERT", "UPDATE"]
    replace = accessor.write("p", Write("/c/new", "text/plain", b"2"))
    assert await statements(accessor, replace) == ["SELECT", "UPDATE"]
    delete = accessor.delete("p", "/c/new")
    assert await statements(accessor, delete) == ["SELECT", "DELETE", "UPDATE"]
    nested = accessor.write("p", Write("/c/x/y/z", "text/plain", b""))
    assert await statements(accessor, nested) == ["SELECT", "SELECT", "INSERT", "INSERT", "INSERT", "UPDATE"]

    async def refused() -> None:
        with pytest.raises(VersionMismatch):
            await accessor.write("p", Write("/c/x/y/z", "text/plain", b"", ABSENT))

    assert await statements(accessor, refused()) == ["SELECT"]


async def test_processes_take_turns_on_the_writer_lock(tmp_path: Path) -> None:
    """Each group commit holds ``<database>-writer`` exclusively: a write waits while another
    process holds it (here: another open file description, as another process would have) and
    goes as soon as it is released, all of its queue in one transaction, instead of retrying on
    SQLite's busy handler with sleeps of up to 100 ms."""
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "pod.sqlite3"
    first = SqliteAccessor(path)
    await first.open()
    try:
        await first.create_pod("p", [])
        lock = (tmp_path / "pod.sqlite3-writer").open("a")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            sizes = batches(first)
            waiting = asyncio.ensure_future(first.write("p", Write("/a", "text/plain", b"a")))
            await asyncio.sleep(0.05)  # the writer thread now waits for the lock
            queued = [
                asyncio.ensure_future(first.write("p", Write(f"/q{i}", "text/plain", b""))) for i in range(5)
            ]
            await asyncio.sleep(0.3)
            assert not waiting.done() and not any(q.done() for q in queued)
            assert await first.get("p", "/a") is None
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()
        await asyncio.wait_for(asyncio.gather(waiting, *queued), 5)
        assert sizes == [1, 5], "the writes queued while the lock was held did not go together"
        # Another accessor on the file (as another process) writes and reads what the first wrote.
        second = SqliteAccessor(path)
        await second.open()
        try:
            await second.write("p", Write("/b", "text/plain", b"b"))
            record = await second.get("p", "/a")
            assert record is not None and record.body == b"a"
        finally:
            await second.close()
        assert await first.children("p", "/") == ["/a", "/b", "/q0", "/q1", "/q2", "/q3", "/q4"]
    finally:
        await first.close()


async def test_creates_at_fresh_names_arriving_together_are_stored_in_one_go(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``create`` (a POST's server-chosen name): creates of one group commit share two
    statements; what each returns is what is stored; a container among them, or a name taken
    after all, sends each its own way with the usual answers."""
    from ldp import postgres, sqlite

    calls: list[int] = []
    spy(monkeypatch, (sqlite, postgres), "create_fresh_in", lambda _, items, *rest: calls.append(len(items)))
    await store.write("p", Write("/in/", TTL, b""))
    before = await version(store, "/in/")
    names = [new_name() for _ in range(5)]
    records = await asyncio.gather(
        *(store.create("p", Write(f"/in/{n}", TXT, n.encode(), ABSENT)) for n in names)
    )
    assert calls == [5], "the creates did not go in one go"
    for name, record in zip(names, records, strict=True):
        stored = await store.get("p", f"/in/{name}")
        assert stored == record and stored.body == name.encode()
    assert await version(store, "/in/") != before
    assert await store.children("p", "/in/") == sorted(f"/in/{n}" for n in names)
    # A container, and a path that exists after all: the others are stored one by one.
    calls.clear()
    taken = f"/in/{names[0]}"
    results = await asyncio.gather(
        store.create("p", Write("/in/a", TXT, b"a", ABSENT)),
        store.create("p", Write("/in/box/", TTL, b"", ABSENT)),
        store.create("p", Write(taken, TXT, b"again", ABSENT)),
        return_exceptions=True,
    )
    assert calls[0] == 3
    assert isinstance(results[0], Record) and isinstance(results[1], Record)
    assert isinstance(results[2], VersionMismatch)
    record = await store.get("p", taken)
    assert record is not None and record.body == names[0].encode()
    assert await store.get("p", "/in/box/") is not None
