"""Live updates in the solid-0.1 protocol (``pod.legacy_updates``) over real HTTP and WebSockets:
discovery by ``Updates-Via``, ``sub`` / ``ack`` / ``pub``, read access required (as the agent the
``auth`` line proves, or the public), and the containers a write creates on its way reported too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from pod.state import LEGACY_UPDATES
from tests.conftest import ALICE

BASE = "http://pod.test/"
BOB = BASE + "bob/profile/card#me"
TURTLE = {"Content-Type": "text/turtle"}
PUBLIC_READ = f"""@prefix acl: <http://www.w3.org/ns/auth/acl#> .
<#owner> a acl:Authorization ; acl:agent <{ALICE}> ; acl:accessTo <./> ; acl:default <./> ;
    acl:mode acl:Read, acl:Write, acl:Control .
<#public> a acl:Authorization ; acl:agentClass <http://xmlns.com/foaf/0.1/Agent> ;
    acl:accessTo <./> ; acl:default <./> ; acl:mode acl:Read .
"""

Client = TestClient[Any, Any]


async def updates(client: Client, *lines: str) -> aiohttp.ClientWebSocketResponse:
    """A solid-0.1 socket at the ``Updates-Via`` a resource names, with ``lines`` sent."""
    head = await client.head("/alice/")
    via = head.headers["Updates-Via"]
    assert via == "ws://pod.test/.updates"
    ws = await client.ws_connect("/.updates", protocols=("solid-0.1",))
    assert ws.protocol == "solid-0.1"
    assert await said(ws) == "protocol solid-0.1"
    for line in lines:
        await ws.send_str(line)
    return ws


async def said(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> str:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return str(msg.data)


async def silent(ws: aiohttp.ClientWebSocketResponse, timeout: float = 0.4) -> None:
    with pytest.raises(asyncio.TimeoutError):
        msg = await ws.receive(timeout=timeout)
        pytest.fail(f"unexpected message {msg}")


async def test_sub_ack_and_pub_for_a_public_resource_and_its_container(client: Client) -> None:
    await client.put("/alice/pub/", headers=TURTLE)
    assert (await client.put("/alice/pub/.acl", data=PUBLIC_READ, headers=TURTLE)).status == 201
    container, doc = BASE + "alice/pub/", BASE + "alice/pub/doc.ttl"
    ws = await updates(client, "auth undefined", "dpop undefined", f"sub {container}", f"sub {doc}")
    assert [await said(ws), await said(ws)] == [f"ack {container}", f"ack {doc}"]
    assert (await client.put("/alice/pub/doc.ttl", data="<#a> <#b> 1 .", headers=TURTLE)).status == 201
    assert {await said(ws), await said(ws)} == {f"pub {doc}", f"pub {container}"}  # created: both
    assert (await client.put("/alice/pub/doc.ttl", data="<#a> <#b> 2 .", headers=TURTLE)).status == 204
    assert await said(ws) == f"pub {doc}"  # updated: the container's membership is unchanged
    await silent(ws)
    assert (await client.delete("/alice/pub/doc.ttl")).status == 204
    assert {await said(ws), await said(ws)} == {f"pub {doc}", f"pub {container}"}
    await ws.close()


async def test_a_private_resource_needs_a_proven_reader(client: Client) -> None:
    doc = BASE + "alice/private/doc.ttl"
    assert (await client.put("/alice/private/doc.ttl", data="<#a> <#b> 1 .", headers=TURTLE)).status == 201
    # The HTTP upgrade carried alice's credentials (the test client sends them on every request),
    # but only the auth line counts: without it this is the public, which may not read.
    anonymous = await updates(client, f"sub {doc}")
    assert await said(anonymous) == f"error {doc} forbidden"
    stranger = await updates(client, f"auth WebID {BOB}", f"sub {doc}")
    assert await said(stranger) == f"error {doc} forbidden"
    owner = await updates(client, f"auth WebID {ALICE}", f"sub {doc}")
    assert await said(owner) == f"ack {doc}"
    await client.put("/alice/private/doc.ttl", data="<#a> <#b> 2 .", headers=TURTLE)
    assert await said(owner) == f"pub {doc}"
    await silent(anonymous)
    await silent(stranger)
    for ws in (anonymous, stranger, owner):
        await ws.close()


async def test_access_revoked_stops_pubs(client: Client) -> None:
    await client.put("/alice/pub/", headers=TURTLE)
    assert (await client.put("/alice/pub/.acl", data=PUBLIC_READ, headers=TURTLE)).status == 201
    doc = BASE + "alice/pub/doc.ttl"
    ws = await updates(client, f"sub {doc}")
    assert await said(ws) == f"ack {doc}"
    owner_only = PUBLIC_READ.split("<#public>")[0]
    assert (await client.put("/alice/pub/.acl", data=owner_only, headers=TURTLE)).status == 204
    await client.put("/alice/pub/doc.ttl", data="<#a> <#b> 1 .", headers=TURTLE)
    await silent(ws)
    await ws.close()


async def test_bad_lines_are_answered_and_the_socket_stays(client: Client) -> None:
    ws = await updates(client, "sub https://elsewhere.example/doc", "frobnicate", f"sub {BASE}alice/")
    assert await said(ws) == "error https://elsewhere.example/doc is not a resource of this server"
    assert await said(ws) == "error unknown command frobnicate"
    assert await said(ws) == f"error {BASE}alice/ forbidden"  # the pod root is not public here
    await ws.close()
    plain = await client.get("/.updates")
    assert plain.status == 400
    assert "WebSocket" in (await plain.json())["error"]


async def test_intermediate_containers_are_reported_as_created(client: Client) -> None:
    """A PUT (or PATCH) below containers that do not exist creates them; each is a Create, so the
    standard channels and solid-0.1 both hear of it."""
    await client.put("/alice/pub/", headers=TURTLE)
    assert (await client.put("/alice/pub/.acl", data=PUBLIC_READ, headers=TURTLE)).status == 201
    root, middle = BASE + "alice/pub/", BASE + "alice/pub/a/"
    ws = await updates(client, f"sub {root}", f"sub {middle}")
    assert [await said(ws), await said(ws)] == [f"ack {root}", f"ack {middle}"]
    service = "/alice/.well-known/notifications/WebSocketChannel2023"
    body = {
        "@context": ["https://www.w3.org/ns/solid/notification/v1"],
        "type": "http://www.w3.org/ns/solid/notifications#WebSocketChannel2023",
        "topic": root,
    }
    described = await (
        await client.post(service, data=json.dumps(body), headers={"Content-Type": "application/ld+json"})
    ).json()
    channel = await client.ws_connect("/" + described["receiveFrom"].split("/", 3)[3])
    made = await client.put("/alice/pub/a/b/doc.ttl", data="<#a> <#b> 1 .", headers=TURTLE)
    assert made.status == 201
    # a/ was created (pub a/, and its container pub/ gained a member), then a/b/ (a/ gained one)
    heard = sorted([await said(ws), await said(ws), await said(ws)])
    assert heard == [f"pub {root}", f"pub {middle}", f"pub {middle}"]
    added = json.loads(await said(channel))
    assert (added["type"], added["object"], added["target"]) == ("Add", middle, root)
    patched = await client.patch(
        "/alice/pub/c/doc.ttl",
        data="INSERT DATA { <#a> <#b> 1 . }",
        headers={"Content-Type": "application/sparql-update"},
    )
    assert patched.status == 201
    assert await said(ws) == f"pub {root}"
    added = json.loads(await said(channel))
    assert (added["type"], added["object"]) == ("Add", BASE + "alice/pub/c/")
    await silent(ws)
    await ws.close()
    await channel.close()


async def test_a_change_during_the_access_check_is_heard_after_the_ack(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients write right after sending ``sub``, without waiting for the ``ack`` (solid-crud-tests
    does): a change committed while the subscription's access check is still under way is held
    and sent once it is granted."""
    legacy = client.app[LEGACY_UPDATES]
    checking, release = asyncio.Event(), asyncio.Event()
    real = legacy._may_read

    async def slow(*args: Any) -> bool:
        checking.set()
        await release.wait()
        return await real(*args)

    monkeypatch.setattr(legacy, "_may_read", slow)
    doc = BASE + "alice/private/doc.ttl"
    ws = await updates(client, f"auth WebID {ALICE}", f"sub {doc}")
    await asyncio.wait_for(checking.wait(), 5)
    assert (await client.put("/alice/private/doc.ttl", data="<#a> <#b> 1 .", headers=TURTLE)).status == 201
    release.set()
    assert [await said(ws), await said(ws)] == [f"ack {doc}", f"pub {doc}"]
    await ws.close()
