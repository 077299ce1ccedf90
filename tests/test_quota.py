"""Per-pod storage quotas (``pod_quota``) and the byte counts they rest on, through HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from pod.grants import grant
from pod.pods import create_pod
from pod.state import API_KEYS, CONFIG, STORE
from tests.conftest import ClientFactory
from tests.databases import db

BASE = "http://pod.test/"
TTL = {"Content-Type": "text/turtle"}
BIN = {"Content-Type": "application/octet-stream"}
SPARQL = {"Content-Type": "application/sparql-update"}
JSON = {"Content-Type": "application/json"}

Client = TestClient[Any, Any]


def as_(pod: str) -> dict[str, str]:
    return {"Authorization": f"WebID {BASE}{pod}/profile/card#me"}


def counted(client: Client, pod: str) -> int:
    """The pod's bytes summed from its resources directly: what the kept figure must equal."""
    with db(client.server.app[CONFIG].data_dir) as conn:
        (total,) = conn.execute(
            "SELECT coalesce(sum(length(body)), 0) FROM resources WHERE pod=?", (pod,)
        ).fetchone()
    return int(total)


async def usage(client: Client, pod: str) -> int:
    return int(await client.server.app[STORE].accessor.usage(pod))


async def pods(client: Client, *names: str) -> str:
    """Create ``names`` beside alice; alice may publish to each on topic news; alice's app key."""
    app = client.server.app
    store = app[STORE]
    for name in names:
        await create_pod(store.accessor, store.locator, name)
        await grant(store, name, BASE + "alice/profile/card#me", "news", "publish")
    _, key = await app[API_KEYS].create("alice", "https://app.example/#me")
    return key


async def test_each_pods_bytes_are_kept_exact_by_every_kind_of_write(make_client: ClientFactory) -> None:
    # Written without a quota, then served with one: the count starts from what is stored.
    before = await make_client()
    assert (await before.put("/alice/old.bin", headers=BIN, data=b"o" * 3000)).status == 201
    await before.close()
    client = await make_client(pod_quota=10**9)
    key = await pods(client, "bob")
    assert await usage(client, "alice") == counted(client, "alice") > 0  # the pod's own documents
    assert (await client.put("/alice/a.bin", headers=BIN, data=b"x" * 1000)).status == 201
    assert (await client.put("/alice/a.bin", headers=BIN, data=b"y" * 5000)).status == 204  # grows
    assert (await client.put("/alice/a.bin", headers=BIN, data=b"z" * 10)).status == 204  # shrinks
    assert (await client.put("/alice/deep/er/n.ttl", headers=TTL, data="<#a> <#b> <#c> .")).status == 201
    patched = await client.patch(
        "/alice/deep/er/n.ttl", headers=SPARQL, data="INSERT DATA { <#d> <#e> <#f> . }"
    )
    assert patched.status == 204
    assert (await client.post("/alice/deep/", headers=BIN, data=b"p" * 777)).status == 201
    assert (await client.delete("/alice/a.bin")).status == 204
    event = {"recipient": BASE + "bob/profile/card#me", "topic": "news/daily", "data": {"n": 1}}
    published = await client.post(
        "/alice/publish/", data=json.dumps([event] * 3), headers={**JSON, "x-api-key": key}
    )
    assert published.status == 201
    notification = {"@context": "https://www.w3.org/ns/activitystreams", "type": "Announce", "summary": "hi"}
    ldn = await client.post(
        "/bob/inbox/",
        data=json.dumps(notification),
        headers={"Content-Type": "application/ld+json", **as_("alice")},
    )
    assert ldn.status == 201
    for pod in ("alice", "bob"):
        assert await usage(client, pod) == counted(client, pod), pod
    assert await usage(client, "nobody") == 0


async def test_writes_past_the_quota_are_413_and_store_nothing(make_client: ClientFactory) -> None:
    probe = await make_client(pod_quota=10**9)  # counting, with room to spare
    base = await usage(probe, "alice")  # what a new pod holds
    await probe.close()
    client = await make_client(pod_quota=base + 2000)
    assert (await client.put("/alice/a.bin", headers=BIN, data=b"a" * 1500)).status == 201
    refused = await client.put("/alice/b.bin", headers=BIN, data=b"b" * 600)
    assert refused.status == 413
    message = (await refused.json())["error"]
    assert message.startswith("Storage quota exceeded: pod alice holds") and str(base + 2000) in message
    assert (await client.get("/alice/b.bin")).status == 404
    # Replacing a document counts only what it adds; shrinking and deleting are always allowed.
    assert (await client.put("/alice/a.bin", headers=BIN, data=b"a" * 2000)).status == 204
    assert (await client.put("/alice/a.bin", headers=BIN, data=b"a" * 2001)).status == 413
    assert (await client.post("/alice/", headers=BIN, data=b"c")).status == 413
    patch = "INSERT DATA { <#a> <#b> <#c> . }"
    assert (await client.patch("/alice/n.ttl", headers=SPARQL, data=patch)).status == 413
    assert (await client.put("/alice/a.bin", headers=BIN, data=b"a" * 100)).status == 204
    assert (await client.patch("/alice/n.ttl", headers=SPARQL, data=patch)).status == 201
    assert (await client.delete("/alice/a.bin")).status == 204
    assert (await client.put("/alice/b.bin", headers=BIN, data=b"b" * 600)).status == 201
    assert await usage(client, "alice") == counted(client, "alice") <= base + 2000


async def test_events_and_a_full_pod(make_client: ClientFactory) -> None:
    probe = await make_client(pod_quota=10**9)  # counting, with room to spare
    base = await usage(probe, "alice")
    await probe.close()
    client = await make_client(pod_quota=base + 1500)
    key = await pods(client, "bob", "carol")
    app_key = {**JSON, "x-api-key": key}
    # Carol fills her pod; a publish to her and bob is accepted, bob gets his copy, and carol's
    # delivery fails with her server's reason (the worker's local delivery), her inbox untouched.
    room = base + 1500 - await usage(client, "carol")
    assert room > 100
    fill = await client.put("/carol/fill.bin", headers={**BIN, **as_("carol")}, data=b"f" * (room - 10))
    assert fill.status == 201
    event = {
        "recipient": [BASE + "bob/profile/card#me", BASE + "carol/profile/card#me"],
        "topic": "news/daily",
        "data": {"n": 1},
    }
    published = await client.post("/alice/publish/", data=json.dumps(event), headers=app_key)
    assert published.status == 201, await published.text()
    url = (await published.json())["id"]
    for _ in range(200):
        got = await client.get(
            url.removeprefix(BASE[:-1]), headers={"Accept": "application/json", **as_("alice")}
        )
        states = {d["recipient"]: d for d in (await got.json())["deliveries"]}
        if all(d["state"] in ("delivered", "failed") for d in states.values()):
            break
        await asyncio.sleep(0.05)
    assert states[BASE + "bob/profile/card#me"]["state"] == "delivered"
    carol = states[BASE + "carol/profile/card#me"]
    assert carol["state"] == "failed" and carol["lastError"].startswith(
        "HTTP 413: Storage quota exceeded: pod carol"
    )
    inbox = await client.get("/carol/inbox/", headers={"Accept": "application/json", **as_("carol")})
    assert (await inbox.json())["contains"] == []
    # An event carol took before she was full, sent again (its sender missed the answer), is
    # still answered as a copy she holds: 200, not 413.
    event_id = BASE + "alice/publish/" + "b" * 32
    sent = {"id": event_id, "topic": "news/daily", "data": {"n": 0}}
    await client.delete("/carol/fill.bin", headers=as_("carol"))
    first = await client.post("/carol/inbox/", data=json.dumps(sent), headers={**JSON, **as_("alice")})
    assert first.status == 201
    room = base + 1500 - await usage(client, "carol")
    fill = await client.put("/carol/fill.bin", headers={**BIN, **as_("carol")}, data=b"f" * (room - 10))
    assert fill.status == 201
    again = await client.post("/carol/inbox/", data=json.dumps(sent), headers={**JSON, **as_("alice")})
    assert (again.status, again.headers["Location"]) == (200, first.headers["Location"])
    other = {**sent, "id": BASE + "alice/publish/" + "c" * 32}
    assert (
        await client.post("/carol/inbox/", data=json.dumps(other), headers={**JSON, **as_("alice")})
    ).status == 413
    # An LDN notification to the full pod is refused to its sender.
    note = {"@context": "https://www.w3.org/ns/activitystreams", "type": "Announce", "summary": "x" * 100}
    ldn = await client.post(
        "/carol/inbox/", data=json.dumps(note), headers={"Content-Type": "application/ld+json", **as_("bob")}
    )
    assert ldn.status == 413
    # The publisher's own pod full: the app gets 413 and nothing is stored or sent.
    room = base + 1500 - await usage(client, "alice")
    assert (await client.put("/alice/fill.bin", headers=BIN, data=b"f" * (room - 10))).status == 201
    before = counted(client, "bob")
    refused = await client.post(
        "/alice/publish/",
        data=json.dumps({**event, "recipient": BASE + "bob/profile/card#me"}),
        headers=app_key,
    )
    assert refused.status == 413
    assert "pod alice" in (await refused.json())["error"]
    assert counted(client, "bob") == before
    for pod in ("alice", "bob", "carol"):
        assert await usage(client, pod) == counted(client, pod)
