"""Live updates with ``@inrupt/solid-client-notifications``, as a Solid app subscribes to them.

``tests/interop/notifications.mjs`` opens ``WebsocketNotification`` sockets with the library's own
discovery - the topic's storage (``Link: rel=pim:storage``), its description, the notification
gateway named there, the gateway's connection endpoint - logged in as bob through
``@inrupt/solid-client-authn-node`` (DPoP), as alice through a second client, or anonymously. It
writes every message the library delivers as a line, which the test waits for, while it changes the
pod over plain HTTP (the set-up: ``tests.interop_support``). Each message is checked for its
activity type, object and target against what was changed, and the resources it names are read
back from the server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from rdflib import Graph, URIRef
from rdflib.compare import isomorphic

from tests.interop_support import (
    INTEROP,
    Scenario,
    World,
    anonymous,
    issuer,  # noqa: F401 - a fixture
    login,
    node_packages,  # noqa: F401 - a fixture
    running_world,
    turtle,
)
from tests.oidc_issuer import OidcIssuer
from tests.procs import Procs, request, wait_for

SCRIPT = INTEROP / "notifications.mjs"
PUSH_TIMEOUT = 10.0
AS_CONTEXT = "https://www.w3.org/ns/activitystreams"
NOTIFY_CONTEXT = "https://www.w3.org/ns/solid/notification/v1"
NOTIFY = "http://www.w3.org/ns/solid/notifications#"
TOPIC = "realestate/contact#add"
EVENT = {"type": "AddAction", "object": {"type": "Contact", "name": "Bruce Wayne"}}
TURTLE = {"Content-Type": "text/turtle"}

# The HTTP surface is the same on every backend, which the rest of the suite covers; one run keeps
# this test within its time budget.
pytestmark = pytest.mark.backends("sqlite")


@pytest.fixture
def world(node_packages: Path, issuer: OidcIssuer, procs: Procs, tmp_path: Path) -> Iterator[World]:  # noqa: F811
    with running_world(SCRIPT, issuer, procs, tmp_path) as running:
        yield running


def pushed(scenario: Scenario, count: int) -> dict[str, list[dict[str, Any]]]:
    """The next ``count`` lines the script pushed, by the socket they came from (messages of two
    sockets may interleave either way; those of one socket keep their order)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for _ in range(count):
        push = scenario.next_push(PUSH_TIMEOUT)
        assert "notification" in push, push  # not a "closed" or "error" event
        found.setdefault(push["notification"], []).append(push["message"])
    return found


def assert_activity(message: dict[str, Any], kind: str, obj: str, target: str | None = None) -> None:
    """An Activity Streams 2.0 notification (Notifications Protocol §"Notification Message"): its
    type, object and target, an id of its own and when it was published."""
    assert message["type"] == kind, message
    assert message["object"] == obj, message
    if target is None:
        assert "target" not in message, message
    else:
        assert message["target"] == target, message
    assert AS_CONTEXT in message["@context"], message
    assert message["id"].startswith("urn:uuid:"), message
    published = datetime.fromisoformat(message["published"].replace("Z", "+00:00"))
    assert abs(published.timestamp() - time.time()) < 60, message


def server_requests(world: World, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The requests of a step that went to the pod server (not to the OpenID provider)."""
    return [r for r in answer["requests"] if r["url"].startswith(world.server.base_url)]


def socket_url(answer: dict[str, Any]) -> str:
    """The WebSocket URL the library connected to, from the connection endpoint's answer."""
    connection = next(
        r for r in answer["requests"] if r["url"].endswith("/.well-known/notifications/websocket")
    )
    endpoint: str = json.loads(connection["responseBody"])["endpoint"]
    return endpoint


def test_container_and_resource_channels(world: World) -> None:
    """A channel on a container reports members coming and going (Add, Remove, with the container
    as target); one on a document reports its updates and its deletion. Closing a socket ends its
    channel on the server, and new ones keep working."""
    scenario, bob, server = world.scenario, world.bob, world.server
    container, doc = world.url("notes/"), world.url("notes/first.ttl")
    assert bob("PUT", container, headers=TURTLE, body=b"").status == 201

    opened = scenario.run("subscribe", name="notes", topic=container)
    assert opened["result"]["status"] == "connected"
    gateway = world.url(".well-known/notifications/gateway")
    assert opened["result"]["gateway"] == gateway
    # The library's discovery, step by step: the server's origin has no storage description (pods
    # live below it), the topic's headers name its storage, whose description names the gateway.
    sent = [(r["method"], r["url"], r["status"]) for r in server_requests(world, opened)]
    assert sent == [
        ("GET", server.base_url + ".well-known/solid", 404),
        ("HEAD", container, 200),
        ("GET", world.url(".well-known/solid"), 200),
        ("POST", gateway, 200),
        ("POST", world.url(".well-known/notifications/websocket"), 200),
    ], opened
    negotiation, connection = server_requests(world, opened)[3:]
    assert json.loads(negotiation["body"]) == {"protocols": ["ws"], "features": []}
    assert json.loads(connection["body"]) == {"topic": container}
    assert connection["authorization"] == "DPoP"
    channel = json.loads(connection["responseBody"])
    assert channel["endpoint"] == channel["receiveFrom"]
    assert channel["endpoint"].startswith(f"ws://127.0.0.1:{server.port}/bob/.well-known/notifications/ws/")
    assert channel["type"] == NOTIFY + "WebSocketChannel2023" and channel["topic"] == container

    created = bob("PUT", doc, headers=TURTLE, body=b"<#it> <#is> <#new> .")
    assert created.status == 201, created
    (added,) = pushed(scenario, 1)["notes"]
    assert_activity(added, "Add", doc, container)
    listing = turtle(bob("GET", container, headers={"Accept": "text/turtle"}), container)
    assert (URIRef(container), URIRef("http://www.w3.org/ns/ldp#contains"), URIRef(doc)) in listing

    single = scenario.run("subscribe", name="first", topic=doc)
    assert single["result"]["status"] == "connected"
    updated = bob("PUT", doc, headers=TURTLE, body=b"<#it> <#is> <#changed> .")
    assert updated.status in (200, 204, 205), updated
    (update,) = pushed(scenario, 1)["first"]  # nothing for the container: its members are the same
    assert_activity(update, "Update", doc)
    now = bob("GET", doc, headers={"Accept": "text/turtle"})
    assert update["state"] == now.headers["etag"] == updated.headers["etag"]
    expected = Graph()
    expected.add((URIRef(doc + "#it"), URIRef(doc + "#is"), URIRef(doc + "#changed")))
    assert isomorphic(turtle(now, doc), expected)

    assert bob("DELETE", doc).status in (200, 204)
    both = pushed(scenario, 2)
    (deleted,) = both["first"]
    assert_activity(deleted, "Delete", doc)
    (removed,) = both["notes"]
    assert_activity(removed, "Remove", doc, container)
    assert bob("GET", doc).status == 404

    # disconnect(): the library closes its socket, and the server ends the channel with it (the
    # library cannot end it otherwise); its WebSocket URL is gone.
    receive_from = socket_url(single).replace("ws://", "http://", 1)
    assert request("GET", receive_from).status == 409  # the channel is there, with its socket
    closed = scenario.run("disconnect", name="first")
    assert closed["result"]["status"] == "closed"
    assert scenario.next_push(PUSH_TIMEOUT) == {"closed": "first"}
    gone = wait_for(lambda: request("GET", receive_from).status, lambda status: status == 404, 5.0)
    assert gone == 404
    scenario.run("disconnect", name="notes")
    assert scenario.next_push(PUSH_TIMEOUT) == {"closed": "notes"}

    # A new socket on the same container works, and the closed ones get nothing more.
    again = scenario.run("subscribe", name="again", topic=container)
    assert again["result"]["status"] == "connected"
    second = world.url("notes/second.ttl")
    assert bob("PUT", second, headers=TURTLE, body=b"<#a> <#b> <#c> .").status == 201
    only = pushed(scenario, 1)
    assert list(only) == ["again"]
    assert_activity(only["again"][0], "Add", second, container)
    assert scenario.pending_pushes() == []
    log = server.log_text()
    assert "Traceback" not in log and " ERROR " not in log, server.tail()


def test_inbox_channel_reports_published_events(world: World) -> None:
    """bob's app watches his inbox; alice's pod publishes an event to him on a topic he let her
    publish on; the library reports the copy that landed in bob's inbox."""
    scenario, bob, server = world.scenario, world.bob, world.server
    bob_id, alice_id = server.webid("bob"), server.webid("alice")
    inbox = world.url("inbox/")
    server.cli("grant", "bob", "--agent", alice_id, "--publish", "realestate/contact").check()
    key = server.cli("key", "create", "alice", "--agent", alice_id, "--json").check().json()["key"]

    opened = scenario.run("subscribe", name="inbox", topic=inbox)
    assert opened["result"]["status"] == "connected"

    event = {"recipient": bob_id, "topic": TOPIC, "data": EVENT}
    accepted = request("POST", server.url("alice", "publish/"), headers={"x-api-key": key}, json_body=event)
    assert accepted.status == 201, accepted
    (added,) = pushed(scenario, 1)["inbox"]
    copy = added["object"]
    assert_activity(added, "Add", copy, inbox)
    assert copy.startswith(inbox) and copy != inbox

    read = bob("GET", copy, headers={"Accept": "application/json"})
    assert read.status == 200, read
    stored = read.json()
    # The copy the notification names is the one bob reads: alice's event, addressed to him.
    assert stored["@id"] == copy and stored["type"] == "Event", stored
    assert stored["topic"] == TOPIC and stored["data"] == EVENT, stored
    assert stored["id"] == accepted.json()["id"] == accepted.headers["location"], stored
    assert stored["recipient"] == bob_id and stored["publisher"] == alice_id, stored
    # The copy is bob's alone: alice published it but may not read his inbox.
    assert world.alice("GET", copy).status == 403
    assert anonymous("GET", copy).status == 401


def test_only_readers_subscribe(world: World, tmp_path: Path) -> None:
    """alice (logged in through a client of her own) and an anonymous app go through the same
    discovery, and the server refuses their subscriptions: 403 and 401, which the library reports.
    Once bob lets alice read the container, her subscription works."""
    server, bob = world.server, world.bob
    container = world.url("private/")
    assert bob("PUT", container, headers=TURTLE, body=b"").status == 201
    alice_app = Scenario(SCRIPT, tmp_path)
    try:
        login(alice_app, world.issuer, server.webid("alice"))
        refused = alice_app.send("subscribe", name="peek", topic=container)
        assert not refused["ok"] and refused["status"] == 403, refused
        assert refused["errorName"] == "ForbiddenError", refused
        sent = [
            (r["method"], r["url"], r["status"], r["authorization"]) for r in server_requests(world, refused)
        ]
        # Discovery works for an agent who may not read the topic: the 403 names its storage.
        assert sent[1:] == [
            ("HEAD", container, 403, "DPoP"),
            ("GET", world.url(".well-known/solid"), 200, "DPoP"),
            ("POST", world.url(".well-known/notifications/gateway"), 200, "DPoP"),
            ("POST", world.url(".well-known/notifications/websocket"), 403, "DPoP"),
        ], refused

        nobody = world.scenario.send("subscribe", name="anon", topic=container, anonymous=True)
        assert not nobody["ok"] and nobody["status"] == 401, nobody
        assert nobody["errorName"] == "UnauthorizedError", nobody
        sent = [
            (r["method"], r["url"], r["status"], r["authorization"]) for r in server_requests(world, nobody)
        ]
        assert sent[1:] == [
            ("HEAD", container, 401, None),
            ("GET", world.url(".well-known/solid"), 200, None),
            ("POST", world.url(".well-known/notifications/gateway"), 200, None),
            ("POST", world.url(".well-known/notifications/websocket"), 401, None),
        ], nobody

        acl = f"""
            @prefix acl: <http://www.w3.org/ns/auth/acl#> .
            <#owner> a acl:Authorization ; acl:agent <{server.webid("bob")}> ;
                acl:accessTo <{container}> ; acl:default <{container}> ;
                acl:mode acl:Read, acl:Write, acl:Control .
            <#alice> a acl:Authorization ; acl:agent <{server.webid("alice")}> ;
                acl:accessTo <{container}> ; acl:default <{container}> ; acl:mode acl:Read .
        """
        assert bob("PUT", container + ".acl", headers=TURTLE, body=acl.encode()).status in (201, 204)
        allowed = alice_app.run("subscribe", name="shared", topic=container)
        assert allowed["result"]["status"] == "connected"
        member = container + "note.ttl"
        assert bob("PUT", member, headers=TURTLE, body=b"<#a> <#b> <#c> .").status == 201
        (added,) = pushed(alice_app, 1)["shared"]
        assert_activity(added, "Add", member, container)
        assert world.scenario.pending_pushes() == []  # the refused sockets never opened
    finally:
        alice_app.close()
