"""Bulk fixture set-up for scripts/bench, with the project's own modules (no HTTP, no CLI per item).

Run with the project's venv python: ``setup_pods.py < PLAN_JSON`` (the plan on standard input)::

    {"data_dir": DIR, "base_url": URL, "database": "" | "postgresql://...",
     "ops": [OP, ...]}

and each OP one of:

- ``{"op": "pods", "names": [...] | "prefix": "sub", "count": 1000, "key": true,
  "publish": {"agent": WEBID, "topic": "realestate/contact"}}``: create the pods (those that exist are
  kept), mint an owner API key for each when ``key``, and let ``agent`` publish on ``topic`` there
  (the ACL ``pod grant POD --agent WEBID --publish TOPIC`` writes);
- ``{"op": "hub", "pod": NAME, "topic": TOPIC, "subscribers": [WEBID, ...]}``: give each subscriber
  ``acl:Read`` on the pod's topic container and a subscription to the topic — the same documents as
  one ``pod grant --subscribe`` plus one ``pod subscribe`` per subscriber, written once each instead
  of re-reading and re-writing a growing ACL a thousand times.

Prints one JSON object: ``{"pods": {NAME: {"url", "webid", "key"?}}, "seconds": S}``. Safe while a
server runs on the same data (SQLite WAL / PostgreSQL); pods are created concurrently in chunks so
the writer's group commit folds them into few transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from rdflib import Graph, URIRef

from acl.apikeys import ApiKeys
from ldp.accessor import ABSENT, Write
from ldp.errors import Conflict
from ldp.identifiers import acl_path
from ldp.rdf import parse_rdf, serialize_rdf
from ldp.store import ResourceStore
from ldp.vocab import ACL, RDF
from pod.backend import open_backend
from pod.config import load_config
from pod.events import filter_container
from pod.grants import grant
from pod.pods import create_pod, pod_info
from pod.subscriptions import SUBSCRIPTIONS_PATH, Subscription, subscriptions_document

CHUNK = 64


async def _pods(backend: Any, store: ResourceStore, op: dict[str, Any], out: dict[str, Any]) -> None:
    locator = store.locator
    names = op.get("names") or [f"{op['prefix']}{i:04d}" for i in range(int(op["count"]))]
    existing = set(await backend.accessor.pods())
    keys = ApiKeys(backend.keys)
    publish = op.get("publish")

    async def one(name: str) -> None:
        if name not in existing:
            with contextlib.suppress(Conflict):  # made meanwhile by someone else: kept
                await create_pod(backend.accessor, locator, name)
        info = pod_info(locator, name).as_json()
        if op.get("key"):
            _, info["key"] = await keys.create(name, info["webid"], label="scripts/bench")
        if publish:
            await grant(store, name, publish["agent"], publish["topic"], "publish")
        out[name] = info

    for start in range(0, len(names), CHUNK):
        await asyncio.gather(*(one(n) for n in names[start : start + CHUNK]))


async def _hub(store: ResourceStore, op: dict[str, Any]) -> None:
    """Read grants for every subscriber on the topic container, in the node shape ``pod grant`` uses,
    and every subscription, each document written once (conditionally on what was read)."""
    from pod.grants import _node  # the node naming `pod grant` uses, so the ACL is the same document

    pod, topic, subscribers = op["pod"], op["topic"], op["subscribers"]
    locator = store.locator
    container = filter_container(topic)
    container_url = URIRef(locator.url(pod, container))
    acl = acl_path(container)
    acl_url = locator.url(pod, acl)
    # One ordinary grant first: creates the container and an ACL that keeps the owner's control.
    await grant(store, pod, subscribers[0], topic, "subscribe")
    current = await store.accessor.get(pod, acl)
    assert current is not None
    graph = Graph()
    for triple in parse_rdf(current.body, current.content_type, acl_url):
        graph.add(triple)
    for agent in subscribers[1:]:
        node = _node(acl_url, "subscribe", agent)
        graph.add((node, RDF.type, ACL.Authorization))
        graph.add((node, ACL.agent, URIRef(agent)))
        graph.add((node, ACL.accessTo, container_url))
        graph.add((node, ACL.default, container_url))
        graph.add((node, ACL.mode, ACL.Read))
    body = serialize_rdf(graph, "text/turtle")
    await store.accessor.write(pod, Write(acl, "text/turtle", body, current.version))
    entries = [Subscription(agent, (topic,)) for agent in subscribers]
    doc = await store.accessor.get(pod, SUBSCRIPTIONS_PATH)
    expect = ABSENT if doc is None else doc.version
    await store.accessor.write(
        pod, Write(SUBSCRIPTIONS_PATH, "application/ld+json", subscriptions_document(entries), expect)
    )


async def main(plan: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    config = load_config(
        {"data_dir": plan["data_dir"], "base_url": plan["base_url"], "database": plan.get("database") or None}
    )
    backend = await open_backend(config)
    store = ResourceStore(backend.accessor, config.locator())
    pods: dict[str, Any] = {}
    try:
        for op in plan["ops"]:
            if op["op"] == "pods":
                await _pods(backend, store, op, pods)
            elif op["op"] == "hub":
                await _hub(store, op)
            else:
                raise SystemExit(f"setup_pods.py: unknown op {op['op']!r}")
    finally:
        await backend.close()
    return {"pods": pods, "seconds": round(time.monotonic() - started, 2)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))
