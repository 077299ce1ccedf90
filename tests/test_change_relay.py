"""Live updates across the processes of one deployment (``pod.change_relay``).

A channel is held by one process, but with ``--workers N`` (or several machines on PostgreSQL) any
process may make the write it reports. The first tests run two real ``pod serve`` processes on one
database (one SQLite data directory, or one PostgreSQL schema): a channel on one hears the writes,
deletes and published events the other makes. The others drive :class:`SocketRelay` directly, for
what a running server cannot be made to show: a peer that died, a data directory whose path is too
long for a Unix socket, stray datagrams, and the size limit of one message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pod.change_relay import SocketRelay, decode, encode
from pod.notifications import Change
from tests.databases import Databases
from tests.procs import Procs, ServerProcess

CHANNEL_TYPE = "http://www.w3.org/ns/solid/notifications#WebSocketChannel2023"
CONTEXT = "https://www.w3.org/ns/solid/notification/v1"
TOPIC = "realestate/contact#add"
TURTLE = {"Content-Type": "text/turtle"}


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path) as manager:
        yield manager


def two_processes(procs: Procs, backend: Databases) -> tuple[ServerProcess, ServerProcess]:
    """``a`` and ``b`` on one database, both answering for ``a``'s base URL."""
    shared = backend.shared("relay")
    a = procs.server("a", demo_pod="alice", unsafe_webid_header=True, database=shared, start=False)
    b = procs.server(
        "b", demo_pod="alice", unsafe_webid_header=True, database=shared, base_url=a.base_url, start=False
    )
    if not backend.postgres:
        b.data_dir = a.data_dir  # SQLite: sharing the database is sharing the data directory
    procs.start_all(a, b)
    return a, b


def at(server: ServerProcess, public: str, url: str) -> str:
    """``url`` (under the ``public`` base URL) sent to ``server`` itself."""
    return f"http://127.0.0.1:{server.port}/" + url.removeprefix(public)


def owner(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"WebID {server.webid('alice')}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def subscribe(http: aiohttp.ClientSession, server: ServerProcess, topic: str) -> dict[str, Any]:
    """alice's channel on ``topic``, subscribed through ``server``: its description."""
    service = server.url("alice", ".well-known/notifications/WebSocketChannel2023")
    body = {"@context": [CONTEXT], "type": CHANNEL_TYPE, "topic": topic}
    async with http.post(
        service, data=json.dumps(body), headers={"Content-Type": "application/ld+json", **owner(server)}
    ) as response:
        assert response.status == 200, await response.text()
        described: dict[str, Any] = await response.json()
    return described


async def open_channel(
    http: aiohttp.ClientSession, server: ServerProcess, topic: str
) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect((await subscribe(http, server, topic))["receiveFrom"])


async def next_message(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def test_a_channel_hears_the_writes_of_another_process(
    procs: Procs, backend: Databases, http: aiohttp.ClientSession
) -> None:
    a, b = two_processes(procs, backend)
    public = a.base_url
    container = a.url("alice", "notes/")
    # Made through a, the channels' process: b's report of it could arrive after they open.
    async with http.put(container, headers={**TURTLE, **owner(a)}) as made:
        assert made.status == 201, await made.text()
    on_container = await open_channel(http, a, container)
    doc = a.url("alice", "notes/one.ttl")
    on_doc = await open_channel(http, a, doc)
    # Every write goes to b; the channels are held by a.
    async with http.put(at(b, public, doc), data="<#a> <#b> 1 .", headers={**TURTLE, **owner(a)}) as put:
        assert put.status == 201, await put.text()
        etag = put.headers["ETag"]
    added = await next_message(on_container)
    assert (added["type"], added["object"], added["target"]) == ("Add", doc, container)
    created = await next_message(on_doc)
    assert (created["type"], created["object"], created["state"]) == ("Create", doc, etag)
    async with http.put(at(b, public, doc), data="<#a> <#b> 2 .", headers={**TURTLE, **owner(a)}) as put:
        assert put.status == 204, await put.text()
        etag = put.headers["ETag"]
    updated = await next_message(on_doc)
    assert (updated["type"], updated["state"]) == ("Update", etag)
    async with http.delete(at(b, public, doc), headers=owner(a)) as deleted:
        assert deleted.status == 204
    assert (await next_message(on_doc))["type"] == "Delete"
    removed = await next_message(on_container)
    assert (removed["type"], removed["object"]) == ("Remove", doc)
    # Its own writes still reach it once (not twice: once here, once back from b).
    async with http.put(doc, data="<#a> <#b> 3 .", headers={**TURTLE, **owner(a)}) as put:
        assert put.status == 201
    assert (await next_message(on_doc))["type"] == "Create"
    assert (await next_message(on_container))["type"] == "Add"
    with pytest.raises(asyncio.TimeoutError):
        msg = await on_doc.receive(timeout=0.5)
        pytest.fail(f"unexpected message {msg}")
    await on_doc.close()
    await on_container.close()


async def test_an_event_published_through_another_process_is_pushed_live(
    procs: Procs, backend: Databases, http: aiohttp.ClientSession
) -> None:
    a, b = two_processes(procs, backend)
    producer = "producer"
    a.cli("create", producer).check()
    a.cli("grant", "alice", "--agent", a.webid(producer), "--publish", "realestate").check()
    key = a.cli("key", "create", producer, "--agent", "https://crm.example/app#id", "--json").check().json()
    inbox = a.url("alice", "inbox/")
    on_inbox = await open_channel(http, a, inbox)
    event = {"recipient": a.webid("alice"), "topic": TOPIC, "data": {"name": "Bruce"}}
    publish = at(b, a.base_url, a.url(producer, "publish/"))
    headers = {"Content-Type": "application/json", "x-api-key": key["key"]}
    async with http.post(publish, data=json.dumps(event), headers=headers) as published:
        assert published.status == 201, await published.text()
        event_id = published.headers["Location"]
    message = await next_message(on_inbox)
    assert (message["type"], message["target"]) == ("Add", inbox)
    assert message["object"].startswith(inbox)
    copy = at(a, a.base_url, message["object"])
    async with http.get(copy, headers={"Accept": "application/ld+json", **owner(a)}) as got:
        assert got.status == 200
        assert (await got.json())["id"] == event_id
    await on_inbox.close()


async def test_a_channel_opens_on_any_process_and_ends_on_all(
    procs: Procs, backend: Databases, http: aiohttp.ClientSession
) -> None:
    """Behind ``--workers`` (or a load balancer) the subscription, the socket and the DELETE of
    one channel may each reach a different process."""
    a, b = two_processes(procs, backend)
    public = a.base_url
    doc = a.url("alice", "notes/doc.ttl")
    described = await subscribe(http, a, doc)
    receive_from, channel_id = described["receiveFrom"], described["id"]
    on_b = await http.ws_connect(at(b, public, receive_from.replace("ws:", "http:", 1)))
    async with http.put(doc, data="<#a> <#b> 1 .", headers={**TURTLE, **owner(a)}) as put:
        assert put.status == 201  # made by a, heard on b's socket
    assert (await next_message(on_b))["type"] == "Create"
    # A token altered by one character, or used for another pod, opens nothing.
    token = receive_from.rsplit("/", 1)[1]
    forged = receive_from[:-1] + ("A" if receive_from[-1] != "A" else "B")
    elsewhere = receive_from.replace("/alice/", "/producer/", 1)
    a.cli("create", "producer").check()
    for url in (forged, elsewhere):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 404, url
    # Only its subscriber may end it; ended through a, b closes the socket it holds.
    async with http.delete(channel_id, headers={"Authorization": f"WebID {a.webid('producer')}"}) as other:
        assert other.status == 404
    async with http.delete(channel_id, headers=owner(a)) as ended:
        assert ended.status == 204
    closed = await on_b.receive(timeout=10)
    assert closed.type == aiohttp.WSMsgType.CLOSE, closed
    for server in (a, b):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(at(server, public, receive_from.replace("ws:", "http:", 1)))
        assert refused.value.status == 404
    assert token in channel_id  # the id carries the token: any process can tell whose channel it is


async def test_a_channel_ended_early_stays_ended_after_a_restart(
    procs: Procs, http: aiohttp.ClientSession
) -> None:
    """Its token is signed and valid until endAt: a process that starts after the DELETE (a
    restart, a new worker) must still refuse it, so the ending is kept in the database."""
    server = procs.server("r", demo_pod="alice", unsafe_webid_header=True)
    kept = await subscribe(http, server, server.url("alice", "notes/kept.ttl"))
    ended = await subscribe(http, server, server.url("alice", "notes/ended.ttl"))
    async with http.delete(ended["id"], headers=owner(server)) as deleted:
        assert deleted.status == 204
    server.restart()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ended["receiveFrom"])
    assert refused.value.status == 404
    socket = await http.ws_connect(kept["receiveFrom"])  # the other channel lives on
    doc = server.url("alice", "notes/kept.ttl")
    async with http.put(doc, data="<#a> <#b> 1 .", headers={**TURTLE, **owner(server)}) as put:
        assert put.status == 201
    assert (await next_message(socket))["type"] == "Create"
    await socket.close()


async def test_solid_0_1_hears_the_writes_of_another_process(
    procs: Procs, backend: Databases, http: aiohttp.ClientSession
) -> None:
    a, b = two_processes(procs, backend)
    doc = a.url("alice", "notes/legacy.ttl")
    async with http.head(a.url("alice", ""), headers=owner(a)) as head:
        via = head.headers["Updates-Via"]
    ws = await http.ws_connect(via, protocols=("solid-0.1",))
    for line in (f"auth WebID {a.webid('alice')}", f"sub {doc}"):
        await ws.send_str(line)
    assert [(await ws.receive(timeout=10)).data for _ in range(2)] == ["protocol solid-0.1", f"ack {doc}"]
    async with http.put(at(b, a.base_url, doc), data="<#a> <#b> 1 .", headers={**TURTLE, **owner(a)}) as put:
        assert put.status == 201
    assert (await ws.receive(timeout=10)).data == f"pub {doc}"
    await ws.close()


async def test_live_updates_with_workers(procs: Procs, http: aiohttp.ClientSession) -> None:
    """``pod serve --workers 2``: every subscription, socket and write on a connection of its own,
    spread over the two processes by the kernel; every channel opens and hears every write."""
    server = procs.server("w", demo_pod="alice", unsafe_webid_header=True, env={"POD_WORKERS": "2"})
    container = server.url("alice", "live/")
    async with http.put(container, headers={**TURTLE, **owner(server)}) as made:
        assert made.status == 201
    # A new connection for every request, as separate clients would open.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        sockets = [await open_channel(fresh, server, container) for _ in range(6)]
        members = []
        for i in range(6):
            doc = server.url("alice", f"live/{i}.ttl")
            async with fresh.put(doc, data=f"<#n> <#i> {i} .", headers={**TURTLE, **owner(server)}) as put:
                assert put.status == 201
            members.append(doc)
        for ws in sockets:
            heard = [(await next_message(ws))["object"] for _ in members]
            # Each process's own changes keep their order; another's may arrive up to 10 ms later
            # (PostgreSQL), after a later write made here.
            assert sorted(heard) == members
            await ws.close()


# -- the socket relay on its own ----------------------------------------------------------------------
sqlite_only = pytest.mark.backends("sqlite")  # no database involved


class Heard:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.arrived = asyncio.Event()

    def __call__(self, change: Change) -> None:
        self.changes.append(change)
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Change]:
        deadline = time.monotonic() + timeout
        while len(self.changes) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))
        return self.changes


@sqlite_only
async def test_socket_relays_pass_changes_to_each_other_and_not_to_themselves(tmp_path: Path) -> None:
    # Longer than a Unix socket's path may be (107 bytes): the relay must not depend on it.
    directory = tmp_path / ("d" * 60) / ("e" * 60) / "changes"
    heard_a, heard_b = Heard(), Heard()
    a, b = SocketRelay(directory, heard_a), SocketRelay(directory, heard_b)
    await a.open()
    await b.open()
    try:
        assert oct(directory.stat().st_mode & 0o777) == oct(0o700)
        changes = [Change("alice", f"/notes/{i}", "Create", f'"{i}"') for i in range(3)]
        for change in changes:
            a.send(change)
        assert await heard_b.wait_for(3) == changes  # in order, one datagram for the loop pass
        b.send(Change("alice", "/x", "Delete"))
        assert await heard_a.wait_for(1) == [Change("alice", "/x", "Delete")]
        await asyncio.sleep(0.1)
        assert len(heard_b.changes) == 3  # nothing came back to the sender
    finally:
        await a.close()
        await b.close()
    assert sorted(os.listdir(directory)) == []  # each removed its socket


@sqlite_only
async def test_a_dead_peer_is_forgotten_and_strays_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "changes"
    heard = Heard()
    a, b = SocketRelay(directory, lambda c: None), SocketRelay(directory, heard)
    await a.open()
    await b.open()
    # A process killed with SIGKILL leaves its socket file behind, bound by nobody.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(directory / "999999-dead.sock"))
    dead.close()
    try:
        a.send(Change("alice", "/one", "Create"))
        assert await heard.wait_for(1) == [Change("alice", "/one", "Create")]
        assert not (directory / "999999-dead.sock").exists()
        # Anything that is not a relay's message is dropped without a sound.
        stray = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for junk in (b"not json", b'{"a": 1}', b'[["alice", "/p"]]', b"[[1, 2, 3, 4]]"):
            stray.sendto(junk, f"/proc/self/fd/{b._dir_fd}/{b.name}")
        stray.close()
        a.send(Change("alice", "/two", "Update", '"v2"'))
        assert (await heard.wait_for(2))[1:] == [Change("alice", "/two", "Update", '"v2"')]
    finally:
        await a.close()
        await b.close()


@sqlite_only
async def test_a_peer_with_no_room_is_counted_and_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "changes"
    a = SocketRelay(directory, lambda c: None)
    await a.open()
    # A process that has stopped reading: its socket queue fills up, and sending must not block.
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(directory / "424242-stuck.sock"))
    try:
        with caplog.at_level(logging.WARNING, logger="pod.changes"):
            for i in range(2000):
                a.send(Change("alice", f"/n/{i}", "Create"))
                await asyncio.sleep(0)  # one datagram per loop pass
                if a.dropped >= 5:
                    break
        assert a.sent > 0 and a.dropped >= 5
        warnings = [r for r in caplog.records if "did not reach other processes" in r.getMessage()]
        assert len(warnings) == 1  # at most once a minute
    finally:
        stuck.close()
        await a.close()


@sqlite_only
def test_messages_are_cut_to_the_size_limit() -> None:
    changes = [Change("alice", f"/notes/{i:04}", "Create", f'"{i}"') for i in range(500)]
    datagrams = encode(changes, 1000)
    assert len(datagrams) > 1 and all(len(d) <= 1000 for d in datagrams)
    assert [c for d in datagrams for c in decode(d)] == changes
    # A change too large for any message is left out; the others still go.
    huge = Change("alice", "/" + "x" * 2000, "Create")
    assert [c for d in encode([changes[0], huge, changes[1]], 1000) for c in decode(d)] == changes[:2]
