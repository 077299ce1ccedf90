"""Receiving events in a pod's ``/inbox/`` (Linked Data Notifications) and forwarding them.

The same function serves a delivery from another server (a signed LDN POST) and one from a pod on
this server (in-process, from the delivery queue), so both obey one rule set:

1. the sender must be allowed to publish on the event's topic here (``acl:Append`` on the topic
   container), else 403, which the sender records as a final failure;
2. a second copy of an event id from the same sender is acknowledged and dropped;
3. the copy is stored in ``/inbox/`` with its own ``@id``, the shared ``id`` and
   ``originalRecipient``, and linked from the topic container;
4. a copy is queued for every subscriber of the topic — all in one transaction.
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
from pod.events import EVENTS_CONTEXT, NO_TOPIC, Topic, is_webid, new_event_name
from pod.queue import DeliveryQueue, NewDelivery
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
        owner = self.locator.webid(pod)
        await self.wac.refresh()
        if not await self.wac.allows(pod, [create_in(topic.container)], sender, None):
            raise not_authorized(owner, topic)
        seen = await self.queue.seen(pod, sender, event_id)
        if seen is not None:
            return Received(seen, False)
        name = new_event_name()
        path = INBOX + name
        url = self.locator.url(pod, path)
        copy = {k: v for k, v in doc.items() if k not in ("@id", "@context")}
        copy = {"@context": EVENTS_CONTEXT, "@id": url, **copy}
        copy.setdefault("originalRecipient", owner)
        body = json.dumps(copy).encode()
        link_path = topic.container + name
        link = {
            "@context": EVENTS_CONTEXT,
            "@id": self.locator.url(pod, link_path),
            "href": url,
            "id": event_id,
            "topic": str(topic),
        }
        forward = {k: v for k, v in copy.items() if k != "@id"}
        forward_body = json.dumps(forward).encode()
        subs = await subscribers(self.wac, pod, await self.accessor.get(pod, SUBSCRIPTIONS_PATH), topic)
        deliveries = [
            NewDelivery(
                event_id,
                pod,
                "webhook" if s.webhook else "inbox",
                s.agent,
                forward_body,
                target=s.webhook or s.inbox or "",
                secret=s.secret,
            )
            for s in subs
            if s.agent != sender
        ]

        # The queue checks again inside the transaction: two copies arriving at once store one.
        writes = [Write(path, JSONLD, body), Write(link_path, JSONLD, json.dumps(link).encode())]
        existing = await self.queue.receive(pod, sender, event_id, path, writes, deliveries)
        if existing is None and self.on_change is not None:
            for write in writes:
                self.on_change(pod, write.path, "Create", None)
        return Received(existing, False) if existing is not None else Received(path, True)
