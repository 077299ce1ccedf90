"""Publish and subscribe grants, written as WAC on topic containers, and subscription entries.

``grant(..., mode="publish")`` gives an agent ``acl:Append`` on ``/event/topic/{pattern}/`` (and by
``acl:default`` everything below it); ``mode="subscribe"`` gives ``acl:Read``. A topic container's
ACL always keeps the owner's full control, since an own ACL stops inheritance from the pod root.
Used by the CLI (``pod grant``, ``pod subscribe``) and safe while a server runs on the same data:
writes are conditional on the version read and ACL caches everywhere notice the change.
"""

from __future__ import annotations

import contextlib
import hashlib

from rdflib import Graph, URIRef

from ldp.accessor import ABSENT, VersionMismatch, Write
from ldp.errors import BadRequest
from ldp.identifiers import acl_path
from ldp.rdf import parse_rdf, serialize_rdf
from ldp.store import ResourceStore
from ldp.vocab import ACL, RDF
from pod.events import TOPIC_FILTER_RE, filter_container, is_webid
from pod.subscriptions import SUBSCRIPTIONS_PATH, Subscription, read_subscriptions, subscriptions_document

MODES = {"publish": ACL.Append, "subscribe": ACL.Read}


def _check(agent: str, pattern: str) -> None:
    if not is_webid(agent):
        raise BadRequest(f"Invalid agent WebID: {agent}")
    if not TOPIC_FILTER_RE.match(pattern):
        raise BadRequest(f"Invalid topic: {pattern} (expected domain, domain/topic or domain/topic#action)")


def _node(graph_url: str, kind: str, agent: str) -> URIRef:
    digest = hashlib.sha256(f"{kind} {agent}".encode()).hexdigest()[:16]
    return URIRef(f"{graph_url}#{kind}-{digest}")


async def grant(
    store: ResourceStore, pod: str, agent: str, pattern: str, kind: str, remove: bool = False
) -> str:
    """Add (or remove) a publish/subscribe grant; returns the topic container's URL."""
    _check(agent, pattern)
    if "#" in pattern:
        raise BadRequest("Grants are per topic (domain/topic), and cover every action")
    locator = store.locator
    container = filter_container(pattern)
    container_url = URIRef(locator.url(pod, container))
    acl = acl_path(container)
    acl_url = locator.url(pod, acl)
    for _ in range(20):
        if await store.accessor.get(pod, container) is None:
            with contextlib.suppress(VersionMismatch):  # another writer created it first
                await store.accessor.write(pod, Write(container, "text/turtle", b"", ABSENT))
        current = await store.accessor.get(pod, acl)
        graph = Graph()
        if current is not None:
            for triple in parse_rdf(current.body, current.content_type, acl_url):
                graph.add(triple)
        else:
            owner = URIRef(acl_url + "#owner")
            graph.add((owner, RDF.type, ACL.Authorization))
            graph.add((owner, ACL.agent, URIRef(locator.webid(pod))))
            graph.add((owner, ACL.accessTo, container_url))
            graph.add((owner, ACL.default, container_url))
            for mode in (ACL.Read, ACL.Write, ACL.Control):
                graph.add((owner, ACL.mode, mode))
        node = _node(acl_url, kind, agent)
        graph.remove((node, None, None))
        if not remove:
            graph.add((node, RDF.type, ACL.Authorization))
            graph.add((node, ACL.agent, URIRef(agent)))
            graph.add((node, ACL.accessTo, container_url))
            graph.add((node, ACL.default, container_url))
            graph.add((node, ACL.mode, MODES[kind]))
        expect = ABSENT if current is None else current.version
        try:
            await store.accessor.write(
                pod, Write(acl, "text/turtle", serialize_rdf(graph, "text/turtle"), expect)
            )
            return str(container_url)
        except VersionMismatch:  # changed under us: read again
            continue
    raise BadRequest("The ACL kept changing; try again")


async def subscribe(
    store: ResourceStore,
    pod: str,
    agent: str,
    pattern: str,
    *,
    webhook: str | None = None,
    secret: str = "",
    inbox: str | None = None,
    remove: bool = False,
) -> list[Subscription]:
    """Add (or remove) ``agent``'s subscription to ``pattern``; returns the resulting entries."""
    _check(agent, pattern)
    if webhook is not None and not secret:
        raise BadRequest("A webhook subscription needs --secret")
    for url in (webhook, inbox):
        if url is not None and not is_webid(url):
            raise BadRequest(f"Invalid URL: {url}")
    for _ in range(20):
        current = await store.accessor.get(pod, SUBSCRIPTIONS_PATH)
        entries = [
            e for e in read_subscriptions(current) if not (e.agent == agent and e.topics == (pattern,))
        ]
        if not remove:
            entries.append(Subscription(agent, (pattern,), inbox, webhook, secret if webhook else ""))
        expect = ABSENT if current is None else current.version
        body = subscriptions_document(entries)
        try:
            await store.accessor.write(pod, Write(SUBSCRIPTIONS_PATH, "application/ld+json", body, expect))
            return entries
        except VersionMismatch:
            continue
    raise BadRequest("The subscriptions kept changing; try again")
