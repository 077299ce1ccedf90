"""Container representations, streamed.

A container's representation is its own triples plus one ``ldp:contains`` triple per child. The
children are read from storage in pages and written out as they arrive, so a container with a
million children is served without holding them all in memory. Only the small head (the
container's own triples) goes through rdflib.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from rdflib import BNode, Graph, Literal, URIRef

from ldp.rdf import serialize_rdf
from ldp.vocab import LDP, RDF

CONTAINS = str(LDP.contains)
_CHUNK = 256


def _term(node: Any) -> dict[str, str]:
    if isinstance(node, URIRef):
        return {"@id": str(node)}
    if isinstance(node, BNode):
        return {"@id": f"_:{node}"}
    assert isinstance(node, Literal)
    value: dict[str, str] = {"@value": str(node)}
    if node.language:
        value["@language"] = node.language
    elif node.datatype is not None:
        value["@type"] = str(node.datatype)
    return value


def expanded_nodes(graph: Graph) -> dict[str, dict[str, Any]]:
    """Expanded JSON-LD node objects keyed by @id: exact, and with no context to resolve."""
    nodes: dict[str, dict[str, Any]] = {}
    for s, p, o in graph:
        sid = _term(s)["@id"]
        node = nodes.setdefault(sid, {"@id": sid})
        if p == RDF.type and isinstance(o, URIRef):
            node.setdefault("@type", []).append(str(o))
        else:
            node.setdefault(str(p), []).append(_term(o))
    return nodes


async def stream_listing(
    head: Graph, url: str, children: AsyncIterator[str], to_url: Callable[[str], str], media_type: str
) -> AsyncIterator[bytes]:
    """Yield the container's representation in ``media_type`` (Turtle, N3, N-Triples or JSON-LD)."""
    if media_type == "application/ld+json":
        nodes = expanded_nodes(head)
        own = nodes.pop(url, {"@id": url})
        prefix = "[" + "".join(json.dumps(n) + "," for n in nodes.values())
        body = json.dumps(own)
        yield (prefix + body[:-1] + f', "{CONTAINS}": [').encode()
        first = True
        batch: list[str] = []
        async for child in children:
            batch.append(("" if first else ",") + json.dumps({"@id": to_url(child)}))
            first = False
            if len(batch) >= _CHUNK:
                yield "".join(batch).encode()
                batch.clear()
        batch.append("]}]")
        yield "".join(batch).encode()
        return
    if media_type == "application/n-triples":
        yield serialize_rdf(head, media_type, url)
        batch = []
        async for child in children:
            batch.append(f"<{url}> <{CONTAINS}> <{to_url(child)}> .\n")
            if len(batch) >= _CHUNK:
                yield "".join(batch).encode()
                batch.clear()
        if batch:
            yield "".join(batch).encode()
        return
    # Turtle, and N3 (Turtle is a subset of N3).
    yield serialize_rdf(head, "text/turtle", url)
    batch = []
    first = True
    async for child in children:
        batch.append((f"\n<{url}> <{CONTAINS}>\n    " if first else ",\n    ") + f"<{to_url(child)}>")
        first = False
        if len(batch) >= _CHUNK:
            yield "".join(batch).encode()
            batch.clear()
    if not first:
        batch.append(" .\n")
    if batch:
        yield "".join(batch).encode()
