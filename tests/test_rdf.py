"""RDF parsing and serialisation, bundled JSON-LD contexts, and content negotiation."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

import pytest
import rdflib
from rdflib import Literal, URIRef
from rdflib.compare import isomorphic

from ldp import jsonld
from ldp.conneg import accepts, choose_rdf_type, parse_accept
from ldp.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from ldp.rdf import RDF_MEDIA_TYPES, is_rdf_type, normalize_media_type, parse_rdf, serialize_rdf, validate_rdf
from ldp.vocab import AS, LDP

RDF = rdflib.RDF

BASE = "https://alice.example/notes/note1"
EV = "https://w3id.org/solid-pod/events#"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly if anything here tries to open a connection or resolve a host name."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


TURTLE = b"""@prefix ldp: <http://www.w3.org/ns/ldp#> .
@prefix foaf: <http://xmlns.com/foaf/0.1/> .
<> a ldp:Resource ; foaf:name "Note one"@en ; foaf:maker <../profile/card#me> ;
   foaf:age 42 ; foaf:topic [ foaf:name "nested" ] .
<#section> foaf:name "caf\xc3\xa9 \\u2713" .
"""

NTRIPLES = b"""<https://alice.example/notes/note1> <http://xmlns.com/foaf/0.1/name> "N" .
_:b <http://xmlns.com/foaf/0.1/knows> <https://alice.example/notes/note1> .
"""

N3_DATA = b"""@prefix foaf: <http://xmlns.com/foaf/0.1/> .
<#me> foaf:name "Me"; foaf:knows [ foaf:name "You" ] .
"""

JSONLD = json.dumps(
    {
        "@context": {"foaf": "http://xmlns.com/foaf/0.1/", "knows": {"@id": "foaf:knows", "@type": "@id"}},
        "@id": "",
        "foaf:name": {"@value": "Note", "@language": "en"},
        "knows": "#friend",
        "foaf:age": 3,
        "foaf:topic": {"foaf:name": "blank"},
    }
).encode()


def expected_turtle_graph() -> rdflib.Graph:
    g = rdflib.Graph()
    g.parse(data=TURTLE.decode(), format="turtle", publicID=BASE)
    return g


# --- media types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("text/turtle", "text/turtle"),
        ("Text/Turtle; charset=UTF-8", "text/turtle"),
        ('application/ld+json;profile="http://www.w3.org/ns/json-ld#compacted"', "application/ld+json"),
        ("  image/PNG ", "image/png"),
        (";charset=utf-8", None),
    ],
)
def test_normalize_media_type(header: str | None, expected: str | None) -> None:
    assert normalize_media_type(header) == expected


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [*((t, True) for t in RDF_MEDIA_TYPES), ("application/json", False), ("image/png", False), (None, False)],
)
def test_is_rdf_type(media_type: str | None, expected: bool) -> None:
    assert is_rdf_type(media_type) is expected


# --- parsing and round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "media_type"),
    [
        (TURTLE, "text/turtle"),
        (NTRIPLES, "application/n-triples"),
        (N3_DATA, "text/n3"),
        (JSONLD, "application/ld+json"),
    ],
    ids=["from-turtle", "from-ntriples", "from-n3", "from-jsonld"],
)
@pytest.mark.parametrize("output", RDF_MEDIA_TYPES)
def test_round_trip(body: bytes, media_type: str, output: str) -> None:
    graph = parse_rdf(body, media_type, BASE)
    assert len(graph) > 0
    again = parse_rdf(serialize_rdf(graph, output, BASE), output, BASE)
    assert isomorphic(graph, again)


def test_turtle_parse_resolves_relative_iris_against_base() -> None:
    graph = parse_rdf(TURTLE, "text/turtle", BASE)
    assert isomorphic(graph, expected_turtle_graph())
    me = URIRef("https://alice.example/profile/card#me")
    assert (URIRef(BASE), URIRef("http://xmlns.com/foaf/0.1/maker"), me) in graph
    assert (URIRef(BASE + "#section"), None, Literal("café ✓")) in graph


def test_jsonld_parse() -> None:
    graph = parse_rdf(JSONLD, "application/ld+json", BASE)
    foaf = rdflib.Namespace("http://xmlns.com/foaf/0.1/")
    assert (URIRef(BASE), foaf.name, Literal("Note", lang="en")) in graph
    assert (URIRef(BASE), foaf.knows, URIRef(BASE + "#friend")) in graph
    assert (URIRef(BASE), foaf.age, Literal(3)) in graph
    assert len(graph) == 5


def test_jsonld_with_bundled_activitystreams_and_event_contexts() -> None:
    doc = {
        "@context": ["https://www.w3.org/ns/activitystreams", "https://w3id.org/solid-pod/events/v1"],
        "@id": "https://producer.example/publish/0123456789abcdef0123456789abcdef",
        "id": "https://producer.example/publish/0123456789abcdef0123456789abcdef",
        "topic": "realestate/contact#add",
        "recipient": "https://user.example/profile/card#me",
        "data": {"type": "AddAction", "object": {"type": "Contact", "name": "Bruce Wayne"}},
        "time": "2024-05-01T12:00:00Z",
        "timestamp": 1714564800000,
        "summary": "an ActivityStreams term",
    }
    graph = parse_rdf(json.dumps(doc).encode(), "application/ld+json", BASE)
    event = URIRef(str(doc["@id"]))
    # "id" is the event's shared id (ev:id), distinct from the node's own @id: an inbox copy has
    # its own @id and keeps the id it was published with.
    assert (event, URIRef(EV + "id"), event) in graph
    assert (event, URIRef(EV + "topic"), Literal("realestate/contact#add")) in graph
    assert (event, URIRef(EV + "recipient"), URIRef("https://user.example/profile/card#me")) in graph
    assert (
        event,
        URIRef(EV + "time"),
        Literal("2024-05-01T12:00:00Z", datatype=rdflib.XSD.dateTime),
    ) in graph
    assert (event, AS.summary, Literal("an ActivityStreams term")) in graph
    (data,) = graph.objects(event, URIRef(EV + "data"))
    assert isinstance(data, Literal)
    assert data.datatype == RDF.JSON
    assert json.loads(str(data)) == doc["data"]


@pytest.mark.parametrize(
    "url",
    [
        "https://www.w3.org/ns/activitystreams",
        "http://www.w3.org/ns/activitystreams",
        "https://www.w3.org/ns/activitystreams#",
        "http://www.w3.org/ns/activitystreams.jsonld",
        "https://www.w3.org/ns/solid/notification/v1",
        "https://w3id.org/solid-pod/events/v1",
    ],
)
def test_bundled_contexts_load(url: str) -> None:
    remote = jsonld.document_loader(url)
    assert remote["documentUrl"] == url
    assert isinstance(remote["document"]["@context"], dict)
    # Every bundled URL works as a context end to end.
    nquads = jsonld.jsonld_to_nquads({"@context": url, "@id": "#x", "@type": "Note"}, BASE)
    assert nquads.startswith(f"<{BASE}#x> <{RDF.type}>")


def test_loader_hands_out_copies() -> None:
    first = jsonld.document_loader("https://w3id.org/solid-pod/events/v1")
    first["document"]["@context"]["topic"] = "tampered"
    second = jsonld.document_loader("https://w3id.org/solid-pod/events/v1")
    assert second["document"]["@context"]["topic"] == "ev:topic"


def test_index_matches_files() -> None:
    index = json.loads((jsonld.CONTEXTS_DIR / "index.json").read_text())
    assert set(index) == jsonld.bundled_context_urls()
    for name in set(index.values()):
        assert "@context" in json.loads((jsonld.CONTEXTS_DIR / name).read_text())


@pytest.mark.parametrize(
    ("doc", "url"),
    [
        (
            {"@context": "https://evil.example/context.jsonld", "name": "x"},
            "https://evil.example/context.jsonld",
        ),
        (
            {"@context": ["https://www.w3.org/ns/activitystreams", "http://10.0.0.1/ctx"]},
            "http://10.0.0.1/ctx",
        ),
        (
            {"@context": {"@import": "https://evil.example/import"}, "@id": "#a"},
            "https://evil.example/import",
        ),
        ({"@context": "other.jsonld", "@id": "#a"}, "https://alice.example/notes/other.jsonld"),
        (
            {
                "@context": {"p": {"@id": "http://ex/p", "@context": "https://evil.example/scoped"}},
                "p": {"a": 1},
            },
            "https://evil.example/scoped",
        ),
    ],
)
def test_remote_context_refused_without_network(doc: Any, url: str, no_network: list[str]) -> None:
    message = f"Remote JSON-LD context not allowed: {url}"
    with pytest.raises(BadRequest) as excinfo:
        jsonld.jsonld_to_nquads(doc, BASE)
    assert excinfo.value.message == message
    with pytest.raises(BadRequest) as excinfo:
        parse_rdf(json.dumps(doc).encode(), "application/ld+json", BASE)
    assert excinfo.value.message == message
    with pytest.raises(BadRequest):
        jsonld.document_loader(url)
    assert no_network == []


@pytest.mark.parametrize(
    ("body", "media_type", "message"),
    [
        (b"\xff\xfe<a> <b> <c> .", "text/turtle", "Invalid text/turtle: body is not valid UTF-8"),
        (b"<a> <b> .", "text/turtle", "Invalid text/turtle: line 1 column 9: . is not a valid RDF object"),
        (
            b"@prefix ex: <http://ex/> .\nex:a ex:b ex:c ;\nex:d",
            "text/turtle",
            "Invalid text/turtle: line 3 column 5: Unexpected end",
        ),
        (
            b"@prefix ex: <http://ex/> .\nex:a ex:b ex:c ;\nex:d .",
            "text/turtle",
            "Invalid text/turtle: line 3 column 6:",
        ),
        (b"ex:a ex:b ex:c .", "text/turtle", "Invalid text/turtle:"),
        (b'<http://a> <http://b> "c .\n', "application/n-triples", "Invalid application/n-triples:"),
        (b"<a> <http://b> <http://c> .\n", "application/n-triples", "Invalid application/n-triples:"),
        (b"<http://a b> <http://p> <http://o> .", "text/turtle", "Invalid IRI code point ' '"),
        (b'<http://a> <http://p> "\\uD800" .', "text/turtle", "not a valid unicode character"),
        (b"{ ?x <http://p> ?y } => { ?y <http://p> ?x } .", "text/n3", "N3 formulae"),
        (b"<http://s> <http://p> ?x .", "text/n3", "N3 variables (?x)"),
        (b'"literal" <http://p> <http://o> .', "text/n3", "cannot be the subject"),
        (b"{bad json", "application/ld+json", "Invalid application/ld+json: not valid JSON"),
        (b'"just a string"', "application/ld+json", "must be a JSON object or array"),
        (b'{"@context": 5}', "application/ld+json", "Invalid application/ld+json: Invalid JSON-LD syntax"),
        (b"[" * 100_000, "application/ld+json", "Invalid application/ld+json:"),
        (
            b'{"@id": "http://a", "http://p": "\\ud800"}',
            "application/ld+json",
            "unpaired UTF-16 surrogate",
        ),
        (
            b'{"@id": "http://a", "http://p": {"@value": "x", "@language": "not a tag!"}}',
            "application/ld+json",
            "not a valid language tag",
        ),
        (
            b'{"@id": "http://g", "@graph": [{"@id": "http://s", "http://p": "o"}]}',
            "application/ld+json",
            "named graphs are not supported",
        ),
    ],
)
def test_invalid_input(body: bytes, media_type: str, message: str) -> None:
    with pytest.raises(BadRequest) as excinfo:
        parse_rdf(body, media_type, BASE)
    assert excinfo.value.message.startswith(message) or message in excinfo.value.message
    assert "\n" not in excinfo.value.message
    assert len(excinfo.value.message) <= 300


def test_parse_refuses_non_rdf_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_rdf(b"{}", "application/json", BASE)


# --- serialisation -----------------------------------------------------------------------------------


def test_turtle_output_is_absolute_with_prefixes() -> None:
    graph = parse_rdf(TURTLE, "text/turtle", BASE)
    text = serialize_rdf(graph, "text/turtle", BASE).decode()
    assert "@base" not in text
    assert "<#" not in text and "<>" not in text
    assert f"<{BASE}>" in text
    assert "@prefix ldp: <http://www.w3.org/ns/ldp#> ." in text
    assert "ldp:Resource" in text
    # Only prefixes that are used are declared.
    assert "@prefix acl:" not in text


def test_n3_output_is_turtle() -> None:
    graph = parse_rdf(TURTLE, "text/turtle", BASE)
    assert serialize_rdf(graph, "text/n3") == serialize_rdf(graph, "text/turtle")


def test_jsonld_output_is_expanded_without_context() -> None:
    graph = rdflib.Graph()
    graph.add((URIRef(BASE), RDF.type, LDP.Resource))
    doc = json.loads(serialize_rdf(graph, "application/ld+json"))
    assert isinstance(doc, list)
    assert "@context" not in json.dumps(doc)
    assert doc[0]["@id"] == BASE
    assert doc[0]["@type"] == [str(LDP.Resource)]


def test_ntriples_output_is_utf8() -> None:
    graph = rdflib.Graph()
    graph.add((URIRef(BASE), RDF.value, Literal("café")))
    assert serialize_rdf(graph, "application/n-triples") == f'<{BASE}> <{RDF.value}> "café" .\n'.encode()


def test_serialize_unknown_type() -> None:
    with pytest.raises(NotAcceptable):
        serialize_rdf(rdflib.Graph(), "text/html")


# --- content negotiation -----------------------------------------------------------------------------

ALL = "text/turtle, application/ld+json, application/n-triples, text/n3"


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, None, "text/turtle"),
        ("", None, "text/turtle"),
        ("*/*", None, "text/turtle"),
        ("*/*", "application/ld+json", "text/turtle"),
        ("text/*", None, "text/turtle"),
        ("text/turtle", None, "text/turtle"),
        ("application/ld+json", None, "application/ld+json"),
        ("application/n-triples", None, "application/n-triples"),
        ("text/n3", None, "text/n3"),
        ("application/json", None, "application/ld+json"),
        ("application/json, text/turtle", None, "text/turtle"),
        ("application/json;q=0.9, */*", None, "text/turtle"),
        ("application/json, */*;q=0.8", None, "application/ld+json"),
        ("application/*", None, "application/ld+json"),
        ("application/ld+json;q=0.5, text/turtle;q=0.4", None, "application/ld+json"),
        ("application/ld+json;q=0.4, text/turtle;q=0.5", None, "text/turtle"),
        ("text/turtle;q=0, */*", None, "application/ld+json"),
        ("text/turtle, application/ld+json", None, "text/turtle"),
        ("text/turtle, application/ld+json", "application/ld+json", "application/ld+json"),
        ("text/n3, text/turtle", None, "text/turtle"),
        ("text/html, */*;q=0.1", None, "text/turtle"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, "text/turtle"),
        ('application/ld+json;profile="http://www.w3.org/ns/json-ld#expanded"', None, "application/ld+json"),
        ("TEXT/TURTLE", None, "text/turtle"),
        ("text/turtle;q=abc, application/ld+json", None, "application/ld+json"),
        ("garbage", None, "text/turtle"),
    ],
)
def test_choose_rdf_type(accept: str | None, stored: str | None, expected: str) -> None:
    assert choose_rdf_type(accept, stored) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "image/png, application/xml",
        "text/turtle;q=0, application/ld+json;q=0, text/n3;q=0, */*;q=0",
    ],
)
def test_choose_rdf_type_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable) as excinfo:
        choose_rdf_type(accept)
    assert excinfo.value.message == f"No acceptable representation for Accept: {accept}; available: {ALL}"


def test_parse_accept_orders_by_q_then_specificity() -> None:
    assert parse_accept("*/*;q=0.1, text/*, application/json;q=0, text/turtle, bogus") == [
        ("text/turtle", 1.0),
        ("text/*", 1.0),
        ("*/*", 0.1),
        ("application/json", 0.0),
    ]
    assert parse_accept(None) == []


@pytest.mark.parametrize(
    ("accept", "media_type", "expected"),
    [
        (None, "image/png", True),
        ("*/*", "image/png", True),
        ("image/*", "image/png", True),
        ("image/png", "image/png", True),
        ("image/png;q=0, */*", "image/png", False),
        ("text/turtle", "image/png", False),
        ("image/*;q=0, image/png", "image/png", True),
        ("application/json", "application/ld+json", True),
        ("text/plain", "text/plain; charset=utf-8", True),
    ],
)
def test_accepts(accept: str | None, media_type: str, expected: bool) -> None:
    assert accepts(accept, media_type) is expected


@pytest.mark.parametrize(
    "body",
    [
        b"<a> <b> .",
        b"@prefix ex: <http://ex/> .\nex:a ex:b ex:c ;\nex:d",
        b"<http://a b> <http://p> <http://o> .",
        b'<http://a> <http://p> "\\uD800" .',
        b"<http://a> <http://p> <<( <http://s> <http://p> <http://o> )>> .",
        b"<< <http://s> <http://p> <http://o> >> <http://p> <http://o2> .",
        b"\xff\xfe",
        b"\xef\xbb\xbf<http://a> <http://p> \xff .",
    ],
)
@pytest.mark.parametrize("media_type", ["text/turtle", "application/n-triples"])
def test_validate_agrees_with_parse(body: bytes, media_type: str) -> None:
    """The write path validates without building a graph; it must refuse exactly what parsing does."""
    with pytest.raises(BadRequest) as parsed:
        parse_rdf(body, media_type, BASE)
    with pytest.raises(BadRequest) as validated:
        validate_rdf(body, media_type, BASE)
    assert validated.value.message == parsed.value.message


def test_validate_accepts_what_parse_accepts() -> None:
    body = b'@prefix ex: <http://ex/> . <#a> ex:p "x"@en, 3, [ ex:q <b> ] .'
    validate_rdf(body, "text/turtle", BASE)
    assert len(parse_rdf(body, "text/turtle", BASE)) == 4
    # "<<" in a literal is no triple term; a byte order mark is tolerated
    body = b'\xef\xbb\xbf<#a> <http://ex/p> "a << b", "c >> d" .'
    validate_rdf(body, "text/turtle", BASE)
    assert len(parse_rdf(body, "text/turtle", BASE)) == 2


# JSON-LD is read by Oxigraph when the document is plain (ldp.jsonld_plain) and by pyld otherwise.
# Whichever path reads a document, the answer (triples, or the refusal and its message) must be the
# reference path's; and validate_rdf must refuse exactly what parse_rdf refuses.
_JSONLD_CORPUS: list[object] = [
    {"@id": "http://a", "http://p": {"@id": "not an iri with spaces"}},
    {"@id": "not an iri with spaces", "http://p": "x"},
    {"@id": "http://a", "http://p": {"@value": "x", "@foo": 1}},
    {"@id": "http://a", "http://p": {"@value": "x", "@language": "en-GB"}},
    {"@id": "http://a", "http://p": {"@value": "x", "@language": "not a tag!"}},
    {"@id": "http://a", "http://p": {"@value": "x", "@type": "http://www.w3.org/2001/XMLSchema#int"}},
    {"@id": "http://a", "http://p": [1, 2.5, True, None, "s", 1e21, 1.0]},
    {"@id": "http://a", "http://p": {"@list": [1, 2]}},
    {"@context": {"@base": "http://other/"}, "@id": "rel", "http://p": {"@id": "../x"}},
    {"@id": "rel#me", "http://p": {"@id": "#x"}},
    {"@context": {"p": {"@id": "http://p", "@type": "@id"}}, "@id": "http://a", "p": "rel"},
    {
        "@context": {"p": {"@id": "http://p", "@type": "@vocab"}, "@vocab": "http://v/"},
        "@id": "http://a",
        "p": "t",
    },
    {
        "@context": {"p": {"@id": "http://p", "@reverse": "http://q"}},
        "@id": "http://a",
        "p": {"@id": "http://b"},
    },
    {"@id": "http://a", "@type": ["http://T", "rel"]},
    {"@id": "http://a", "http://p": {"@value": {"a": 1}, "@type": "@json"}},
    {
        "@context": {"@version": 1.1, "p": {"@id": "http://p", "@container": "@index"}},
        "@id": "http://a",
        "p": {"k": "v"},
    },
    {
        "@context": {"@version": 1.1, "n": "@nest", "p": {"@id": "http://p", "@nest": "n"}},
        "@id": "http://a",
        "n": {"p": "v"},
    },
    {"@id": "_:b1", "http://p": {"@id": "_:b1"}},
    {"@id": "http://a", "http://p": "\ud800"},
    {"@id": "http://a b", "http://p": "x"},
    {"@id": "http://a", "http://p": {"@id": "http://b<c>"}},
    {"@id": "http://g", "@graph": [{"@id": "http://s", "http://p": "o"}]},
    {"@context": "https://www.w3.org/ns/activitystreams", "type": "Announce", "id": "http://a"},
    {"@context": "http://example.org/not-bundled", "@id": "http://a"},
    [{"@id": "http://a", "http://p": "1"}, {"@id": "http://b", "http://p": "2"}],
    "just a string",
    {"@context": {"as": "https://www.w3.org/ns/activitystreams#"}, "@type": "as:Note", "as:content": "x"},
    {"@context": {"ex": "http://ex/", "p": {"@id": "ex:p", "@container": "@list"}}, "@id": "ex:a", "p": [1]},
    {"@id": "http://a", "http://p": {"@id": "http://a:b:c"}},
    {"@id": "http://a", "http://p": {"@id": "http://[x"}},
    {"@id": "http://a", "http://p": {"@id": "http://a/%zz"}},
    {"@id": "http://a", "http://p": {"@value": {"x": 1}}},
    {"@id": "http://a", "http://p": {"@value": "x", "@type": "@id"}},
    {"@id": "http://a", "http://p": {"@value": "5", "@type": "http://www.w3.org/2001/XMLSchema#integer"}},
    {"@id": "http://a", "@reverse": {"http://p": {"@id": "http://b"}}},
    {"@id": "http://a", "http://p": {"@set": ["x", {"@list": []}]}},
]


@pytest.mark.parametrize("doc", _JSONLD_CORPUS, ids=lambda d: json.dumps(d)[:60])
def test_jsonld_validation_agrees_with_parsing(doc: object) -> None:
    body = json.dumps(doc).encode()
    try:
        parse_rdf(body, "application/ld+json", BASE)
        expected = None
    except BadRequest as exc:
        expected = exc.message
    try:
        validate_rdf(body, "application/ld+json", BASE)
        got = None
    except BadRequest as exc:
        got = exc.message
    assert got == expected


def _outcome(read: Any, body: bytes) -> object:
    try:
        return read(body)
    except BadRequest as exc:
        return exc.message


def _reference(body: bytes) -> object:
    from ldp import rdf

    triples = rdf._reference_jsonld_triples(json.loads(body), BASE)
    rdf._check_terms(triples, "application/ld+json")
    graph = rdf.new_graph()
    graph += triples
    return graph


def _same(a: object, b: object) -> bool:
    if isinstance(a, rdflib.Graph) and isinstance(b, rdflib.Graph):
        return isomorphic(a, b)
    return a == b


@pytest.mark.parametrize("doc", _JSONLD_CORPUS, ids=lambda d: json.dumps(d)[:60])
def test_jsonld_fast_path_reads_as_the_reference(doc: object) -> None:
    body = json.dumps(doc).encode()
    expected = _outcome(_reference, body)
    assert _same(_outcome(lambda b: parse_rdf(b, "application/ld+json", BASE), body), expected)


def _generated_documents(count: int, seed: int = 20261126) -> list[object]:
    """Small JSON-LD documents built from pieces both paths must agree on, well-formed or not."""
    import random

    rnd = random.Random(seed)
    iris = [
        "http://ex.org/a",
        "http://ex.org/b#x",
        "https://ex.org/p",
        "ex:q",
        "as:Note",
        "rel",
        "#frag",
        "_:b1",
        "_:b2",
        "http://a b",
        "http://ex.org/<x>",
        "http://ex.org/%41",
        "http://a:b:c",
        "http://[::1]/",
        "urn:x:y",
        "mailto:a@b",
        "http://ex.org/\u00e9",
        "http://ex.org/é",
        "",
    ]
    terms = ["name", "knows", "ex:p", "as:content", "http://ex.org/p", "http://ex.org/q r", "@type"]
    good_iris, good_terms = iris[:9] + iris[14:16], ["name", "ex:p", "as:content", "http://ex.org/p"]
    dirty = [iris, terms, 11]  # the pools a document draws from; half are drawn from clean ones

    def value(depth: int) -> object:
        iris, pick = dirty[0], rnd.randrange(dirty[2])
        if pick == 0:
            return rnd.choice(["text", "", "\ud800", "é", "a\nb"])
        if pick == 1:
            return rnd.choice([0, 1, -3, 2.5, 1e21, 1.0, True, False, None])
        if pick == 2:
            return {"@id": rnd.choice(iris)}
        if pick == 3:
            return {"@value": rnd.choice(["5", "x", 5]), "@type": rnd.choice(iris[:6])}
        if pick == 4:
            return {"@value": "x", "@language": rnd.choice(["en", "en-GB", "not a tag!", "x" * 9])}
        if pick == 5:
            return {"@list": [value(depth + 1) for _ in range(rnd.randrange(3))]}
        if pick == 6:
            return [value(depth + 1) for _ in range(rnd.randrange(3))]
        if pick == 7 and depth < 3:
            return node(depth + 1)
        if pick == 8:
            return {"@value": {"k": 1}, "@type": "@json"}
        return rnd.choice(iris)

    def node(depth: int) -> dict[str, object]:
        iris, terms = dirty[0], dirty[1]
        out: dict[str, object] = {}
        if rnd.random() < 0.8:
            out["@id"] = rnd.choice(iris)
        if rnd.random() < 0.4:
            out["@type"] = rnd.choice([rnd.choice(iris), [rnd.choice(iris), rnd.choice(iris)]])
        for _ in range(rnd.randrange(1, 4)):
            out[rnd.choice(terms)] = value(depth)
        return out

    def context() -> object:
        ctx: dict[str, object] = {"ex": "http://ex.org/", "as": "https://www.w3.org/ns/activitystreams#"}
        for _ in range(rnd.randrange(3)):
            term = rnd.choice(["name", "knows", "tag"])
            ctx[term] = rnd.choice(
                [
                    rnd.choice(dirty[0]),
                    {"@id": rnd.choice(dirty[0])},
                    {"@id": "ex:" + term, "@type": rnd.choice(["@id", "@vocab", "ex:T", "@json"])},
                    {"@id": "ex:" + term, "@container": rnd.choice(["@set", "@list", "@language", "@index"])},
                ]
            )
        if rnd.random() < 0.15:
            ctx[rnd.choice(["@vocab", "@base", "@language"])] = rnd.choice(["http://v.org/", "en"])
        return ctx

    docs: list[object] = []
    all_iris, all_terms = iris, terms
    for _ in range(count):
        clean = rnd.random() < 0.5
        dirty[:] = [good_iris, good_terms, 4] if clean else [all_iris, all_terms, 11]
        doc: object = node(0)
        if rnd.random() < 0.7:
            assert isinstance(doc, dict)
            doc = {"@context": context(), **doc}
        if rnd.random() < 0.1:
            doc = [doc, node(1)]
        if rnd.random() < 0.05:
            doc = {"@id": rnd.choice(iris), "@graph": [node(1)]}
        docs.append(doc)
    return docs


def test_jsonld_fast_path_agrees_on_generated_documents() -> None:
    from ldp.jsonld_plain import plain_jsonld

    docs = _generated_documents(1500)
    plain = 0
    for doc in docs:
        body = json.dumps(doc).encode()
        plain += plain_jsonld(json.loads(body))
        expected = _outcome(_reference, body)
        got = _outcome(lambda b: parse_rdf(b, "application/ld+json", BASE), body)
        assert _same(got, expected), json.dumps(doc)
        validated = _outcome(lambda b: validate_rdf(b, "application/ld+json", BASE), body)
        assert validated == (expected if isinstance(expected, str) else None), json.dumps(doc)
    assert plain >= len(docs) // 10, f"only {plain} of {len(docs)} generated documents took the fast path"


def test_jsonld_that_breaks_pyld_itself_is_a_400() -> None:
    # pyld's own code fails on a lone surrogate inside a JSON literal (UnicodeEncodeError): that is
    # the client's malformed input, not a server error.
    body = json.dumps({"@id": "http://a", "http://p": {"@value": {"k": "\ud800"}, "@type": "@json"}}).encode()
    for check in (parse_rdf, validate_rdf):
        with pytest.raises(BadRequest, match=r"Invalid application/ld\+json"):
            check(body, "application/ld+json", BASE)


@pytest.mark.parametrize(
    "text",
    [
        '{"@id": "http://g", "@graph": [{"@id": "http://a", "http://p": "x"}]}',
        '{"@id": "http://g", "\\u0040graph": [{"@id": "http://a", "http://p": "x"}]}',
    ],
)
def test_a_named_graph_is_refused_however_it_is_written(text: str) -> None:
    """Validation skips looking at the terms of plain documents without "@graph": an escaped
    keyword must not slip through."""
    for check in (validate_rdf, parse_rdf):
        with pytest.raises(BadRequest, match="named graphs are not supported"):
            check(text.encode(), "application/ld+json", BASE)
