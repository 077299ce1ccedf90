"""The durable delivery queue: its records and the interface every database backend implements.

Every copy of an event the server promised to send (to a recipient's inbox, a subscriber's inbox
or a webhook) is a row here, written in the same transaction as the resource that caused it: once
``/publish/`` or an inbox has answered 2xx, the deliveries are on disk and survive a crash. Workers
claim due rows with a lease, so a row claimed by a process that dies becomes due again when the
lease runs out; receivers drop duplicates by event id, so a redelivery stores nothing twice.

A delivery to a pod on this server is made in the transaction that queues it (``commit`` with
receipts): its row is written already ``delivered``, beside the copy it made, and no worker ever
claims it. The row stays, so the event's delivery state reads the same and a replay sends it again
(to be dropped as a duplicate).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from ldp.accessor import Write


class NewDelivery(NamedTuple):
    """A delivery to queue. A tuple rather than a frozen dataclass: a fan-out makes one per
    subscriber on every event, and a frozen dataclass costs three times as much to make."""

    event_id: str
    sender: str
    kind: str
    recipient: str
    payload: bytes
    target: str = ""
    secret: str = ""
    delivered: bool = False  # made in the transaction that queues it: recorded as one successful attempt


# ``Receipt.subscriptions`` for forwards taken as they are, the pod's subscriptions unchecked.
UNCHECKED: Final = "unchecked"


@dataclass(frozen=True)
class Receipt:
    """A pod's receipt of one event, as ``DeliveryQueue.receive_many`` records it: the copy and topic
    link written to the pod (``writes``) and the forwards to its subscribers, unless ``pod`` already
    has ``event_id`` from ``sender`` (a WebID). ``path`` is the copy's path.

    ``subscriptions`` is the version of the pod's subscriptions document (``pod.subscriptions``)
    that ``forwards`` were worked out from, None if the pod had none: ``receive_many`` checks it in
    its transaction and refuses the receipt with ``Outdated`` if the document is no longer that
    one. A receipt built from a document just read need not be checked (``UNCHECKED``); one built
    from the version last seen, without reading it again, must be.
    """

    pod: str
    sender: str
    event_id: str
    path: str
    writes: tuple[Write, ...]
    forwards: tuple[NewDelivery, ...]
    subscriptions: str | None = UNCHECKED


class Outdated(Exception):
    """A receipt's forwards were worked out from a subscriptions document that has changed since:
    nothing of it was stored, and it must be worked out again."""


def to_check(receipts: Sequence[Receipt]) -> list[str]:
    """The pods whose subscriptions document a backend must read to judge ``receipts`` (``outdated``)."""
    return sorted({r.pod for r in receipts if r.subscriptions != UNCHECKED})


def outdated(receipts: Sequence[Receipt], versions: Mapping[str, str]) -> list[Exception | None]:
    """For each receipt, ``Outdated`` if its pod's subscriptions document, now at ``versions[pod]``
    (absent: there is none), is no longer the one its forwards came from, else None."""
    return [
        Outdated(f"the subscriptions of {r.pod} changed")
        if r.subscriptions != UNCHECKED and versions.get(r.pod) != r.subscriptions
        else None
        for r in receipts
    ]


class Publish(NamedTuple):
    """What ``DeliveryQueue.commit`` stores for one publish: its events (``writes`` in ``pod``),
    their deliveries and the copies of its recipients on this server."""

    pod: str
    writes: Sequence[Write]
    deliveries: Sequence[NewDelivery]
    receipts: Sequence[Receipt]

    @property
    def pods(self) -> set[str]:
        """Every pod it writes in."""
        return ({self.pod} if self.writes else set()) | {r.pod for r in self.receipts}


def publishes(
    parts: Sequence[Publish],
) -> tuple[list[tuple[str, Write]], list[NewDelivery], list[Receipt], list[list[bool]]]:
    """Publishes as one: every (pod, write), delivery and receipt, for a backend to store in one go
    (``ldp.accessor.Together``), and what each publish's commit answers when that is done."""
    return (
        [(p.pod, w) for p in parts for w in p.writes],
        [d for p in parts for d in p.deliveries],
        [r for p in parts for r in p.receipts],
        [[True] * len(p.receipts) for p in parts],
    )


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    sender: str
    kind: str
    recipient: str
    target: str
    secret: str
    payload: bytes
    state: str
    attempts: int
    next_attempt: float
    last_error: str
    created: float
    finished: float | None

    def as_json(self) -> dict[str, object]:
        from pod.events import now_fields

        doc: dict[str, object] = {"recipient": self.recipient, "state": self.state, "attempts": self.attempts}
        if self.kind == "webhook":
            doc["target"] = self.target
        if self.state == "pending":
            doc["state"] = "retrying" if self.attempts else "queued"
            doc["nextAttempt"] = now_fields(self.next_attempt)["time"]
        if self.state == "delivered" and self.finished is not None:
            doc["deliveredAt"] = now_fields(self.finished)["time"]
        if self.last_error:
            doc["lastError"] = self.last_error
        return doc


def backoff(attempts: int, base: float = 1.0, cap: float = 600.0) -> float:
    """Exponential backoff with full jitter: spreads retries of many deliveries to one host."""
    delay: float = min(cap, base * 2 ** max(0, attempts - 1))
    return random.uniform(0.5, 1.0) * delay


Outcome = tuple[int, str, str, float | None]  # (delivery id, state, error, next attempt)


class DeliveryQueue(Protocol):
    """What the publish, inbox and delivery code need from the database.

    Writes that must be atomic with deliveries (the published event, an inbox copy) are passed in,
    so each backend commits them in one transaction.
    """

    async def open(self) -> None: ...

    async def commit(
        self,
        pod: str,
        writes: Sequence[Write],
        deliveries: Sequence[NewDelivery],
        receipts: Sequence[Receipt] = (),
    ) -> list[bool]:
        """Store resources and queue their deliveries in one durable transaction.

        ``writes`` are new documents at fresh names (``ldp.names.new_name``: the published events),
        which lets a backend store them without looking anything up first.

        ``receipts`` are pods on this server receiving what is published, in the same transaction
        and by the rules of ``receive_many`` (a copy the pod already has is not stored again); the
        deliveries that bring them are passed as ``delivered``. Returns, for each receipt, whether
        its copy was stored. Either all of it is stored or none.
        """
        ...

    async def receive_many(self, receipts: Sequence[Receipt]) -> list[str | Exception | None]:
        """Record that each ``receipt.pod`` received its event at ``receipt.path``, with the writes
        and forwards that go with it — unless it already had: then nothing is written and the path
        of the earlier copy is its result. All in one durable transaction (a batch of events from
        another server costs one commit, not one per event), each receipt still on its own: None
        once stored, the earlier copy's path, or the error that refused it (``Outdated`` if its
        subscriptions changed) — a receipt refused stores nothing and does not stop the others. An
        error raised instead (the commit failed) means none was stored."""
        ...

    async def claim(self, limit: int, now: float | None = None) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries to this process; each is claimed by one worker."""
        ...

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Record outcomes; ``pending`` with a time is a retry."""
        ...

    async def release(self, ids: Sequence[int]) -> None:
        """Give claimed deliveries back (graceful shutdown) so another worker takes them at once."""
        ...

    async def received_at(self, pod: str, sender: str, event_id: str) -> str | None:
        """The path of ``pod``'s copy of ``event_id`` from ``sender``, if it has one."""
        ...

    async def for_event(self, event_id: str) -> list[Delivery]: ...

    async def next_due(self) -> float | None: ...

    async def depth(self) -> int: ...

    async def pending_count(self, sender: str) -> int: ...

    async def replay(self, sender: str | None, since: float, until: float, states: Sequence[str]) -> int:
        """Queue failed or past deliveries created in [since, until) again; returns how many."""
        ...
