"""``POST /publish/``: a producer app publishes events through its pod.

The app authenticates with its ``x-api-key`` (the key must belong to this pod); the publisher is
the pod's owner, the key's agent is recorded as the app. Every recipient and source must accept
this publisher on the event's topic (``acl:Append`` on their topic container) or nothing is stored
or sent: 403 ``Not authorized to publish to <recipient> on topic <topic>``. For pods on this server
the decision is exact; another server is asked with a signed ``HEAD`` of its topic container,
within a short bound — when it cannot answer in time, the event is accepted and its delivery
queued, and that server's inbox decides on arrival.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rdflib import URIRef

from acl.apikeys import NO_KEY
from acl.documents import DocumentRefused, Documents
from acl.modes import create_in
from acl.signatures import PodKey, sign_request
from acl.wac import Wac
from ldp.accessor import Write
from ldp.errors import BadRequest, PodError, Unauthorized, UnsupportedMediaType
from ldp.identifiers import PodLocator
from ldp.rdf import normalize_media_type
from ldp.store import ChangeHook
from ldp.vocab import PIM
from pod.events import (
    NO_BODY,
    NOT_OBJECT,
    EventRequest,
    Topic,
    event_document,
    new_event_name,
    validate_batch,
)
from pod.inbox import JSONLD, not_authorized
from pod.outbound import BlockedAddress, OutboundClient, OutboundError, check_url
from pod.queue import DeliveryQueue, NewDelivery

log = logging.getLogger("pod.publish")
PUBLISH = "/publish/"
EVENT_TYPES = ("application/json", "application/ld+json")

# Asks another server whether ``publisher`` may publish on ``topic`` to ``webid``:
# True / False, or None when it cannot tell in time.
RemoteCheck = Callable[[str, str, Topic, str], Awaitable[bool | None]]


def parse_body(content_type: str | None, body: bytes) -> list[EventRequest]:
    media = normalize_media_type(content_type)
    if media not in EVENT_TYPES:
        raise UnsupportedMediaType(
            f"Events must be sent as application/json or application/ld+json, not {media}"
        )
    if not body.strip():
        raise BadRequest(NO_BODY)
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(NOT_OBJECT) from None
    if not isinstance(parsed, dict | list):
        raise BadRequest(NOT_OBJECT)
    return validate_batch(parsed)


class Publisher:
    def __init__(
        self,
        queue: DeliveryQueue,
        locator: PodLocator,
        wac: Wac,
        remote_check: RemoteCheck | None = None,
        pod_exists: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.queue = queue
        self.locator = locator
        self.wac = wac
        self.remote_check = remote_check
        self.pod_exists = pod_exists
        self.on_change: ChangeHook | None = None  # told of each stored event

    async def _allowed(self, pod: str, publisher: str, webid: str, topic: Topic) -> bool | None:
        local = self.locator.target_of_url(webid)
        if local is not None and local.path == "/profile/card" and webid == self.locator.webid(local.pod):
            if self.pod_exists is not None and not await self.pod_exists(local.pod):
                return False
            return await self.wac.allows(local.pod, [create_in(topic.container)], publisher, None)
        if self.remote_check is None:
            return None
        return await self.remote_check(pod, webid, topic, publisher)

    async def publish(self, pod: str, api_key_agent: str, events: list[EventRequest]) -> list[str]:
        """Authorize every target of every event, then store all events and their deliveries at once."""
        publisher = self.locator.webid(pod)
        await self.wac.refresh()
        checks = [(event, webid) for event in events for webid in event.targets]
        results = await asyncio.gather(*(self._allowed(pod, publisher, w, e.topic) for e, w in checks))
        for (event, webid), allowed in zip(checks, results, strict=True):
            if allowed is False:
                raise not_authorized(webid, event.topic)
        writes: list[Write] = []
        deliveries: list[NewDelivery] = []
        urls: list[str] = []
        for event in events:
            path = PUBLISH + new_event_name()
            url = self.locator.url(pod, path)
            doc = event_document(url, event, publisher, api_key_agent)
            writes.append(Write(path, JSONLD, json.dumps(doc).encode()))
            payload = json.dumps({k: v for k, v in doc.items() if k != "@id"}).encode()
            deliveries += [NewDelivery(url, pod, "inbox", webid, payload) for webid in event.targets]
            urls.append(url)
        await self.queue.commit(pod, writes, deliveries)
        if self.on_change is not None:
            for write in writes:
                self.on_change(pod, write.path, "Create", None)
        return urls


def require_api_key(headers: Any) -> str:
    value = headers.get("x-api-key")
    if value is None or not value.strip():
        raise Unauthorized(NO_KEY)
    return str(value)


def _user_modes(wac_allow: str) -> set[str]:
    for part in wac_allow.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip() == "user":
            return set(value.strip().strip('"').split())
    return set()


class RemoteTopicCheck:
    """Asks another server, by a HEAD of the recipient's topic container signed as the publishing
    pod, whether it would accept this publisher; its ``WAC-Allow`` answers. None when the server
    cannot be asked in time or does not say: the delivery is then queued and its inbox decides."""

    def __init__(
        self,
        documents: Documents,
        outbound: OutboundClient,
        pod_key: Callable[[str], Awaitable[PodKey]],
        timeout: float = 2.0,
    ) -> None:
        self.documents = documents
        self.outbound = outbound
        self.pod_key = pod_key
        self.timeout = timeout

    async def __call__(self, pod: str, webid: str, topic: Topic, publisher: str) -> bool | None:
        try:
            # A literal non-public address is refused outright, before any lookup.
            check_url(webid, allow_loopback=self.outbound.allow_loopback)
            return await asyncio.wait_for(self._ask(pod, webid, topic), self.timeout)
        except (BlockedAddress, DocumentRefused):
            raise BadRequest(f"Invalid ID: {webid}") from None
        except (TimeoutError, OutboundError, PodError) as exc:
            log.info("could not ask %s about topic %s in time: %s", webid, topic, exc)
            return None

    async def _ask(self, pod: str, webid: str, topic: Topic) -> bool | None:
        graph = await self.documents.graph(webid)
        storages = sorted(str(o) for o in graph.objects(URIRef(webid), PIM.storage))
        if not storages:
            return None
        url = storages[0].rstrip("/") + topic.container
        key = await self.pod_key(pod)
        response = await self.outbound.request(
            "HEAD", url, headers=sign_request(key, "HEAD", url, {}, None), timeout=self.timeout
        )
        allow = response.headers.get("WAC-Allow")
        if allow is None:
            return None
        return bool(_user_modes(allow) & {"append", "write"})
