"""N3 Patch and SPARQL Update: parsing, validation and application."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest
import rdflib
from rdflib.compare import isomorphic

import ldp.patch
from ldp.errors import BadRequest, Conflict, PodError, UnprocessableEntity, UnsupportedMediaType
from ldp.patch import Patch, parse_patch

BASE = "https://alice.example/contacts/card"

DOCUMENT = """
@prefix ex: <http://example.org/ns#> .
<#alice> ex:familyName "Garcia" ; ex:givenName "Claudia" ; ex:age 30 .
<#bob> ex:familyName "Smith" ; ex:givenName "Bob" .
<#carol> ex:familyName "Smith" .
"""

PREFIXES = "@prefix solid: <http://www.w3.org/ns/solid/terms#> .\n@prefix ex: <http://example.org/ns#> .\n"
SPARQL_PREFIXES = "PREFIX ex: <http://example.org/ns#>\n"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused update must not reach the network, and an allowed one has no reason to."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def graph_of(turtle: str) -> rdflib.Graph:
    graph = rdflib.Graph()
    graph.parse(data=turtle, format="turtle", publicID=BASE)
    return graph


def n3_patch(body: str) -> Patch:
    return parse_patch((PREFIXES + body).encode(), "text/n3", BASE)


def sparql_patch(body: str) -> Patch:
    return parse_patch((SPARQL_PREFIXES + body).encode(), "application/sparql-update", BASE)


def assert_applies(patch: Patch, expected_turtle: str) -> None:
    before = graph_of(DOCUMENT)
    original = graph_of(DOCUMENT)
    after = patch.apply(before)
    assert isomorphic(after, graph_of(expected_turtle)), after.serialize(format="turtle")
    assert isomorphic(before, original), "apply() must not modify its input"


def assert_fails(patch: Patch, error: type[PodError], message: str) -> None:
    before = graph_of(DOCUMENT)
    with pytest.raises(error) as excinfo:
        patch.apply(before)
    assert message in excinfo.value.message
    assert isomorphic(before, graph_of(DOCUMENT))


# --- media types -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/turtle", "application/json", "", "application/ld+json"])
def test_unsupported_media_type(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as excinfo:
        parse_patch(b"", content_type, BASE)
    assert "text/n3 or application/sparql-update" in excinfo.value.message


# --- N3 Patch ----------------------------------------------------------------------------------------

N3_SUCCESS = [
    pytest.param(
        """_:rename a solid:InsertDeletePatch ;
             solid:where { ?person ex:familyName "Garcia" } ;
             solid:inserts { ?person ex:givenName "Alex" } ;
             solid:deletes { ?person ex:givenName "Claudia" } .""",
        DOCUMENT.replace('"Claudia"', '"Alex"'),
        False,
        id="where-insert-delete",
    ),
    pytest.param(
        """<#patch> a solid:InsertDeletePatch ; solid:inserts { <#dave> ex:familyName "Jones" } .""",
        DOCUMENT + '<#dave> <http://example.org/ns#familyName> "Jones" .',
        True,
        id="insert-only",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:deletes { <#carol> ex:familyName "Smith" } .""",
        DOCUMENT.replace('<#carol> ex:familyName "Smith" .', ""),
        False,
        id="delete-only",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ;
             solid:where { ?p ex:familyName "Smith" ; ex:givenName "Bob" } ;
             solid:inserts { ?p ex:nick "bobby" } .""",
        DOCUMENT + '<#bob> <http://example.org/ns#nick> "bobby" .',
        False,
        id="join-narrows-to-one-match",
    ),
    pytest.param(
        """_:p a solid:Patch ;
             solid:where { <#alice> ex:age ?age } ; solid:inserts { <#alice> ex:oldAge ?age } .""",
        DOCUMENT + "<#alice> <http://example.org/ns#oldAge> 30 .",
        False,
        id="solid-Patch-type-and-literal-binding",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:where { } ; solid:inserts { } ; solid:deletes { } .""",
        DOCUMENT,
        True,
        id="empty-formulae",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ;
             solid:inserts { <#alice> ex:givenName "Claudia" } ;
             solid:deletes { <#alice> ex:givenName "Claudia" } .""",
        DOCUMENT,
        False,
        id="delete-then-insert-same-triple",
    ),
]


@pytest.mark.parametrize(("body", "expected", "inserts_only"), N3_SUCCESS)
def test_n3_patch_applies(body: str, expected: str, inserts_only: bool) -> None:
    patch = n3_patch(body)
    assert patch.inserts_only is inserts_only
    assert_applies(patch, expected)


def test_n3_patch_on_missing_resource_starts_from_empty_graph() -> None:
    patch = n3_patch("_:p a solid:InsertDeletePatch ; solid:inserts { <#a> ex:b ex:c } .")
    assert len(patch.apply(rdflib.Graph())) == 1


N3_CONFLICTS = [
    pytest.param(
        """_:p a solid:InsertDeletePatch ;
             solid:where { ?x ex:familyName "Nobody" } ; solid:inserts { ?x ex:a 1 } .""",
        "do not match",
        id="no-match",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ;
             solid:where { ?x ex:familyName "Smith" } ; solid:inserts { ?x ex:a 1 } .""",
        "more than one way",
        id="multiple-matches",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:deletes { <#alice> ex:givenName "Zoe" } .""",
        "deletes a triple that is not in the target resource",
        id="delete-missing",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ;
             solid:where { ?x ex:familyName "Garcia" } ;
             solid:deletes { ?x ex:givenName "Claudia" . ?x ex:nick "missing" } ;
             solid:inserts { ?x ex:givenName "Alex" } .""",
        "deletes a triple that is not in the target resource",
        id="delete-partly-missing-changes-nothing",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ;
             solid:where { <#alice> ex:age ?a } ; solid:inserts { ?a ex:b 1 } .""",
        "cannot be the subject",
        id="literal-bound-into-subject",
    ),
]


@pytest.mark.parametrize(("body", "message"), N3_CONFLICTS)
def test_n3_patch_conflicts(body: str, message: str) -> None:
    assert_fails(n3_patch(body), Conflict, message)


N3_MALFORMED = [
    pytest.param("""_:p a solid:InsertDeletePatch ; solid:inserts { <#a> ex:b } .""", "line 3", id="syntax"),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:inserts { <#a> ex:b <#c> """, "Invalid N3 Patch", id="eof"
    ),
    pytest.param("""<#a> ex:b <#c> .""", "no patch resource found", id="no-patch-resource"),
    pytest.param(
        """_:p a solid:InsertDeletePatch . _:q a solid:InsertDeletePatch .""",
        "exactly one patch resource",
        id="two-patch-resources",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch . _:q solid:inserts { <#a> ex:b 1 } .""",
        "exactly one patch resource",
        id="clause-on-another-subject",
    ),
    pytest.param("""_:p solid:inserts { <#a> ex:b 1 } .""", "rdf:type solid:InsertDeletePatch", id="untyped"),
    pytest.param(
        """?p a solid:InsertDeletePatch ; solid:inserts { <#a> ex:b 1 } .""",
        "must be an IRI or a blank node",
        id="variable-as-patch-resource",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:inserts { <#a> ex:b 1 }, { <#a> ex:b 2 } .""",
        "2 solid:inserts clauses",
        id="two-inserts",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:where { ?a ex:b 1 }, { ?a ex:b 2 } .""",
        "2 solid:where clauses",
        id="two-wheres",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:deletes <#x> .""", "must be a formula", id="not-a-formula"
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:inserts { <#a> ex:b { <#c> ex:d <#e> } } .""",
        "nested formulae",
        id="nested-formula",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:inserts { ?x ex:b 1 } .""",
        "must occur in solid:where: ?x",
        id="unbound-insert-variable",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:where { ?x ex:a 1 } ; solid:deletes { ?y ex:b 1 } .""",
        "must occur in solid:where: ?y",
        id="unbound-delete-variable",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:where { _:b ex:familyName "Garcia" } .""",
        "blank nodes are not allowed in solid:where",
        id="blank-node-in-where",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:deletes { <#alice> ex:knows [] } .""",
        "blank nodes are not allowed in solid:deletes",
        id="blank-node-in-deletes",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:inserts { <#alice> ex:knows [ ex:name "x" ] } .""",
        "blank nodes are not allowed in solid:inserts",
        id="blank-node-in-inserts",
    ),
    pytest.param(
        """_:p a solid:InsertDeletePatch ; solid:inserts { "lit" ex:b 1 } .""",
        "cannot be the subject",
        id="literal-subject",
    ),
]


@pytest.mark.parametrize(("body", "message"), N3_MALFORMED)
def test_n3_patch_malformed(body: str, message: str) -> None:
    with pytest.raises(UnprocessableEntity) as excinfo:
        n3_patch(body)
    assert message in excinfo.value.message
    assert excinfo.value.message.startswith("Invalid N3 Patch: ")


def test_n3_patch_invalid_utf8() -> None:
    with pytest.raises(UnprocessableEntity, match="UTF-8"):
        parse_patch(b"\xff", "text/n3", BASE)


# --- SPARQL Update -----------------------------------------------------------------------------------

SPARQL_SUCCESS = [
    pytest.param(
        'INSERT DATA { <#dave> ex:familyName "Jones" }',
        DOCUMENT + '<#dave> <http://example.org/ns#familyName> "Jones" .',
        True,
        id="insert-data",
    ),
    pytest.param(
        'DELETE DATA { <#carol> ex:familyName "Smith" }',
        DOCUMENT.replace('<#carol> ex:familyName "Smith" .', ""),
        False,
        id="delete-data",
    ),
    pytest.param(
        'DELETE DATA { <#carol> ex:familyName "Nobody" }',
        DOCUMENT,
        False,
        id="delete-data-missing-is-a-no-op",
    ),
    pytest.param(
        'DELETE DATA { <#alice> ex:givenName "Claudia" } ; INSERT DATA { <#alice> ex:givenName "Alex" }',
        DOCUMENT.replace('"Claudia"', '"Alex"'),
        False,
        id="delete-data-then-insert-data",
    ),
    pytest.param(
        'DELETE { ?p ex:givenName ?n } INSERT { ?p ex:givenName "Alex" } '
        'WHERE { ?p ex:familyName "Garcia" ; ex:givenName ?n }',
        DOCUMENT.replace('"Claudia"', '"Alex"'),
        False,
        id="delete-insert-where",
    ),
    pytest.param(
        'INSERT { ?p ex:nick ?nick } WHERE { ?p ex:familyName "Smith" OPTIONAL { ?p ex:givenName ?g } '
        'FILTER(!BOUND(?g)) BIND(CONCAT("nick-", STR(?p)) AS ?nick) }',
        DOCUMENT + '<#carol> <http://example.org/ns#nick> "nick-https://alice.example/contacts/card#carol" .',
        False,
        id="insert-where-with-filter-and-bind",
    ),
    pytest.param(
        'INSERT { ?s ex:smith true } WHERE { ?s ex:familyName ?f FILTER EXISTS { ?s ex:givenName "Bob" } }',
        DOCUMENT + "<#bob> <http://example.org/ns#smith> true .",
        False,
        id="filter-exists",
    ),
    pytest.param(
        "DELETE WHERE { <#bob> ?p ?o }",
        DOCUMENT.replace('<#bob> ex:familyName "Smith" ; ex:givenName "Bob" .', ""),
        False,
        id="delete-where",
    ),
    pytest.param(
        "INSERT { ?a ex:b 1 } WHERE { <#alice> ex:age ?a }", DOCUMENT, False, id="literal-subject-skipped"
    ),
    pytest.param("", DOCUMENT, True, id="empty-request"),
]


@pytest.mark.parametrize(("body", "expected", "inserts_only"), SPARQL_SUCCESS)
def test_sparql_update_applies(body: str, expected: str, inserts_only: bool) -> None:
    patch = sparql_patch(body)
    assert patch.inserts_only is inserts_only
    assert_applies(patch, expected)


def test_sparql_insert_data_blank_nodes_are_fresh_each_time() -> None:
    patch = sparql_patch('INSERT DATA { <#alice> ex:knows _:x . _:x ex:name "X" }')
    once = patch.apply(graph_of(DOCUMENT))
    twice = patch.apply(once)
    assert len(twice) == len(graph_of(DOCUMENT)) + 4


SPARQL_REFUSED = [
    pytest.param(
        "LOAD <https://evil.example/data.ttl>", "SPARQL Update operation LOAD is not allowed", id="load"
    ),
    pytest.param(
        "LOAD <https://evil.example/data.ttl> INTO GRAPH <https://evil.example/g>",
        "SPARQL Update operation LOAD is not allowed",
        id="load-into",
    ),
    pytest.param(
        "INSERT DATA { <#a> ex:b 1 } ; LOAD <https://evil.example/data.ttl>",
        "SPARQL Update operation LOAD is not allowed",
        id="load-after-allowed-operation",
    ),
    pytest.param("CLEAR DEFAULT", "SPARQL Update operation CLEAR is not allowed", id="clear"),
    pytest.param("CLEAR ALL", "SPARQL Update operation CLEAR is not allowed", id="clear-all"),
    pytest.param("DROP GRAPH <https://g.example/>", "SPARQL Update operation DROP is not allowed", id="drop"),
    pytest.param("DROP DEFAULT", "SPARQL Update operation DROP is not allowed", id="drop-default"),
    pytest.param(
        "CREATE GRAPH <https://g.example/>", "SPARQL Update operation CREATE is not allowed", id="create"
    ),
    pytest.param(
        "ADD DEFAULT TO <https://g.example/>", "SPARQL Update operation ADD is not allowed", id="add"
    ),
    pytest.param(
        "MOVE <https://g.example/> TO DEFAULT", "SPARQL Update operation MOVE is not allowed", id="move"
    ),
    pytest.param(
        "COPY DEFAULT TO <https://g.example/>", "SPARQL Update operation COPY is not allowed", id="copy"
    ),
    pytest.param(
        "INSERT { ?s ex:b ?o } WHERE { SERVICE <https://evil.example/sparql> { ?s ex:b ?o } }",
        "SPARQL SERVICE is not allowed",
        id="service",
    ),
    pytest.param(
        "INSERT { ?s ex:b ?o } WHERE { ?s ex:familyName ?f "
        "OPTIONAL { SERVICE SILENT <https://evil.example/sparql> { ?s ex:b ?o } } }",
        "SPARQL SERVICE is not allowed",
        id="service-silent-nested-in-optional",
    ),
    pytest.param(
        "INSERT { ?s ex:b 1 } WHERE { ?s ex:familyName ?f "
        "FILTER EXISTS { SERVICE <https://evil.example/sparql> { ?s ex:b ?o } } }",
        "SPARQL SERVICE is not allowed",
        id="service-nested-in-exists",
    ),
    pytest.param(
        "INSERT { ?s ex:b 1 } WHERE { "
        "{ SELECT ?s WHERE { SERVICE <https://evil.example/sparql> { ?s ex:b ?o } } } }",
        "SPARQL SERVICE is not allowed",
        id="service-nested-in-subquery",
    ),
    pytest.param(
        "INSERT DATA { GRAPH <https://g.example/> { <#a> ex:b 1 } }",
        "SPARQL GRAPH is not allowed",
        id="graph-data",
    ),
    pytest.param(
        "INSERT { ?s ex:b 1 } WHERE { GRAPH ?g { ?s ex:b ?o } }",
        "SPARQL GRAPH is not allowed",
        id="graph-where",
    ),
    pytest.param(
        "INSERT { GRAPH <https://g.example/> { ?s ex:b 1 } } WHERE { ?s ex:familyName ?o }",
        "SPARQL GRAPH is not allowed",
        id="graph-template",
    ),
    pytest.param(
        "DELETE WHERE { GRAPH <https://g.example/> { ?s ?p ?o } }",
        "SPARQL GRAPH is not allowed",
        id="graph-delete-where",
    ),
    pytest.param(
        "WITH <https://g.example/> DELETE { ?s ex:b ?o } WHERE { ?s ex:b ?o }",
        "SPARQL WITH is not allowed",
        id="with",
    ),
    pytest.param(
        "DELETE { ?s ex:b ?o } USING <https://g.example/> WHERE { ?s ex:b ?o }",
        "SPARQL USING is not allowed",
        id="using",
    ),
    pytest.param(
        "DELETE { ?s ex:b ?o } USING NAMED <https://g.example/> WHERE { ?s ex:b ?o }",
        "SPARQL USING is not allowed",
        id="using-named",
    ),
    pytest.param(
        "INSERT { ?s ex:b ?x } WHERE { ?s ex:familyName ?f BIND(<https://evil.example/fn>(?f) AS ?x) }",
        "SPARQL function <https://evil.example/fn> is not allowed",
        id="extension-function",
    ),
    pytest.param(
        'INSERT { ?s ex:b 1 } WHERE { ?s ex:familyName ?f FILTER(REGEX(?f, "(a+)+$")) }',
        "SPARQL REGEX is not allowed",
        id="regex",
    ),
    pytest.param(
        "DELETE DATA { _:x ex:b 1 }", "blank nodes are not allowed in DELETE DATA", id="bnode-delete-data"
    ),
    pytest.param("INSERT DATA { <#a> ex:b }", "Invalid SPARQL Update:", id="syntax-error"),
    pytest.param("INSERT DATA { nope:a nope:b nope:c }", "Unknown namespace prefix", id="undeclared-prefix"),
    pytest.param("SELECT * WHERE { ?s ?p ?o }", "Invalid SPARQL Update:", id="query-not-update"),
]


@pytest.mark.parametrize(("body", "message"), SPARQL_REFUSED)
def test_sparql_update_refused(body: str, message: str) -> None:
    with pytest.raises(BadRequest) as excinfo:
        sparql_patch(body)
    assert message in excinfo.value.message
    assert "\n" not in excinfo.value.message


def test_sparql_invalid_utf8() -> None:
    with pytest.raises(BadRequest, match="UTF-8"):
        parse_patch(b"\xff", "application/sparql-update", BASE)


def test_sparql_evaluation_error_changes_nothing() -> None:
    patch = sparql_patch(
        "INSERT DATA { <#x> ex:y 1 } ; INSERT { ?s ex:total ?t } WHERE "
        "{ { SELECT ?s (SUM(?n) AS ?t) WHERE { ?s ex:familyName ?n } GROUP BY ?s } }"
    )
    assert_fails(patch, BadRequest, "SPARQL Update could not be evaluated")


def test_n3_patch_join_work_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldp.patch, "_MAX_JOIN_STEPS", 50)
    graph = rdflib.Graph()
    for i in range(100):
        graph.add(
            (rdflib.URIRef(f"{BASE}#s{i}"), rdflib.URIRef("http://example.org/ns#p"), rdflib.Literal(i))
        )
    patch = n3_patch(
        """_:p a solid:InsertDeletePatch ;
             solid:where { ?a ex:p ?x . ?b ex:p ?y . ?x ?y ?z } ;
             solid:inserts { ?a ex:q ?b } ."""
    )
    with pytest.raises(UnprocessableEntity, match="too unspecific"):
        patch.apply(graph)
