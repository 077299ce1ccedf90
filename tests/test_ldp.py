"""LDP behaviour through real HTTP, as one table: request → status, headers, body graph.

Every case starts from the same pod (``alice``) with a few fixture resources, so cases are
independent. Graph bodies are compared with ``rdflib.compare.isomorphic``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from rdflib import Graph
from rdflib.compare import isomorphic
from yarl import URL

from ldp.rdf import parse_rdf
from tests.rdf_exact import exact_graph

POD = "http://pod.test/alice/"
LDP = "http://www.w3.org/ns/ldp#"
TTL = {"Content-Type": "text/turtle"}
NOTE = '<#it> <http://schema.org/name> "note" .\n'
PNG = bytes(range(256)) * 4

N3_INSERT = b"""@prefix solid: <http://www.w3.org/ns/solid/terms#>.
_:p a solid:InsertDeletePatch; solid:inserts { <#it> <http://schema.org/age> 3 . }."""
N3_RENAME = b"""@prefix solid: <http://www.w3.org/ns/solid/terms#>.
_:p a solid:InsertDeletePatch;
  solid:where { ?x <http://schema.org/name> "note" . };
  solid:deletes { ?x <http://schema.org/name> "note" . };
  solid:inserts { ?x <http://schema.org/name> "renamed" . }."""
N3_NO_MATCH = b"""@prefix solid: <http://www.w3.org/ns/solid/terms#>.
_:p a solid:InsertDeletePatch;
  solid:where { ?x <http://schema.org/name> "absent" . };
  solid:inserts { ?x <http://schema.org/age> 1 . }."""
N3_DELETE_MISSING = b"""@prefix solid: <http://www.w3.org/ns/solid/terms#>.
_:p a solid:InsertDeletePatch; solid:deletes { <#it> <http://schema.org/name> "other" . }."""


def g(turtle: str, base: str) -> Graph:
    return parse_rdf(turtle.encode(), "text/turtle", base)


async def seed(client: TestClient[Any, Any]) -> None:
    """Fixture resources: a container with a Turtle note, a JSON-LD doc, a PNG and a sub-container."""
    steps = [
        ("/alice/docs/note.ttl", TTL, NOTE.encode()),
        (
            "/alice/docs/data.jsonld",
            {"Content-Type": "application/ld+json"},
            json.dumps({"@id": "#d", "http://schema.org/name": "data"}).encode(),
        ),
        ("/alice/docs/pic.png", {"Content-Type": "image/png"}, PNG),
        ("/alice/docs/sub/", TTL, b""),
    ]
    for path, headers, body in steps:
        response = await client.put(path, headers=headers, data=body)
        assert response.status == 201, (path, response.status, await response.text())


@dataclass
class Case:
    id: str
    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str | None = None
    expect_headers: dict[str, str] = field(default_factory=dict)  # exact values
    expect_contains: dict[str, str] = field(default_factory=dict)  # header contains substring
    expect_absent: tuple[str, ...] = ()
    graph: str | None = None  # expected response body graph (Turtle, base = request URL)
    raw: bytes | None = None  # expected exact body
    error: str | None = None  # substring of the JSON error message
    then: tuple[str, str, int] | None = None  # follow-up (method, path, status)
    then_graph: str | None = None  # expected graph of the follow-up GET


CASES = [
    # -- reading and content negotiation
    Case(
        "get turtle",
        "GET",
        "/alice/docs/note.ttl",
        200,
        expect_headers={"Content-Type": "text/turtle"},
        raw=NOTE.encode(),
    ),
    Case(
        "get as json-ld",
        "GET",
        "/alice/docs/note.ttl",
        200,
        {"Accept": "application/ld+json"},
        expect_headers={"Content-Type": "application/ld+json"},
        graph=NOTE,
    ),
    Case(
        "get as n-triples",
        "GET",
        "/alice/docs/note.ttl",
        200,
        {"Accept": "application/n-triples"},
        expect_headers={"Content-Type": "application/n-triples"},
        graph=NOTE,
    ),
    Case(
        "get as n3",
        "GET",
        "/alice/docs/note.ttl",
        200,
        {"Accept": "text/n3"},
        expect_headers={"Content-Type": "text/n3"},
        graph=NOTE,
    ),
    Case(
        "star accept gives turtle",
        "GET",
        "/alice/docs/data.jsonld",
        200,
        {"Accept": "*/*"},
        expect_headers={"Content-Type": "text/turtle"},
        graph='<#d> <http://schema.org/name> "data" .',
    ),
    Case(
        "json-ld stored, json-ld served",
        "GET",
        "/alice/docs/data.jsonld",
        200,
        {"Accept": "application/ld+json"},
        expect_headers={"Content-Type": "application/ld+json"},
        graph='<#d> <http://schema.org/name> "data" .',
    ),
    Case(
        "q values respected",
        "GET",
        "/alice/docs/note.ttl",
        200,
        {"Accept": "text/turtle;q=0.5, application/ld+json;q=0.9"},
        expect_headers={"Content-Type": "application/ld+json"},
        graph=NOTE,
    ),
    Case(
        "nothing acceptable",
        "GET",
        "/alice/docs/note.ttl",
        406,
        {"Accept": "image/png"},
        error="No acceptable representation",
    ),
    Case(
        "binary byte-exact",
        "GET",
        "/alice/docs/pic.png",
        200,
        expect_headers={"Content-Type": "image/png"},
        raw=PNG,
    ),
    Case(
        "missing resource",
        "GET",
        "/alice/docs/nothing",
        404,
        expect_headers={"Allow": "OPTIONS, HEAD, GET, PUT, PATCH"},
        expect_absent=("Accept-Post",),
    ),
    Case(
        "container listing",
        "GET",
        "/alice/docs/",
        200,
        expect_contains={"Link": f'<{LDP}BasicContainer>; rel="type"'},
        graph=f"""<> a <{LDP}Container>, <{LDP}BasicContainer>, <{LDP}Resource>;
           <{LDP}contains> <note.ttl>, <data.jsonld>, <pic.png>, <sub/> .""",
    ),
    Case(
        "container listing as json-ld",
        "GET",
        "/alice/docs/",
        200,
        {"Accept": "application/ld+json"},
        graph=f"""<> a <{LDP}Container>, <{LDP}BasicContainer>, <{LDP}Resource>;
           <{LDP}contains> <note.ttl>, <data.jsonld>, <pic.png>, <sub/> .""",
    ),
    Case(
        "container listing as n-triples",
        "GET",
        "/alice/docs/",
        200,
        {"Accept": "application/n-triples"},
        graph=f"""<> a <{LDP}Container>, <{LDP}BasicContainer>, <{LDP}Resource>;
           <{LDP}contains> <note.ttl>, <data.jsonld>, <pic.png>, <sub/> .""",
    ),
    Case(
        "head has headers, no body",
        "HEAD",
        "/alice/docs/note.ttl",
        200,
        expect_headers={"Content-Type": "text/turtle"},
        expect_contains={"ETag": '"'},
        raw=b"",
    ),
    Case(
        "root is a storage",
        "GET",
        "/alice/",
        200,
        expect_contains={"Link": '<http://www.w3.org/ns/pim/space#Storage>; rel="type"'},
    ),
    Case(
        "root names its owner",
        "HEAD",
        "/alice/",
        200,
        expect_contains={"Link": f'<{POD}profile/card#me>; rel="http://www.w3.org/ns/solid/terms#owner"'},
    ),
    Case(
        "root names its owner as solid-client looks for it",
        "GET",
        "/alice/",
        200,
        expect_contains={"Link": f'<{POD}profile/card#me>; rel="http://www.w3.org/ns/solid/terms#podOwner"'},
    ),
    Case(
        "acl and storage description links",
        "HEAD",
        "/alice/docs/note.ttl",
        200,
        expect_contains={"Link": f'<{POD}docs/note.ttl.acl>; rel="acl"'},
    ),
    Case(
        "storage description link",
        "HEAD",
        "/alice/docs/",
        200,
        expect_contains={
            "Link": f'<{POD}.well-known/solid>; rel="http://www.w3.org/ns/solid/terms#storageDescription"'
        },
    ),
    Case(
        "storage link",
        "GET",
        "/alice/docs/note.ttl",
        200,
        expect_contains={"Link": f'<{POD}>; rel="http://www.w3.org/ns/pim/space#storage"'},
    ),
    Case(
        "storage description",
        "GET",
        "/alice/.well-known/solid",
        200,
        graph=f"""<> a <http://www.w3.org/ns/solid/terms#StorageDescription> .
           <{POD}> a <http://www.w3.org/ns/pim/space#Storage>;
             <http://www.w3.org/ns/solid/terms#owner> <{POD}profile/card#me> .
           @prefix notify: <http://www.w3.org/ns/solid/notifications#> .
           <> notify:subscription <{POD}.well-known/notifications/WebSocketChannel2023> .
           <> <http://www.w3.org/ns/solid/terms#notificationGateway>
             <{POD}.well-known/notifications/gateway> .
           <{POD}.well-known/notifications/WebSocketChannel2023>
             notify:channelType notify:WebSocketChannel2023;
             notify:feature notify:endAt, notify:state .""",
    ),
    Case(
        "profile advertises inbox",
        "HEAD",
        "/alice/profile/card",
        200,
        expect_contains={"Link": f'<{POD}inbox/>; rel="{LDP}inbox"'},
    ),
    Case(
        "allow on document",
        "GET",
        "/alice/docs/note.ttl",
        200,
        expect_headers={
            "Allow": "OPTIONS, HEAD, GET, PUT, PATCH, DELETE",
            "Accept-Patch": "text/n3, application/sparql-update",
        },
        expect_absent=("Accept-Post",),
    ),
    Case(
        "allow on container",
        "GET",
        "/alice/docs/",
        200,
        expect_headers={"Allow": "OPTIONS, HEAD, GET, POST, PUT, PATCH, DELETE"},
        expect_contains={"Accept-Post": "text/turtle"},
    ),
    Case(
        "allow on root has no delete",
        "HEAD",
        "/alice/",
        200,
        expect_headers={"Allow": "OPTIONS, HEAD, GET, POST, PUT, PATCH"},
    ),
    Case(
        "options",
        "OPTIONS",
        "/alice/docs/",
        204,
        expect_contains={"Accept-Post": "application/ld+json"},
        expect_headers={"Accept-Patch": "text/n3, application/sparql-update"},
    ),
    Case(
        "options on missing",
        "OPTIONS",
        "/alice/nope/",
        204,
        expect_headers={"Allow": "OPTIONS, HEAD, GET, PUT, PATCH"},
        expect_absent=("Accept-Post",),
    ),
    Case("no pod", "GET", "/bob/", 404),
    # -- PUT
    Case(
        "put creates intermediates",
        "PUT",
        "/alice/a/b/c.ttl",
        201,
        TTL,
        NOTE,
        expect_headers={"Location": f"{POD}a/b/c.ttl"},
        then=("GET", "/alice/a/b/", 200),
        then_graph=f"<> a <{LDP}Container>, <{LDP}BasicContainer>, <{LDP}Resource>;"
        f" <{LDP}contains> <c.ttl> .",
    ),
    Case(
        "put replaces",
        "PUT",
        "/alice/docs/note.ttl",
        204,
        TTL,
        "<#x> <#y> <#z> .",
        then=("GET", "/alice/docs/note.ttl", 200),
        then_graph="<#x> <#y> <#z> .",
    ),
    Case(
        "put without content type",
        "PUT",
        "/alice/docs/x.ttl",
        400,
        {},
        NOTE,
        error="Content-Type",
        then=("GET", "/alice/docs/x.ttl", 404),
    ),
    Case(
        "put bad turtle",
        "PUT",
        "/alice/docs/x.ttl",
        400,
        TTL,
        "<a> <b> .",
        error="text/turtle",
        then=("GET", "/alice/docs/x.ttl", 404),
    ),
    Case(
        "put containment triples",
        "PUT",
        "/alice/docs/",
        409,
        TTL,
        f"<> <{LDP}contains> <other> .",
        error="ldp:contains",
    ),
    Case("put container as non-rdf", "PUT", "/alice/c2/", 415, {"Content-Type": "image/png"}, PNG),
    Case("put over container twin", "PUT", "/alice/docs/sub", 409, TTL, NOTE),
    Case("put under a document", "PUT", "/alice/docs/note.ttl/x", 409, TTL, NOTE),
    Case(
        "put remote context",
        "PUT",
        "/alice/docs/r.jsonld",
        400,
        {"Content-Type": "application/ld+json"},
        json.dumps({"@context": "https://evil.example/ctx.jsonld", "@id": "#x", "name": "x"}),
        error="https://evil.example/ctx.jsonld",
        then=("GET", "/alice/docs/r.jsonld", 404),
    ),
    Case(
        "put json-ld bundled context",
        "PUT",
        "/alice/docs/as.jsonld",
        201,
        {"Content-Type": "application/ld+json"},
        json.dumps(
            {"@context": "https://www.w3.org/ns/activitystreams", "id": "#n", "type": "Note", "name": "hi"}
        ),
        then=("GET", "/alice/docs/as.jsonld", 200),
        then_graph="<#n> a <https://www.w3.org/ns/activitystreams#Note>; "
        '<https://www.w3.org/ns/activitystreams#name> "hi" .',
    ),
    Case("put storage description", "PUT", "/alice/.well-known/solid", 405, TTL, NOTE),
    Case(
        "if-none-match star on existing",
        "PUT",
        "/alice/docs/note.ttl",
        412,
        {**TTL, "If-None-Match": "*"},
        "<#a> <#b> <#c> .",
        then=("GET", "/alice/docs/note.ttl", 200),
        then_graph=NOTE,
    ),
    Case("if-none-match star creates", "PUT", "/alice/new/", 201, {**TTL, "If-None-Match": "*"}, ""),
    Case("if-match on missing", "PUT", "/alice/docs/y.ttl", 412, {**TTL, "If-Match": '"abc-ttl"'}, NOTE),
    Case("if-match stale", "PUT", "/alice/docs/note.ttl", 412, {**TTL, "If-Match": '"0000-ttl"'}, NOTE),
    # -- POST
    Case(
        "post with slug",
        "POST",
        "/alice/docs/",
        201,
        {**TTL, "Slug": "hello"},
        NOTE,
        expect_headers={"Location": f"{POD}docs/hello"},
    ),
    Case(
        "post container",
        "POST",
        "/alice/docs/",
        201,
        {**TTL, "Slug": "box", "Link": f'<{LDP}BasicContainer>; rel="type"'},
        "",
        expect_headers={"Location": f"{POD}docs/box/"},
    ),
    Case(
        "post unsafe slug",
        "POST",
        "/alice/docs/",
        201,
        {**TTL, "Slug": "../../etc"},
        NOTE,
        expect_contains={"Location": f"{POD}docs/"},
    ),
    Case("post to missing container", "POST", "/alice/nothere/", 404, TTL, NOTE),
    Case("post to document", "POST", "/alice/docs/note.ttl", 405, TTL, NOTE),
    Case("post without content type", "POST", "/alice/docs/", 400, {}, NOTE, error="Content-Type"),
    Case(
        "post binary",
        "POST",
        "/alice/docs/",
        201,
        {"Content-Type": "application/pdf", "Slug": "f.pdf"},
        b"%PDF-1.4 \x00\xff",
        then=("GET", "/alice/docs/f.pdf", 200),
    ),
    # -- DELETE
    Case("delete document", "DELETE", "/alice/docs/note.ttl", 204, then=("GET", "/alice/docs/note.ttl", 404)),
    Case("delete non-empty container", "DELETE", "/alice/docs/", 409, error="not empty"),
    Case("delete empty container", "DELETE", "/alice/docs/sub/", 204, then=("GET", "/alice/docs/sub/", 404)),
    Case("delete root", "DELETE", "/alice/", 405),
    Case("delete missing", "DELETE", "/alice/docs/zzz", 404),
    # -- PATCH
    Case(
        "n3 insert",
        "PATCH",
        "/alice/docs/note.ttl",
        204,
        {"Content-Type": "text/n3"},
        N3_INSERT,
        then=("GET", "/alice/docs/note.ttl", 200),
        then_graph=NOTE + "<#it> <http://schema.org/age> 3 .",
    ),
    Case(
        "n3 where/delete/insert",
        "PATCH",
        "/alice/docs/note.ttl",
        204,
        {"Content-Type": "text/n3"},
        N3_RENAME,
        then=("GET", "/alice/docs/note.ttl", 200),
        then_graph='<#it> <http://schema.org/name> "renamed" .',
    ),
    Case(
        "n3 creates",
        "PATCH",
        "/alice/docs/new.ttl",
        201,
        {"Content-Type": "text/n3"},
        N3_INSERT,
        then=("GET", "/alice/docs/new.ttl", 200),
        then_graph="<#it> <http://schema.org/age> 3 .",
    ),
    Case("n3 where no match", "PATCH", "/alice/docs/note.ttl", 409, {"Content-Type": "text/n3"}, N3_NO_MATCH),
    Case(
        "n3 delete missing",
        "PATCH",
        "/alice/docs/note.ttl",
        409,
        {"Content-Type": "text/n3"},
        N3_DELETE_MISSING,
        then=("GET", "/alice/docs/note.ttl", 200),
        then_graph=NOTE,
    ),
    Case(
        "n3 malformed",
        "PATCH",
        "/alice/docs/note.ttl",
        422,
        {"Content-Type": "text/n3"},
        b"@prefix solid: <http://www.w3.org/ns/solid/terms#>. <> <#a> <#b>.",
    ),
    Case(
        "sparql insert data",
        "PATCH",
        "/alice/docs/note.ttl",
        204,
        {"Content-Type": "application/sparql-update"},
        "INSERT DATA { <#it> <http://schema.org/age> 4 . }",
        then=("GET", "/alice/docs/note.ttl", 200),
        then_graph=NOTE + "<#it> <http://schema.org/age> 4 .",
    ),
    Case(
        "sparql delete data",
        "PATCH",
        "/alice/docs/note.ttl",
        204,
        {"Content-Type": "application/sparql-update"},
        'DELETE DATA { <#it> <http://schema.org/name> "note" . }',
        then=("GET", "/alice/docs/note.ttl", 200),
        then_graph="",
    ),
    Case(
        "sparql load refused",
        "PATCH",
        "/alice/docs/note.ttl",
        400,
        {"Content-Type": "application/sparql-update"},
        "LOAD <http://example.org/x>",
        error="LOAD",
    ),
    Case(
        "sparql service refused",
        "PATCH",
        "/alice/docs/note.ttl",
        400,
        {"Content-Type": "application/sparql-update"},
        "DELETE { ?s ?p ?o } WHERE { SERVICE <http://example.org/sparql> { ?s ?p ?o } }",
        error="SERVICE",
    ),
    Case(
        "patch containment",
        "PATCH",
        "/alice/docs/",
        409,
        {"Content-Type": "application/sparql-update"},
        f"INSERT DATA {{ <> <{LDP}contains> <x> . }}",
    ),
    Case(
        "patch binary",
        "PATCH",
        "/alice/docs/pic.png",
        415,
        {"Content-Type": "application/sparql-update"},
        "INSERT DATA { <#a> <#b> <#c> . }",
    ),
    Case(
        "patch unknown type", "PATCH", "/alice/docs/note.ttl", 415, {"Content-Type": "application/json"}, "{}"
    ),
    # -- paths that try to escape
    Case("encoded dot-dot", "GET", "/alice/docs/%2e%2e/%2e%2e/bob/", 400),
    Case("encoded slash", "GET", "/alice/docs%2Fnote.ttl", 400, error="slash"),
    Case("zero-width char", "PUT", "/alice/docs/a%E2%80%8Bb", 400, TTL, NOTE),
    Case("non-NFC", "PUT", "/alice/docs/e%CC%81", 400, TTL, NOTE),
    Case("invalid utf-8", "GET", "/alice/docs/%ff", 400),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_ldp(client: TestClient[Any, Any], case: Case) -> None:
    await seed(client)
    body = case.body.encode() if isinstance(case.body, str) else case.body
    # The path goes out exactly as written (encoded=True): the client must not normalise away
    # the dot-segments and encodings that the path-safety cases send.
    response = await client.request(
        case.method,
        URL(case.path, encoded=True),
        headers=case.headers,
        data=body,
        skip_auto_headers=("Content-Type",),
    )
    payload = await response.read()
    assert response.status == case.status, payload
    for name, value in case.expect_headers.items():
        actual = response.headers.get(name, "")
        assert actual.split(";")[0].strip() == value if name == "Content-Type" else actual == value, (
            name,
            actual,
        )
    for name, value in case.expect_contains.items():
        assert value in response.headers.get(name, ""), (name, response.headers.get(name))
    for name in case.expect_absent:
        assert name not in response.headers
    url = f"http://pod.test{case.path}"
    if case.raw is not None:
        assert payload == case.raw
    if case.graph is not None:
        media = response.headers["Content-Type"].split(";")[0]
        assert isomorphic(parse_rdf(payload, media, url), g(case.graph, url))
    if case.error is not None:
        assert case.error in json.loads(payload)["error"]
    if case.then is not None:
        method, path, status = case.then
        follow = await client.request(
            method, path, headers={"Accept": "text/turtle"} if case.then_graph else {}
        )
        follow_body = await follow.read()
        assert follow.status == status, follow_body
        if case.then_graph is not None:
            assert isomorphic(
                parse_rdf(follow_body, "text/turtle", f"http://pod.test{path}"),
                g(case.then_graph, f"http://pod.test{path}"),
            )


@pytest.mark.parametrize(
    "container, extra",
    [
        ("/alice/docs/", {}),
        ("/alice/docs/", {"Slug": "hello"}),
        ("/alice/docs/", {"Slug": "été-ü~1"}),
        ("/alice/docs/", {"Slug": "box", "Link": f'<{LDP}BasicContainer>; rel="type"'}),
        ("/alice/", {"Slug": "top"}),
    ],
)
async def test_a_post_answers_with_the_headers_of_what_it_created(
    client: TestClient[Any, Any], container: str, extra: dict[str, str]
) -> None:
    """201's Location, Link, Allow and Accept-* are those the new resource is then served with."""
    await seed(client)
    posted = await client.post(container, headers={**TTL, **extra}, data=NOTE)
    assert posted.status == 201, await posted.text()
    location = posted.headers["Location"]
    assert location.startswith(POD) and location != POD + container.removeprefix("/alice/")
    head = await client.head(URL(location).raw_path, headers={"Accept": "text/turtle"})
    assert head.status == 200
    for name in ("Link", "Allow", "Accept-Patch", "Accept-Put", "Accept-Post", "Vary"):
        assert posted.headers.get(name) == head.headers.get(name), name
    assert posted.headers["ETag"] == head.headers["ETag"]


DATES = b"""@prefix schema: <http://schema.org/> . @prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
<#it> schema:dateCreated "2024-05-01T12:00:00.000Z"^^xsd:dateTime ;
    schema:dateModified "2024-05-01T12:00:00.000Z"^^xsd:dateTime ;
    schema:startDate "2024-01-02Z"^^xsd:date ;
    schema:position "03"^^xsd:integer .
"""
DATES_PATCHED = b"""@prefix schema: <http://schema.org/> . @prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
<#it> schema:dateCreated "2024-05-01T12:00:00.000Z"^^xsd:dateTime ;
    schema:dateModified "2024-06-01T08:30:00.000Z"^^xsd:dateTime ;
    schema:startDate "2024-01-03Z"^^xsd:date ;
    schema:position "03"^^xsd:integer .
"""


async def test_patch_matches_and_keeps_literals_as_written(client: TestClient[Any, Any]) -> None:
    """RDF compares literals by lexical form, and so do clients: @inrupt/solid-client deletes a value
    by sending back, in ``DELETE DATA``, the very literal it read. A PATCH must therefore find the
    stored literal under its lexical form (else the old value stays next to the new one) and leave
    the literals it does not touch exactly as they were written."""
    url = POD + "docs/dates.ttl"
    put = await client.put("/alice/docs/dates.ttl", headers=TTL, data=DATES)
    assert put.status == 201, await put.text()
    sparql = b"""DELETE DATA {<#it> <http://schema.org/dateModified>
        "2024-05-01T12:00:00.000Z"^^<http://www.w3.org/2001/XMLSchema#dateTime>.};
    INSERT DATA {<#it> <http://schema.org/dateModified>
        "2024-06-01T08:30:00.000Z"^^<http://www.w3.org/2001/XMLSchema#dateTime>.};"""
    patched = await client.patch(
        "/alice/docs/dates.ttl", headers={"Content-Type": "application/sparql-update"}, data=sparql
    )
    assert patched.status == 204, await patched.text()
    n3 = b"""@prefix solid: <http://www.w3.org/ns/solid/terms#>. @prefix xsd: <http://www.w3.org/2001/XMLSchema#>.
    _:p a solid:InsertDeletePatch;
      solid:deletes { <#it> <http://schema.org/startDate> "2024-01-02Z"^^xsd:date . };
      solid:inserts { <#it> <http://schema.org/startDate> "2024-01-03Z"^^xsd:date . }."""
    patched = await client.patch("/alice/docs/dates.ttl", headers={"Content-Type": "text/n3"}, data=n3)
    assert patched.status == 204, await patched.text()
    got = await client.get("/alice/docs/dates.ttl", headers={"Accept": "text/turtle"})
    after = exact_graph(await got.read(), url)
    assert isomorphic(after, exact_graph(DATES_PATCHED, url)), after.serialize(format="nt")
