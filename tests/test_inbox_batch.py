"""Event deliveries between servers in batches: real server processes, real HTTP, real signatures.

A server takes many events for its inboxes in one signed POST to ``/.well-known/inbox-batch``
(``pod.batch_inbox``), and a sending server batches its deliveries to such a server
(``pod.remote_inbox``): a fan-out to a thousand subscribers there is a few requests, not a thousand.
These tests hold both ends to their promises — every item is answered exactly as its own signed
POST would be, a batch is authenticated and replay-guarded like any signed request, and a receiver
that takes no batches (any other implementation) still gets one signed POST per delivery — with
stub servers in the test process standing for other implementations.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from acl.signatures import PodKey, generate_pod_key, sign_request
from pod.events import NO_TOPIC
from pod.remote_inbox import BATCH_PATH, MAX_BATCH_ITEMS
from tests.procs import Procs, Response, ServerProcess, request, wait_for
from tests.test_federation import (
    DATA,
    TOPIC,
    WAIT,
    delivery_states,
    hub,
    inbox,
    publish,
    received_count,
    servers,
    stored_pod_key,
    subscriber_pods,
)
from tests.test_operations import parse_metrics, sample


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path) as manager:
        yield manager


def posts_answered(server: ServerProcess) -> dict[int, float]:
    """How many POSTs the server answered, by status (its own ``/.metrics``)."""
    response = request("GET", server.base_url + ".metrics")
    assert response.status == 200, response.body
    _, samples = parse_metrics(response.body.decode())
    return {
        status: count
        for status in (200, 201, 400, 401, 403, 404)
        if (count := sample(samples, "pod_http_requests_total", method="POST", status=str(status)))
    }


# -- 1. a fan-out to another server ------------------------------------------------------------------


def test_fan_out_to_another_server_travels_in_batches(procs: Procs) -> None:
    """Events to a pod whose 150 subscribers live on another server: every copy arrives and, once
    the subscribers' profiles are known, a fan-out is a handful of signed batch requests rather
    than one POST per subscriber."""
    subscribers = [f"s{i:03d}" for i in range(150)]
    a, b = servers(procs, ("a", "producer"), ("b", "s000"))
    subscriber_pods(b, subscribers, a.webid("user"))
    user, key = hub(a, [b.webid(s) for s in subscribers])

    urls: list[str] = []
    for n in range(2):  # the first fan-out also fetches every subscriber's profile
        before = posts_answered(b)
        response = publish(a, "producer", key, {"recipient": user, "topic": TOPIC, "data": {"n": n}})
        assert response.status == 201, response.body
        urls.append(response.json()["id"])
        copies = (n + 1) * len(subscribers)
        wait_for(lambda: received_count(b), lambda count: count >= copies, WAIT)  # noqa: B023
        # the user's copies and one forward per subscriber, each delivered at the first attempt
        expected = {"delivered": (n + 1) * (1 + len(subscribers))}
        assert wait_for(lambda: delivery_states(a), lambda found: found == expected, WAIT) == expected  # noqa: B023
        after = posts_answered(b)
    with a.db() as conn:
        assert conn.execute("SELECT MAX(attempts) FROM deliveries").fetchone()[0] == 1
    batches = after.get(200, 0) - before.get(200, 0)
    assert after.get(201, 0) == before.get(201, 0), f"copies came in POSTs of their own: {after}"
    assert 1 <= batches <= 10, after
    for s in subscribers[:: len(subscribers) // 5]:
        copies_here = sorted(inbox(b, s), key=lambda e: e["data"]["n"])
        assert [(e["id"], e["originalRecipient"], e["data"]) for e in copies_here] == [
            (urls[0], user, {"n": 0}),
            (urls[1], user, {"n": 1}),
        ]
        assert all(e["@id"].startswith(b.url(s, "inbox/")) for e in copies_here)
    assert received_count(b) == 2 * len(subscribers)


# -- 2. the batch endpoint answers each item as its own POST would ----------------------------------


def signed(key: PodKey, url: str, body: bytes, media: str = "application/json") -> dict[str, str]:
    headers = {"Content-Type": media}
    headers.update(sign_request(key, "POST", url, headers, body))
    return headers


def batch_of(items: list[Any]) -> bytes:
    return json.dumps({"items": items}).encode()


def test_batch_items_are_answered_as_their_own_signed_posts_are(procs: Procs) -> None:
    a, b = servers(procs, ("a", "producer"), ("b", "r1"))
    b.cli_many([["create", "r2"], ["grant", "r1", "--agent", a.webid("producer"), "--publish", "realestate"]])
    key = stored_pod_key(a, "producer")
    endpoint = b.base_url + BATCH_PATH.lstrip("/")
    r1, r2 = b.url("r1", "inbox/"), b.url("r2", "inbox/")

    described = request("GET", endpoint)
    assert described.status == 200, described.body
    assert described.json() == {"maxItems": MAX_BATCH_ITEMS, "maxBytes": 50 * 1024 * 1024}

    def event(**fields: Any) -> dict[str, Any]:
        doc = {"id": a.url("producer", "publish/" + secrets.token_hex(16)), "topic": TOPIC, "data": DATA}
        doc.update(fields)
        return doc

    def post_batch(items: list[Any]) -> Response:
        body = batch_of(items)
        return request("POST", endpoint, headers=signed(key, endpoint, body), body=body)

    def post_single(inbox_url: str, doc: dict[str, Any]) -> tuple[int, str | None]:
        body = json.dumps(doc).encode()
        response = request(
            "POST", inbox_url, headers=signed(key, inbox_url, body, "application/ld+json"), body=body
        )
        return response.status, response.json().get("error")

    first = event()
    warm = post_batch([{"inbox": r1, "event": first}])
    assert warm.status == 200, warm.body
    (stored,) = warm.json()["results"]
    assert stored["status"] == 201 and stored["@id"].startswith(r1)

    # each kind of item, sent in one batch, then each as its own signed POST (fresh event ids, so
    # that the single POSTs are not duplicates of the batch's items)
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("stored", r1, {}),
        ("not allowed on the topic", r2, {}),
        ("no valid topic", r1, {"topic": "nonsense"}),
        ("invalid id", r1, {"id": "not a URL"}),
        ("no such pod", b.url("nobody", "inbox/"), {}),
    ]
    items: list[dict[str, Any]] = [{"inbox": url, "event": event(**fields)} for _, url, fields in cases]
    items.append({"inbox": r1, "event": first})  # a second copy of an event r1 has
    response = post_batch(items)
    assert response.status == 200, response.body
    results = response.json()["results"]
    assert len(results) == len(items)
    for (name, url, fields), result in zip(cases, results[: len(cases)], strict=True):
        single = post_single(url, event(**fields))
        assert (result["status"], result.get("error")) == single, (name, result, single)
    assert results[0]["status"] == 201 and results[0]["@id"].startswith(r1)
    assert results[1]["error"] == f"Not authorized to publish to {b.webid('r2')} on topic {TOPIC}"
    assert results[2]["error"] == NO_TOPIC
    assert results[-1] == {"status": 200, "@id": stored["@id"]}  # dropped, and said where it is

    # what only a batch can name: an inbox that is not one of this server's, a malformed item, and
    # a notification that is not an event (a POST of its own would store it as a plain resource)
    odd = post_batch(
        [
            {"inbox": "https://elsewhere.example/alice/inbox/", "event": event()},
            {"inbox": b.url("r1", "profile/"), "event": event()},
            {"inbox": r1},
            "not an item",
            {"inbox": r1, "event": {"id": event()["id"], "data": DATA}},
        ]
    )
    assert odd.status == 200, odd.body
    assert [r["status"] for r in odd.json()["results"]] == [404, 404, 400, 400, 400]
    assert odd.json()["results"][4]["error"] == NO_TOPIC

    # r1 holds the first event once, the batch's stored item and the single POST's; r2 nothing
    held = [e["id"] for e in inbox(b, "r1")]
    assert len(held) == 3 and {first["id"], items[0]["event"]["id"]} <= set(held)
    assert inbox(b, "r2") == []
    assert received_count(b) == 3


def test_a_batch_is_refused_whole_like_any_bad_signed_request(procs: Procs) -> None:
    a, b = servers(procs, ("a", "producer"), ("b", "r1"))
    b.cli("grant", "r1", "--agent", a.webid("producer"), "--publish", "realestate").check()
    key = stored_pod_key(a, "producer")
    endpoint = b.base_url + BATCH_PATH.lstrip("/")
    r1 = b.url("r1", "inbox/")

    def items(n: int = 1) -> list[dict[str, Any]]:
        def event() -> dict[str, Any]:
            return {"id": a.url("producer", "publish/" + secrets.token_hex(16)), "topic": TOPIC, "data": DATA}

        return [{"inbox": r1, "event": event()} for _ in range(n)]

    body = batch_of(items())
    headers = signed(key, endpoint, body)
    accepted = request("POST", endpoint, headers=headers, body=body)
    assert accepted.status == 200 and accepted.json()["results"][0]["status"] == 201, accepted.body

    refusals: dict[str, tuple[Response, int, str]] = {}
    refusals["replayed"] = (request("POST", endpoint, headers=headers, body=body), 401, "Signature: replayed")
    unsigned = batch_of(items())
    refusals["unsigned"] = (
        request("POST", endpoint, headers={"Content-Type": "application/json"}, body=unsigned),
        401,
        "must be signed by the sending pod",
    )
    forged = generate_pod_key(key.key_id)
    body = batch_of(items())
    refusals["forged"] = (
        request("POST", endpoint, headers=signed(forged, endpoint, body), body=body),
        401,
        "Signature: invalid signature",
    )
    body = batch_of(items())
    tampered = body.replace(b"Bruce Wayne", b"Joker")
    refusals["tampered"] = (
        request("POST", endpoint, headers=signed(key, endpoint, body), body=tampered),
        401,
        "content-digest does not match",
    )
    # signed for another URL (an inbox), replayed at the batch endpoint
    body = batch_of(items())
    refusals["other target"] = (
        request("POST", endpoint, headers=signed(key, r1, body), body=body),
        401,
        "Signature: invalid signature",
    )
    body = batch_of(items())
    refusals["media type"] = (
        request("POST", endpoint, headers=signed(key, endpoint, body, "text/plain"), body=body),
        415,
        "must be sent as application/json",
    )
    for name, raw in (("not JSON", b"{"), ("no items", b'{"items": []}'), ("not a batch", b"[1, 2]")):
        refusals[name] = (
            request("POST", endpoint, headers=signed(key, endpoint, raw), body=raw),
            400,
            '{"items": [{"inbox": URL, "event": {...}}, ...]}',
        )
    body = batch_of(items(MAX_BATCH_ITEMS + 1))
    refusals["too many"] = (
        request("POST", endpoint, headers=signed(key, endpoint, body), body=body),
        413,
        f"at most {MAX_BATCH_ITEMS} events",
    )
    for name, (response, status, message) in refusals.items():
        assert response.status == status, (name, response.status, response.body)
        assert message in response.json()["error"], (name, response.body)
    assert received_count(b) == 1  # only the accepted batch stored anything


# -- 3. receivers that take no batches ---------------------------------------------------------------


class Stub:
    """Another server's inboxes, in a thread of the test: agents ``/aN/profile#me`` with inboxes
    ``/aN/inbox/``. ``mode`` says what it does with batches: ``none`` (its well-known path is 404),
    ``refuse`` (announced, but every batch is answered 400) or ``take`` (announced, and answered
    item by item — with 503 while ``busy``). While ``gated``, a batch is answered only once another
    one has arrived (or after ``GATE`` seconds), and ``overlapped`` counts those that saw one."""

    GATE = 3.0

    def __init__(self, mode: str, agents: int, max_items: int = 50) -> None:
        self.mode = mode
        self.busy = False
        self.gated = False
        self.overlapped = 0
        self.in_flight = 0
        self.changed = threading.Condition()
        self.agents = [f"a{i}" for i in range(agents)]
        self.requests: list[tuple[str, str, dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def answer(self, status: int, body: bytes, media: str = "application/json") -> None:
                stub.record(self, status)
                self.send_response(status)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self.body = b""
                if self.path == BATCH_PATH:
                    if stub.mode == "none":
                        self.answer(404, b'{"error": "not found"}')
                    else:
                        self.answer(200, json.dumps({"maxItems": max_items}).encode())
                    return
                name = self.path.split("/")[1]
                if self.path == f"/{name}/profile" and name in stub.agents:
                    turtle = f"<#me> <http://www.w3.org/ns/ldp#inbox> </{name}/inbox/> .\n"
                    self.answer(200, turtle.encode(), "text/turtle")
                else:
                    self.answer(404, b"{}")

            def do_POST(self) -> None:
                self.body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != BATCH_PATH:
                    self.answer(201, b"{}")
                elif stub.mode == "refuse":
                    self.answer(400, b'{"error": "no batches today"}')
                elif stub.busy:
                    self.answer(503, b'{"error": "busy"}')
                else:
                    if stub.gated:
                        with stub.changed:
                            stub.in_flight += 1
                            stub.changed.notify_all()
                            stub.changed.wait_for(
                                lambda: stub.in_flight >= 2 or stub.overlapped > 0, timeout=Stub.GATE
                            )
                            if stub.in_flight >= 2:
                                stub.overlapped += 1
                    results = [
                        {"status": 201, "@id": item["inbox"] + secrets.token_hex(8)}
                        for item in json.loads(self.body)["items"]
                    ]
                    self.answer(200, json.dumps({"results": results}).encode())
                    if stub.gated:
                        with stub.changed:
                            stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        body: bytes = getattr(handler, "body", b"")
        with self.lock:
            self.requests.append((handler.command, handler.path, dict(handler.headers.items()), body, status))

    def webid(self, agent: str) -> str:
        return f"{self.base}/{agent}/profile#me"

    def seen(self, method: str, path: str) -> list[tuple[str, dict[str, str], bytes, int]]:
        """(path, headers, body, answered status) of the requests whose path starts with ``path``."""
        with self.lock:
            return [(p, h, b, st) for m, p, h, b, st in self.requests if m == method and p.startswith(path)]

    def forget(self) -> None:
        with self.lock:
            self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stubs() -> Iterator[dict[str, Stub]]:
    made = {mode: Stub(mode, 5) for mode in ("none", "refuse", "take")}
    yield made
    for stub in made.values():
        stub.close()


def test_receivers_that_take_no_batches_get_one_signed_post_per_delivery(
    procs: Procs, stubs: dict[str, Stub]
) -> None:
    (a,) = servers(procs, ("a", "producer"))
    user, key = hub(a, [stub.webid(agent) for stub in stubs.values() for agent in stub.agents])
    everyone = {stub.webid(agent) for stub in stubs.values() for agent in stub.agents}

    def forwards(event_url: str) -> dict[str, tuple[str, int]]:
        with a.db() as conn:
            rows = conn.execute(
                "SELECT recipient, state, attempts FROM deliveries WHERE sender = 'user' AND event_id = ?",
                (event_url,),
            ).fetchall()
        return {str(r[0]): (str(r[1]), int(r[2])) for r in rows}

    def fan_out(n: int, busy: Stub | None = None) -> dict[str, tuple[str, int]]:
        """Publish, let ``busy`` answer 503 until it has refused one batch, wait for everything."""
        if busy is not None:
            busy.busy = True
        response = publish(a, "producer", key, {"recipient": user, "topic": TOPIC, "data": {"n": n}})
        assert response.status == 201, response.body
        url = response.json()["id"]
        if busy is not None:
            wait_for(lambda: busy.seen("POST", BATCH_PATH), bool, WAIT)
            busy.busy = False
        done = wait_for(
            lambda: forwards(url),
            lambda found: set(found) == everyone and all(st == "delivered" for st, _ in found.values()),
            WAIT,
        )
        assert set(done) == everyone and all(st == "delivered" for st, _ in done.values()), done
        return done

    fan_out(0)  # fetches the agents' profiles: their deliveries start one by one as each arrives
    probes = {mode: len(stub.seen("GET", BATCH_PATH)) for mode, stub in stubs.items()}
    for stub in stubs.values():
        stub.forget()
    done = fan_out(1, busy=stubs["take"])

    user_key = stored_pod_key(a, "user")
    for mode, stub in stubs.items():
        inboxes = {f"/{agent}/inbox/" for agent in stub.agents}
        # each origin is asked about batches once at most, however many deliveries go there
        assert probes[mode] + len(stub.seen("GET", BATCH_PATH)) <= 1, mode
        singles = stub.seen("POST", "/a")
        for _, headers, body, _ in singles:
            assert f'keyid="{user_key.key_id}"' in headers["Signature-Input"], mode
            assert "content-digest" in headers["Signature-Input"], mode
            assert json.loads(body)["data"] == {"n": 1}
        batches = stub.seen("POST", BATCH_PATH)
        for _, headers, _, _ in batches:
            assert f'keyid="{user_key.key_id}"' in headers["Signature-Input"], mode
        attempts = {done[stub.webid(agent)][1] for agent in stub.agents}
        if mode == "take":
            # 503 is every item's answer: all five are retried (in batches or alone, as they fall
            # due) and each inbox accepts exactly one copy
            (_, _, first, status), *later = batches
            assert status == 503 and len(json.loads(first)["items"]) == 5
            accepted = [i["inbox"] for _, _, b, st in later if st == 200 for i in json.loads(b)["items"]]
            accepted += [stub.base + p for p, _, _, _ in singles]
            assert sorted(accepted) == sorted(stub.base + i for i in inboxes)
            assert attempts == {2}
        else:
            # no batches announced, or the batch refused as a whole (400): one POST per delivery,
            # sent at once, each judged on its own
            assert [st for _, _, _, st in batches] == ([] if mode == "none" else [400]), mode
            assert sorted(p for p, _, _, _ in singles) == sorted(inboxes), mode
            assert attempts == {1}, mode


def test_a_fan_out_is_claimed_on_while_its_batches_are_in_flight(procs: Procs) -> None:
    """Deliveries riding in a batch do not hold the worker's slots: while the receiver works on the
    first batch of a fan-out, the next deliveries are claimed and sent in a batch of their own."""
    stub = Stub("take", 200, max_items=MAX_BATCH_ITEMS)
    try:
        (a,) = servers(procs, ("a", "producer"))
        user, key = hub(a, [stub.webid(agent) for agent in stub.agents])

        def fan_out(n: int) -> None:
            response = publish(a, "producer", key, {"recipient": user, "topic": TOPIC, "data": {"n": n}})
            assert response.status == 201, response.body

            def delivered() -> int:
                with a.db() as conn:
                    row = conn.execute(
                        "SELECT COUNT(*) FROM deliveries WHERE sender = 'user' AND event_id = ?"
                        " AND state = 'delivered'",
                        (response.json()["id"],),
                    ).fetchone()
                return int(row[0])

            assert wait_for(delivered, lambda count: count == len(stub.agents), WAIT) == len(stub.agents)

        fan_out(0)  # fetches the agents' profiles
        stub.forget()
        stub.gated = True
        fan_out(1)
        batches = stub.seen("POST", BATCH_PATH)
        assert len(batches) >= 2 and not stub.seen("POST", "/a"), [
            len(json.loads(b)["items"]) for _, _, b, _ in batches
        ]
        # more than one claim's worth (the worker's 64 slots) was in flight at once
        assert stub.overlapped >= 1, [len(json.loads(b)["items"]) for _, _, b, _ in batches]
    finally:
        stub.close()
