"""Several processes on one database behave like one server; the PostgreSQL backend keeps SQLite's rules.

The multi-process tests start two real ``pod serve`` processes (``tests.procs``) on ONE PostgreSQL
database with one public base URL, as behind a load balancer, and send each request to one process
or the other: writes, ACL changes, key revocations and subscription changes made through one are
seen by the other at once; every queued delivery is claimed by one worker; and when one process is
killed mid fan-out the other finishes its deliveries once their lease runs out.

The other tests run on both backends: concurrent writers obey the same rules, listings sort the
same way, and the schema is migrated in numbered steps, once, whoever starts first.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from acl.apikeys import ApiKey
from ldp import postgres, sqlite
from ldp.accessor import ABSENT, DatabaseError, VersionMismatch, Write
from ldp.errors import Conflict, NotFound
from ldp.postgres import PostgresAccessor
from ldp.sqlite import SqliteAccessor
from pod.backend import Backend, open_backend
from pod.state import STORE
from tests.conftest import ClientFactory, make_config
from tests.databases import Databases, admin
from tests.procs import Procs, Response, ServerProcess, request, wait_for
from tests.test_cli import run

TOPIC = "realestate/contact#add"
DATA = {"type": "AddAction", "object": {"type": "Contact", "name": "Bruce Wayne"}}
APP = "https://crm.example/app#id"
BOB = "https://bob.example/profile#me"
HOOK_AGENT = "https://hooks.example/agent#id"
FAST = {"POD_DELIVERY_MAX_BACKOFF": "1", "POD_DELIVERY_LEASE": "3"}
WAIT = 20.0

only_postgres = pytest.mark.backends("postgresql")


# -- helpers ------------------------------------------------------------------------------------------


def pair(procs: Procs, backend: Databases, *, start: bool = True) -> tuple[ServerProcess, ServerProcess]:
    """Two processes on one database, both answering for ``a``'s base URL (the public one)."""
    shared = backend.shared("one")
    a = procs.server("a", demo_pod="alice", unsafe_webid_header=True, env=FAST, database=shared, start=False)
    b = procs.server(
        "b",
        demo_pod="alice",
        unsafe_webid_header=True,
        env=FAST,
        database=shared,
        base_url=a.base_url,
        start=False,
    )
    if start:
        procs.start_all(a, b)
    return a, b


def at(server: ServerProcess, url: str) -> str:
    """``url`` (under the public base URL) sent to ``server`` itself."""
    public = f"http://127.0.0.1:{url.split('/')[2].split(':')[1]}/"
    return f"http://127.0.0.1:{server.port}/" + url.removeprefix(public)


def owner(server: ServerProcess, pod: str) -> dict[str, str]:
    return {"Authorization": f"WebID {server.webid(pod)}"}


def acl_for(server: ServerProcess, pod: str, readers: list[str]) -> bytes:
    """An ACL for a container: its owner has everything, ``readers`` may read, here and below."""
    rules = [
        f"<#owner> a acl:Authorization; acl:agent <{server.webid(pod)}>; acl:accessTo <./>;"
        " acl:default <./>; acl:mode acl:Read, acl:Write, acl:Control."
    ]
    rules += [
        f"<#r{i}> a acl:Authorization; acl:agent <{r}>; acl:accessTo <./>; acl:default <./>;"
        " acl:mode acl:Read."
        for i, r in enumerate(readers)
    ]
    return ("@prefix acl: <http://www.w3.org/ns/auth/acl#>.\n" + "\n".join(rules)).encode()


class Hook:
    """A webhook receiver on loopback that counts every POST by event id. While ``hold`` is set it
    keeps requests open without answering (deliveries stay in flight)."""

    def __init__(self, hold: bool = False) -> None:
        self.posts: list[str] = []
        self.lock = threading.Lock()
        self.open = threading.Event()
        if not hold:
            self.open.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.posts.append(self.headers.get("X-Event-Id", ""))
                hook.open.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed while its request was held

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.posts)

    def close(self) -> None:
        self.open.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    made = Hook()
    yield made
    made.close()


def set_up_events(a: ServerProcess, hook_url: str | None) -> str:
    """Pods producer, user and participant; the producer may publish to both; the user forwards
    to a webhook (if given). Returns the producer's app key."""
    commands = [
        ["create", "producer"],
        ["create", "user"],
        ["create", "participant"],
        ["grant", "user", "--agent", a.webid("producer"), "--publish", "realestate"],
        ["grant", "participant", "--agent", a.webid("producer"), "--publish", "realestate"],
        ["grant", "user", "--agent", HOOK_AGENT, "--subscribe", "realestate"],
        ["key", "create", "producer", "--agent", APP, "--json"],
    ]
    key: str = a.cli_many(commands)[-1].json()["key"]
    if hook_url is not None:
        assert subscribe_webhook(a, hook_url).status in (200, 201, 204)
    return key


def subscribe_webhook(server: ServerProcess, hook_url: str | None) -> Response:
    """The user's subscriptions, written by the owner over HTTP: the webhook, or none."""
    entries = [] if hook_url is None else [
        {"agent": HOOK_AGENT, "topics": ["realestate"], "webhook": hook_url, "secret": "s3cret"}
    ]  # fmt: skip
    return request(
        "PUT",
        at(server, server.url("user", "settings/subscriptions")),
        headers={"Content-Type": "application/ld+json", **owner(server, "user")},
        json_body={"subscriptions": entries},
    )


def publish(server: ServerProcess, key: str, recipients: list[str]) -> str:
    response = request(
        "POST",
        at(server, server.url("producer", "publish/")),
        headers={"x-api-key": key},
        json_body={"recipient": recipients, "topic": TOPIC, "data": DATA},
    )
    assert response.status == 201, response.body
    event_id: str = response.json()["id"]
    return event_id


def inbox_ids(server: ServerProcess, pod: str) -> list[str]:
    response = request(
        "GET",
        at(server, server.url(pod, "inbox/?limit=500")),
        headers={"Accept": "application/json", **owner(server, pod)},
    )
    assert response.status == 200, response.body
    return [c["id"] for c in response.json()["contains"] if isinstance(c, dict) and "topic" in c]


def delivery_rows(server: ServerProcess) -> list[tuple[Any, ...]]:
    with server.db() as conn:
        rows: list[tuple[Any, ...]] = conn.execute(
            "SELECT event_id, kind, recipient, state, attempts FROM deliveries ORDER BY id"
        ).fetchall()
    return rows


# -- several processes, one database ---------------------------------------------------------------------


@only_postgres
def test_a_write_through_one_process_is_read_through_the_other(procs: Procs, backend: Databases) -> None:
    a, b = pair(procs, backend)
    alice = owner(a, "alice")
    url = a.url("alice", "notes/n.ttl")
    put = request(
        "PUT", at(a, url), headers={**alice, "Content-Type": "text/turtle"}, body=b"<#a> <#b> <#c> ."
    )
    assert put.status == 201, put.body
    via_a = request("GET", at(a, url), headers={**alice, "Accept": "text/turtle"})
    via_b = request("GET", at(b, url), headers={**alice, "Accept": "text/turtle"})
    assert (via_b.status, via_b.headers["etag"]) == (200, via_a.headers["etag"])
    assert b"<#c>" in via_b.body
    listing = request("GET", at(b, a.url("alice", "notes/")), headers={**alice, "Accept": "text/turtle"})
    assert url.encode() in listing.body or b"<n.ttl>" in listing.body
    # a conditional write through b with the version a gave is applied; a stale one is refused
    changed = request(
        "PUT",
        at(b, url),
        headers={**alice, "Content-Type": "text/turtle", "If-Match": via_a.headers["etag"]},
        body=b"<#a> <#b> <#d> .",
    )
    assert changed.status in (200, 204), changed.body
    stale = request(
        "PUT",
        at(a, url),
        headers={**alice, "Content-Type": "text/turtle", "If-Match": via_a.headers["etag"]},
        body=b"<#a> <#b> <#e> .",
    )
    assert stale.status == 412
    assert request("DELETE", at(b, url), headers=alice).status == 204
    assert request("GET", at(a, url), headers=alice).status == 404
    # one demo pod, though both processes started on the empty database at once
    assert [line.split("\t")[0] for line in a.cli("list").check().stdout.splitlines()] == ["alice"]


@only_postgres
def test_acl_key_and_subscription_changes_take_effect_in_the_other_process_at_once(
    procs: Procs, backend: Databases, hook: Hook
) -> None:
    a, b = pair(procs, backend)
    alice, bob = owner(a, "alice"), {"Authorization": f"WebID {BOB}"}
    doc = a.url("alice", "shared/doc.ttl")
    acl = at(a, a.url("alice", "shared/.acl"))
    assert (
        request("PUT", at(a, doc), headers={**alice, "Content-Type": "text/turtle"}, body=b"").status == 201
    )
    assert request("GET", at(b, doc), headers=bob).status == 403  # b has now parsed and cached the ACL
    for _ in range(3):
        granted = request(
            "PUT", acl, headers={**alice, "Content-Type": "text/turtle"}, body=acl_for(a, "alice", [BOB])
        )
        assert granted.status in (201, 204), granted.body
        assert request("GET", at(b, doc), headers=bob).status == 200  # no wait: b was told
        taken = request(
            "PUT", acl, headers={**alice, "Content-Type": "text/turtle"}, body=acl_for(a, "alice", [])
        )
        assert taken.status == 204, taken.body
        assert request("GET", at(b, doc), headers=bob).status == 403
    # an ACL deleted through a: b falls back to the inherited one at once
    assert (
        request(
            "PUT", acl, headers={**alice, "Content-Type": "text/turtle"}, body=acl_for(a, "alice", [BOB])
        ).status
        == 204
    )
    assert request("GET", at(b, doc), headers=bob).status == 200
    assert request("DELETE", acl, headers=alice).status == 204
    assert request("GET", at(b, doc), headers=bob).status == 403

    # an API key minted through a works through b, and stops working there once revoked through a
    keys = at(a, a.url("alice", ".well-known/api-keys"))
    created = request("POST", keys, headers=alice, json_body={"agent": BOB})
    assert created.status == 201, created.body
    key = created.json()
    assert request("GET", at(b, doc), headers={"x-api-key": key["key"]}).status == 403  # bob, not 401
    assert request("DELETE", f"{keys}/{key['id']}", headers=alice).status == 204
    revoked = request("GET", at(b, doc), headers={"x-api-key": key["key"]})
    assert (revoked.status, revoked.json()["error"]) == (401, "Invalid API Key")

    # a subscription added through a forwards the events published through b; removed through a, no more
    app_key = set_up_events(a, hook.url)
    first = publish(b, app_key, [a.webid("user")])
    wait_for(hook.counts, lambda c: first in c, WAIT)
    assert hook.counts() == {first: 1}
    assert subscribe_webhook(a, None).status in (200, 204)
    second = publish(b, app_key, [a.webid("user")])
    assert wait_for(lambda: inbox_ids(b, "user"), lambda ids: second in ids, WAIT).count(second) == 1
    # the forwards are queued with the inbox copy, in one transaction: none were
    with a.db() as conn:
        assert conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE event_id=? AND kind='webhook'", (second,)
        ).fetchone() == (0,)
    assert hook.counts() == {first: 1}


@only_postgres
def test_every_delivery_happens_once_with_two_processes_claiming(
    procs: Procs, backend: Databases, hook: Hook
) -> None:
    a, b = pair(procs, backend)
    key = set_up_events(a, hook.url)
    recipients = [a.webid("user"), a.webid("participant")]
    n = 30
    with ThreadPoolExecutor(6) as pool:  # published through both processes at once
        ids = list(pool.map(lambda i: publish((a, b)[i % 2], key, recipients), range(n)))
    assert len(set(ids)) == n
    expected = 3 * n  # two inbox copies and one webhook forward per event
    rows = wait_for(
        lambda: delivery_rows(a),
        lambda rs: len(rs) == expected and all(r[3] != "pending" for r in rs),
        WAIT,
    )
    assert len(rows) == expected
    assert Counter((r[1], r[3], r[4]) for r in rows) == {
        ("inbox", "delivered", 1): 2 * n,
        ("webhook", "delivered", 1): n,
    }
    assert hook.counts() == dict.fromkeys(ids, 1)
    for pod in ("user", "participant"):
        copies = inbox_ids(b, pod)
        assert sorted(copies) == sorted(ids), pod


@only_postgres
def test_killing_one_process_mid_fan_out_leaves_the_other_to_finish(procs: Procs, backend: Databases) -> None:
    hook = Hook(hold=True)
    try:
        a, b = pair(procs, backend, start=False)
        procs.start_all(a)
        key = set_up_events(a, hook.url)
        ids = [publish(a, key, [a.webid("user")]) for _ in range(6)]
        # a delivered the inbox copies in-process and now holds every webhook forward in flight
        wait_for(hook.counts, lambda c: set(c) == set(ids), WAIT)
        b.start()
        a.kill()
        hook.open.set()
        rows = wait_for(
            lambda: delivery_rows(b),
            lambda rs: len(rs) == 12 and all(r[3] == "delivered" for r in rs),
            WAIT,
        )
        assert all(r[3] == "delivered" and r[4] == 1 for r in rows), rows  # the killed attempts left no trace
        # each forward was sent by a (never answered) and once more by b
        assert hook.counts() == dict.fromkeys(ids, 2)
        assert sorted(inbox_ids(b, "user")) == sorted(ids)
    finally:
        hook.close()


# -- the same rules on both backends ------------------------------------------------------------------------


async def test_tests_really_run_on_each_backend(make_client: ClientFactory, backend: Databases) -> None:
    client = await make_client()
    accessor = client.server.app[STORE].accessor
    assert isinstance(accessor, PostgresAccessor if backend.postgres else SqliteAccessor)


async def test_concurrent_writers_keep_the_rules(store: Any) -> None:
    # conditional writes on one version: exactly one wins
    record, _ = await store.write("p", Write("/doc", "text/plain", b"0"))
    results = await asyncio.gather(
        *(
            store.write("p", Write("/doc", "text/plain", str(i).encode(), expect=record.version))
            for i in range(12)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, VersionMismatch) for r in results if isinstance(r, BaseException))
    # create-only writes of one path: exactly one creates
    results = await asyncio.gather(
        *(store.write("p", Write("/new", "text/plain", b"x", expect=ABSENT)) for _ in range(8)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    # unconditional writes of one new path: one creates, the others replace
    results = await asyncio.gather(*(store.write("p", Write("/free", "text/plain", b"x")) for _ in range(8)))
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    for i in range(5):
        # a document and a container of one name: never both
        results = await asyncio.gather(
            store.write("p", Write(f"/t{i}", "text/plain", b"")),
            store.write("p", Write(f"/t{i}/child", "text/plain", b"")),
            return_exceptions=True,
        )
        assert sum(isinstance(r, Conflict) for r in results) == 1, results
        # deleting a container while a member is created in it: never a member without a container
        await store.write("p", Write(f"/c{i}/", "text/turtle", b""))
        results = await asyncio.gather(
            store.delete("p", f"/c{i}/"),
            store.write("p", Write(f"/c{i}/m", "text/plain", b"")),
            return_exceptions=True,
        )
        assert not isinstance(results[1], BaseException)
        assert results[0] is None or isinstance(results[0], Conflict)
        assert await store.get("p", f"/c{i}/") is not None
        assert await store.children("p", f"/c{i}/") == [f"/c{i}/m"]
    with pytest.raises(NotFound):
        await store.delete("p", "/nothing")
    with pytest.raises(NotFound):
        await store.write("q", Write("/x", "text/plain", b""))  # no such pod


async def test_listings_sort_by_bytes_and_arrivals_page_stably(store: Any) -> None:
    names = ["b", "B", "a", "é", "Z", "_", "a0", "~", "ä"]
    for name in names:
        await store.write("p", Write(f"/l/{name}", "text/plain", b""))
    expected = sorted(f"/l/{n}" for n in names)  # code points, i.e. the bytes of UTF-8
    assert expected == sorted(expected, key=lambda p: p.encode())
    assert await store.children("p", "/l/") == expected
    assert (
        await store.children("p", "/l/", after="/l/a", limit=3) == expected[expected.index("/l/a") + 1 :][:3]
    )
    assert [p async for p in store.iter_children("p", "/l/", page=2)] == expected
    page = await store.arrivals("p", "/l/", 0, 0.0, 4)
    rest = await store.arrivals("p", "/l/", page[-1][0], 0.0, 100)
    assert [r.path for _, r, _ in page + rest] == [f"/l/{n}" for n in names]


async def test_keys_pod_keys_and_epoch(store: Any) -> None:
    await store.insert_key(ApiKey("k1", "p", BOB, 1.0, False, "crm"), "hash")
    assert await store.key_record("k1") == (ApiKey("k1", "p", BOB, 1.0, False, "crm"), "hash")
    assert await store.revoke_key("p", "k1") and not await store.revoke_key("p", "nope")
    assert [k.revoked for k in await store.list_keys("p")] == [True]
    assert await store.pod_key("p") is None and await store.pods() == ["p"]
    before = await store.acl_epoch()
    await store.write("p", Write("/.acl", "text/turtle", b""))
    assert await store.acl_epoch() != before
    with pytest.raises(Conflict):
        await store.create_pod("p", [])


# -- schema migrations ----------------------------------------------------------------------------------


def test_pod_migrate_applies_and_reports_the_schema_version(backend: Databases, tmp_path: Path) -> None:
    steps = postgres.MIGRATIONS if backend.postgres else sqlite.MIGRATIONS
    latest = steps[-1].version
    first = run("migrate", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        *(f"Applied migration {step.version}: {step.name}" for step in steps),
        f"Database schema ({backend.kind}) is at version {latest}",
    ]
    again = run("migrate", "--data-dir", str(tmp_path))
    assert again.stdout.splitlines() == [f"Database schema ({backend.kind}) is at version {latest}"]


async def test_processes_starting_at_once_apply_each_step_once(backend: Databases, tmp_path: Path) -> None:
    config = make_config(tmp_path, demo_pod="")
    steps = postgres.MIGRATIONS if backend.postgres else sqlite.MIGRATIONS
    if backend.postgres:
        accessors: list[Any] = [PostgresAccessor(config.database) for _ in range(4)]
        await asyncio.gather(*(x.open() for x in accessors))
    else:  # separate connections from threads, as separate processes would open the file
        accessors = [SqliteAccessor(config.database_path) for _ in range(4)]
        await asyncio.gather(*(x.open() for x in accessors))
    try:
        # one process applies every step; the others find nothing left to do
        assert sorted(len(x.applied) for x in accessors) == [0, 0, 0, len(steps)]
        assert [await x.schema_version() for x in accessors] == [steps[-1].version] * 4
    finally:
        for x in accessors:
            await x.close()


async def test_a_newer_schema_is_refused(backend: Databases, tmp_path: Path) -> None:
    config = make_config(tmp_path, demo_pod="")
    opened = await open_backend(config)
    await opened.close()
    if backend.postgres:
        schema = backend.schema_of(config.database)
        admin().execute(f"INSERT INTO \"{schema}\".schema_migrations(version, name) VALUES (99, 'future')")
    else:
        with sqlite3.connect(config.database_path) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    latest = (postgres.MIGRATIONS if backend.postgres else sqlite.MIGRATIONS)[-1].version
    with pytest.raises(DatabaseError, match=f"at version 99; this server knows versions up to {latest}"):
        await open_backend(config)
    refused = run("list", "--data-dir", str(tmp_path))
    assert refused.returncode == 1 and "schema is at version 99" in refused.stderr


async def test_a_sqlite_database_from_before_numbered_migrations_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "pod.sqlite3"
    with sqlite3.connect(path) as conn:  # what the server created before: no schema_migrations
        for statement in sqlite.MIGRATIONS[0].sql.split(";"):
            conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO pods VALUES ('old', 0)")
    accessor = SqliteAccessor(path)
    await accessor.open()
    try:
        # Step 1 is recorded as it stands (IF NOT EXISTS keeps its tables); the later ones apply.
        assert [m.version for m in accessor.applied] == [m.version for m in sqlite.MIGRATIONS]
        assert await accessor.pods() == ["old"]
        assert await accessor.schema_version() == sqlite.MIGRATIONS[-1].version
    finally:
        await accessor.close()


@only_postgres
async def test_the_acl_epoch_survives_a_lost_listener(backend: Databases, tmp_path: Path) -> None:
    """SQLite reads its epoch from the file on every call; PostgreSQL's comes from notifications."""
    config = make_config(tmp_path, demo_pod="")
    writer: Backend = await open_backend(config)
    reader = PostgresAccessor(config.database)
    await reader.open()
    try:
        await writer.accessor.create_pod("p", [])

        async def moves(since: int) -> int:
            for _ in range(200):
                epoch = await reader.acl_epoch()
                if epoch != since:
                    return epoch
                await asyncio.sleep(0.01)
            raise AssertionError("the epoch did not move")

        epoch = await reader.acl_epoch()
        await writer.accessor.write("p", Write("/.acl", "text/turtle", b""))
        epoch = await moves(epoch)  # told by NOTIFY
        listener = reader._listener
        assert listener is not None
        admin().execute(f"SELECT pg_terminate_backend({listener.get_server_pid()})")
        epoch = await moves(epoch)  # reconnected, and assumed a change may have been missed
        for _ in range(200):
            if reader._listening:
                break
            await asyncio.sleep(0.01)
        epoch = await reader.acl_epoch()
        await writer.accessor.write("p", Write("/a.acl", "text/turtle", b""))
        await moves(epoch)
    finally:
        await reader.close()
        await writer.close()
