"""Behaviours that take more than one request: validators, CORS, concurrency, large listings, limits."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from rdflib import URIRef
from rdflib.compare import isomorphic

from ldp.rdf import parse_rdf
from ldp.vocab import FOAF, LDP, PIM, RDF, SOLID

TTL = {"Content-Type": "text/turtle"}
POD = "http://pod.test/alice/"


async def test_etag_per_representation_and_304(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/n.ttl", headers=TTL, data="<#a> <#b> <#c> .")
    turtle = await client.get("/alice/n.ttl")
    jsonld = await client.get("/alice/n.ttl", headers={"Accept": "application/ld+json"})
    assert turtle.headers["ETag"] != jsonld.headers["ETag"]
    assert turtle.headers["ETag"].startswith('"')
    assert "Last-Modified" in turtle.headers
    again = await client.get("/alice/n.ttl", headers={"If-None-Match": turtle.headers["ETag"]})
    assert again.status == 304
    # If-Match with the tag of any representation of the current state succeeds ...
    ok = await client.put(
        "/alice/n.ttl", headers={**TTL, "If-Match": jsonld.headers["ETag"]}, data="<#a> <#b> <#d> ."
    )
    assert ok.status == 204
    # ... and the old tag is now stale.
    stale = await client.put(
        "/alice/n.ttl", headers={**TTL, "If-Match": turtle.headers["ETag"]}, data="<#x> <#y> <#z> ."
    )
    assert stale.status == 412
    changed = await client.get("/alice/n.ttl", headers={"If-None-Match": turtle.headers["ETag"]})
    assert changed.status == 200


async def test_container_etag_changes_with_membership(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/c/", headers=TTL, data="")
    before = (await client.get("/alice/c/")).headers["ETag"]
    await client.put("/alice/c/x", headers=TTL, data="")
    after = (await client.get("/alice/c/")).headers["ETag"]
    assert before != after
    await client.delete("/alice/c/x")
    assert (await client.get("/alice/c/")).headers["ETag"] != after


async def test_cors_reflects_origin_and_exposes_headers(client: TestClient[Any, Any]) -> None:
    response = await client.get("/alice/", headers={"Origin": "https://app.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {
        "Accept-Patch",
        "Accept-Post",
        "Accept-Put",
        "Allow",
        "Content-Range",
        "ETag",
        "Last-Modified",
        "Link",
        "Location",
        "WAC-Allow",
        "WWW-Authenticate",
    } <= exposed
    # errors carry CORS headers too, so a browser app can read the message
    missing = await client.get("/alice/nope", headers={"Origin": "https://app.example"})
    assert missing.status == 404
    assert missing.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_cors_preflight(client: TestClient[Any, Any]) -> None:
    response = await client.options(
        "/alice/private/thing",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "content-type, authorization, dpop",
        },
    )
    assert response.status == 204
    assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == "content-type, authorization, dpop"
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_concurrent_patches_lose_no_update(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/counter.ttl", headers=TTL, data="")

    async def insert(i: int) -> int:
        r = await client.patch(
            "/alice/counter.ttl",
            headers={"Content-Type": "application/sparql-update"},
            data=f"INSERT DATA {{ <#s> <#p> {i} . }}",
        )
        return r.status

    statuses = await asyncio.gather(*(insert(i) for i in range(60)))
    assert set(statuses) == {204}
    body = await (await client.get("/alice/counter.ttl")).read()
    graph = parse_rdf(body, "text/turtle", POD + "counter.ttl")
    assert len(graph) == 60


async def test_concurrent_posts_get_distinct_names(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/box/", headers=TTL, data="")
    responses = await asyncio.gather(
        *(client.post("/alice/box/", headers={**TTL, "Slug": "same"}, data="") for _ in range(20))
    )
    locations = {r.headers["Location"] for r in responses}
    assert all(r.status == 201 for r in responses)
    assert len(locations) == 20
    assert POD + "box/same" in locations


async def test_large_listing_is_complete(client: TestClient[Any, Any]) -> None:
    """More children than one storage page (1,000): the streamed listing still has them all."""
    await client.put("/alice/many/", headers=TTL, data="")
    sem = asyncio.Semaphore(64)

    async def put(i: int) -> None:
        async with sem:
            r = await client.put(f"/alice/many/r{i:05d}", headers={"Content-Type": "text/plain"}, data=b"x")
            assert r.status == 201

    await asyncio.gather(*(put(i) for i in range(2100)))
    for media in ("text/turtle", "application/ld+json", "application/n-triples"):
        response = await client.get("/alice/many/", headers={"Accept": media})
        graph = parse_rdf(await response.read(), media, POD + "many/")
        contained = set(graph.objects(URIRef(POD + "many/"), LDP.contains))
        assert len(contained) == 2100, media
        assert URIRef(POD + "many/r02099") in contained


async def test_body_over_limit_is_413_and_stores_nothing(make_client: Any) -> None:
    client = await make_client(max_body_size=1024)
    response = await client.put(
        "/alice/big.bin", headers={"Content-Type": "application/octet-stream"}, data=b"x" * 5000
    )
    assert response.status == 413
    assert "limit" in (await response.json())["error"]
    assert (await client.get("/alice/big.bin")).status == 404


async def test_new_pod_profile(client: TestClient[Any, Any]) -> None:
    response = await client.get("/alice/profile/card")
    assert response.status == 200
    graph = parse_rdf(await response.read(), "text/turtle", POD + "profile/card")
    me = URIRef(POD + "profile/card#me")
    assert (me, RDF.type, FOAF.Person) in graph
    assert (me, LDP.inbox, URIRef(POD + "inbox/")) in graph
    assert (me, PIM.storage, URIRef(POD)) in graph
    assert (me, SOLID.oidcIssuer, None) not in graph
    for path in ("/alice/inbox/", "/alice/publish/", "/alice/profile/"):
        assert (await client.head(path)).status == 200
    root = parse_rdf(await (await client.get("/alice/")).read(), "text/turtle", POD)
    assert (URIRef(POD), RDF.type, PIM.Storage) in root
    # ACL resources are auxiliary: not listed as children
    assert URIRef(POD + ".acl") not in set(root.objects(URIRef(POD), LDP.contains))


async def test_oidc_issuer_in_profile(make_client: Any) -> None:
    client = await make_client(oidc_issuer="https://idp.example/")
    graph = parse_rdf(
        await (await client.get("/alice/profile/card")).read(), "text/turtle", POD + "profile/card"
    )
    assert (URIRef(POD + "profile/card#me"), SOLID.oidcIssuer, URIRef("https://idp.example/")) in graph


async def test_subdomain_mode(make_client: Any) -> None:
    client = await make_client(
        as_agent="https://alice.pods.example/profile/card#me",
        base_url="https://pods.example/",
        url_mode="subdomain",
    )
    response = await client.get("/profile/card", headers={"Host": "alice.pods.example"})
    assert response.status == 200
    graph = parse_rdf(await response.read(), "text/turtle", "https://alice.pods.example/profile/card")
    me = URIRef("https://alice.pods.example/profile/card#me")
    assert (me, PIM.storage, URIRef("https://alice.pods.example/")) in graph
    created = await client.put("/x.ttl", headers={**TTL, "Host": "alice.pods.example"}, data="")
    assert created.headers["Location"] == "https://alice.pods.example/x.ttl"
    assert (await client.get("/", headers={"Host": "bob.pods.example"})).status == 404
    assert (await client.get("/", headers={"Host": "evil.example"})).status == 404


async def test_non_ascii_names_round_trip(client: TestClient[Any, Any]) -> None:
    created = await client.put(
        "/alice/caf%C3%A9%20menu.txt", headers={"Content-Type": "text/plain"}, data="x"
    )
    assert created.headers["Location"] == POD + "caf%C3%A9%20menu.txt"
    listing = parse_rdf(await (await client.get("/alice/")).read(), "text/turtle", POD)
    assert URIRef(POD + "caf%C3%A9%20menu.txt") in set(listing.objects(URIRef(POD), LDP.contains))


async def test_turtle_error_body_when_asked(client: TestClient[Any, Any]) -> None:
    response = await client.get("/alice/nope", headers={"Accept": "text/turtle"})
    assert response.status == 404
    graph = parse_rdf(await response.read(), "text/turtle", POD)
    assert len(graph) == 2
    expected = parse_rdf(
        b"[] <http://www.w3.org/2011/http#statusCodeValue> 404; "
        b'<http://www.w3.org/2000/01/rdf-schema#comment> "http://pod.test/alice/nope not found" .',
        "text/turtle",
        POD,
    )
    assert isomorphic(graph, expected)
