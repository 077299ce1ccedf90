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
from collections.abc import Iterable, Sequence
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


class SubscriptionCache:
    """Each pod's subscriptions document as last read — its version (None: the pod has none) and
    its entries, parsed — and which of them match each topic asked about.

    Every event a pod receives needs its subscribers, and a hub's document is long: a thousand
    subscribers is a thousand entries to decode, validate and match on every event. A document's
    version changes with every write to it, in any process, so what is kept for a version equal to
    the stored document's is exactly that document's: ``matching`` parses a changed document
    afresh the first time it is read. ``remembered`` answers without reading at all, from the
    version last read: a receipt built on it names that version (``Receipt.subscriptions``), for
    its transaction to check.
    """

    def __init__(self, max_pods: int = 16384, max_topics: int = 64) -> None:
        self.max_pods = max_pods
        self.max_topics = max_topics
        # pod -> (version or None, entries, topic -> entries matching it)
        self._pods: dict[
            str, tuple[str | None, tuple[Subscription, ...], dict[Topic, tuple[Subscription, ...]]]
        ] = {}

    def matching(self, pod: str, record: Record | None, topic: Topic) -> tuple[Subscription, ...]:
        """The entries of ``pod``'s stored document ``record`` (just read) that cover ``topic``."""
        version = None if record is None else record.version
        known = self._pods.get(pod)
        if known is None or known[0] != version:
            if known is None and len(self._pods) >= self.max_pods:
                self._pods.pop(next(iter(self._pods)))  # the pod remembered longest ago
            known = self._pods[pod] = (version, tuple(read_subscriptions(record)), {})
        return self._for_topic(known[1], known[2], topic)

    def remembered(self, pod: str, topic: Topic) -> tuple[str | None, tuple[Subscription, ...]] | None:
        """(version, entries covering ``topic``) of ``pod``'s document as last read; None if it was not."""
        known = self._pods.get(pod)
        return None if known is None else (known[0], self._for_topic(known[1], known[2], topic))

    def forget(self, pod: str) -> None:
        self._pods.pop(pod, None)

    def _for_topic(
        self,
        entries: tuple[Subscription, ...],
        by_topic: dict[Topic, tuple[Subscription, ...]],
        topic: Topic,
    ) -> tuple[Subscription, ...]:
        found = by_topic.get(topic)
        if found is None:
            if len(by_topic) >= self.max_topics:
                by_topic.clear()
            found = by_topic[topic] = _matching(entries, topic)
        return found


def _matching(entries: Iterable[Subscription], topic: Topic) -> tuple[Subscription, ...]:
    return tuple(e for e in entries if any(topic_matches(t, topic) for t in e.topics))


async def permitted(wac: Wac, pod: str, entries: Sequence[Subscription], topic: Topic) -> list[Subscription]:
    """The ``entries`` whose agent may read the topic's container: an entry takes effect only then."""
    if not entries:
        return []  # most pods have no subscribers: no requirement to build
    needed = [read(topic.container)]
    return [entry for entry in entries if await wac.allows(pod, needed, entry.agent, None)]
