"""Receiving events in a pod's ``/inbox/`` (Linked Data Notifications) and forwarding them.

Every event a pod receives obeys one rule set, whoever brings it:

1. the sender must be allowed to publish on the event's topic here (``acl:Append`` on the topic
   container), else 403, which the sender records as a final failure;
2. a second copy of an event id from the same sender is acknowledged and dropped;
3. the copy is stored in ``/inbox/`` with its own ``@id``, the shared ``id`` and
   ``originalRecipient``, and linked from the topic container;
4. a copy is queued for every subscriber of the topic — all in one transaction.

``Inbox.receive`` applies them to a delivery from another server (a signed LDN POST) and to one the
delivery worker brings in-process (a subscriber's forward, a replay). A publish to a pod on this
server applies them itself: rule 1 is the check it makes before storing anything, and the
receipt of rules 2-4 (``Inbox.receipt``) is committed in the publish's own transaction, so the
copy is there when the publish is answered and no worker round trip is made for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from acl.modes import create_in
from acl.wac import Wac
from ldp.accessor import StorageAccessor, Write
from ldp.errors import BadRequest, Forbidden
from ldp.identifiers import PodLocator
from ldp.store import ChangeHook
from pod.events import EVENTS_CONTEXT, NO_TOPIC, EventJson, Topic, is_webid, new_event_name
from pod.queue import DeliveryQueue, NewDelivery, Receipt
from pod.subscriptions import SUBSCRIPTIONS_PATH, subscribers

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


class Inbox:
    def __init__(
        self, accessor: StorageAccessor, queue: DeliveryQueue, locator: PodLocator, wac: Wac
    ) -> None:
        self.accessor = accessor
        self.queue = queue
        self.locator = locator
        self.wac = wac
        self.on_change: ChangeHook | None = None  # told of the stored copy and its topic link

    async def receive(self, pod: str, sender: str, doc: dict[str, Any]) -> Received:
        """Apply the rules above to one event sent by ``sender`` (a WebID) to ``pod``."""
        topic = Topic.parse(doc.get("topic"))
        if topic is None:
            raise BadRequest(NO_TOPIC)
        event_id = doc.get("id")
        if not is_webid(event_id):
            raise BadRequest(f"Invalid ID: {event_id}")
        assert isinstance(event_id, str)
        await self.wac.refresh()
        if not await self.wac.allows(pod, [create_in(topic.container)], sender, None):
            raise not_authorized(self.locator.webid(pod), topic)
        seen = await self.queue.seen(pod, sender, event_id)
        if seen is not None:
            return Received(seen, False)
        receipt = await self.receipt(pod, sender, event_id, topic, EventJson.of(doc))
        # The queue checks again inside the transaction: two copies arriving at once store one.
        existing = await self.queue.receive(receipt)
        if existing is not None:
            return Received(existing, False)
        self.stored(receipt)
        return Received(receipt.path, True)

    async def receipt(self, pod: str, sender: str, event_id: str, topic: Topic, event: EventJson) -> Receipt:
        """What ``pod`` stores and queues on receiving an event (rules 3 and 4), for the queue to
        commit: on its own (``DeliveryQueue.receive``) or, for a pod on this server, in the
        transaction that publishes the event (``DeliveryQueue.commit``). The caller has checked
        rule 1."""
        owner = self.locator.webid(pod)
        name = new_event_name()
        path = INBOX + name
        # A fresh name is hex, which URLs carry as is: its URL is its container's plus the name.
        url = self.locator.url(pod, INBOX) + name
        link_path = topic.container + name
        link = {
            "@context": EVENTS_CONTEXT,
            "@id": self.locator.url(pod, topic.container) + name,
            "href": url,
            "id": event_id,
            "topic": str(topic),
        }
        writes = (
            Write(path, JSONLD, event.document(url, original_recipient=owner)),
            Write(link_path, JSONLD, json.dumps(link).encode()),
        )
        subs = await subscribers(self.wac, pod, await self.accessor.get(pod, SUBSCRIPTIONS_PATH), topic)
        forwards = [s for s in subs if s.agent != sender]
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
        )

    def stored(self, receipt: Receipt) -> None:
        """Tell the change hook (live notifications) of a committed copy and its topic link."""
        if self.on_change is not None:
            for write in receipt.writes:
                self.on_change(receipt.pod, write.path, "Create", None)
