"""Graphs whose literals keep the lexical form they were written with, for comparing what a server
stored or served with what a client wrote.

rdflib's own parsers may rewrite typed literals into a canonical form (``...000Z`` becomes
``+00:00``, the ``Z`` of an ``xsd:date`` is dropped) unless ``rdflib.NORMALIZE_LITERALS`` is off,
which would hide exactly the changes such a comparison looks for; pyoxigraph hands over what the
document says, and the literals here are built with ``normalize=False``.
"""

from __future__ import annotations

import pyoxigraph as ox
from rdflib import BNode, Graph, Literal, URIRef
from rdflib.term import Node

XSD_STRING = "http://www.w3.org/2001/XMLSchema#string"
FORMATS = {"text/turtle": ox.RdfFormat.TURTLE, "application/n-triples": ox.RdfFormat.N_TRIPLES}


def exact_graph(body: bytes, base: str, media_type: str = "text/turtle") -> Graph:
    graph = Graph()
    nodes: dict[str, BNode] = {}

    def term(value: object) -> Node:
        if isinstance(value, ox.NamedNode):
            return URIRef(value.value)
        if isinstance(value, ox.BlankNode):
            return nodes.setdefault(value.value, BNode())
        if not isinstance(value, ox.Literal):
            raise ValueError(f"not an RDF 1.1 term: {value!r}")
        if value.language:
            return Literal(value.value, lang=value.language, normalize=False)
        if value.datatype.value == XSD_STRING:  # RDF 1.1: a simple literal is an xsd:string
            return Literal(value.value, normalize=False)
        return Literal(value.value, datatype=URIRef(value.datatype.value), normalize=False)

    for quad in ox.parse(body, format=FORMATS[media_type], base_iri=base):
        graph.add((term(quad.subject), term(quad.predicate), term(quad.object)))
    return graph


def exact_literal(lexical: str, datatype: str) -> Literal:
    return Literal(lexical, datatype=URIRef(datatype), normalize=False)
