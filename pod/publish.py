"""``POST /publish/``: a producer app publishes events through its pod.

The app authenticates with its ``x-api-key`` (the key must belong to this pod); the publisher is
the pod's owner, the key's agent is recorded as the app. Every recipient and source must accept
this publisher on the event's topic (``acl:Append`` on their topic container) or nothing is stored
or sent: 403 ``Not authorized to publish to <recipient> on topic <topic>``. For pods on this server
the decision is exact; another server is asked with a signed ``HEAD`` of its topic container,
within a short bound — when it cannot answer in time, the event is accepted and its delivery
queued, and that server's inbox decides on arrival.

A recipient pod on this server receives its copy in the transaction that stores the event (see
``Publisher.publish``); deliveries to other servers are queued for the delivery worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from ldp.names import new_name
from ldp.quota import NO_QUOTA
from ldp.rdf import normalize_media_type
from ldp.store import ChangeHook
from ldp.vocab import PIM
from pod.events import (
    NO_BODY,
    NOT_OBJECT,
    EventJson,
    EventRequest,
    Topic,
    event_document,
    validate_batch,
)
from pod.inbox import JSONLD, Inbox, not_authorized
from pod.outbound import BlockedAddress, OutboundClient, OutboundError, check_url
from pod.queue import DeliveryQueue, NewDelivery, Receipt

log = logging.getLogger("pod.publish")
PUBLISH = "/publish/"
EVENT_TYPES = ("application/json", "application/ld+json")
_LOCAL_MEMO = 4096  # WebIDs whose pod on this server (or none) is remembered

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


@dataclass(frozen=True)
class Published:
    """What a publish stored: the events' URLs in request order, how many deliveries were made in
    its transaction (to pods on this server) and how many it left queued for the worker."""

    urls: list[str]
    delivered: int
    queued: int


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
        self.quota = NO_QUOTA  # pod_quota (ldp.quota), set by the application
        self._local: dict[str, str | None] = {}

    def _local_pod(self, webid: str) -> str | None:
        """The name of the pod on this server whose WebID ``webid`` is, if any (whether that pod
        exists is another question). A pure function of the configured base URL, asked for every
        target of every event, so answers are kept, a bounded number of them."""
        if webid in self._local:
            return self._local[webid]
        local = self.locator.target_of_url(webid)
        found = None
        if local is not None and local.path == "/profile/card" and webid == self.locator.webid(local.pod):
            found = local.pod
        if len(self._local) >= _LOCAL_MEMO:
            self._local.clear()
        self._local[webid] = found
        return found

    async def _allowed_here(self, pod: str, publisher: str, topic: Topic) -> bool:
        """The rule of ``pod``'s inbox, a pod on this server: it exists and lets ``publisher``
        append to the topic's container."""
        if self.pod_exists is not None and not await self.pod_exists(pod):
            return False
        return await self.wac.allows(pod, [create_in(topic.container)], publisher, None)

    async def _authorize(self, pod: str, publisher: str, events: list[EventRequest]) -> None:
        """Raise 403 naming the first target, in request order, that does not accept ``publisher``.

        Pods here are answered at once from the database and the ACL cache, once per pod and
        topic; only other servers are asked, all at the same time. None from one of them (no
        answer in time) lets the event through: that server's inbox decides on arrival.
        """
        checks = [(event, webid) for event in events for webid in event.targets]
        here: dict[tuple[str, str], bool] = {}
        remote: dict[tuple[str, Topic], bool | None] = {}
        for event, webid in checks:
            local = self._local_pod(webid)
            if local is None:
                remote[webid, event.topic] = None
            elif (local, event.topic.container) not in here:
                here[local, event.topic.container] = await self._allowed_here(local, publisher, event.topic)
        if remote and self.remote_check is not None:
            check = self.remote_check
            found = await asyncio.gather(*(check(pod, webid, topic, publisher) for webid, topic in remote))
            remote = dict(zip(remote, found, strict=True))
        for event, webid in checks:
            local = self._local_pod(webid)
            allowed = here[local, event.topic.container] if local is not None else remote[webid, event.topic]
            if allowed is False:
                raise not_authorized(webid, event.topic)

    async def publish(
        self, pod: str, api_key_agent: str, events: list[EventRequest], inbox: Inbox | None = None
    ) -> Published:
        """Authorize every target of every event, then store all events and their deliveries at once.

        With ``inbox``, a target that is a pod on this server receives its copy in the same
        transaction, and its delivery is recorded as made: its inbox's rule (the publisher may
        append to the topic container there) is exactly the check just made, so the worker has
        nothing left to decide, and the copy is in the inbox when the publish is answered. Other
        targets are queued for the worker.
        """
        publisher = self.locator.webid(pod)
        await self.wac.refresh()
        await self._authorize(pod, publisher, events)
        writes: list[Write] = []
        deliveries: list[NewDelivery] = []
        receipts: list[Receipt] = []
        urls: list[str] = []
        queued = delivered = 0
        for event in events:
            name = new_name()
            path = PUBLISH + name
            url = self.locator.url(pod, PUBLISH) + name  # hex: no escaping, as in the container's URL
            encoded = EventJson.of(event_document(url, event, publisher, api_key_agent))
            writes.append(Write(path, JSONLD, encoded.document(url)))
            payload = encoded.document()
            for webid in event.targets:
                if inbox is not None and (local := self._local_pod(webid)) is not None:
                    receipts.append(await inbox.receipt(local, publisher, url, event.topic, encoded))
                    deliveries.append(NewDelivery(url, pod, "inbox", webid, payload, delivered=True))
                    delivered += 1
                else:
                    deliveries.append(NewDelivery(url, pod, "inbox", webid, payload))
                    queued += 1
            urls.append(url)
        # The publisher's own pod must have room for the events (413 to the app otherwise); a
        # recipient here without room refuses its copy like any other refusal below.
        planned = {pod: await self.quota.check_writes(pod, writes)} if self.quota.limit > 0 else {}
        try:
            if inbox is not None:
                for receipt in receipts:
                    await inbox.check_room(receipt, planned)
            stored = await self.queue.commit(pod, writes, deliveries, receipts)
        except PodError as exc:
            if not receipts or exc.status >= 500:
                raise
            # A pod here refused its copy (a document, say, where its topic container would be) and
            # nothing was stored. Queue every delivery instead: the worker then records that
            # refusal against that recipient's delivery alone, as for a recipient anywhere else.
            log.info("a local recipient refused an event of %s, queueing its deliveries: %s", pod, exc)
            deliveries = [d._replace(delivered=False) for d in deliveries]
            receipts, stored = [], []
            delivered, queued = 0, len(deliveries)
            await self.queue.commit(pod, writes, deliveries)
        if self.on_change is not None:
            for write in writes:
                self.on_change(pod, write.path, "Create", None)
        if inbox is not None:
            for receipt, new in zip(receipts, stored, strict=True):
                if new:
                    inbox.stored(receipt)
                    queued += len(receipt.forwards)
        return Published(urls, delivered, queued)


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
