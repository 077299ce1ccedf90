"""Receiving events in a pod's ``/inbox/`` (Linked Data Notifications) and forwarding them.

Every event a pod receives obeys one rule set, whoever brings it:

1. the sender must be allowed to publish on the event's topic here (``acl:Append`` on the topic
   container), else 403, which the sender records as a final failure;
2. a second copy of an event id from the same sender is acknowledged and dropped;
3. the copy is stored in ``/inbox/`` with its own ``@id``, the shared ``id`` and
   ``originalRecipient``, and linked from the topic container;
4. a copy is queued for every subscriber of the topic — all in one transaction.

``Inbox.receive`` applies them to a delivery from another server (a signed LDN POST) and to one the
delivery worker brings in-process (a subscriber's forward, a replay); ``Inbox.receive_many`` to the
events of a batch from another server (``pod.batch_inbox``), each on its own but all committed in
one transaction. A publish to a pod on this server applies them itself: rule 1 is the check it
makes before storing anything, and the receipt of rules 2-4 (``Inbox.receipt``) is committed in
the publish's own transaction, so the copy is there when the publish is answered and no worker
round trip is made for it.

Rule 2 is settled inside the transaction that stores the copy (``DeliveryQueue.receive_many``):
the first row it writes claims the (sender, event id) pair, and finds an earlier copy if there is
one. No read ahead of it is needed, and none could settle it, since two copies may arrive together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from acl.modes import create_in
from acl.wac import Wac
from ldp.accessor import StorageAccessor, Write
from ldp.errors import BadRequest, Forbidden, PayloadTooLarge
from ldp.identifiers import PodLocator
from ldp.names import new_name
from ldp.quota import NO_QUOTA
from ldp.store import ChangeHook
from pod.events import NO_TOPIC, EventJson, Topic, is_webid, topic_link
from pod.queue import UNCHECKED, DeliveryQueue, NewDelivery, Outdated, Receipt
from pod.subscriptions import SUBSCRIPTIONS_PATH, SubscriptionCache, permitted

INBOX = "/inbox/"
JSONLD = "application/ld+json"


def is_event(doc: object) -> bool:
    """An event (as opposed to any other LDN notification) carries a topic."""
    return isinstance(doc, dict) and "topic" in doc


def not_authorized(recipient: str, topic: object) -> Forbidden:
    return Forbidden(f"Not authorized to publish to {recipient} on topic {topic}")


@dataclass(frozen=True)
class Received:
    path: str
    created: bool  # False: a duplicate, nothing new stored
    forwards: int = 0  # deliveries to the pod's subscribers queued with the copy


_PENDING = Received("", False)  # a place held for an item until its transaction has answered


class _Accepted(NamedTuple):
    """An event a pod may receive (rule 1 passed): the arguments of its ``Inbox.receipt``."""

    pod: str
    sender: str
    event_id: str
    topic: Topic
    event: EventJson


def _identical(a: object, b: object) -> bool:
    """Whether two decoded JSON values encode to the same text: equal, of the same types (``1`` and
    ``1.0`` are equal, yet encode differently) and with their objects' members in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        # Members in the same order: their values pair up as the two dicts list them.
        return list(a) == list(b) and all(map(_identical, a.values(), b.values()))
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(map(_identical, a, b))
    return a == b


class _Seen:
    """What the events of one batch share, worked out once for all of them.

    A fan-out from another server brings the same event for many inboxes: the same topic, the
    same id and the same members, each item decoded on its own. Parsing the topic, checking the id
    and encoding the members (``EventJson``) once per distinct value gives each item exactly what
    its own would have; an event reused must encode to the very same text (``_identical``).
    """

    def __init__(self) -> None:
        self.topics: dict[str, Topic | None] = {}
        self.ids: dict[str, bool] = {}
        self.events: dict[str, tuple[dict[str, Any], EventJson]] = {}

    def topic(self, value: object) -> Topic | None:
        if not isinstance(value, str):
            return None
        if value not in self.topics:
            self.topics[value] = Topic.parse(value)
        return self.topics[value]

    def valid_id(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if value not in self.ids:
            self.ids[value] = is_webid(value)
        return self.ids[value]

    def encoded(self, event_id: str, doc: dict[str, Any]) -> EventJson:
        known = self.events.get(event_id)
        if known is not None and (known[0] is doc or _identical(known[0], doc)):
            return known[1]
        encoded = EventJson.of(doc)
        self.events[event_id] = (doc, encoded)
        return encoded


class Inbox:
    def __init__(
        self, accessor: StorageAccessor, queue: DeliveryQueue, locator: PodLocator, wac: Wac
    ) -> None:
        self.accessor = accessor
        self.queue = queue
        self.locator = locator
        self.wac = wac
        self.on_change: ChangeHook | None = None  # told of the stored copy and its topic link
        self.subscriptions = SubscriptionCache()
        self.quota = NO_QUOTA  # pod_quota (ldp.quota), set by the application

    async def check_room(self, receipt: Receipt, planned: dict[str, int]) -> None:
        """413 if ``receipt`` would take its pod past the quota, counting the bytes ``planned`` for
        pods by receipts accepted before it into the same transaction (and adding its own)."""
        if self.quota.limit <= 0:
            return
        before = planned.get(receipt.pod, 0)
        planned[receipt.pod] = before + await self.quota.check_writes(receipt.pod, receipt.writes, before)

    async def receive(self, pod: str, sender: str, doc: dict[str, Any]) -> Received:
        """Apply the rules above to one event sent by ``sender`` (a WebID) to ``pod``."""
        (outcome,) = await self.receive_many(sender, [(pod, doc)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def receive_many(
        self, sender: str, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Received | Exception]:
        """Apply the rules above to each (pod, event) sent by ``sender``, in one transaction: for
        each item what ``receive`` would return, or the error it would raise (a refused item
        stores nothing, and does not stop the others).

        Forwards are first worked out from each pod's subscriptions as last read, without reading
        them again (``SubscriptionCache.remembered``); the transaction checks that they are still
        those. A receipt refused because they changed is worked out again from a fresh read and
        committed in a second transaction.
        """
        outcomes: list[Received | Exception] = []
        accepted: list[tuple[int, _Accepted]] = []
        seen = _Seen()
        for pod, doc in items:
            try:
                event = await self._accept(pod, sender, doc, seen)
            except Exception as exc:
                outcomes.append(exc)
                continue
            accepted.append((len(outcomes), event))
            outcomes.append(_PENDING)
        for remembered in (True, False):
            receipts: list[tuple[int, _Accepted, Receipt]] = []
            planned: dict[str, int] = {}
            for at, event in accepted:
                try:
                    receipt = await self.receipt(*event, remembered=remembered)
                    await self.check_room(receipt, planned)
                except PayloadTooLarge as exc:
                    # A full pod still answers a copy it already holds as it always does (a sender
                    # that missed the first answer sends it again): 200, nothing new.
                    held = await self.queue.received_at(event.pod, event.sender, event.event_id)
                    outcomes[at] = exc if held is None else Received(held, False)
                    continue
                except Exception as exc:
                    outcomes[at] = exc
                    continue
                receipts.append((at, event, receipt))
            if not receipts:
                break
            try:
                results = await self.queue.receive_many([receipt for _, _, receipt in receipts])
            except Exception as exc:  # the commit failed: nothing was stored
                results = [exc] * len(receipts)
            accepted = []
            for (at, event, receipt), result in zip(receipts, results, strict=True):
                if result is None:
                    self.stored(receipt)
                    outcomes[at] = Received(receipt.path, True, len(receipt.forwards))
                elif isinstance(result, str):
                    outcomes[at] = Received(result, False)
                elif isinstance(result, Outdated):
                    self.subscriptions.forget(event.pod)
                    accepted.append((at, event))
                else:
                    outcomes[at] = result
        return outcomes

    async def _accept(self, pod: str, sender: str, doc: dict[str, Any], seen: _Seen) -> _Accepted:
        """Rule 1 for one event: what its receipt is made of, once it may be received."""
        topic = seen.topic(doc.get("topic"))
        if topic is None:
            raise BadRequest(NO_TOPIC)
        event_id = doc.get("id")
        if not seen.valid_id(event_id):
            raise BadRequest(f"Invalid ID: {event_id}")
        assert isinstance(event_id, str)
        await self.wac.refresh()
        if not await self.wac.allows(pod, [create_in(topic.container)], sender, None):
            raise not_authorized(self.locator.webid(pod), topic)
        return _Accepted(pod, sender, event_id, topic, seen.encoded(event_id, doc))

    async def receipt(
        self,
        pod: str,
        sender: str,
        event_id: str,
        topic: Topic,
        event: EventJson,
        *,
        remembered: bool = False,
    ) -> Receipt:
        """What ``pod`` stores and queues on receiving an event (rules 3 and 4), for the queue to
        commit: on its own (``DeliveryQueue.receive_many``) or, for a pod on this server, in the
        transaction that publishes the event (``DeliveryQueue.commit``). The caller has checked
        rule 1.

        Its forwards come from the pod's subscriptions document, read now; or, when
        ``remembered``, from the version last read if there is one, which the receipt names for
        ``receive_many`` to check.
        """
        owner = self.locator.webid(pod)
        name = new_name()
        path = INBOX + name
        # A fresh name is hex, which URLs carry as is: its URL is its container's plus the name.
        url = self.locator.url(pod, INBOX) + name
        link_path = topic.container + name
        link = topic_link(self.locator.url(pod, topic.container) + name, url, event_id, topic)
        writes = (
            Write(path, JSONLD, event.document(url, original_recipient=owner)),
            Write(link_path, JSONLD, link),
        )
        known = self.subscriptions.remembered(pod, topic) if remembered else None
        if known is not None:
            basis, entries = known
        else:
            record = await self.accessor.get(pod, SUBSCRIPTIONS_PATH)
            entries = self.subscriptions.matching(pod, record, topic)
            basis = (None if record is None else record.version) if remembered else UNCHECKED
        forwards = [s for s in await permitted(self.wac, pod, entries, topic) if s.agent != sender]
        forward_body = event.document(original_recipient=owner) if forwards else b""
        return Receipt(
            pod,
            sender,
            event_id,
            path,
            writes,
            tuple(
                NewDelivery(
                    event_id,
                    pod,
                    "webhook" if s.webhook else "inbox",
                    s.agent,
                    forward_body,
                    target=s.webhook or s.inbox or "",
                    secret=s.secret,
                )
                for s in forwards
            ),
            basis,
        )

    def stored(self, receipt: Receipt) -> None:
        """Tell the change hook (live notifications) of a committed copy and its topic link."""
        if self.on_change is not None:
            for write in receipt.writes:
                self.on_change(receipt.pod, write.path, "Create", None)
