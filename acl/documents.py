"""Fetching RDF documents the server needs about other agents: WebID profiles and group lists.

Documents on this server are read from the store directly; others come through the guarded
outbound client, with a time-bounded cache (and a shorter one for failures, so an unreachable host
is not asked on every request). Fetches are asynchronous: a slow remote document delays only the
requests that need it. Requests that need the same uncached document at the same time share one
fetch: a burst of signed deliveries from a new sender fetches its profile once, and one of them
failing cannot overwrite the copy another has just cached.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict

from rdflib import Graph, URIRef

from ldp.errors import PodError, Unauthorized
from ldp.identifiers import PodLocator
from ldp.rdf import RDF_MEDIA_TYPES, normalize_media_type, parse_rdf
from ldp.store import ResourceStore
from ldp.vocab import SOLID, VCARD
from pod.outbound import BlockedAddress, OutboundClient, OutboundError

ACCEPT = "text/turtle, application/ld+json;q=0.9, application/n-triples;q=0.8"


class DocumentError(Unauthorized):
    """A document needed to authenticate or authorize could not be had."""


class DocumentRefused(DocumentError):
    """The document's address is one the server never contacts (loopback, private, ...): asking
    again will not help."""


class DocumentUnavailable(DocumentError):
    """The document's server could not be reached or answered with a server error (5xx, 408, 429).

    Answered ``503`` with ``Retry-After`` rather than 401: the client did nothing wrong, and a pod
    delivering an event signed with a key in that profile must retry later rather than record a
    final refusal (RFC 9110 §15.6.4: 503 "indicates that the server is currently unable to handle
    the request due to a temporary overload or scheduled maintenance, which will likely be
    alleviated after some delay")."""

    status = 503

    def __init__(self, message: str, retry_after: int = 30) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Documents:
    def __init__(
        self,
        store: ResourceStore,
        locator: PodLocator,
        outbound: OutboundClient | None,
        ttl: float = 300.0,
        failure_ttl: float = 30.0,
        max_entries: int = 4096,
    ) -> None:
        self.store = store
        self.locator = locator
        self.outbound = outbound
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, Graph | DocumentError]] = OrderedDict()
        self._fetching: dict[str, asyncio.Future[Graph]] = {}

    async def graph(self, url: str) -> Graph:
        """The graph of the document at ``url`` (fragment ignored); DocumentError if unavailable."""
        doc = url.split("#", 1)[0]
        local = self.locator.target_of_url(doc)
        if local is not None:
            record = await self.store.accessor.get(local.pod, local.path)
            if record is None or normalize_media_type(record.content_type) not in RDF_MEDIA_TYPES:
                raise DocumentError(f"Document {doc} not found")
            return self.store.graph_of(local.pod, record)
        cached = self._cache.get(doc)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], DocumentError):
                raise _fresh(cached[1], cached[0] - now)
            return cached[1]
        fetching = self._fetching.get(doc)
        if fetching is None:
            fetching = self._fetching[doc] = asyncio.ensure_future(self._fetch_and_remember(doc))
            fetching.add_done_callback(lambda _: self._fetching.pop(doc, None))
        # Shielded: a caller cancelled meanwhile does not cancel the fetch for the others.
        return await asyncio.shield(fetching)

    async def _fetch_and_remember(self, doc: str) -> Graph:
        try:
            graph = await self._fetch(doc)
        except DocumentRefused:
            raise
        except DocumentError as exc:
            # A copy without the traceback, which would keep the failed fetch's frames alive.
            self._remember(doc, time.monotonic() + self.failure_ttl, _fresh(exc, self.failure_ttl))
            raise
        self._remember(doc, time.monotonic() + self.ttl, graph)
        return graph

    def _remember(self, doc: str, until: float, value: Graph | DocumentError) -> None:
        self._cache[doc] = (until, value)
        self._cache.move_to_end(doc)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def forget(self, url: str) -> None:
        self._cache.pop(url.split("#", 1)[0], None)

    async def _fetch(self, doc: str) -> Graph:
        if self.outbound is None:
            raise DocumentError(f"Cannot fetch {doc}: remote documents are disabled")
        try:
            response = await self.outbound.get(doc, headers={"Accept": ACCEPT}, timeout=5.0)
        except BlockedAddress as exc:
            raise DocumentRefused(f"Cannot fetch {doc}: {exc}") from None
        except OutboundError as exc:
            raise DocumentUnavailable(f"Cannot fetch {doc}: {exc}", round(self.failure_ttl)) from None
        if response.status >= 500 or response.status in (408, 429):
            raise DocumentUnavailable(f"Cannot fetch {doc}: HTTP {response.status}", round(self.failure_ttl))
        if not 200 <= response.status < 300:
            raise DocumentError(f"Cannot fetch {doc}: HTTP {response.status}")
        media = normalize_media_type(response.headers.get("Content-Type")) or "text/turtle"
        if media not in RDF_MEDIA_TYPES:
            raise DocumentError(f"Cannot use {doc}: not RDF ({media})")
        try:
            return parse_rdf(response.body, media, response.url)
        except PodError as exc:
            raise DocumentError(f"Cannot parse {doc}: {exc.message}") from None

    async def oidc_issuers(self, webid: str) -> set[str]:
        graph = await self.graph(webid)
        return {str(o) for o in graph.objects(URIRef(webid), SOLID.oidcIssuer)}

    async def group_members(self, group: str) -> frozenset[str]:
        """Members of a ``vcard:Group``; an unavailable group has no members (access is not granted)."""
        try:
            graph = await self.graph(group)
        except DocumentError:
            return frozenset()
        return frozenset(str(o) for o in graph.objects(URIRef(group), VCARD.hasMember))


def _fresh(exc: DocumentError, remaining: float) -> DocumentError:
    """A new exception like the remembered one (raising one instance from many requests would chain
    their tracebacks onto it); a retry is worth it once the failure is no longer remembered."""
    if isinstance(exc, DocumentUnavailable):
        return DocumentUnavailable(exc.message, max(1, math.ceil(remaining)))
    return type(exc)(exc.message)
