"""The event API across real server processes: real HTTP, real signatures, real SQLite, real crashes.

Every test starts ``pod serve`` processes (``tests.procs``) on free loopback ports and sets pods up
with the ``pod`` CLI on their data directories while they run. Owners read inboxes and delivery
states over HTTP with ``Authorization: WebID`` (the servers run with ``--unsafe-webid-header``);
pod-to-pod traffic is always signed (RFC 9421) and verified against the WebID profiles.
Deliveries retry at most a second apart and leases last 3 s (``POD_DELIVERY_MAX_BACKOFF``,
``POD_DELIVERY_LEASE``) so that retries and crash recovery fit in a fast test.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acl.signatures import PodKey, generate_pod_key, load_pod_key, sign_request
from tests.procs import Procs, Response, ServerProcess, request, wait_for

TOPIC = "realestate/contact#add"
DATA = {"type": "AddAction", "object": {"type": "Contact", "name": "Bruce Wayne"}}
APP = "https://crm.example/app#id"
FAST = {"POD_DELIVERY_MAX_BACKOFF": "1", "POD_DELIVERY_LEASE": "3"}
WAIT = 45.0  # upper bound for anything asynchronous (CI may be loaded); tests normally finish far sooner


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path) as manager:
        yield manager


def as_owner(server: ServerProcess, pod: str) -> dict[str, str]:
    return {"Authorization": f"WebID {server.webid(pod)}"}


def servers(procs: Procs, *specs: tuple[str, str]) -> list[ServerProcess]:
    """Servers named by (server name, demo pod), started together, all with fast retries."""
    made = [procs.server(n, demo_pod=p, unsafe_webid_header=True, env=FAST, start=False) for n, p in specs]
    procs.start_all(*made)
    return made


def api_key(server: ServerProcess, pod: str) -> str:
    key: str = server.cli("key", "create", pod, "--agent", APP, "--json").check().json()["key"]
    return key


def publish(server: ServerProcess, pod: str, key: str, body: Any) -> Response:
    return request("POST", server.url(pod, "publish/"), headers={"x-api-key": key}, json_body=body)


def inbox(server: ServerProcess, pod: str) -> list[dict[str, Any]]:
    """Every event in a pod's inbox, oldest first, as its owner reads them."""
    response = request(
        "GET",
        server.url(pod, "inbox/?limit=500"),
        headers={"Accept": "application/json", **as_owner(server, pod)},
    )
    assert response.status == 200, response.body
    return [c for c in response.json()["contains"] if isinstance(c, dict) and "topic" in c]


def wait_inbox(server: ServerProcess, pod: str, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
    return wait_for(lambda: inbox(server, pod), lambda events: len(events) >= count, timeout)


def event_state(server: ServerProcess, pod: str, event_url: str) -> dict[str, Any]:
    """``GET <pod>/publish/<id>`` as the owner: the event and its deliveries."""
    response = request("GET", event_url, headers={"Accept": "application/json", **as_owner(server, pod)})
    assert response.status == 200, response.body
    doc: dict[str, Any] = response.json()
    return doc


def deliveries(server: ServerProcess, pod: str, event_url: str) -> dict[str, dict[str, Any]]:
    return {d["recipient"]: d for d in event_state(server, pod, event_url)["deliveries"]}


def wait_deliveries(
    server: ServerProcess, pod: str, event_url: str, states: set[str], timeout: float = WAIT
) -> dict[str, dict[str, Any]]:
    """Deliveries once every one of them is in one of ``states``."""
    return wait_for(
        lambda: deliveries(server, pod, event_url),
        lambda found: bool(found) and all(d["state"] in states for d in found.values()),
        timeout,
    )


def stored_pod_key(server: ServerProcess, pod: str) -> PodKey:
    """The pod's own signing key, read from the server's database."""
    with server.db() as conn:
        key_id, pem = conn.execute("SELECT key_id, private_pem FROM pod_keys WHERE pod=?", (pod,)).fetchone()
    return load_pod_key(str(key_id), bytes(pem))


def received_count(server: ServerProcess) -> int:
    with server.db() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM received").fetchone()[0])


def delivery_states(server: ServerProcess) -> dict[str, int]:
    """How many of the server's deliveries are in each state."""
    with server.db() as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall())


def subscriber_pods(b: ServerProcess, pods: list[str], publisher: str) -> None:
    """Pods on ``b`` (the first is its demo pod) that let ``publisher`` publish on realestate."""
    grants = [["grant", p, "--agent", publisher, "--publish", "realestate"] for p in pods]
    b.cli_many([["create", p] for p in pods[1:]] + grants)


def hub(a: ServerProcess, subscribers: list[str]) -> tuple[str, str]:
    """The pod ``user`` on ``a``, which the producer may publish to and which forwards realestate
    events to each WebID in ``subscribers``: (its WebID, an API key of the producer)."""
    setup = [
        ["create", "user"],
        ["grant", "user", "--agent", a.webid("producer"), "--publish", "realestate"],
        ["key", "create", "producer", "--agent", APP, "--json"],
    ]
    for webid in subscribers:
        setup += [
            ["subscribe", "user", "--agent", webid, "--topic", "realestate"],
            ["grant", "user", "--agent", webid, "--subscribe", "realestate"],
        ]
    key: str = a.cli_many(setup)[2].json()["key"]
    return a.webid("user"), key


# -- 1. the API page's example, across two servers ----------------------------------------------------


def test_api_page_example_across_two_servers(procs: Procs) -> None:
    """producer → user + participant (server A) → the user's subscriber app's pod (server B)."""
    a, b = servers(procs, ("a", "producer"), ("b", "crmapp"))
    user, participant, subscriber = a.webid("user"), a.webid("participant"), b.webid("crmapp")
    # the subscriber app's pod accepts events forwarded by the user's pod
    b.cli("grant", "crmapp", "--agent", user, "--publish", "realestate").check()
    key = a.cli_many(
        [
            ["create", "user"],
            ["create", "participant"],
            ["grant", "user", "--agent", a.webid("producer"), "--publish", "realestate"],
            ["grant", "participant", "--agent", a.webid("producer"), "--publish", "realestate/contact"],
            ["subscribe", "user", "--agent", subscriber, "--topic", "realestate"],
            ["grant", "user", "--agent", subscriber, "--subscribe", "realestate"],
            ["key", "create", "producer", "--agent", APP, "--json"],
        ]
    )[-1].json()["key"]

    # the page's curl body: an array with one event
    example = [{"recipient": user, "source": participant, "topic": TOPIC, "data": DATA}]
    response = publish(a, "producer", key, example)
    assert response.status == 201, response.body
    (answer,) = response.json()
    event_url = answer["id"]
    assert response.headers["location"] == event_url
    assert event_url.startswith(a.url("producer", "publish/")) and len(event_url.rsplit("/", 1)[1]) == 32

    (forwarded,) = wait_inbox(b, "crmapp", 1)
    assert forwarded["id"] == event_url
    assert forwarded["@id"].startswith(b.url("crmapp", "inbox/"))
    assert forwarded["originalRecipient"] == user
    assert (forwarded["topic"], forwarded["data"]) == (TOPIC, DATA)
    assert (forwarded["publisher"], forwarded["agent"]) == (a.webid("producer"), APP)
    assert isinstance(forwarded["timestamp"], int) and forwarded["time"].endswith("Z")
    for pod, webid in (("user", user), ("participant", participant)):
        (copy,) = wait_inbox(a, pod, 1)
        assert copy["id"] == event_url
        assert copy["@id"].startswith(a.url(pod, "inbox/"))
        assert copy["originalRecipient"] == webid

    states = wait_deliveries(a, "producer", event_url, {"delivered"})
    # the producer sees its own deliveries, not whom the user's pod forwards to
    assert set(states) == {user, participant}
    assert all(d["attempts"] == 1 and "deliveredAt" in d for d in states.values())
    assert len(inbox(b, "crmapp")) == 1


# -- 2. signatures between two real servers ----------------------------------------------------------


def test_signed_deliveries_verified_against_the_senders_profile(procs: Procs) -> None:
    a, b = servers(procs, ("a", "producer"), ("b", "recv"))
    b.cli("grant", "recv", "--agent", a.webid("producer"), "--publish", "realestate").check()
    inbox_url = b.url("recv", "inbox/")
    real_key = stored_pod_key(a, "producer")
    assert real_key.key_id == a.url("producer", "profile/card#pod-key")

    def event() -> bytes:
        doc = {"id": a.url("producer", "publish/" + secrets.token_hex(16)), "topic": TOPIC, "data": DATA}
        return json.dumps(doc).encode()

    def post(
        key: PodKey, body: bytes, *, sent: bytes | None = None, created: int | None = None
    ) -> tuple[Response, dict[str, str]]:
        headers = {"Content-Type": "application/ld+json"}
        headers.update(sign_request(key, "POST", inbox_url, headers, body, created=created))
        return request("POST", inbox_url, headers=headers, body=body if sent is None else sent), headers

    body = event()
    valid, valid_headers = post(real_key, body)
    assert valid.status == 201, valid.body
    assert valid.headers["location"].startswith(inbox_url)

    refusals: dict[str, tuple[Response, str]] = {}
    # the very same request again: the replay cache refuses it
    again = request("POST", inbox_url, headers=valid_headers, body=body)
    refusals["replayed"] = (again, "Signature: replayed")
    # forged: claims the producer's key id, signed with a key its profile does not publish
    forged_key = generate_pod_key(real_key.key_id)
    refusals["forged"] = (post(forged_key, event())[0], "Signature: invalid signature")
    # forged: a key id the profile does not contain at all
    other_id = generate_pod_key(a.url("producer", "profile/card#other-key"))
    refusals["unknown key"] = (post(other_id, event())[0], "no public key")
    # stale: created an hour ago (its expires has passed too)
    refusals["stale"] = (post(real_key, event(), created=int(time.time()) - 3600)[0], "expired")
    # tampered: the body changed after signing; with the old digest, then with a recomputed one
    original = event()
    tampered = original.replace(b"Bruce Wayne", b"Joker")
    refusals["tampered"] = (post(real_key, original, sent=tampered)[0], "content-digest does not match")
    headers = {"Content-Type": "application/ld+json"}
    headers.update(sign_request(real_key, "POST", inbox_url, headers, original))
    headers["Content-Digest"] = sign_request(real_key, "POST", inbox_url, {}, tampered)["Content-Digest"]
    redigested = request("POST", inbox_url, headers=headers, body=tampered)
    refusals["tampered, digest recomputed"] = (redigested, "Signature: invalid signature")

    for name, (response, message) in refusals.items():
        assert response.status == 401, (name, response.status, response.body)
        assert message in response.json()["error"], (name, response.body)
    # nothing but the valid delivery was stored
    (stored,) = inbox(b, "recv")
    assert stored["@id"] == valid.headers["location"]
    assert received_count(b) == 1


def test_a_sender_profile_that_cannot_be_fetched_is_503_not_401(procs: Procs) -> None:
    """A receiver that cannot reach the sending pod's profile right now cannot verify the signature,
    but nothing is wrong with the request: 503 with Retry-After, which the sender retries, where a
    401 would make it record a final refusal and lose the event. A profile that is there but has no
    such key (or a document that is not there) is the sender's fault: 401."""
    a, b = servers(procs, ("a", "producer"), ("b", "recv"))
    b.cli("grant", "recv", "--agent", a.webid("producer"), "--publish", "realestate").check()
    inbox_url = b.url("recv", "inbox/")
    key = stored_pod_key(a, "producer")

    def post(signing: PodKey) -> Response:
        doc = {"id": a.url("producer", "publish/" + secrets.token_hex(16)), "topic": TOPIC, "data": DATA}
        body = json.dumps(doc).encode()
        headers = {"Content-Type": "application/ld+json"}
        headers.update(sign_request(signing, "POST", inbox_url, headers, body))
        return request("POST", inbox_url, headers=headers, body=body)

    missing = post(generate_pod_key(a.url("nobody", "profile/card#pod-key")))
    assert missing.status == 401, missing.body
    assert "HTTP 404" in missing.json()["error"]

    a.stop()
    down = post(key)
    assert down.status == 503, down.body
    assert a.url("producer", "profile/card") in down.json()["error"]
    assert 1 <= int(down.headers["retry-after"]) <= 30
    again = post(key)  # from the failure cache, with the time it has left
    assert again.status == 503 and 1 <= int(again.headers["retry-after"]) <= 30
    assert inbox(b, "recv") == [] and received_count(b) == 0


# -- 3. the sender crashes mid fan-out ---------------------------------------------------------------


def test_sender_killed_mid_fan_out_delivers_exactly_once(procs: Procs) -> None:
    """N events to the user's pod, each forwarded to K subscriber pods on another server; the
    sending server is SIGKILLed while the N*K forwards are in flight, then restarted."""
    n_events, subscribers = 100, [f"sub{i}" for i in range(8)]
    a, b = servers(procs, ("a", "producer"), ("b", "sub0"))
    subscriber_pods(b, subscribers, a.webid("user"))
    user, key = hub(a, [b.webid(s) for s in subscribers])
    total = n_events * len(subscribers)

    events = [{"recipient": user, "topic": TOPIC, "data": {"n": i}} for i in range(n_events)]
    response = publish(a, "producer", key, events)
    assert response.status == 201, response.body
    ids = {e["id"] for e in response.json()}
    # kill as soon as the first forwards arrive
    at_kill = wait_for(lambda: received_count(b), lambda count: count > 0, WAIT, interval=0.005)
    a.kill()
    arrived_before_restart = received_count(b)
    assert 0 < at_kill <= arrived_before_restart < total, "the crash did not interrupt the fan-out"

    a.start()
    wait_for(lambda: received_count(b), lambda count: count >= total, WAIT)

    # Every queued delivery finishes, none fails. The sender records an outcome just after the
    # receiver has stored the copy, so wait for the records rather than read them at once.
    states = wait_for(lambda: delivery_states(a), lambda st: st == {"delivered": n_events + total}, WAIT)
    assert states == {"delivered": n_events + total}, states
    user_copies = inbox(a, "user")
    assert len(user_copies) == n_events and {e["id"] for e in user_copies} == ids
    for s in subscribers:
        copies = inbox(b, s)
        assert len(copies) == n_events, (s, len(copies))
        assert {e["id"] for e in copies} == ids
        assert {e["data"]["n"] for e in copies} == set(range(n_events))
    assert received_count(b) == total


# -- 4. the receiver is down -------------------------------------------------------------------------


def test_receiver_down_gets_everything_queued_once_back(procs: Procs) -> None:
    a, b = servers(procs, ("a", "producer"), ("b", "recv"))
    recv = b.webid("recv")
    b.cli("grant", "recv", "--agent", a.webid("producer"), "--publish", "realestate").check()
    key = api_key(a, "producer")
    # one delivery while both run (the sender now knows the receiver's profile and inbox)
    first = publish(a, "producer", key, {"recipient": recv, "topic": TOPIC, "data": {"n": 0}})
    assert first.status == 201
    wait_deliveries(a, "producer", first.json()["id"], {"delivered"})

    b.stop()
    urls = []
    for i in range(1, 6):
        started = time.monotonic()
        response = publish(a, "producer", key, {"recipient": recv, "topic": TOPIC, "data": {"n": i}})
        # the receiver cannot be asked: accepted, and its inbox will decide on arrival
        assert response.status == 201, response.body
        assert time.monotonic() - started < 3.0
        urls.append(response.json()["id"])
    retrying = wait_for(
        lambda: deliveries(a, "producer", urls[0])[recv],
        lambda d: d["state"] == "retrying" and d["attempts"] >= 2,
        WAIT,
    )
    assert retrying["state"] == "retrying" and "lastError" in retrying and "nextAttempt" in retrying

    b.start()
    events = wait_inbox(b, "recv", 6)
    assert sorted(e["data"]["n"] for e in events) == [0, 1, 2, 3, 4, 5]  # retries are jittered: any order
    assert {e["id"] for e in events} == {first.json()["id"], *urls}
    for url in urls:
        (delivered,) = wait_deliveries(a, "producer", url, {"delivered"}).values()
        assert delivered["attempts"] >= 2
    time.sleep(1.2)  # longer than the longest backoff: nothing arrives twice
    assert len(inbox(b, "recv")) == 6


# -- 5. a receiver that refuses ----------------------------------------------------------------------


def test_refused_delivery_fails_with_the_receivers_reason_and_is_not_retried(procs: Procs) -> None:
    a, b = servers(procs, ("a", "producer"), ("b", "recv"))
    recv, granted = b.webid("recv"), b.webid("granted")
    key = api_key(a, "producer")
    b.cli_many(
        [
            ["create", "granted"],
            ["grant", "granted", "--agent", a.webid("producer"), "--publish", "realestate"],
        ]
    )
    reason = f"HTTP 403: Not authorized to publish to {recv} on topic {TOPIC}"

    # never granted, and the publish check is inconclusive: the recipient's profile names no
    # pim:storage, so the sender cannot find the topic container to ask about
    patch = f"DELETE DATA {{ <{recv}> <http://www.w3.org/ns/pim/space#storage> <{b.url('recv')}> . }}"
    patched = request(
        "PATCH",
        b.url("recv", "profile/card"),
        headers={"Content-Type": "application/sparql-update", **as_owner(b, "recv")},
        body=patch.encode(),
    )
    assert patched.status in (200, 204), patched.body
    response = publish(a, "producer", key, {"recipient": recv, "topic": TOPIC, "data": DATA})
    assert response.status == 201, response.body
    url = response.json()["id"]
    failed = wait_deliveries(a, "producer", url, {"failed"})[recv]
    assert (failed["attempts"], failed["lastError"]) == (1, reason)
    time.sleep(1.2)  # longer than the longest backoff: a retry would have happened by now
    assert deliveries(a, "producer", url)[recv] == failed
    assert inbox(b, "recv") == []

    # granted when published, revoked before the delivery arrives (the receiver was down meanwhile)
    warm = publish(a, "producer", key, {"recipient": granted, "topic": TOPIC, "data": {"n": 0}})
    wait_deliveries(a, "producer", warm.json()["id"], {"delivered"})
    b.stop()
    response = publish(a, "producer", key, {"recipient": granted, "topic": TOPIC, "data": {"n": 1}})
    assert response.status == 201, response.body
    url = response.json()["id"]
    wait_for(lambda: deliveries(a, "producer", url)[granted], lambda d: d["attempts"] >= 1, WAIT)
    b.cli("grant", "granted", "--agent", a.webid("producer"), "--publish", "realestate", "--remove").check()
    b.start()
    failed = wait_deliveries(a, "producer", url, {"failed"})[granted]
    assert failed["lastError"] == f"HTTP 403: Not authorized to publish to {granted} on topic {TOPIC}"
    time.sleep(1.2)
    assert deliveries(a, "producer", url)[granted] == failed
    assert [e["data"] for e in inbox(b, "granted")] == [{"n": 0}]


# -- 6. the publish check asks the remote server -----------------------------------------------------


def test_publish_asks_the_remote_recipients_server(procs: Procs) -> None:
    a, b = servers(procs, ("a", "producer"), ("b", "recv"))
    recv, stranger, producer = b.webid("recv"), b.webid("stranger"), a.webid("producer")
    b.cli_many(
        [["create", "stranger"], ["grant", "recv", "--agent", producer, "--publish", "realestate/contact"]]
    )
    key = api_key(a, "producer")

    # what the remote check sees: a HEAD of the topic container signed as the publishing pod
    pod_key = stored_pod_key(a, "producer")
    for container, modes in (
        (b.url("recv", "event/topic/realestate/contact/"), "append"),
        (b.url("recv", "event/topic/realestate/listing/"), ""),
        (b.url("stranger", "event/topic/realestate/contact/"), ""),
    ):
        head = request("HEAD", container, headers=sign_request(pod_key, "HEAD", container, {}, None))
        assert head.status == 403  # a publisher may append, not read
        assert head.headers["wac-allow"].startswith(f'user="{modes}"'), (container, head.headers)

    def refused(body: dict[str, Any], recipient: str, topic: str = TOPIC) -> None:
        response = publish(a, "producer", key, body)
        assert response.status == 403, response.body
        assert response.json() == {"error": f"Not authorized to publish to {recipient} on topic {topic}"}

    refused({"recipient": stranger, "topic": TOPIC, "data": DATA}, stranger)
    refused({"recipient": recv, "source": stranger, "topic": TOPIC, "data": DATA}, stranger)
    refused(
        {"recipient": recv, "topic": "realestate/listing#add", "data": DATA}, recv, "realestate/listing#add"
    )
    with a.db() as conn:  # nothing stored or queued
        assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0

    accepted = publish(a, "producer", key, {"recipient": recv, "topic": TOPIC, "data": DATA})
    assert accepted.status == 201, accepted.body
    url = accepted.json()["id"]
    assert wait_deliveries(a, "producer", url, {"delivered"})[recv]["attempts"] == 1
    (copy,) = wait_inbox(b, "recv", 1)
    assert copy["id"] == url
    assert inbox(b, "stranger") == []
