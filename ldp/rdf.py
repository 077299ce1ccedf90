"""Parsing and serialising RDF representations.

Every RDF resource is one graph of triples; the media types below are the representations the server
reads and writes. Client input is untrusted, so parsing is strict about what it lets through:

- JSON-LD goes through :mod:`ldp.jsonld` (bundled contexts only) and never through rdflib's own
  JSON-LD parser, which would dereference remote ``@context`` URLs.
- A resource is a single graph: named graphs are refused, as are N3 formulae, variables and other
  N3 extensions that are not RDF (a literal as subject, for instance).
- IRIs and literals must survive a round trip: an IRI with a space or a lone UTF-16 surrogate would
  be stored fine and then break every later serialisation of the resource.
- Literals keep the lexical form they were written with (see ``NORMALIZE_LITERALS`` below).

Failures raise ``BadRequest`` with a one-line message meant for the client.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections import deque
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import pyoxigraph as ox
import rdflib
from rdflib import BNode, Literal, URIRef
from rdflib.graph import QuotedGraph
from rdflib.namespace import DCTERMS, FOAF, RDF, RDFS, XSD
from rdflib.plugins.parsers.notation3 import BadSyntax
from rdflib.plugins.serializers.turtle import TurtleSerializer
from rdflib.term import Node, Variable

from ldp.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from ldp.jsonld import jsonld_to_dataset
from ldp.jsonld_plain import plain_jsonld
from ldp.vocab import ACL, AS, LDP, PIM, SOLID, VCARD

__all__ = [
    "RDF_MEDIA_TYPES",
    "is_rdf_type",
    "new_graph",
    "normalize_media_type",
    "one_line",
    "parse_rdf",
    "serialize_rdf",
    "term_problem",
    "validate_rdf",
]

RDF_MEDIA_TYPES: tuple[str, ...] = ("text/turtle", "application/ld+json", "application/n-triples", "text/n3")

# rdflib parser / serializer plugin names per media type (JSON-LD is handled separately).
_RDFLIB_PARSERS = {"text/turtle": "turtle", "application/n-triples": "nt", "text/n3": "n3"}
_RDFLIB_SERIALIZERS = {
    "text/turtle": "turtle",
    "text/n3": "turtle",  # Turtle is a subset of N3, and a graph of triples needs nothing more.
    "application/n-triples": "nt",
    "application/ld+json": "json-ld",
}

# Prefixes bound for Turtle output; the serialiser only declares those the graph actually uses.
_PREFIXES: tuple[tuple[str, URIRef], ...] = tuple(
    (prefix, URIRef(str(ns)))
    for prefix, ns in (
        ("rdf", RDF),
        ("rdfs", RDFS),
        ("ldp", LDP),
        ("solid", SOLID),
        ("pim", PIM),
        ("acl", ACL),
        ("foaf", FOAF),
        ("dcterms", DCTERMS),
        ("xsd", XSD),
        ("as", AS),
        ("vcard", VCARD),
    )
)

# RDF 1.1 Concepts §3.3: "Literal term equality: Two literals are term-equal (the same RDF literal)
# if and only if the two lexical forms, the two datatype IRIs, and the two language tags (if any)
# compare equal, character by character." By default rdflib rewrites typed literals into a canonical
# form as it builds them ("2024-05-01T12:00:00.000Z" becomes "...+00:00", "03" becomes "3", and the
# "Z" of an xsd:date is dropped, which changes the value), but only on some of its paths: its SPARQL
# parser keeps a quoted literal as written. A PATCH would then rewrite every literal it does not touch,
# and a DELETE DATA of a literal exactly as a client read it (which is how clients such as
# @inrupt/solid-client update a value) would not find it, leaving the old value next to the new one.
# The switch is process-wide because rdflib's SPARQL and N3 parsers take no per-call option.
rdflib.NORMALIZE_LITERALS = False

_MAX_MESSAGE = 300

# What an IRI may not contain (RFC 3987 / the Turtle IRIREF production): controls, space, <>"{}|^`\
_BAD_IRI = re.compile(r'[\x00-\x20<>"{}|^`\\]')
# A lone surrogate cannot be encoded as UTF-8; JSON and the RDF syntaxes can express one by escape.
_SURROGATE = re.compile("[\ud800-\udfff]")
_XSD_STRING = str(XSD.string)


def new_graph() -> rdflib.Graph:
    """An empty graph without rdflib's default prefix table.

    By default rdflib binds some thirty prefixes into every graph's namespace manager, which costs
    more than parsing a small document; prefixes matter only for Turtle output, which binds its own.
    """
    return rdflib.Graph(bind_namespaces="none")


@lru_cache(maxsize=512)  # a few distinct values, asked for on every request and every inbox item
def normalize_media_type(content_type: str | None) -> str | None:
    """Return the lower-cased ``type/subtype`` of a Content-Type value, without parameters.

    ``None`` for a missing or empty header.
    """
    if not content_type:
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type or None


def is_rdf_type(media_type: str | None) -> bool:
    """Whether the server reads and writes ``media_type`` (already normalised) as RDF."""
    return media_type in RDF_MEDIA_TYPES


def one_line(message: str) -> str:
    """Make ``message`` safe to show a client: one line, bounded, and encodable as UTF-8."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return " ".join(message.split())[:_MAX_MESSAGE]


def _invalid(media_type: str, detail: str) -> BadRequest:
    return BadRequest(one_line(f"Invalid {media_type}: {detail}"))


def _parser_message(exc: Exception) -> str:
    if isinstance(exc, IndexError):  # rdflib's Turtle/N3 parser runs off the end of a truncated input
        return "unexpected end of input"
    if isinstance(exc, BadSyntax):
        # str(BadSyntax) spans several lines and quotes the input; line and reason are what helps.
        why = getattr(exc, "_why", None)
        if isinstance(why, str):
            return f"line {exc.lines + 1}: {why}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_rdf(body: bytes, media_type: str, base: str) -> rdflib.Graph:
    """Parse an RDF representation into a graph of triples.

    ``media_type`` is normalised and one of :data:`RDF_MEDIA_TYPES`; relative IRIs resolve against
    ``base`` (the resource's URL). Invalid UTF-8, syntax errors, named graphs, N3 formulae and
    variables raise ``BadRequest``; a media type that is not RDF raises ``UnsupportedMediaType``.
    """
    if media_type not in RDF_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Cannot read {media_type} as RDF; supported: {', '.join(RDF_MEDIA_TYPES)}"
        )
    text = _decode(body, media_type)

    if media_type == "application/ld+json":
        # Checked in document order, so the problem named is the same on every run and path.
        triples = _jsonld_triples(text, base)
        _check_terms(triples, media_type)
        graph = new_graph()
        graph += triples
        return graph
    if media_type in _OXIGRAPH_FORMATS:
        graph = _parse_oxigraph(text, media_type, base)
    else:
        graph = new_graph()
        try:
            graph.parse(data=text, format=_RDFLIB_PARSERS[media_type], publicID=base)
        except Exception as exc:  # rdflib's parsers raise many types; all mean the input is bad
            raise _invalid(media_type, _parser_message(exc)) from None
    _check_terms(graph, media_type)
    return graph


# Turtle and N-Triples are parsed by Oxigraph (a Rust RDF toolkit): some thirty times faster than
# rdflib's pure-Python parsers on small documents, which matters because every RDF write is parsed
# to be validated, and strict to the grammars. N3 (formulae, variables) stays with rdflib.
_OXIGRAPH_FORMATS = {"text/turtle": ox.RdfFormat.TURTLE, "application/n-triples": ox.RdfFormat.N_TRIPLES}


def _decode(body: bytes, media_type: str) -> str:
    # Tolerate a byte order mark, which editors add and the RDF grammars do not allow. (Stripped by
    # hand: the utf-8-sig codec is written in Python and cost ten times the decoding itself.)
    start = 3 if body.startswith(codecs.BOM_UTF8) else 0
    try:
        return body[start:].decode("utf-8") if start else body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(media_type, f"body is not valid UTF-8 (byte {exc.start + start})") from None


def validate_rdf(body: bytes, media_type: str, base: str) -> None:
    """Raise exactly as :func:`parse_rdf` would, without building a graph.

    Every RDF write is validated but most are stored as sent, so the hot path need not pay for
    rdflib terms. Oxigraph refuses everything :func:`term_problem` checks for (bad IRI characters,
    surrogate escapes, literal subjects) on its own; only RDF 1.2 triple terms need a look.
    """
    if media_type == "application/ld+json":
        text = _decode(body, media_type)
        doc = _json_document(text)
        if plain_jsonld(doc) and _oxigraph_jsonld(text, base, terms=False) is not None:
            return
        _check_terms(_reference_jsonld_triples(doc, base), media_type)
        return
    if media_type not in _OXIGRAPH_FORMATS:
        parse_rdf(body, media_type, base)
        return
    text = _decode(body, media_type)
    try:
        quads = ox.parse(text, format=_OXIGRAPH_FORMATS[media_type], base_iri=base)
        if "<<" not in text:
            # No triple term can be written without "<<": parse to the end without making a
            # Python object of every term (half the cost of validating a small document).
            deque(quads, maxlen=0)
            return
        for quad in quads:
            if isinstance(quad.object, ox.Triple) or isinstance(quad.subject, ox.Triple):
                raise BadRequest("Invalid RDF: triple terms (<<( ... )>>) are not supported")
    except (SyntaxError, ValueError) as exc:
        raise _invalid(media_type, _oxigraph_message(exc)) from None


def _parse_oxigraph(text: str, media_type: str, base: str) -> rdflib.Graph:
    graph = new_graph()
    bnodes: dict[str, BNode] = {}
    add = graph.add
    try:
        for quad in ox.parse(text, format=_OXIGRAPH_FORMATS[media_type], base_iri=base):
            add((_ox_term(quad.subject, bnodes), URIRef(quad.predicate.value), _ox_term(quad.object, bnodes)))
    except (SyntaxError, ValueError) as exc:  # ValueError: e.g. an IRI Oxigraph cannot represent
        raise _invalid(media_type, _oxigraph_message(exc)) from None
    return graph


_OX_LOCATION = re.compile(r"^Parser error at (.*?): (.*?)(?: \(line \d+\))?$", re.DOTALL)


def _oxigraph_message(exc: Exception) -> str:
    """``Parser error at line 3 column 5: Unexpected end (line 3)`` → ``line 3 column 5: Unexpected end``."""
    text = str(exc).strip()
    match = _OX_LOCATION.match(text)
    return f"{match[1]}: {match[2]}" if match else text


def _ox_term(term: object, bnodes: dict[str, BNode]) -> Node:
    if isinstance(term, ox.NamedNode):
        return URIRef(term.value)
    if isinstance(term, ox.BlankNode):
        node = bnodes.get(term.value)
        if node is None:
            node = bnodes[term.value] = BNode()  # fresh per document, as rdflib's parsers do
        return node
    if isinstance(term, ox.Literal):
        if term.language:
            return Literal(term.value, lang=term.language)
        datatype = term.datatype.value
        if datatype == _XSD_STRING:
            return Literal(term.value)
        return Literal(term.value, datatype=URIRef(datatype), normalize=False)
    # RDF 1.2 triple terms: not RDF 1.1 data, and nothing downstream could store them.
    raise BadRequest("Invalid RDF: triple terms (<<( ... )>>) are not supported")


def _jsonld_triples(text: str, base: str) -> list[tuple[Node, Node, Node]]:
    """The triples of a JSON-LD document, as rdflib terms but not yet in a graph: validation only
    needs to look at them, and building the graph cost as much as the JSON-LD processing. Plain
    documents (:mod:`ldp.jsonld_plain`) are read by Oxigraph, the rest by pyld."""
    doc = _json_document(text)
    if plain_jsonld(doc):
        triples = _oxigraph_jsonld(text, base, terms=True)
        if triples is not None:
            return triples
    return _reference_jsonld_triples(doc, base)


def _json_document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid("application/ld+json", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("application/ld+json", "document is nested too deeply") from None


def _oxigraph_jsonld(text: str, base: str, terms: bool) -> list[tuple[Node, Node, Node]] | None:
    """Oxigraph's reading of a plain document (as rdflib terms when ``terms``), or None when it
    refuses the document or finds a named graph: the reference path then gives the answer."""
    triples: list[tuple[Node, Node, Node]] = []
    bnodes: dict[str, BNode] = {}
    try:
        quads = ox.parse(text, format=ox.RdfFormat.JSON_LD, base_iri=base)
        if not terms and "@graph" not in text and "\\u" not in text:
            # A plain document names a graph only with the "@graph" keyword, written out (its
            # context has no keyword aliases): parse to the end without making terms.
            deque(quads, maxlen=0)
            return triples
        for quad in quads:
            if not isinstance(quad.graph_name, ox.DefaultGraph):
                return None
            if terms:
                triples.append(
                    (
                        _ox_term(quad.subject, bnodes),
                        URIRef(quad.predicate.value),
                        _ox_term(quad.object, bnodes),
                    )
                )
    except (SyntaxError, ValueError):
        return None
    return triples


def _reference_jsonld_triples(doc: Any, base: str) -> list[tuple[Node, Node, Node]]:
    dataset = jsonld_to_dataset(doc, base)
    for name, triples in dataset.items():
        if name != "@default" and triples:
            raise _invalid("application/ld+json", f"named graphs are not supported (found graph {name})")
    bnodes: dict[str, BNode] = {}
    try:
        return [
            (
                _jsonld_term(t["subject"], bnodes),
                _jsonld_term(t["predicate"], bnodes),
                _jsonld_term(t["object"], bnodes),
            )
            for t in dataset.get("@default", ())
        ]
    except ValueError as exc:  # rdflib refuses some terms pyld lets through, e.g. malformed language tags
        raise _invalid("application/ld+json", str(exc)) from None


def _jsonld_term(term: dict[str, Any] | None, bnodes: dict[str, BNode]) -> Node:
    if term is None:  # pyld leaves some values it could not convert as None
        raise ValueError("a value could not be converted to RDF")
    kind = term["type"]
    value: str = term["value"]
    if kind == "IRI":
        return URIRef(value)
    if kind == "blank node":
        # Labels are local to this document: map each to a fresh node, as rdflib's parsers do.
        node = bnodes.get(value)
        if node is None:
            node = bnodes[value] = BNode()
        return node
    language = term.get("language")
    if language:
        return Literal(value, lang=language)
    datatype = term.get("datatype")
    if datatype is None or datatype == _XSD_STRING:
        return Literal(value)
    return Literal(value, datatype=URIRef(datatype), normalize=False)


def _check_terms(triples: Iterable[tuple[Node, Node, Node]], media_type: str) -> None:
    """Refuse what parsed but is not storable RDF.

    N3 is a superset of RDF: formulae (``{ ... }``), variables (``?x``) and literal subjects parse,
    but a resource is data, not rules. Every format must yield terms that serialise again.
    """
    for triple in triples:
        for position, term in zip(_POSITIONS, triple, strict=True):
            problem = term_problem(term, position)
            if problem is not None:
                raise _invalid(media_type, problem)


_POSITIONS = ("subject", "predicate", "object")
_ALLOWED: dict[str, tuple[type, ...]] = {
    "subject": (URIRef, BNode),
    "predicate": (URIRef,),
    "object": (URIRef, BNode, Literal),
}


def term_problem(term: object, position: str) -> str | None:
    """Why ``term`` cannot stand at ``position`` ("subject", "predicate" or "object") of a stored
    RDF triple, or ``None`` if it can.

    Shared by parsing and by PATCH, so a patch cannot store what a PUT would have refused.
    """
    if isinstance(term, URIRef):
        if _BAD_IRI.search(term) or _SURROGATE.search(term):
            return f"invalid IRI <{one_line(term)}>"
    elif isinstance(term, QuotedGraph):
        return "N3 formulae ({ ... }) are not allowed in RDF data"
    elif isinstance(term, Variable):
        return f"N3 variables (?{term!s}) are not allowed in RDF data"
    elif isinstance(term, Literal) and _SURROGATE.search(term):
        return "literal contains an unpaired UTF-16 surrogate escape"
    if not isinstance(term, _ALLOWED[position]):
        shown = term.n3() if isinstance(term, Node) else repr(term)
        return f"{shown} cannot be the {position} of a triple"
    return None


def _bind_prefixes(graph: rdflib.Graph) -> None:
    manager = graph.namespace_manager
    for prefix, namespace in _PREFIXES:
        if manager.store.namespace(prefix) != namespace:
            manager.bind(prefix, namespace, override=True, replace=True)


def serialize_rdf(
    graph: rdflib.Graph, media_type: str, base: str | None = None, *, first: URIRef | None = None
) -> bytes:
    """Serialise ``graph`` as ``media_type`` (one of :data:`RDF_MEDIA_TYPES`), encoded as UTF-8.

    Every IRI is written absolute, so a representation means the same wherever it is copied to or
    whatever URL it was fetched from; ``base`` is accepted for symmetry with :func:`parse_rdf` and
    does not relativise anything. Turtle output declares the usual Solid prefixes that it uses,
    which binds them on ``graph``'s namespace manager (prefixes never change the triples). JSON-LD
    output is in expanded form: no context, so no client ever has to fetch one.

    ``first`` puts that subject's description before every other one. The order means nothing in
    RDF, but some clients read "the first subject" of a document (``@inrupt/solid-client``'s
    notification discovery does so with the storage description), and rdflib's own order is by IRI
    in Turtle and by hash in JSON-LD, so it differs between processes.
    """
    fmt = _RDFLIB_SERIALIZERS.get(media_type)
    if fmt is None:
        raise NotAcceptable(f"Cannot serialise RDF as {media_type}; available: {', '.join(RDF_MEDIA_TYPES)}")
    if fmt == "turtle":
        _bind_prefixes(graph)
        if first is not None:
            serializer = _FirstSubjectTurtle(graph, first)
            out = io.BytesIO()
            serializer.serialize(out, encoding="utf-8")
            return out.getvalue()
    # base=None and an unset graph.base keep rdflib from emitting @base and relative IRIs.
    data: bytes = graph.serialize(format=fmt, encoding="utf-8")
    if first is None:
        return data
    if fmt == "json-ld":
        nodes = json.loads(data)
        nodes.sort(key=lambda node: (node.get("@id") != str(first), node.get("@id", "")))
        return json.dumps(nodes, indent=2, ensure_ascii=False).encode()
    lines = data.decode().splitlines(keepends=True)
    lines.sort(key=lambda line: not line.startswith(f"<{first}> "))
    return "".join(lines).encode()


class _FirstSubjectTurtle(TurtleSerializer):
    """rdflib's Turtle serializer with one subject moved to the front."""

    def __init__(self, store: rdflib.Graph, first: URIRef) -> None:
        super().__init__(store)
        self._first = first

    def orderSubjects(self) -> list[Node]:
        subjects: list[Node] = super().orderSubjects()
        return sorted(subjects, key=lambda subject: subject != self._first)
