"""The event model: validating what producers publish and shaping the stored JSON-LD document.

A topic is ``{domain}/{topic}`` with an optional ``#{action}``; its container in a pod is
``/event/topic/{domain}/{topic}/``. Granting ``acl:Append`` there (or by ``acl:default`` on
``/event/topic/{domain}/`` or above) lets an agent publish to the pod on that topic, with any
action; ``acl:Read`` lets an agent subscribe.

Validation messages and their order are part of the API (``publishing-events.md``): clients
match on them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ldp.errors import BadRequest

EVENTS_CONTEXT = "https://w3id.org/solid-pod/events/v1"
TOPIC_ROOT = "/event/topic/"
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._~-]{0,99}"
TOPIC_RE = re.compile(rf"^({_SEGMENT})/({_SEGMENT})(?:#({_SEGMENT}))?$")
TOPIC_FILTER_RE = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT}(?:#{_SEGMENT})?)?$")

NO_BODY = "No request body was sent"
NOT_OBJECT = "request body is not valid JSON object"
NO_TOPIC = "No valid topic found"
NO_RECIPIENT = "No recipient found"
NO_DATA = "No data found"


@dataclass(frozen=True)
class Topic:
    domain: str
    name: str
    action: str | None

    @classmethod
    def parse(cls, value: object) -> Topic | None:
        match = TOPIC_RE.match(value) if isinstance(value, str) else None
        return None if match is None else cls(match[1], match[2], match[3])

    def __str__(self) -> str:
        return f"{self.domain}/{self.name}" + (f"#{self.action}" if self.action else "")

    @property
    def container(self) -> str:
        """Path of the topic container in a pod.

        ``realestate/contact#add`` → ``/event/topic/realestate/contact/``.
        """
        return f"{TOPIC_ROOT}{self.domain}/{self.name}/"


def topic_matches(pattern: str, topic: Topic) -> bool:
    """Prefix match: ``realestate`` and ``realestate/contact`` cover ``realestate/contact#add``."""
    full = str(topic)
    return full == pattern or full.startswith(pattern + "/") or full.startswith(pattern + "#")


def filter_container(pattern: str) -> str:
    """Topic container governing a subscription or grant pattern.

    ``realestate`` → ``/event/topic/realestate/``.
    """
    base = pattern.split("#", 1)[0]
    return f"{TOPIC_ROOT}{base}/"


_SPACE = re.compile(r"\s")  # str.isspace's characters, found in one pass of C


def is_webid(value: object) -> bool:
    if not isinstance(value, str) or _SPACE.search(value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _ids(value: object) -> list[str]:
    """One WebID or a list of them; raises ``Invalid ID: <value>`` on anything else."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if not is_webid(item):
            raise BadRequest(f"Invalid ID: {item}")
        assert isinstance(item, str)
        if item not in out:
            out.append(item)
    return out


@dataclass(frozen=True)
class EventRequest:
    """One validated event as a producer sent it."""

    topic: Topic
    recipients: tuple[str, ...]
    sources: tuple[str, ...]
    data: Any

    @property
    def targets(self) -> tuple[str, ...]:
        """Everyone who receives a copy: recipients and sources, deduplicated, in order."""
        seen: list[str] = []
        for webid in (*self.recipients, *self.sources):
            if webid not in seen:
                seen.append(webid)
        return tuple(seen)


def validate_event(doc: object) -> EventRequest:
    """Check one event in the API's order: topic, recipient, data, then the IDs."""
    if not isinstance(doc, dict):
        raise BadRequest(NOT_OBJECT)
    topic = Topic.parse(doc.get("topic"))
    if topic is None:
        raise BadRequest(NO_TOPIC)
    recipient = doc.get("recipient")
    if recipient is None or recipient == "" or recipient == []:
        raise BadRequest(NO_RECIPIENT)
    if "data" not in doc or doc["data"] is None:
        raise BadRequest(NO_DATA)
    recipients = _ids(recipient)
    source = doc.get("source")
    sources = [] if source is None or source == [] else _ids(source)
    return EventRequest(topic, tuple(recipients), tuple(sources), doc["data"])


def validate_batch(parsed: object) -> list[EventRequest]:
    """A single event or an array of them, all-or-nothing; a batch error names the failing index."""
    if isinstance(parsed, list):
        if not parsed:
            raise BadRequest(NO_BODY)
        events: list[EventRequest] = []
        for index, item in enumerate(parsed):
            try:
                events.append(validate_event(item))
            except BadRequest as exc:
                raise BadRequest(f"{exc.message} (event at index {index})") from None
        return events
    return [validate_event(parsed)]


def now_fields(now: float | None = None) -> dict[str, Any]:
    """``time`` (ISO 8601, UTC, milliseconds) and ``timestamp`` (epoch milliseconds), both from the
    same whole millisecond, so they always name the same instant."""
    ms = int((time.time() if now is None else now) * 1000)
    seconds, millis = divmod(ms, 1000)
    iso = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"
    return {"time": iso, "timestamp": ms}


def event_document(
    url: str, event: EventRequest, publisher: str, agent: str | None, now: float | None = None
) -> dict[str, Any]:
    """The stored JSON-LD event: ``@id`` and ``id`` are both its URL at the publishing pod."""
    doc: dict[str, Any] = {
        "@context": EVENTS_CONTEXT,
        "@id": url,
        "type": "Event",
        "id": url,
        "topic": str(event.topic),
        "recipient": list(event.recipients) if len(event.recipients) > 1 else event.recipients[0],
    }
    if event.sources:
        doc["source"] = list(event.sources) if len(event.sources) > 1 else event.sources[0]
    doc["data"] = event.data
    doc["publisher"] = publisher
    if agent:
        doc["agent"] = agent
    doc.update(now_fields(now))
    return doc


# json.dumps of a string, without the encoder's dispatch around it (the same bytes: ASCII-escaped).
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_CONTEXT_MEMBER = '"@context": ' + _quote(EVENTS_CONTEXT)


def topic_link(at: str, href: str, event_id: str, topic: Topic) -> bytes:
    """The document that lists an event under its topic container: the same bytes as
    ``json.dumps({"@context": ..., "@id": at, "href": href, "id": event_id, "topic": topic})``,
    spliced, as one is stored for every event a pod receives."""
    return (
        f'{{{_CONTEXT_MEMBER}, "@id": {_quote(at)}, "href": {_quote(href)}, '
        f'"id": {_quote(event_id)}, "topic": {_quote(str(topic))}}}'
    ).encode()


@dataclass(frozen=True)
class EventJson:
    """An event's members other than ``@context`` and ``@id``, encoded as JSON once.

    One published event is stored, sent as the payload of each delivery, stored again as each
    recipient's copy and sent on to each subscriber: the same members every time, under a
    different ``@id`` or none. Encoding ``data`` (most of the bytes) once and splicing the rest
    around it gives the same bytes as encoding each document whole.
    """

    members: str  # ``"type": "Event", "id": ...`` without the braces; empty when there are none
    has_original_recipient: bool

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> EventJson:
        rest = {k: v for k, v in doc.items() if k not in ("@id", "@context")}
        return cls(json.dumps(rest)[1:-1], "originalRecipient" in rest)

    def document(self, at: str | None = None, original_recipient: str | None = None) -> bytes:
        """``{"@context": <events context>, "@id": at, <members>}``, without ``@id`` when ``at`` is
        None; ``originalRecipient`` is added last unless the members already have one."""
        parts = [_CONTEXT_MEMBER]
        if at is not None:
            parts.append('"@id": ' + _quote(at))
        if self.members:
            parts.append(self.members)
        if original_recipient is not None and not self.has_original_recipient:
            parts.append('"originalRecipient": ' + _quote(original_recipient))
        return ("{" + ", ".join(parts) + "}").encode()


def parse_time(value: str | None, default: float) -> float:
    """Epoch milliseconds or ISO 8601 (as the API's ``from`` / ``to`` take them), as epoch seconds."""
    if not value:
        return default
    try:
        return (
            float(value) / 1000.0
            if value.isdigit()
            else datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        )
    except ValueError:
        raise BadRequest(f"Invalid time: {value} (epoch milliseconds or ISO 8601)") from None
