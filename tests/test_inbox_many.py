"""A batch of events from another server is received in one transaction, each item still on its own.

``pod.batch_inbox`` hands the items that pass their own checks to ``Inbox.receive_many``, which
commits all their copies together. These tests hold it to what one signed POST per item would give
— real server processes, real HTTP and signatures, on each database backend: a copy whose write
fails refuses that item alone and leaves nothing of it; duplicates are settled inside the
transaction, even within one batch; items that share an event id keep their own content, byte for
byte; and a change to a pod's subscriptions applies to the very next event it receives.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from pod.remote_inbox import BATCH_PATH
from tests.procs import Procs, Response, ServerProcess, request
from tests.test_federation import DATA, TOPIC, as_owner, inbox, received_count, servers, stored_pod_key
from tests.test_inbox_batch import batch_of, signed

NOT_A_CONTAINER = "/event/topic/realestate/contact is a document, not a container"


class Sender:
    """Signed batches and single POSTs from server A's ``producer`` pod to inboxes on server B."""

    def __init__(self, a: ServerProcess, b: ServerProcess) -> None:
        self.a = a
        self.key = stored_pod_key(a, "producer")
        self.endpoint = b.base_url + BATCH_PATH.lstrip("/")

    def event(self, **fields: Any) -> dict[str, Any]:
        doc = {"id": self.a.url("producer", "publish/" + secrets.token_hex(16)), "topic": TOPIC, "data": DATA}
        doc.update(fields)
        return doc

    def batch(self, items: list[Any]) -> list[dict[str, Any]]:
        body = batch_of(items)
        response = request("POST", self.endpoint, headers=signed(self.key, self.endpoint, body), body=body)
        assert response.status == 200, response.body
        results: list[dict[str, Any]] = response.json()["results"]
        assert len(results) == len(items)
        return results

    def single(self, inbox_url: str, doc: dict[str, Any]) -> Response:
        body = json.dumps(doc).encode()
        headers = signed(self.key, inbox_url, body, "application/ld+json")
        return request("POST", inbox_url, headers=headers, body=body)


def outcome(result: dict[str, Any]) -> tuple[int, str | None]:
    return result["status"], result.get("error")


def test_a_batch_item_whose_copy_cannot_be_written_is_refused_alone(procs: Procs) -> None:
    """r2 has a document where its topic container would go, so its inbox cannot link a copy: each
    item for r2 is refused (409, as its own POST is) and leaves no trace, while the items around it
    in the same batch — the same transaction — are stored."""
    a, b = servers(procs, ("a", "producer"), ("b", "r1"))
    producer = a.webid("producer")
    b.cli_many(
        [["create", "r2"], ["create", "r3"]]
        + [["grant", pod, "--agent", producer, "--publish", "realestate"] for pod in ("r1", "r2", "r3")]
    )
    blocker = b.url("r2", "event/topic/realestate/contact")
    put = request(
        "PUT",
        blocker,
        headers={"Content-Type": "text/turtle", **as_owner(b, "r2")},
        body=b'<#it> <http://schema.org/name> "not a container" .',
    )
    assert put.status == 201, put.body
    send = Sender(a, b)
    r1, r2, r3 = (b.url(pod, "inbox/") for pod in ("r1", "r2", "r3"))
    events = [send.event(data={"n": n}) for n in range(4)]

    results = send.batch(
        [{"inbox": url, "event": e} for url, e in zip((r1, r2, r3, r2), events, strict=True)]
    )
    assert [outcome(r) for r in results] == [
        (201, None),
        (409, NOT_A_CONTAINER),
        (201, None),
        (409, NOT_A_CONTAINER),
    ]
    single = send.single(r2, send.event())
    assert (single.status, single.json()["error"]) == (409, NOT_A_CONTAINER)
    assert [e["id"] for e in inbox(b, "r1")] == [events[0]["id"]]
    assert [e["id"] for e in inbox(b, "r3")] == [events[2]["id"]]
    assert inbox(b, "r2") == []
    assert received_count(b) == 2

    # nothing of a refused item was kept, not even its event id: once the document is gone, it is
    # received as new; the stored ones are duplicates, answered with their copies
    assert request("DELETE", blocker, headers=as_owner(b, "r2")).status == 204
    again = send.batch([{"inbox": r2, "event": events[1]}, {"inbox": r1, "event": events[0]}])
    assert [r["status"] for r in again] == [201, 200]
    assert again[1]["@id"] == results[0]["@id"]
    assert [e["id"] for e in inbox(b, "r2")] == [events[1]["id"]]
    assert received_count(b) == 3


def test_one_event_twice_in_one_batch_is_stored_once(procs: Procs) -> None:
    """Duplicates are settled inside the batch's transaction: the second copy of an event for the
    same inbox is answered with the first's location, in the same batch as in a later one."""
    a, b = servers(procs, ("a", "producer"), ("b", "r1"))
    b.cli_many(
        [["create", "r2"]]
        + [["grant", p, "--agent", a.webid("producer"), "--publish", "realestate"] for p in ("r1", "r2")]
    )
    send = Sender(a, b)
    r1, r2 = b.url("r1", "inbox/"), b.url("r2", "inbox/")
    event = send.event()
    first = send.batch(
        [{"inbox": r1, "event": event}, {"inbox": r2, "event": event}, {"inbox": r1, "event": event}]
    )
    assert [r["status"] for r in first] == [201, 201, 200]
    assert first[2]["@id"] == first[0]["@id"] != first[1]["@id"]
    later = send.batch([{"inbox": r2, "event": event}])
    assert later == [{"status": 200, "@id": first[1]["@id"]}]
    assert len(inbox(b, "r1")) == len(inbox(b, "r2")) == 1
    assert received_count(b) == 2


def test_items_sharing_an_event_id_keep_their_own_content(procs: Procs) -> None:
    """A fan-out brings one event for many inboxes, and its encoding is shared between them; items
    that carry the same id with other content — other values, a number written another way, the
    same members in another order — are each stored as they came."""
    a, b = servers(procs, ("a", "producer"), ("b", "r1"))
    pods = ["r1", "r2", "r3", "r4"]
    b.cli_many(
        [["create", p] for p in pods[1:]]
        + [["grant", p, "--agent", a.webid("producer"), "--publish", "realestate"] for p in pods]
    )
    send = Sender(a, b)
    first = send.event(data={"a": 1, "b": "x"})
    reordered = {key: first[key] for key in reversed(first)} | {"data": {"b": "x", "a": 1}}
    sent = [
        first,
        send.event(id=first["id"], data={"a": 2, "b": "x"}),
        send.event(id=first["id"], data={"a": 1.0, "b": "x"}),
        reordered,
    ]
    results = send.batch([{"inbox": b.url(p, "inbox/"), "event": e} for p, e in zip(pods, sent, strict=True)])
    assert [r["status"] for r in results] == [201] * 4
    copies = {p: inbox(b, p) for p in pods}
    assert all(len(held) == 1 for held in copies.values()), copies
    r1, r2, r3, r4 = (copies[p][0] for p in pods)
    assert r1["data"] == {"a": 1, "b": "x"} and isinstance(r1["data"]["a"], int)
    assert r2["data"] == {"a": 2, "b": "x"}
    assert isinstance(r3["data"]["a"], float)
    assert list(r4["data"]) == ["b", "a"] and list(r1["data"]) == ["a", "b"]
    # the members follow the copy's own @context and @id in the order they came
    assert [k for k in r4 if k not in ("@context", "@id", "originalRecipient")] == list(reversed(first))
    assert {c["id"] for c in (r1, r2, r3, r4)} == {first["id"]}


def test_a_change_to_a_pods_subscriptions_applies_to_its_next_event(procs: Procs) -> None:
    """The hub's subscriptions are created, then changed, by another process (the CLI) between
    batches: each batch's events are forwarded as the subscriptions stand when it is received —
    none at first, then to the first subscriber, then to the second only — although the server
    worked out the hub's subscribers from what it had read before. Within a batch, each event goes
    to the subscribers of its own topic, and the other items of the batch are not held back."""
    a, b = servers(procs, ("a", "producer"), ("b", "hub"))
    hub = b.webid("hub")
    producer = a.webid("producer")
    b.cli_many(
        [
            ["create", "s1"],
            ["create", "s2"],
            ["create", "other"],
            ["grant", "hub", "--agent", producer, "--publish", "realestate"],
            ["grant", "other", "--agent", producer, "--publish", "realestate"],
            ["grant", "s1", "--agent", hub, "--publish", "realestate"],
            ["grant", "s2", "--agent", hub, "--publish", "realestate"],
        ]
    )
    send = Sender(a, b)
    hub_inbox, other_inbox = b.url("hub", "inbox/"), b.url("other", "inbox/")

    def forwarded(event: dict[str, Any]) -> list[str]:
        """Who the hub forwards ``event`` to: rows queued in the transaction that stored its copy."""
        with b.db() as conn:
            rows = conn.execute(
                "SELECT recipient FROM deliveries WHERE sender = 'hub' AND event_id = ? ORDER BY recipient",
                (event["id"],),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def batch() -> tuple[dict[str, Any], dict[str, Any]]:
        """A contact event and a house event for the hub, with one for another pod between them."""
        contact, house = send.event(), send.event(topic="realestate/house#sold")
        items = [{"inbox": hub_inbox, "event": contact}, {"inbox": other_inbox, "event": send.event()}]
        items.append({"inbox": hub_inbox, "event": house})
        assert [r["status"] for r in send.batch(items)] == [201, 201, 201]
        return contact, house

    contact, house = batch()
    assert forwarded(contact) == forwarded(house) == []

    b.cli_many(
        [
            ["subscribe", "hub", "--agent", b.webid("s1"), "--topic", "realestate/contact"],
            ["grant", "hub", "--agent", b.webid("s1"), "--subscribe", "realestate"],
        ]
    )
    contact, house = batch()
    assert forwarded(contact) == [b.webid("s1")]
    assert forwarded(house) == []

    b.cli_many(
        [
            ["subscribe", "hub", "--agent", b.webid("s2"), "--topic", "realestate"],
            ["grant", "hub", "--agent", b.webid("s2"), "--subscribe", "realestate"],
            ["subscribe", "hub", "--agent", b.webid("s1"), "--topic", "realestate/contact", "--remove"],
        ]
    )
    contact, house = batch()
    assert forwarded(contact) == [b.webid("s2")]
    assert forwarded(house) == [b.webid("s2")]
    assert len(inbox(b, "other")) == 3
