"""In-process cost of Web Access Control checks, for scripts/bench's ``acl`` workload.

Run with the project's venv python: ``wac_micro.py TMPDIR ITERATIONS``. Builds, with the project's
own modules, a real SQLite pod in TMPDIR (nested containers, ACLs at several depths, a topic
container holding 1,000 subscribe grants as ``pod grant`` writes them), warms the parsed-ACL cache,
then times each case ITERATIONS times, one call at a time (``time.perf_counter_ns`` around each
await, so the figures include the timer's ~0.1 µs). Prints one ``BENCHJSON {...}`` line:
``{"cases": [{"name", "what", "mean_us", "p50_us", "p99_us", "n"}], "setup_s"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from acl.modes import Mode, create_in, read, write
from acl.wac import Wac
from ldp.accessor import Write
from ldp.identifiers import PodLocator
from ldp.sqlite import SqliteAccessor
from ldp.store import ResourceStore
from pod.grants import grant
from pod.pods import create_pod

BASE = "http://127.0.0.1:8080/"
POD = "alice"
FRIEND = "https://friend.example/profile/card#me"
STRANGER = "https://stranger.example/profile/card#me"
DEEP = "/a/b/c/d/e/doc.ttl"  # no ACL below the pod root: inherits through six containers
TURTLE = "text/turtle"
SUBSCRIBERS = 1000


def _acl(lines: list[str]) -> bytes:
    head = "@prefix acl: <http://www.w3.org/ns/auth/acl#> .\n@prefix foaf: <http://xmlns.com/foaf/0.1/> .\n"
    return (head + "\n".join(lines)).encode()


async def build(tmp: Path) -> tuple[SqliteAccessor, PodLocator, str]:
    locator = PodLocator(BASE)
    accessor = SqliteAccessor(tmp / "pod.sqlite3")
    await accessor.open()
    await create_pod(accessor, locator, POD)
    owner = locator.webid(POD)
    root = locator.url(POD, "/")
    writes = [
        Write(DEEP, TURTLE, b"<#x> <#p> <#o> ."),
        Write("/pub/doc.ttl", TURTLE, b"<#x> <#p> <#o> ."),
        Write("/a/b/shared.ttl", TURTLE, b"<#x> <#p> <#o> ."),
        # Public read on /pub/ and below, by acl:default.
        Write(
            "/pub/.acl",
            TURTLE,
            _acl(
                [
                    f"<#owner> a acl:Authorization; acl:agent <{owner}>; acl:accessTo <{root}pub/>;",
                    f"  acl:default <{root}pub/>; acl:mode acl:Read, acl:Write, acl:Control .",
                    f"<#public> a acl:Authorization; acl:agentClass foaf:Agent; acl:accessTo <{root}pub/>;",
                    f"  acl:default <{root}pub/>; acl:mode acl:Read .",
                ]
            ),
        ),
        # A document's own ACL naming one friend (and an origin-restricted app grant).
        Write(
            "/a/b/shared.ttl.acl",
            TURTLE,
            _acl(
                [
                    f"<#owner> a acl:Authorization; acl:agent <{owner}>; acl:accessTo <./shared.ttl>;",
                    "  acl:mode acl:Read, acl:Write, acl:Control .",
                    f"<#friend> a acl:Authorization; acl:agent <{FRIEND}>; acl:accessTo <./shared.ttl>;",
                    "  acl:mode acl:Read, acl:Append .",
                    "<#app> a acl:Authorization; acl:agentClass acl:AuthenticatedAgent;",
                    "  acl:origin <https://app.example>; acl:accessTo <./shared.ttl>; acl:mode acl:Read .",
                ]
            ),
        ),
    ]
    for w in writes:
        await accessor.write(POD, w)
    store = ResourceStore(accessor, locator)
    # One grant document of 1,000 authorizations, as 1,000 `pod grant --subscribe` calls write it.
    await grant(store, POD, "https://s0.example/profile/card#me", "realestate/contact", "subscribe")
    await _bulk_subscribe_grants(store)
    return accessor, locator, owner


async def _bulk_subscribe_grants(store: ResourceStore) -> None:
    from rdflib import Graph, URIRef

    from ldp.identifiers import acl_path
    from ldp.rdf import parse_rdf, serialize_rdf
    from ldp.vocab import ACL, RDF
    from pod.grants import _node

    container = "/event/topic/realestate/contact/"
    url = URIRef(store.locator.url(POD, container))
    acl = acl_path(container)
    acl_url = store.locator.url(POD, acl)
    current = await store.accessor.get(POD, acl)
    assert current is not None
    graph = Graph()
    for t in parse_rdf(current.body, current.content_type, acl_url):
        graph.add(t)
    for i in range(1, SUBSCRIBERS):
        node = _node(acl_url, "subscribe", f"https://s{i}.example/profile/card#me")
        for p, o in (
            (RDF.type, ACL.Authorization),
            (ACL.agent, URIRef(f"https://s{i}.example/profile/card#me")),
        ):
            graph.add((node, p, o))
        for p, o in ((ACL.accessTo, url), (ACL.default, url), (ACL.mode, ACL.Read)):
            graph.add((node, p, o))
    await store.accessor.write(POD, Write(acl, TURTLE, serialize_rdf(graph, TURTLE), current.version))


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[int]:
    for _ in range(min(n, 500)):  # warm: cache filled, code paths hot
        await fn()
    out = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        await fn()
        out[i] = clock() - t0
    return out


def summary(name: str, what: str, ns: list[int]) -> dict[str, Any]:
    ns = sorted(ns)
    n = len(ns)
    return {
        "name": name,
        "what": what,
        "n": n,
        "mean_us": round(sum(ns) / n / 1000, 2),
        "p50_us": round(ns[n // 2] / 1000, 2),
        "p99_us": round(ns[min(n - 1, int(n * 0.99))] / 1000, 2),
    }


async def main(tmp: Path, n: int) -> dict[str, Any]:
    t0 = time.monotonic()
    accessor, locator, owner = await build(tmp)
    setup = time.monotonic() - t0
    wac = Wac(accessor, locator)
    await wac.refresh()
    topic = "/event/topic/realestate/contact/"
    last_subscriber = f"https://s{SUBSCRIBERS - 1}.example/profile/card#me"
    cases: list[tuple[str, str, Callable[[], Awaitable[Any]], int]] = [
        (
            "allows-own",
            "allows(): friend reads a document with its own ACL (3 authorizations)",
            lambda: wac.allows(POD, [read("/a/b/shared.ttl")], FRIEND, None),
            n,
        ),
        (
            "allows-deep",
            f"allows(): owner writes {DEEP} (ACL inherited from the pod root, 6 levels up)",
            lambda: wac.allows(POD, [write(DEEP)], owner, None),
            n,
        ),
        (
            "allows-public",
            "allows(): anonymous reads /pub/doc.ttl (public by acl:default one level up)",
            lambda: wac.allows(POD, [read("/pub/doc.ttl")], None, None),
            n,
        ),
        (
            "denied",
            f"allows(): stranger reads {DEEP} (refused after the whole walk)",
            lambda: wac.allows(POD, [read(DEEP)], STRANGER, None),
            n,
        ),
        (
            "create",
            "allows(): owner creates in /a/b/ (Append or Write on the container)",
            lambda: wac.allows(POD, [create_in("/a/b/")], owner, None),
            n,
        ),
        (
            "modes-acl",
            "modes(): friend on /a/b/shared.ttl.acl (Control on the governed resource)",
            lambda: wac.modes(POD, "/a/b/shared.ttl.acl", FRIEND, None),
            n,
        ),
        (
            "permissions",
            "permissions(): user + public modes for WAC-Allow on /a/b/shared.ttl",
            lambda: wac.permissions(POD, "/a/b/shared.ttl", FRIEND, "https://app.example"),
            n,
        ),
        (
            "topic-1000",
            f"allows(): subscriber reads a topic whose ACL holds {SUBSCRIBERS} `pod grant` authorizations",
            lambda: wac.allows(POD, [read(topic)], last_subscriber, None),
            max(200, n // 20),
        ),
        (
            "refresh",
            "refresh(): the ACL epoch read (one SQLite point query) done once per request",
            wac.refresh,
            n,
        ),
    ]
    results = []
    for name, what, fn, count in cases:
        results.append(summary(name, what, await timed(fn, count)))

    async def cold() -> None:  # a fresh cache: every ACL on the way read and parsed again
        fresh = Wac(accessor, locator)
        await fresh.refresh()
        await fresh.allows(POD, [read("/a/b/shared.ttl")], FRIEND, None)

    results.append(
        summary(
            "uncached",
            "allows() right after an ACL change: epoch read, ACL read + parsed (rdflib)",
            await timed(cold, max(100, n // 50)),
        )
    )
    assert await wac.allows(POD, [read("/a/b/shared.ttl")], FRIEND, None)
    assert not await wac.allows(POD, [read(DEEP)], STRANGER, None)
    assert Mode.READ in await wac.modes(POD, topic, last_subscriber, None)
    await accessor.close()
    return {"cases": results, "setup_s": round(setup, 2)}


if __name__ == "__main__":
    result = asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    print("BENCHJSON " + json.dumps(result), flush=True)
