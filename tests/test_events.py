"""The event API on one server: publishing, authorization, delivery to inboxes, forwarding to
subscribers, webhooks, inbox paging and the error messages clients match on."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pod.grants import grant, subscribe
from pod.state import API_KEYS, STORE
from tests.conftest import ClientFactory

BASE = "http://pod.test/"
PRODUCER = BASE + "producer/profile/card#me"
USER = BASE + "user/profile/card#me"
PARTICIPANT = BASE + "participant/profile/card#me"
SUBSCRIBER = BASE + "subscriber/profile/card#me"
APP = "https://crm.example/app#id"
TOPIC = "realestate/contact#add"
DATA = {"type": "AddAction", "object": {"type": "Contact", "name": "Bruce Wayne"}}
JSON = {"Content-Type": "application/json"}


def as_(webid: str) -> dict[str, str]:
    return {"Authorization": f"WebID {webid}"}


class World:
    """Four pods on one server; the producer app holds an API key for the producer pod."""

    def __init__(self, client: TestClient[Any, Any], key: str) -> None:
        self.client = client
        self.key = key
        self.app = client.server.app

    async def publish(
        self, body: Any, *, key: str | None = None, content_type: str = "application/json"
    ) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "x-api-key": self.key if key is None else key}
        return await self.client.post("/producer/publish/", data=data, headers=headers)

    async def inbox(self, pod: str, **query: str) -> dict[str, Any]:
        response = await self.client.get(
            f"/{pod}/inbox/",
            params=query,
            headers={"Accept": "application/json", **as_(BASE + f"{pod}/profile/card#me")},
        )
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result

    async def wait_inbox(self, pod: str, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            contains: list[Any] = (await self.inbox(pod))["contains"]
            events = [c for c in contains if isinstance(c, dict) and "topic" in c]
            if len(events) >= count or asyncio.get_running_loop().time() > deadline:
                return events
            await asyncio.sleep(0.05)

    async def wait_inbox_all(self, pod: str, count: int, timeout: float = 30.0) -> list[Any]:
        """Every event in ``pod``'s inbox, following ``next`` across pages."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            events: list[Any] = []
            token = ""
            while True:
                page = await self.inbox(pod, limit="500", **({"from": token} if token else {}))
                events += [c for c in page["contains"] if isinstance(c, dict) and "topic" in c]
                if not page["contains"]:
                    break
                token = page["next"]
            if len(events) >= count or asyncio.get_running_loop().time() > deadline:
                return events
            await asyncio.sleep(0.1)


@pytest.fixture
async def world(make_client: ClientFactory) -> AsyncIterator[World]:
    client = await make_client(as_agent=None, demo_pod="producer")
    store = client.server.app[STORE]
    from pod.pods import create_pod

    for name in ("user", "participant", "subscriber"):
        await create_pod(store.accessor, store.locator, name)
    await grant(store, "user", PRODUCER, "realestate", "publish")
    await grant(store, "participant", PRODUCER, "realestate/contact", "publish")
    _, key = await client.server.app[API_KEYS].create("producer", APP)
    yield World(client, key)


EXAMPLE = {"recipient": USER, "source": PARTICIPANT, "topic": TOPIC, "data": DATA}


async def test_api_page_example_end_to_end(world: World) -> None:
    response = await world.publish([EXAMPLE])
    assert response.status == 201
    body = await response.json()
    assert isinstance(body, list) and len(body) == 1
    event_url = body[0]["id"]
    assert response.headers["Location"] == event_url
    assert event_url.startswith(BASE + "producer/publish/") and len(event_url.rsplit("/", 1)[1]) == 32
    for pod, original in (("user", USER), ("participant", PARTICIPANT)):
        (copy,) = await world.wait_inbox(pod, 1)
        assert copy["id"] == event_url
        assert copy["@id"].startswith(BASE + f"{pod}/inbox/")
        assert copy["originalRecipient"] == original
        assert copy["topic"] == TOPIC and copy["data"] == DATA
        assert copy["publisher"] == PRODUCER and copy["agent"] == APP
        assert isinstance(copy["timestamp"], int) and copy["time"].endswith("Z")
    # the stored event stays readable, with each recipient's delivery state
    stored = await world.client.get(
        event_url.removeprefix("http://pod.test"), headers={"Accept": "application/json", **as_(PRODUCER)}
    )
    doc = await stored.json()
    assert doc["id"] == event_url
    states = {d["recipient"]: d["state"] for d in doc["deliveries"]}
    assert states == {USER: "delivered", PARTICIPANT: "delivered"}
    assert all("deliveredAt" in d for d in doc["deliveries"])


async def test_single_event_answer_and_ld_json(world: World) -> None:
    response = await world.publish(
        {"recipient": USER, "topic": TOPIC, "data": DATA}, content_type="application/ld+json; charset=utf-8"
    )
    assert response.status == 201
    body = await response.json()
    assert body == {"id": response.headers["Location"]}


@pytest.mark.parametrize(
    "body,message",
    [
        (b"", "No request body was sent"),
        (b"   ", "No request body was sent"),
        (b"{not json", "request body is not valid JSON object"),
        (b'"a string"', "request body is not valid JSON object"),
        (b"42", "request body is not valid JSON object"),
        ({"recipient": USER, "data": DATA}, "No valid topic found"),
        ({"recipient": USER, "topic": "nodomain", "data": DATA}, "No valid topic found"),
        ({"recipient": USER, "topic": "a/b/c", "data": DATA}, "No valid topic found"),
        ({"recipient": USER, "topic": "a/b#", "data": DATA}, "No valid topic found"),
        ({"topic": TOPIC, "data": DATA}, "No recipient found"),
        ({"topic": TOPIC, "recipient": "", "data": DATA}, "No recipient found"),
        ({"topic": TOPIC, "recipient": USER}, "No data found"),
        ({"topic": TOPIC, "recipient": USER, "data": None}, "No data found"),
        ({"topic": TOPIC, "recipient": "not-a-url", "data": DATA}, "Invalid ID: not-a-url"),
        ({"topic": TOPIC, "recipient": "ftp://x.example/me", "data": DATA}, "Invalid ID: ftp://x.example/me"),
        ({"topic": TOPIC, "recipient": [USER, 7], "data": DATA}, "Invalid ID: 7"),
        ({"topic": TOPIC, "recipient": USER, "source": "urn:x", "data": DATA}, "Invalid ID: urn:x"),
        ([EXAMPLE, {"topic": TOPIC, "data": DATA}], "No recipient found (event at index 1)"),
        ([EXAMPLE, "x"], "request body is not valid JSON object (event at index 1)"),
        (b"[" * 100000 + b"]" * 100000, "request body is not valid JSON object"),
    ],
)
async def test_publish_400_messages(world: World, body: Any, message: str) -> None:
    response = await world.publish(body)
    assert response.status == 400
    assert (await response.json()) == {"error": message}
    listing = await world.client.get("/producer/publish/", headers=as_(PRODUCER))
    assert "publish/" not in (await listing.text()).replace(BASE + "producer/publish/>", "")


async def test_publish_auth_and_media_type(world: World) -> None:
    no_key = await world.client.post("/producer/publish/", data=json.dumps(EXAMPLE), headers=JSON)
    assert (no_key.status, await no_key.json()) == (401, {"error": "No API key provided"})
    empty = await world.publish(EXAMPLE, key="")
    assert (empty.status, await empty.json()) == (401, {"error": "No API key provided"})
    bad = await world.publish(EXAMPLE, key="spk_nope_nope")
    assert (bad.status, await bad.json()) == (401, {"error": "Invalid API Key"})
    _, user_key = await world.app[API_KEYS].create("user", APP)  # a key of another pod
    other = await world.publish(EXAMPLE, key=user_key)
    assert (other.status, await other.json()) == (401, {"error": "Invalid API Key"})
    wrong_type = await world.publish(EXAMPLE, content_type="text/plain")
    assert wrong_type.status == 415


async def test_403_when_a_recipient_has_not_granted(world: World) -> None:
    before = await world.inbox("user")
    response = await world.publish({"recipient": [USER, SUBSCRIBER], "topic": TOPIC, "data": DATA})
    assert response.status == 403
    assert await response.json() == {"error": f"Not authorized to publish to {SUBSCRIBER} on topic {TOPIC}"}
    # nothing stored, nothing sent to the recipient that had granted
    await asyncio.sleep(0.3)
    assert (await world.inbox("user"))["contains"] == before["contains"]
    # a grant on another topic does not help
    other_topic = await world.publish(
        {"recipient": PARTICIPANT, "topic": "realestate/listing#add", "data": DATA}
    )
    assert other_topic.status == 403
    # an unknown pod on this server cannot have granted
    ghost = await world.publish({"recipient": BASE + "ghost/profile/card#me", "topic": TOPIC, "data": DATA})
    assert ghost.status == 403


async def test_recipients_deduplicated(world: World) -> None:
    response = await world.publish({"recipient": [USER, USER], "source": USER, "topic": TOPIC, "data": DATA})
    assert response.status == 201
    events = await world.wait_inbox("user", 1)
    await asyncio.sleep(0.3)
    assert len(await world.wait_inbox("user", 1)) == 1 == len(events)


async def test_forwarding_to_subscribers_and_read_rule(world: World) -> None:
    store = world.app[STORE]
    await subscribe(store, "user", SUBSCRIBER, "realestate")
    await grant(store, "subscriber", USER, "realestate", "publish")  # the subscriber accepts the user's pod
    # the subscription has no effect until the subscriber may read the topic
    await world.publish(EXAMPLE)
    await world.wait_inbox("user", 1)
    await asyncio.sleep(0.3)
    assert await world.wait_inbox("subscriber", 1, timeout=0.2) == []
    await grant(store, "user", SUBSCRIBER, "realestate", "subscribe")
    response = await world.publish(EXAMPLE)
    event_id = (await response.json())["id"]
    (copy,) = await world.wait_inbox("subscriber", 1)
    assert copy["id"] == event_id
    assert copy["originalRecipient"] == USER


async def test_inbox_paging(world: World) -> None:
    for i in range(7):
        response = await world.publish({"recipient": USER, "topic": TOPIC, "data": {"n": i}})
        assert response.status == 201
    # arrival order: deliveries run concurrently, so it need not be the order of publishing
    order = [e["data"]["n"] for e in await world.wait_inbox("user", 7)]
    assert sorted(order) == list(range(7))
    first = await world.inbox("user", limit="3")
    assert [e["data"]["n"] for e in first["contains"]] == order[:3]
    # paging is stable while new events arrive
    await world.publish({"recipient": USER, "topic": TOPIC, "data": {"n": 7}})
    second = await world.inbox("user", limit="3", **{"from": first["next"]})
    assert [e["data"]["n"] for e in second["contains"]] == order[3:6]
    links = await world.inbox("user", limit="2", format="links")
    assert all(isinstance(u, str) and u.startswith(BASE + "user/inbox/") for u in links["contains"])
    # by timestamp / datetime: items that arrived at or after the given time
    await world.wait_inbox("user", 8)
    everything = await world.inbox("user", by="timestamp", **{"from": "0"})
    assert len(everything["contains"]) == 8
    assert await world.inbox("user", by="timestamp", **{"from": "0"}) == everything  # the same page again
    await world.publish({"recipient": USER, "topic": TOPIC, "data": {"n": 8}})
    await world.wait_inbox("user", 9)
    grown = await world.inbox("user", by="timestamp", **{"from": "0"})  # a kept page follows new arrivals
    assert [e["data"]["n"] for e in grown["contains"][:8]] == [*order, 7]
    assert grown["contains"][8]["data"]["n"] == 8
    future = await world.inbox("user", by="timestamp", **{"from": str(int(time.time() * 1000) + 3_600_000)})
    assert future["contains"] == []
    by_date = await world.inbox("user", by="datetime", **{"from": "2000-01-01T00:00:00Z"})
    assert len(by_date["contains"]) == 9
    bad = await world.client.get(
        "/user/inbox/?by=weird&from=1", headers={"Accept": "application/json", **as_(USER)}
    )
    assert bad.status == 400
    # acknowledging: DELETE an item
    item = first["contains"][0]["@id"].removeprefix("http://pod.test")
    assert (await world.client.delete(item, headers=as_(USER))).status == 204
    assert [e["data"]["n"] for e in (await world.inbox("user", limit="2"))["contains"]] == order[1:3]
    after_ack = await world.inbox("user", by="timestamp", **{"from": "0"})  # and acknowledgements
    assert [e["@id"] for e in after_ack["contains"]] == [e["@id"] for e in grown["contains"][1:]]
    # turtle asks get the LDP listing
    ttl = await world.client.get("/user/inbox/", headers={"Accept": "text/turtle", **as_(USER)})
    assert ttl.headers["Content-Type"].startswith("text/turtle")


async def test_inbox_accepts_plain_ldn_and_dedupes_events(world: World) -> None:
    note = await world.client.post(
        "/user/inbox/",
        data=json.dumps({"@id": "", "http://schema.org/name": "hello"}),
        headers={"Content-Type": "application/ld+json"},
    )
    assert note.status == 201 and note.headers["Location"].startswith(BASE + "user/inbox/")
    options = await world.client.options("/user/inbox/")
    assert "application/ld+json" in options.headers["Accept-Post"]
    event = {"id": BASE + "producer/publish/" + "a" * 32, "topic": TOPIC, "data": DATA}
    first = await world.client.post("/user/inbox/", data=json.dumps(event), headers={**JSON, **as_(PRODUCER)})
    again = await world.client.post("/user/inbox/", data=json.dumps(event), headers={**JSON, **as_(PRODUCER)})
    assert (first.status, again.status) == (201, 200)
    assert first.headers["Location"] == again.headers["Location"]
    stranger = await world.client.post(
        "/user/inbox/", data=json.dumps(event), headers={**JSON, **as_(BASE + "nobody/profile/card#me")}
    )
    assert stranger.status == 403
    assert (await stranger.json())["error"] == f"Not authorized to publish to {USER} on topic {TOPIC}"
    anonymous = await world.client.post("/user/inbox/", data=json.dumps(event), headers=JSON)
    assert anonymous.status == 401


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[TestServer, list[tuple[dict[str, str], bytes]], list[int]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    statuses: list[int] = [500, 500]  # fail twice, then accept

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, received, statuses
    await server.close()


async def test_webhook_retried_with_valid_signature(world: World, webhook: Any, monkeypatch: Any) -> None:
    server, received, _ = webhook
    monkeypatch.setattr("pod.delivery.backoff", lambda attempts: 0.05)
    store = world.app[STORE]
    url = str(server.make_url("/hook"))
    await subscribe(store, "user", SUBSCRIBER, "realestate", webhook=url, secret="s3cret")
    await grant(store, "user", SUBSCRIBER, "realestate", "subscribe")
    await world.publish(EXAMPLE)
    for _ in range(200):
        if len(received) >= 3:
            break
        await asyncio.sleep(0.05)
    assert len(received) == 3  # two 500s retried, then delivered
    for headers, body in received:
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Signature"] == expected
        assert headers["X-Event-Id"].startswith(BASE + "producer/publish/")
        assert json.loads(body)["topic"] == TOPIC


@pytest.mark.parametrize(
    "recipient",
    [
        "http://10.0.0.7/profile/card#me",
        "http://192.168.1.2/me",
        "http://169.254.169.254/latest#me",
        "http://[fd00::1]/me",
    ],
)
async def test_private_address_recipients_refused(world: World, recipient: str) -> None:
    response = await world.publish({"recipient": recipient, "topic": TOPIC, "data": DATA})
    assert response.status == 400
    assert await response.json() == {"error": f"Invalid ID: {recipient}"}


async def test_oversized_publish_is_413(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None, max_body_size=2048)
    _, key = await client.server.app[API_KEYS].create("alice", APP)
    big = {"recipient": USER, "topic": TOPIC, "data": {"blob": "x" * 5000}}
    response = await client.post(
        "/alice/publish/",
        data=json.dumps(big),
        headers={"Content-Type": "application/json", "x-api-key": key},
    )
    assert response.status == 413
    assert "limit" in (await response.json())["error"]


async def test_flood_to_one_inbox_is_absorbed(world: World) -> None:
    """Many concurrent publishes to one inbox: every acknowledged event arrives, the server answers."""
    responses = await asyncio.gather(
        *(world.publish({"recipient": USER, "topic": TOPIC, "data": {"n": i}}) for i in range(300))
    )
    assert {r.status for r in responses} == {201}
    ids = {(await r.json())["id"] for r in responses}
    assert (await world.client.get("/producer/profile/card")).status == 200  # still responsive
    events = await world.wait_inbox_all("user", 300)
    assert {e["id"] for e in events} == ids


async def test_self_service_subscription(world: World) -> None:
    """An agent that may read a topic adds and removes its own subscription without being the owner."""
    store = world.app[STORE]
    me = as_(SUBSCRIBER)
    url = "/user/settings/subscriptions"
    denied = await world.client.post(url, json={"topic": "realestate"}, headers=me)
    assert denied.status == 403
    assert (await world.client.post(url, json={"topic": "realestate"})).status == 401
    await grant(store, "user", SUBSCRIBER, "realestate", "subscribe")
    await grant(store, "subscriber", USER, "realestate", "publish")
    bad = await world.client.post(url, json={"topic": "not a topic"}, headers=me)
    assert (bad.status, (await bad.json())["error"]) == (400, "No valid topic found")
    assert (await world.client.post(url, json={"topic": "realestate"}, headers=me)).status == 201
    # the list itself stays owner-only
    assert (await world.client.get(url, headers=me)).status == 403
    owner_view = await (
        await world.client.get(url, headers={"Accept": "application/ld+json", **as_(USER)})
    ).json()
    assert owner_view["subscriptions"] == [{"agent": SUBSCRIBER, "topics": ["realestate"]}]
    await world.publish(EXAMPLE)
    assert len(await world.wait_inbox("subscriber", 1)) == 1
    removed = await world.client.delete(url + "?topic=realestate", headers=me)
    assert removed.status == 204
    owner_view = await (
        await world.client.get(url, headers={"Accept": "application/ld+json", **as_(USER)})
    ).json()
    assert owner_view["subscriptions"] == []


async def test_owner_writes_of_subscriptions_are_validated(world: World) -> None:
    url = "/user/settings/subscriptions"
    headers = {"Content-Type": "application/ld+json", **as_(USER)}
    bad = await world.client.put(
        url, data=json.dumps({"subscriptions": [{"agent": "nope"}]}), headers=headers
    )
    assert bad.status == 400
    no_secret = {
        "subscriptions": [{"agent": SUBSCRIBER, "topics": ["realestate"], "webhook": "https://h.example/"}]
    }
    assert (await world.client.put(url, data=json.dumps(no_secret), headers=headers)).status == 400
    good = {"subscriptions": [{"agent": SUBSCRIBER, "topics": ["realestate/contact"]}]}
    assert (await world.client.put(url, data=json.dumps(good), headers=headers)).status == 201


async def test_remote_context_in_notification_refused(world: World) -> None:
    note = {"@context": "https://evil.example/context.jsonld", "@id": "", "name": "x"}
    response = await world.client.post(
        "/user/inbox/", data=json.dumps(note), headers={"Content-Type": "application/ld+json"}
    )
    assert response.status == 400
    assert "https://evil.example/context.jsonld" in (await response.json())["error"]


async def test_cli_grant_subscribe_and_replay(backend: Any, tmp_path: Any) -> None:
    from tests.test_cli import run

    common = ["--data-dir", str(tmp_path), "--base-url", BASE]
    for name in ("user", "producer"):
        assert run("create", name, *common).returncode == 0
    granted = run("grant", "user", "--agent", PRODUCER, "--publish", "realestate", *common)
    assert granted.returncode == 0 and "Granted publish on realestate" in granted.stdout
    assert run("grant", "user", "--agent", PRODUCER, "--publish", "bad topic!", *common).returncode == 1
    assert run("grant", "user", "--agent", PRODUCER, *common).returncode == 2  # --publish or --subscribe
    subscribed = run("subscribe", "user", "--agent", SUBSCRIBER, "--topic", "realestate", *common)
    assert subscribed.returncode == 0 and "1 subscription" in subscribed.stdout
    hook = run(
        "subscribe",
        "user",
        "--agent",
        SUBSCRIBER,
        "--topic",
        "realestate",
        "--webhook",
        "https://h.example/",
        *common,
    )
    assert hook.returncode == 1 and "--secret" in hook.stderr
    removed = run("subscribe", "user", "--agent", SUBSCRIBER, "--topic", "realestate", "--remove", *common)
    assert "0 subscription" in removed.stdout
    revoked = run("grant", "user", "--agent", PRODUCER, "--publish", "realestate", "--remove", *common)
    assert revoked.returncode == 0 and "Removed" in revoked.stdout
    replay = run("replay", "user", "--from", "2020-01-01T00:00:00Z", *common)
    assert replay.returncode == 0 and "Queued 0 deliveries" in replay.stdout
    assert run("replay", "user", "--states", "weird", *common).returncode == 2


async def test_refused_delivery_is_failed_with_reason_then_replayed(world: World) -> None:
    from pod.queue import NewDelivery
    from pod.state import QUEUE, WORKER

    queue = world.app[QUEUE]
    event_id = BASE + "producer/publish/" + "b" * 32
    payload = json.dumps({"id": event_id, "topic": TOPIC, "data": DATA, "publisher": PRODUCER}).encode()
    await queue.commit("producer", [], [NewDelivery(event_id, "producer", "inbox", SUBSCRIBER, payload)])
    world.app[WORKER].notify()
    for _ in range(100):
        (delivery,) = await queue.for_event(event_id)
        if delivery.state != "pending":
            break
        await asyncio.sleep(0.05)
    assert delivery.state == "failed" and delivery.attempts == 1
    assert delivery.last_error == f"HTTP 403: Not authorized to publish to {SUBSCRIBER} on topic {TOPIC}"
    await grant(world.app[STORE], "subscriber", PRODUCER, "realestate", "publish")
    assert (await world.client.post("/producer/.well-known/replay", headers=as_(USER))).status == 403
    replayed = await world.client.post("/producer/.well-known/replay?from=0", headers=as_(PRODUCER))
    assert (replayed.status, await replayed.json()) == (200, {"replayed": 1})
    (copy,) = await world.wait_inbox("subscriber", 1)
    assert copy["id"] == event_id


async def test_inbox_page_survives_items_that_are_not_json(world: World) -> None:
    """Items are embedded in pages as stored: anything that is not JSON is listed by its URL."""
    owner = as_(USER)
    await world.client.put(
        "/user/inbox/broken", data=b'{"a": ', headers={"Content-Type": "application/json", **owner}
    )
    await world.client.put(
        "/user/inbox/ok", data=b'{"b": 1}', headers={"Content-Type": "application/json", **owner}
    )
    await world.client.put("/user/inbox/text", data=b"hello", headers={"Content-Type": "text/plain", **owner})
    page = await world.inbox("user")
    assert page["contains"] == [BASE + "user/inbox/broken", {"b": 1}, BASE + "user/inbox/text"]


# -- pods on this server receive their copies in the publish's transaction ----------------------------


def _publish_children(listing: str) -> list[str]:
    return [
        line for line in listing.split() if "producer/publish/" in line and not line.endswith("publish/>")
    ]


async def test_local_copies_are_in_the_inboxes_when_the_publish_answers(world: World) -> None:
    """No worker is involved (it is stopped): the copies, their topic links and the deliveries'
    state are stored by the publish itself, and the deliveries are counted as made."""
    from pod.state import QUEUE, WORKER
    from tests.test_operations import sample, scrape

    await world.app[WORKER].stop()
    response = await world.publish([EXAMPLE, {"recipient": USER, "topic": TOPIC, "data": {"n": 2}}])
    assert response.status == 201
    first, second = (item["id"] for item in await response.json())
    user = (await world.inbox("user"))["contains"]
    participant = (await world.inbox("participant"))["contains"]
    assert [c["id"] for c in user] == [first, second]
    assert [c["id"] for c in participant] == [first]
    for copy, pod, original in ((user[0], "user", USER), (participant[0], "participant", PARTICIPANT)):
        assert copy["@id"].startswith(BASE + f"{pod}/inbox/") and copy["originalRecipient"] == original
        assert copy["topic"] == TOPIC and copy["data"] == DATA
        assert copy["publisher"] == PRODUCER and copy["agent"] == APP
        assert copy["recipient"] == USER and copy["source"] == PARTICIPANT
        name = copy["@id"].rsplit("/", 1)[1]
        link = await world.client.get(
            f"/{pod}/event/topic/realestate/contact/{name}",
            headers={"Accept": "application/ld+json", **as_(original)},
        )
        assert link.status == 200
        assert json.loads(await link.read())["href"] == copy["@id"]
    assert user[1]["data"] == {"n": 2}
    for event_url, recipients in ((first, {USER, PARTICIPANT}), (second, {USER})):
        stored = await world.client.get(
            event_url.removeprefix("http://pod.test"), headers={"Accept": "application/json", **as_(PRODUCER)}
        )
        deliveries = (await stored.json())["deliveries"]
        assert {d["recipient"] for d in deliveries} == recipients
        assert all(
            d["state"] == "delivered" and d["attempts"] == 1 and "deliveredAt" in d for d in deliveries
        )
    assert await world.app[QUEUE].depth() == 0
    _, metrics = await scrape(world.client)
    assert sample(metrics, "pod_delivery_attempts_total", outcome="delivered") == 3


async def test_a_local_copy_is_not_stored_twice(world: World) -> None:
    """The copy stored by the publish is recorded as received from the publisher: the same event
    sent again, by a replay of its delivery or straight to the inbox, is acknowledged and dropped."""
    from pod.state import QUEUE

    response = await world.publish({"recipient": USER, "topic": TOPIC, "data": DATA})
    event_id = (await response.json())["id"]
    (copy,) = (await world.inbox("user"))["contains"]
    again = await world.client.post(
        "/user/inbox/",
        data=json.dumps({"id": event_id, "topic": TOPIC, "data": DATA}),
        headers={**JSON, **as_(PRODUCER)},
    )
    assert (again.status, again.headers["Location"]) == (200, copy["@id"])
    replayed = await world.client.post(
        "/producer/.well-known/replay?from=0&states=delivered", headers=as_(PRODUCER)
    )
    assert (replayed.status, await replayed.json()) == (200, {"replayed": 1})
    for _ in range(200):
        (delivery,) = await world.app[QUEUE].for_event(event_id)
        if delivery.state != "pending":
            break
        await asyncio.sleep(0.05)
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    assert [c["@id"] for c in (await world.inbox("user"))["contains"]] == [copy["@id"]]


async def test_subscribers_of_a_local_recipient_get_their_forward_through_the_queue(world: World) -> None:
    from pod.state import QUEUE, WORKER

    store = world.app[STORE]
    await subscribe(store, "user", SUBSCRIBER, "realestate")
    await grant(store, "user", SUBSCRIBER, "realestate", "subscribe")
    await grant(store, "subscriber", USER, "realestate", "publish")
    worker = world.app[WORKER]
    await worker.stop()
    response = await world.publish({"recipient": USER, "topic": TOPIC, "data": DATA})
    event_id = (await response.json())["id"]
    # queued with the user's copy, by the publish's transaction
    forwards = [d for d in await world.app[QUEUE].for_event(event_id) if d.sender == "user"]
    assert [(d.kind, d.recipient, d.state) for d in forwards] == [("inbox", SUBSCRIBER, "pending")]
    assert json.loads(forwards[0].payload)["originalRecipient"] == USER
    worker.start()
    (copy,) = await world.wait_inbox("subscriber", 1)
    assert copy["id"] == event_id and copy["originalRecipient"] == USER and copy["data"] == DATA


async def test_a_local_recipient_that_refuses_its_copy_fails_its_delivery_alone(world: World) -> None:
    """A document where the user's topic container would be: the user's inbox cannot link the
    copy, and refuses it, as it would refuse a delivery from anywhere; the other recipient gets hers."""
    put = await world.client.put(
        "/user/event/topic/realestate/contact",
        data=b'<#it> <http://schema.org/name> "not a container" .',
        headers={"Content-Type": "text/turtle", **as_(USER)},
    )
    assert put.status == 201
    response = await world.publish(EXAMPLE)
    assert response.status == 201
    event_url = (await response.json())["id"]
    for _ in range(200):
        stored = await world.client.get(
            event_url.removeprefix("http://pod.test"), headers={"Accept": "application/json", **as_(PRODUCER)}
        )
        states = {d["recipient"]: d for d in (await stored.json())["deliveries"]}
        if all(d["state"] in ("delivered", "failed") for d in states.values()):
            break
        await asyncio.sleep(0.05)
    assert states[PARTICIPANT]["state"] == "delivered"
    assert states[USER]["state"] == "failed"
    assert (
        states[USER]["lastError"]
        == "HTTP 409: /event/topic/realestate/contact is a document, not a container"
    )
    assert (await world.inbox("user"))["contains"] == []
    assert [c["id"] for c in (await world.inbox("participant"))["contains"]] == [event_url]


async def test_a_publish_whose_transaction_fails_stores_nothing(world: World, monkeypatch: Any) -> None:
    """The event, its deliveries and every local copy are one transaction: a failure once the
    user's copy is written (at the participant's) leaves nothing of any of them."""
    import pod.queue_postgres
    import pod.queue_sqlite
    from pod.state import QUEUE, WORKER

    real_sqlite, real_postgres = pod.queue_sqlite.write_in, pod.queue_postgres.write_in

    def sqlite_write(conn: Any, pod: str, w: Any) -> Any:
        if pod == "participant":
            raise RuntimeError("the disk is on fire")
        return real_sqlite(conn, pod, w)

    async def postgres_write(tx: Any, pod: str, w: Any) -> Any:
        if pod == "participant":
            raise RuntimeError("the disk is on fire")
        return await real_postgres(tx, pod, w)

    monkeypatch.setattr(pod.queue_sqlite, "write_in", sqlite_write)
    monkeypatch.setattr(pod.queue_postgres, "write_in", postgres_write)
    await world.app[WORKER].stop()
    response = await world.publish(EXAMPLE)
    assert response.status == 500
    listing = await world.client.get("/producer/publish/", headers={"Accept": "text/turtle", **as_(PRODUCER)})
    assert _publish_children(await listing.text()) == []
    assert (await world.inbox("user"))["contains"] == []
    assert (await world.inbox("participant"))["contains"] == []
    topic = await world.client.get("/user/event/topic/realestate/contact/", headers=as_(USER))
    assert topic.status == 404
    assert await world.app[QUEUE].depth() == 0


async def test_publishes_between_two_local_pods_in_both_directions_at_once(world: World) -> None:
    """Each publish writes both pods' trees in one transaction; crossing ones must not wait on
    each other (PostgreSQL locks the pods in one order)."""
    await grant(world.app[STORE], "producer", USER, "realestate", "publish")
    _, user_key = await world.app[API_KEYS].create("user", APP)

    async def from_user(n: int) -> Any:
        body = json.dumps({"recipient": PRODUCER, "topic": TOPIC, "data": {"n": n}})
        return await world.client.post("/user/publish/", data=body, headers={**JSON, "x-api-key": user_key})

    started = time.monotonic()
    responses = await asyncio.gather(
        *(world.publish({"recipient": USER, "topic": TOPIC, "data": {"n": n}}) for n in range(40)),
        *(from_user(n) for n in range(40)),
    )
    assert [r.status for r in responses] == [201] * 80
    assert time.monotonic() - started < 10
    for pod in ("user", "producer"):
        events = (await world.inbox(pod, limit="100"))["contains"]
        assert sorted(e["data"]["n"] for e in events) == list(range(40)), pod
