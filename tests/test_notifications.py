"""Live updates (Solid Notifications Protocol, WebSocketChannel2023) over real HTTP and WebSockets:
discovery, subscription and its refusals, the messages for resource and container changes, an
event arriving in an inbox, access revoked, expiry and the limits."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from rdflib import Graph, URIRef

from pod.grants import grant
from pod.notifications import NOTIFY, Notifications
from pod.pods import create_pod
from pod.state import API_KEYS, NOTIFICATIONS, STORE
from tests.conftest import ALICE, ClientFactory

BASE = "http://pod.test/"
BOB = BASE + "bob/profile/card#me"
SERVICE = BASE + "alice/.well-known/notifications/WebSocketChannel2023"
CHANNEL_TYPE = "http://www.w3.org/ns/solid/notifications#WebSocketChannel2023"
CONTEXT = "https://www.w3.org/ns/solid/notification/v1"
TURTLE = {"Content-Type": "text/turtle"}

Client = TestClient[Any, Any]


def as_(webid: str) -> dict[str, str]:
    return {"Authorization": f"WebID {webid}"}


def request_body(topic: str, **extra: Any) -> dict[str, Any]:
    return {"@context": [CONTEXT], "type": CHANNEL_TYPE, "topic": topic, **extra}


async def subscribe(client: Client, topic: str, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    return await client.post(
        "/alice/.well-known/notifications/WebSocketChannel2023",
        data=json.dumps(request_body(topic, **extra)),
        headers={"Content-Type": "application/ld+json", **(headers or {})},
    )


async def channel(client: Client, topic: str, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    response = await subscribe(client, topic, headers, **extra)
    assert response.status == 200, await response.text()
    return await response.json()


def socket_path(receive_from: str) -> str:
    return urlsplit(receive_from).path


async def connect(client: Client, description: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
    return await client.ws_connect(socket_path(description["receiveFrom"]))


async def next_message(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def assert_silent(ws: aiohttp.ClientWebSocketResponse, timeout: float = 0.4) -> None:
    with pytest.raises(asyncio.TimeoutError):
        msg = await ws.receive(timeout=timeout)
        pytest.fail(f"unexpected message {msg}")


def check_shape(message: dict[str, Any], kind: str, obj: str) -> None:
    assert message["@context"] == ["https://www.w3.org/ns/activitystreams", CONTEXT]
    assert message["type"] == kind
    assert message["object"] == obj
    assert message["id"].startswith("urn:uuid:")
    published = datetime.fromisoformat(message["published"].replace("Z", "+00:00"))
    assert abs(published.timestamp() - time.time()) < 30


# -- discovery -------------------------------------------------------------------------------------
async def test_discovery_from_the_storage_description(client: Client) -> None:
    response = await client.get("/alice/.well-known/solid", headers={"Accept": "text/turtle"})
    assert response.status == 200
    graph = Graph().parse(data=await response.text(), format="turtle")
    desc = URIRef(BASE + "alice/.well-known/solid")
    services = list(graph.objects(desc, NOTIFY.subscription))
    assert services == [URIRef(SERVICE)]
    assert (URIRef(SERVICE), NOTIFY.channelType, NOTIFY.WebSocketChannel2023) in graph
    assert (URIRef(SERVICE), NOTIFY.feature, NOTIFY.endAt) in graph

    # the service describes itself, in Turtle and in JSON-LD, without authentication
    anonymous = {"Authorization": ""}
    turtle = await client.get(socket_path(SERVICE), headers={"Accept": "text/turtle", **anonymous})
    assert turtle.status == 200 and turtle.headers["Content-Type"].startswith("text/turtle")
    own = Graph().parse(data=await turtle.text(), format="turtle")
    assert (URIRef(SERVICE), NOTIFY.channelType, NOTIFY.WebSocketChannel2023) in own
    assert set(own.objects(URIRef(SERVICE), NOTIFY.feature)) == {NOTIFY.endAt, NOTIFY.state}
    ld = await client.get(socket_path(SERVICE), headers={"Accept": "application/ld+json"})
    doc = await ld.json(content_type=None)
    assert doc["id"] == SERVICE and doc["channelType"] == CHANNEL_TYPE and doc["@context"] == [CONTEXT]
    assert "POST" in ld.headers["Allow"]


# -- subscribing -----------------------------------------------------------------------------------
async def test_subscribe_answers_the_channel(client: Client) -> None:
    topic = BASE + "alice/notes/a.ttl"
    end = datetime.fromtimestamp(time.time() + 600, UTC).isoformat().replace("+00:00", "Z")
    response = await subscribe(client, topic, endAt=end)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/ld+json")
    body = await response.json()
    assert body["@context"] == [CONTEXT]
    assert body["type"] == CHANNEL_TYPE and body["topic"] == topic
    assert body["id"].startswith(BASE + "alice/.well-known/notifications/channels/")
    receive_from = body["receiveFrom"]
    assert receive_from.startswith("ws://pod.test/alice/.well-known/notifications/ws/")
    assert len(receive_from.rsplit("/", 1)[1]) >= 40  # an unguessable token
    end_at = datetime.fromisoformat(body["endAt"].replace("Z", "+00:00")).timestamp()
    assert abs(end_at - time.time() - 600) < 5
    other = await (await subscribe(client, topic)).json()
    assert other["receiveFrom"] != receive_from and other["id"] != body["id"]


async def test_subscribe_in_turtle(client: Client) -> None:
    topic = BASE + "alice/notes/"
    body = f"<#c> a <{CHANNEL_TYPE}> ; <{NOTIFY.topic}> <{topic}> ."
    response = await client.post(socket_path(SERVICE), data=body, headers=TURTLE)
    assert response.status == 200, await response.text()
    assert (await response.json())["topic"] == topic


async def test_subscribe_requires_authentication(make_client: ClientFactory) -> None:
    anonymous = await make_client(as_agent=None)
    response = await subscribe(anonymous, BASE + "alice/profile/card")  # publicly readable, still 401
    assert response.status == 401
    assert "error" in await response.json()


async def test_subscribe_requires_read_access(client: Client) -> None:
    await client.put("/alice/private.ttl", data="<#a> <#b> <#c> .", headers=TURTLE)
    denied = await subscribe(client, BASE + "alice/private.ttl", as_(BOB))
    assert denied.status == 403
    assert "error" in await denied.json()
    # read access on a public resource is enough for anyone authenticated
    public = await subscribe(client, BASE + "alice/profile/card", as_(BOB))
    assert public.status == 200


@pytest.mark.parametrize(
    "content_type,body,status,message",
    [
        ("application/ld+json", b"", 400, "No request body"),
        ("application/ld+json", b"{not json", 400, "not valid JSON"),
        ("application/ld+json", b"[1]", 400, "JSON object"),
        ("text/plain", b"hello", 415, "application/ld+json"),
        ("application/ld+json", {"@context": [CONTEXT], "topic": BASE + "alice/"}, 422, "channel type"),
        (
            "application/ld+json",
            request_body(BASE + "alice/", type="notify:LDNChannel2023"),
            422,
            "unsupported",
        ),
        ("application/ld+json", {"@context": [CONTEXT], "type": CHANNEL_TYPE}, 422, "topic"),
        ("application/ld+json", request_body("https://elsewhere.example/x"), 422, "not a resource of this"),
        ("application/ld+json", request_body(BASE + "bob/x"), 422, "not a resource of this"),
        ("application/ld+json", request_body(BASE + "alice/", rate="PT10S"), 422, "rate"),
        ("application/ld+json", request_body(BASE + "alice/", endAt="2001-01-01T00:00:00Z"), 422, "future"),
        ("application/ld+json", request_body(BASE + "alice/", endAt="soon"), 422, "dateTime"),
        ("application/ld+json", {"@context": "https://evil.example/ctx", "topic": "x"}, 400, "context"),
    ],
)
async def test_bad_subscription_requests(
    client: Client, content_type: str, body: Any, status: int, message: str
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(socket_path(SERVICE), data=data, headers={"Content-Type": content_type})
    assert response.status == status, await response.text()
    error = (await response.json())["error"]
    assert message.lower() in error.lower()


# -- messages --------------------------------------------------------------------------------------
async def test_create_update_delete_of_a_resource(client: Client) -> None:
    topic = BASE + "alice/notes/a.ttl"
    ws = await connect(client, await channel(client, topic))
    created = await client.put("/alice/notes/a.ttl", data="<#a> <#b> 1 .", headers=TURTLE)
    assert created.status == 201
    message = await next_message(ws)
    check_shape(message, "Create", topic)
    assert message["state"] == created.headers["ETag"]
    updated = await client.put("/alice/notes/a.ttl", data="<#a> <#b> 2 .", headers=TURTLE)
    message = await next_message(ws)
    check_shape(message, "Update", topic)
    assert message["state"] == updated.headers["ETag"] != created.headers["ETag"]
    patched = await client.patch(
        "/alice/notes/a.ttl",
        data="INSERT DATA { <#a> <#b> 3 . }",
        headers={"Content-Type": "application/sparql-update"},
    )
    assert patched.status == 204
    check_shape(await next_message(ws), "Update", topic)
    assert (await client.delete("/alice/notes/a.ttl")).status == 204
    message = await next_message(ws)
    check_shape(message, "Delete", topic)
    assert "state" not in message
    # a change to another resource says nothing on this channel
    await client.put("/alice/notes/b.ttl", data="<#a> <#b> 1 .", headers=TURTLE)
    await assert_silent(ws)
    await ws.close()


async def test_container_add_and_remove(client: Client) -> None:
    await client.put("/alice/notes/", headers={**TURTLE, "If-None-Match": "*"})
    container = BASE + "alice/notes/"
    ws = await connect(client, await channel(client, container))
    posted = await client.post("/alice/notes/", data="<#x> <#y> 1 .", headers={**TURTLE, "Slug": "one"})
    assert posted.status == 201
    member = posted.headers["Location"]
    message = await next_message(ws)
    check_shape(message, "Add", member)
    assert message["target"] == container
    # updating a member is not a change of the container's membership
    await client.put("/alice/notes/one", data="<#x> <#y> 2 .", headers=TURTLE)
    await assert_silent(ws)
    assert (await client.delete("/alice/notes/one")).status == 204
    message = await next_message(ws)
    check_shape(message, "Remove", member)
    assert message["target"] == container
    await ws.close()


async def test_inbox_event_is_pushed_live(make_client: ClientFactory) -> None:
    client = await make_client()
    app = client.app
    store = app[STORE]
    producer = BASE + "producer/profile/card#me"
    await create_pod(store.accessor, store.locator, "producer")
    await grant(store, "alice", producer, "realestate", "publish")
    _, key = await app[API_KEYS].create("producer", "https://crm.example/app#id")
    ws = await connect(client, await channel(client, BASE + "alice/inbox/"))
    event = {"recipient": ALICE, "topic": "realestate/contact#add", "data": {"name": "Bruce"}}
    published = await client.post(
        "/producer/publish/",
        data=json.dumps(event),
        headers={"Content-Type": "application/json", "x-api-key": key},
    )
    assert published.status == 201, await published.text()
    message = await next_message(ws, timeout=10)
    check_shape(message, "Add", message["object"])
    assert message["target"] == BASE + "alice/inbox/"
    assert message["object"].startswith(BASE + "alice/inbox/")
    stored = await client.get(socket_path(message["object"]), headers={"Accept": "application/ld+json"})
    assert (await stored.json())["id"] == published.headers["Location"]
    await ws.close()


async def test_access_revoked_stops_messages(client: Client) -> None:
    await client.put("/alice/shared/", headers={**TURTLE, "If-None-Match": "*"})
    acl = f"""@prefix acl: <http://www.w3.org/ns/auth/acl#> .
<#owner> a acl:Authorization ; acl:agent <{ALICE}> ; acl:accessTo <./> ; acl:default <./> ;
    acl:mode acl:Read, acl:Write, acl:Control .
"""
    bob = f"""<#bob> a acl:Authorization ; acl:agent <{BOB}> ; acl:accessTo <./> ; acl:default <./> ;
    acl:mode acl:Read .
"""
    assert (await client.put("/alice/shared/.acl", data=acl + bob, headers=TURTLE)).status in (201, 204)
    topic = BASE + "alice/shared/doc.ttl"
    described = await channel(client, topic, as_(BOB))
    ws = await connect(client, described)
    await client.put("/alice/shared/doc.ttl", data="<#a> <#b> 1 .", headers=TURTLE)
    check_shape(await next_message(ws), "Create", topic)
    assert (await client.put("/alice/shared/.acl", data=acl, headers=TURTLE)).status == 204
    await client.put("/alice/shared/doc.ttl", data="<#a> <#b> 2 .", headers=TURTLE)
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg  # no Update: the socket is closed instead
    assert ws.close_code == 1008
    # its token is refused while the access is (any process could read the token, so it is the
    # access that is checked again, not whether this process remembers the channel)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(client, described)
    assert refused.value.status == 403


async def test_expired_channel_is_refused_and_closed(client: Client) -> None:
    soon = datetime.fromtimestamp(time.time() + 1.0, UTC).isoformat().replace("+00:00", "Z")
    live = await channel(client, BASE + "alice/notes/x", endAt=soon)
    later = await channel(client, BASE + "alice/notes/x", endAt=soon)
    ws = await connect(client, live)
    msg = await ws.receive(timeout=5)  # closed by the server when endAt passes
    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(client, later)
    assert refused.value.status == 404


async def test_unknown_token_and_plain_get_are_refused(client: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/alice/.well-known/notifications/ws/not-a-token")
    assert refused.value.status == 404
    described = await channel(client, BASE + "alice/")
    plain = await client.get(socket_path(described["receiveFrom"]))
    assert plain.status == 400


async def test_one_socket_per_channel_and_unsubscribe(client: Client) -> None:
    described = await channel(client, BASE + "alice/notes/x")
    ws = await connect(client, described)
    with pytest.raises(aiohttp.WSServerHandshakeError) as twice:
        await connect(client, described)
    assert twice.value.status == 409
    assert (await client.delete(socket_path(described["id"]), headers=as_(BOB))).status == 404
    assert (await client.delete(socket_path(described["id"]))).status == 204
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    with pytest.raises(aiohttp.WSServerHandshakeError) as gone:
        await connect(client, described)
    assert gone.value.status == 404


async def test_state_feature_reports_a_missed_change(client: Client) -> None:
    first = await client.put("/alice/notes/s.ttl", data="<#a> <#b> 1 .", headers=TURTLE)
    second = await client.put("/alice/notes/s.ttl", data="<#a> <#b> 2 .", headers=TURTLE)
    stale = await channel(client, BASE + "alice/notes/s.ttl", state=first.headers["ETag"])
    ws = await connect(client, stale)
    message = await next_message(ws)
    check_shape(message, "Update", BASE + "alice/notes/s.ttl")
    assert message["state"] == second.headers["ETag"]
    await ws.close()
    current = await channel(client, BASE + "alice/notes/s.ttl", state=second.headers["ETag"])
    ws = await connect(client, current)
    await assert_silent(ws)
    await ws.close()


# -- limits ----------------------------------------------------------------------------------------
async def test_channel_limits(client: Client) -> None:
    notifications: Notifications = client.app[NOTIFICATIONS]
    notifications.limits.per_agent = 2
    for _ in range(2):
        await channel(client, BASE + "alice/")
    refused = await subscribe(client, BASE + "alice/")
    assert refused.status == 429
    assert "limit 2" in (await refused.json())["error"]
    assert (await subscribe(client, BASE + "alice/profile/card", as_(BOB))).status == 200  # per agent
    notifications.limits.max_channels = 3
    total = await subscribe(client, BASE + "alice/profile/card", as_(BOB))
    assert total.status == 429
    notifications.limits.max_request = 100
    big = await subscribe(client, BASE + "alice/", as_(BOB), padding="x" * 200)
    assert big.status == 413


async def test_a_slow_reader_is_disconnected(client: Client) -> None:
    notifications: Notifications = client.app[NOTIFICATIONS]
    notifications.limits.queue_size = 2
    ws = await connect(client, await channel(client, BASE + "alice/notes/q"))
    for _ in range(10):  # faster than any socket: nothing is awaited between changes
        notifications.feed.publish("alice", "/notes/q", "Update")
    received = 0
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        received += 1
    assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1013
    assert received <= 2


# -- the notification gateway (@inrupt/solid-client-notifications) ---------------------------------
GATEWAY = "/alice/.well-known/notifications/gateway"
CONNECTION = "/alice/.well-known/notifications/websocket"
SOLID = "http://www.w3.org/ns/solid/terms#"


async def test_storage_description_names_the_gateway_first(client: Client) -> None:
    """The library reads ``solid:notificationGateway`` from the first subject of the storage
    description: the description itself comes first, in JSON-LD (what the library asks for) and
    in Turtle, whatever order rdflib would pick."""
    desc = BASE + "alice/.well-known/solid"
    ld = await client.get("/alice/.well-known/solid", headers={"Accept": "application/ld+json"})
    nodes = await ld.json(content_type=None)
    assert nodes[0]["@id"] == desc
    assert nodes[0][SOLID + "notificationGateway"] == [{"@id": BASE + GATEWAY[1:]}]
    turtle = await (await client.get("/alice/.well-known/solid", headers={"Accept": "text/turtle"})).text()
    subjects = [line.split(" ", 1)[0] for line in turtle.splitlines() if line.startswith("<")]
    assert subjects[0] == f"<{desc}>", turtle


async def test_gateway_negotiates_and_connects(make_client: ClientFactory) -> None:
    """Negotiation (public) names the connection endpoint; the connection answers the channel's
    socket as ``endpoint``, which delivers the same messages as a WebSocketChannel2023 channel."""
    anonymous = await make_client(as_agent=None)
    negotiated = await anonymous.post(GATEWAY, json={"protocols": ["ws"], "features": ["state", "rate"]})
    assert negotiated.status == 200, await negotiated.text()
    assert await negotiated.json() == {
        "endpoint": BASE + CONNECTION[1:],
        "protocol": "ws",
        "features": ["state"],
    }

    client = await make_client()
    topic = BASE + "alice/notes/g.ttl"
    answer = await client.post(CONNECTION, json={"topic": topic, "ttl": 600})
    assert answer.status == 200, await answer.text()
    described = await answer.json()
    assert described["protocol"] == "ws" and described["endpoint"] == described["receiveFrom"]
    assert described["type"] == CHANNEL_TYPE and described["topic"] == topic
    end_at = datetime.fromisoformat(described["endAt"].replace("Z", "+00:00")).timestamp()
    assert abs(end_at - time.time() - 600) < 5
    ws = await client.ws_connect(socket_path(described["endpoint"]))
    await client.put("/alice/notes/g.ttl", data="<#a> <#b> <#c> .", headers=TURTLE)
    check_shape(await next_message(ws), "Create", topic)
    await ws.close()


async def test_gateway_channel_ends_with_its_socket(client: Client) -> None:
    """The gateway's client cannot end a channel but by closing its socket: the channel goes with
    it (its socket URL is unknown from then on), so it no longer counts against the agent's limit."""
    notifications: Notifications = client.app[NOTIFICATIONS]
    notifications.limits.per_agent = 1
    for _ in range(3):
        answer = await client.post(CONNECTION, json={"topic": BASE + "alice/"})
        assert answer.status == 200, await answer.text()
        endpoint = (await answer.json())["endpoint"]
        ws = await client.ws_connect(socket_path(endpoint))
        await ws.close()
        for _ in range(50):  # the server notices the close on its own schedule
            gone = await client.get(socket_path(endpoint))
            if gone.status == 404:
                break
            await asyncio.sleep(0.02)
        assert gone.status == 404
    # A WebSocketChannel2023 channel outlives its socket until endAt or DELETE.
    notifications.limits.per_agent = 2
    described = await channel(client, BASE + "alice/")
    ws = await connect(client, described)
    await ws.close()
    await asyncio.sleep(0.1)
    again = await connect(client, described)
    await again.close()


@pytest.mark.parametrize(
    "path,body,agent,status,message",
    [
        (CONNECTION, {"topic": BASE + "alice/"}, None, 401, "Authentication required"),
        (CONNECTION, {"topic": BASE + "alice/private.ttl"}, BOB, 403, "lacks read access"),
        (CONNECTION, {"topic": BASE + "alice/", "rate": 10}, ALICE, 422, "rate"),
        (CONNECTION, {"topic": BASE + "alice/", "ttl": "soon"}, ALICE, 422, "ttl"),
        (CONNECTION, {"topic": BASE + "alice/", "ttl": True}, ALICE, 422, "ttl"),
        (CONNECTION, {"topic": ["x"]}, ALICE, 422, "topic"),
        (CONNECTION, {"topic": "https://elsewhere.example/x"}, ALICE, 422, "not a resource of this"),
        (CONNECTION, [1], ALICE, 400, "JSON object"),
        (GATEWAY, {"protocols": ["sse"], "features": []}, None, 422, '"ws"'),
        (GATEWAY, {"protocols": "ws"}, None, 400, "lists"),
    ],
)
async def test_gateway_refusals(
    client: Client, path: str, body: Any, agent: str | None, status: int, message: str
) -> None:
    await client.put("/alice/private.ttl", data="<#a> <#b> <#c> .", headers=TURTLE)
    response = await client.post(
        path, json=body, headers={"Authorization": f"WebID {agent}" if agent else ""}
    )
    assert response.status == status, await response.text()
    assert message.lower() in (await response.json())["error"].lower()
    assert (await client.get(GATEWAY)).status == 405
