"""Subscriptions: who receives a copy of the events a pod receives.

They live in the pod's ``/settings/subscriptions`` resource, a JSON-LD document the owner edits
with ordinary LDP writes::

    {"@context": "https://w3id.org/solid-pod/events/v1",
     "subscriptions": [{"agent": "<WebID>", "topics": ["realestate/contact"],
                        "inbox": "<optional inbox URL>",
                        "webhook": "<optional URL>", "secret": "<HMAC secret for the webhook>"}]}

An entry takes effect only while its agent may read the topic's container (``acl:Read``), so
revoking that grant stops deliveries without editing the list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from acl.modes import read
from acl.wac import Wac
from ldp.accessor import Record
from ldp.errors import BadRequest
from pod.events import EVENTS_CONTEXT, TOPIC_FILTER_RE, Topic, is_webid, topic_matches

SUBSCRIPTIONS_PATH = "/settings/subscriptions"


@dataclass(frozen=True)
class Subscription:
    agent: str
    topics: tuple[str, ...]
    inbox: str | None = None
    webhook: str | None = None
    secret: str = ""

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"agent": self.agent, "topics": list(self.topics)}
        if self.inbox:
            doc["inbox"] = self.inbox
        if self.webhook:
            doc["webhook"] = self.webhook
            doc["secret"] = self.secret
        return doc


def _entry(item: object) -> Subscription:
    if not isinstance(item, dict) or not is_webid(item.get("agent")):
        raise BadRequest("Each subscription needs an agent WebID")
    topics = item.get("topics", item.get("topic"))
    topics = [topics] if isinstance(topics, str) else topics
    if (
        not isinstance(topics, list)
        or not topics
        or not all(isinstance(t, str) and TOPIC_FILTER_RE.match(t) for t in topics)
    ):
        raise BadRequest(f"Subscription of {item.get('agent')} needs topics like 'domain' or 'domain/topic'")
    inbox, webhook, secret = item.get("inbox"), item.get("webhook"), item.get("secret", "")
    for name, value in (("inbox", inbox), ("webhook", webhook)):
        if value is not None and not is_webid(value):
            raise BadRequest(f"Subscription {name} must be an http(s) URL")
    if webhook is not None and (not isinstance(secret, str) or not secret):
        raise BadRequest("A webhook subscription needs a shared secret")
    return Subscription(str(item["agent"]), tuple(topics), inbox, webhook, secret if webhook else "")


def parse_subscriptions(body: bytes) -> list[Subscription]:
    """Entries of a subscriptions document; BadRequest names the first problem."""
    if not body.strip():
        return []
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Subscriptions must be a JSON-LD document") from None
    items = doc.get("subscriptions", []) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise BadRequest('Subscriptions document needs a "subscriptions" array')
    return [_entry(item) for item in items]


def subscriptions_document(entries: list[Subscription]) -> bytes:
    return json.dumps(
        {"@context": EVENTS_CONTEXT, "subscriptions": [e.as_json() for e in entries]}, indent=1
    ).encode()


def read_subscriptions(record: Record | None) -> list[Subscription]:
    """Entries of the stored document; a document the owner broke by hand counts as empty."""
    if record is None:
        return []
    try:
        return parse_subscriptions(record.body)
    except BadRequest:
        return []


async def subscribers(wac: Wac, pod: str, record: Record | None, topic: Topic) -> list[Subscription]:
    """Entries matching ``topic`` whose agent may read the topic's container."""
    matched: list[Subscription] = []
    for entry in read_subscriptions(record):
        if any(topic_matches(t, topic) for t in entry.topics) and await wac.allows(
            pod, [read(topic.container)], entry.agent, None
        ):
            matched.append(entry)
    return matched
