"""PATCH bodies for RDF resources: N3 Patch and an allow-listed subset of SPARQL Update.

Solid Protocol §5.3.1: "Servers MUST accept a PATCH request with an N3 Patch body when the target
of the request is an RDF document." SPARQL Update is what most deployed clients send
(``@inrupt/solid-client`` uses ``INSERT DATA`` / ``DELETE DATA``), so it is accepted too, limited to
operations on the target resource's own graph.

A patch is parsed and checked completely by :func:`parse_patch` before anything runs; then
:meth:`Patch.apply` computes the new graph from a copy, so a failing patch changes nothing.

Error statuses:

- 415 for a body that is neither ``text/n3`` nor ``application/sparql-update``;
- 422 for a malformed N3 Patch, syntax errors included;
- 400 for malformed or refused SPARQL Update;
- 409 when an N3 Patch does not fit the resource's current state.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import rdflib
from rdflib import BNode, URIRef
from rdflib.graph import QuotedGraph
from rdflib.namespace import RDF, XSD
from rdflib.paths import Path
from rdflib.plugins.sparql.algebra import translateUpdate
from rdflib.plugins.sparql.evaluate import evalBGP, evalPart
from rdflib.plugins.sparql.parser import parseUpdate
from rdflib.plugins.sparql.parserutils import CompValue
from rdflib.plugins.sparql.sparql import QueryContext
from rdflib.term import Node, Variable

from ldp.errors import BadRequest, Conflict, UnprocessableEntity, UnsupportedMediaType
from ldp.rdf import new_graph, one_line, term_problem
from ldp.vocab import SOLID

__all__ = ["N3", "PATCH_MEDIA_TYPES", "SPARQL_UPDATE", "Patch", "parse_patch"]

N3 = "text/n3"
SPARQL_UPDATE = "application/sparql-update"
PATCH_MEDIA_TYPES: tuple[str, ...] = (N3, SPARQL_UPDATE)

Triple = tuple[Node, Node, Node]
_POSITIONS = ("subject", "predicate", "object")


@dataclass(frozen=True)
class Patch:
    """A parsed, validated patch, ready to apply to the target resource's graph.

    ``inserts_only`` is true when the patch only adds triples: no deletions and no conditions
    (N3 ``solid:where``, SPARQL ``WHERE``). Solid Protocol §5.3.1: "When ?conditions is non-empty,
    servers MUST treat the request as a Read operation. When ?insertions is non-empty, servers MUST
    (also) treat the request as an Append operation. When ?deletions is non-empty, servers MUST
    treat the request as a Read and Write operation." So an insert-only patch needs ``acl:Append``
    and anything else ``acl:Read`` and ``acl:Write``.
    """

    inserts_only: bool
    media_type: str
    # N3 Patch: the three formulae of the patch resource, variables included.
    where: tuple[Triple, ...] = ()
    inserts: tuple[Triple, ...] = ()
    deletes: tuple[Triple, ...] = ()
    # SPARQL Update: the validated operations (rdflib algebra), in request order.
    operations: tuple[CompValue, ...] = field(default=(), compare=False, repr=False)

    def apply(self, graph: rdflib.Graph) -> rdflib.Graph:
        """Return the patched graph. ``graph`` itself is never modified.

        Raises ``Conflict`` when an N3 Patch does not fit the current state.
        """
        result = new_graph()
        for prefix, namespace in graph.namespaces():
            result.bind(prefix, namespace, override=True, replace=True)
        result += graph
        if self.media_type == N3:
            _apply_n3(self, result)
        else:
            _apply_sparql(self.operations, result)
        return result


def parse_patch(body: bytes, content_type: str, base: str) -> Patch:
    """Parse and validate a PATCH body; ``content_type`` is normalised, ``base`` the target's URL.

    Raises ``UnsupportedMediaType`` for other media types, ``UnprocessableEntity`` for a malformed
    N3 Patch and ``BadRequest`` for malformed or refused SPARQL Update.
    """
    if content_type == N3:
        return _parse_n3(body, base)
    if content_type == SPARQL_UPDATE:
        return _parse_sparql(body, base)
    raise UnsupportedMediaType(
        f"Unsupported PATCH media type {content_type or '(none)'}; use {' or '.join(PATCH_MEDIA_TYPES)}"
    )


# ---------------------------------------------------------------------------------------------------
# N3 Patch (Solid Protocol §5.3.1)


def _malformed(detail: str) -> UnprocessableEntity:
    return UnprocessableEntity(one_line(f"Invalid N3 Patch: {detail}"))


_PATCH_TYPES = (SOLID.InsertDeletePatch, SOLID.Patch)
_CLAUSES = {SOLID.where: "where", SOLID.inserts: "inserts", SOLID.deletes: "deletes"}


def _parse_n3(body: bytes, base: str) -> Patch:
    """Parse an N3 Patch and check the structure Solid Protocol §5.3.1 requires.

    "Servers MUST respond with a 422 status code [RFC4918] if a patch document does not satisfy
    all of the above constraints", which include:

    - "The patch document MUST contain exactly one patch resource, identified by one or more of the
      triple patterns described above, which all share the same ?patch subject."
    - "A patch resource MUST contain a triple ?patch rdf:type solid:InsertDeletePatch."
    - at most one ``solid:where``, ``solid:inserts`` and ``solid:deletes`` each, and "When present,
      ?deletions, ?insertions, and ?conditions MUST be non-nested cited formulae [N3] consisting
      only of triples and/or triple patterns [SPARQL11-QUERY]. When not present, they are presumed
      to be the empty formula {}."
    - "The ?insertions and ?deletions formulae MUST NOT contain variables that do not occur in
      the ?conditions formula."
    - "The ?insertions and ?deletions formulae MUST NOT contain blank nodes."

    Beyond the letter of the spec: blank nodes are refused in ``solid:where`` too (a blank node in
    the patch is never the same node as one in the document, so the condition could not match),
    syntax errors are 422 as well (a body that is
    not N3 fails the first constraint, being an N3 document), and ``solid:Patch`` is accepted as
    the type besides ``solid:InsertDeletePatch``.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _malformed(f"body is not valid UTF-8 (byte {exc.start})") from None
    document = new_graph()
    try:
        document.parse(data=text, format="n3", publicID=base)
    except Exception as exc:  # rdflib's parsers raise many types; all mean the body is bad
        raise _malformed(_syntax_message(exc)) from None

    patches = {s for s, _, o in document.triples((None, RDF.type, None)) if o in _PATCH_TYPES}
    patches.update(s for s, p, _ in document if p in _CLAUSES)
    if not patches:
        raise _malformed("no patch resource found; expected a subject with rdf:type solid:InsertDeletePatch")
    if len(patches) > 1:
        raise _malformed(f"exactly one patch resource is allowed; found {len(patches)}")
    (patch,) = patches
    if not isinstance(patch, URIRef | BNode):
        # "A patch resource MUST be identified by a URI or blank node"
        raise _malformed(f"the patch resource must be an IRI or a blank node, not {_show(patch)}")
    if not any((patch, RDF.type, t) in document for t in _PATCH_TYPES):
        raise _malformed("the patch resource must have rdf:type solid:InsertDeletePatch")

    formulae: dict[str, tuple[Triple, ...]] = {"where": (), "inserts": (), "deletes": ()}
    for predicate, name in _CLAUSES.items():
        objects = list(document.objects(patch, predicate))
        if len(objects) > 1:
            raise _malformed(
                f"the patch resource has {len(objects)} solid:{name} clauses; at most one is allowed"
            )
        if objects:
            formula = objects[0]
            if not isinstance(formula, QuotedGraph):
                raise _malformed(f"solid:{name} must be a formula {{ ... }}, not {_show(formula)}")
            formulae[name] = tuple(formula.triples((None, None, None)))

    where, inserts, deletes = formulae["where"], formulae["inserts"], formulae["deletes"]
    for name, triples in formulae.items():
        _check_formula(name, triples)
    for name, triples in formulae.items():
        if any(isinstance(term, BNode) for triple in triples for term in triple):
            raise _malformed(f"blank nodes are not allowed in solid:{name}")
    bound = {term for triple in where for term in triple if isinstance(term, Variable)}
    for name in ("inserts", "deletes"):
        unbound = sorted(
            {term for triple in formulae[name] for term in triple if isinstance(term, Variable)} - bound
        )
        if unbound:
            names = ", ".join(f"?{v}" for v in unbound)
            raise _malformed(f"variables in solid:{name} must occur in solid:where: {names}")

    return Patch(
        inserts_only=not where and not deletes,
        media_type=N3,
        where=where,
        inserts=inserts,
        deletes=deletes,
    )


def _syntax_message(exc: Exception) -> str:
    if isinstance(exc, IndexError):  # rdflib's N3 parser runs off the end of a truncated input
        return "unexpected end of input"
    why = getattr(exc, "_why", None)
    lines = getattr(exc, "lines", None)
    if isinstance(why, str) and isinstance(lines, int):
        return f"line {lines + 1}: {why}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_formula(name: str, triples: Iterable[Triple]) -> None:
    """Each statement must be a triple or triple pattern: RDF terms and variables, no formulae."""
    for triple in triples:
        for position, term in zip(_POSITIONS, triple, strict=True):
            if isinstance(term, QuotedGraph):
                raise _malformed(f"nested formulae are not allowed in solid:{name}")
            if isinstance(term, Variable):
                continue
            problem = term_problem(term, position)
            if problem is not None:
                raise _malformed(f"in solid:{name}: {problem}")


def _show(term: object) -> str:
    return term.n3() if isinstance(term, Node) and not isinstance(term, QuotedGraph) else "a formula"


def _apply_n3(patch: Patch, graph: rdflib.Graph) -> None:
    """Solid Protocol §5.3.1, processing a patch resource:

    2. "If ?conditions is non-empty, find all (possibly empty) variable mappings such that all of
       the resulting triples occur in the dataset."
    3. "If no such mapping exists, or if multiple mappings exist, the server MUST respond with a
       409 status code."
    4. "The resulting variable mapping is propagated to the ?deletions and ?insertions formulae to
       obtain two sets of resulting triples."
    5. "If the set of triples resulting from ?deletions is non-empty and the dataset does not
       contain all of these triples, the server MUST respond with a 409 status code."
    6. "The triples resulting from ?deletions are to be removed from the RDF dataset."
    7. "The triples resulting from ?insertions are to be added to the RDF dataset[.]" (Blank nodes,
       which this step would mint afresh, cannot occur: the formulae are free of them.)
    """
    mappings = _solutions(graph, patch.where, limit=2)
    if not mappings:
        raise Conflict("The N3 Patch conditions (solid:where) do not match the target resource")
    if len(mappings) > 1:
        raise Conflict(
            "The N3 Patch conditions (solid:where) match the target resource in more than one way; "
            "they must identify exactly one set of variable bindings"
        )
    (mapping,) = mappings

    deletes = [_instantiate(t, mapping) for t in patch.deletes]
    for triple in deletes:
        if triple not in graph:
            raise Conflict(
                one_line(
                    "The N3 Patch deletes a triple that is not in the target resource: "
                    + " ".join(term.n3() for term in triple)
                )
            )
    inserts = [_instantiate(t, mapping) for t in patch.inserts]
    for triple in inserts:
        for position, term in zip(_POSITIONS, triple, strict=True):
            problem = term_problem(term, position)
            if problem is not None:
                # Only a binding can cause this (the formula itself was checked): a literal matched
                # by a variable that the insertion uses as a subject, for instance.
                raise Conflict(one_line(f"The N3 Patch insertion cannot be applied: {problem}"))
    for triple in deletes:
        graph.remove(triple)
    graph += inserts


def _instantiate(triple: Triple, mapping: Mapping[Variable, Node]) -> Triple:
    s, p, o = (mapping[term] if isinstance(term, Variable) else term for term in triple)
    return (s, p, o)


# Candidate matches examined while joining solid:where before giving up: a few unconstrained patterns
# over a large document would otherwise form a cross product.
_MAX_JOIN_STEPS = 200_000


def _solutions(graph: rdflib.Graph, patterns: tuple[Triple, ...], limit: int) -> list[dict[Variable, Node]]:
    """Up to ``limit`` distinct variable mappings under which every pattern is a triple of ``graph``.

    A depth-first join; at each step the pattern with the most fixed positions goes next, so
    constant patterns act as cheap membership checks and variables bind as early as possible.
    Two different matches always differ in some binding, so the mappings found are distinct.
    Raises ``UnprocessableEntity`` when the join grows beyond a fixed amount of work.
    """
    found: list[dict[Variable, Node]] = []
    stack: list[tuple[dict[Variable, Node], tuple[Triple, ...]]] = [({}, patterns)]
    steps = 0
    while stack:
        binding, remaining = stack.pop()
        if not remaining:
            found.append(binding)
            if len(found) >= limit:
                break
            continue
        index = max(range(len(remaining)), key=lambda i: _fixed_positions(remaining[i], binding))
        s, p, o = (binding.get(t, t) if isinstance(t, Variable) else t for t in remaining[index])
        pattern = (s, p, o)
        rest = remaining[:index] + remaining[index + 1 :]
        query = (_wildcard(s), _wildcard(p), _wildcard(o))
        for match in graph.triples(query):
            steps += 1
            if steps > _MAX_JOIN_STEPS:
                raise UnprocessableEntity(
                    "The N3 Patch conditions (solid:where) are too unspecific to evaluate; "
                    "use fewer unbound variables"
                )
            extended = _extend(binding, pattern, match)
            if extended is not None:
                stack.append((extended, rest))
    return found


def _wildcard(term: Node) -> Node | None:
    return None if isinstance(term, Variable) else term


def _fixed_positions(pattern: Triple, binding: Mapping[Variable, Node]) -> int:
    return sum(1 for t in pattern if not isinstance(t, Variable) or t in binding)


def _extend(
    binding: dict[Variable, Node], pattern: tuple[Node, ...], match: Triple
) -> dict[Variable, Node] | None:
    extended = binding
    for term, value in zip(pattern, match, strict=True):
        if isinstance(term, Variable):
            if extended is binding:
                extended = dict(binding)
            previous = extended.setdefault(term, value)
            if previous != value:  # the same variable twice in one pattern, e.g. ?x ?p ?x
                return None
    return extended


# ---------------------------------------------------------------------------------------------------
# SPARQL Update


_OWN_GRAPH_ONLY = "a PATCH applies to the target resource's own graph only"


def _refused(feature: str, reason: str = _OWN_GRAPH_ONLY) -> BadRequest:
    return BadRequest(f"{feature} is not allowed: {reason}")


# Operations that touch other graphs or fetch documents; named in refusals the way SPARQL spells them.
_FORBIDDEN_OPERATIONS = {
    "Load": "LOAD",
    "Clear": "CLEAR",
    "Drop": "DROP",
    "Create": "CREATE",
    "Add": "ADD",
    "Move": "MOVE",
    "Copy": "COPY",
}
_ALLOWED_OPERATIONS = frozenset({"InsertData", "DeleteData", "DeleteWhere", "Modify"})

# Every algebra node the WHERE clause of an allowed update may contain. Anything else, including
# whatever a future rdflib may add, is refused rather than evaluated.
_ALLOWED_NODES = frozenset(
    {
        # graph patterns and solution modifiers
        "BGP",
        "Join",
        "LeftJoin",
        "Filter",
        "Union",
        "Minus",
        "Extend",
        "ToMultiSet",
        "values",
        "Project",
        "Distinct",
        "Reduced",
        "Slice",
        "OrderBy",
        "OrderCondition",
        "Group",
        "AggregateJoin",
        # aggregates
        "Aggregate_Count",
        "Aggregate_Sum",
        "Aggregate_Min",
        "Aggregate_Max",
        "Aggregate_Avg",
        "Aggregate_Sample",
        "Aggregate_GroupConcat",
        # expressions
        "ConditionalOrExpression",
        "ConditionalAndExpression",
        "RelationalExpression",
        "AdditiveExpression",
        "MultiplicativeExpression",
        "UnaryNot",
        "UnaryPlus",
        "UnaryMinus",
        "TrueFilter",
        "Function",  # only XSD casts, checked below
        # built-in functions: all compute on their arguments only
        "Builtin_ABS",
        "Builtin_BNODE",
        "Builtin_BOUND",
        "Builtin_CEIL",
        "Builtin_COALESCE",
        "Builtin_CONCAT",
        "Builtin_CONTAINS",
        "Builtin_DATATYPE",
        "Builtin_DAY",
        "Builtin_ENCODE_FOR_URI",
        "Builtin_EXISTS",
        "Builtin_FLOOR",
        "Builtin_HOURS",
        "Builtin_IF",
        "Builtin_IRI",
        "Builtin_LANG",
        "Builtin_LANGMATCHES",
        "Builtin_LCASE",
        "Builtin_MINUTES",
        "Builtin_MONTH",
        "Builtin_NOTEXISTS",
        "Builtin_NOW",
        "Builtin_RAND",
        "Builtin_ROUND",
        "Builtin_SECONDS",
        "Builtin_STR",
        "Builtin_STRAFTER",
        "Builtin_STRBEFORE",
        "Builtin_STRDT",
        "Builtin_STRENDS",
        "Builtin_STRLANG",
        "Builtin_STRLEN",
        "Builtin_STRSTARTS",
        "Builtin_STRUUID",
        "Builtin_SUBSTR",
        "Builtin_TIMEZONE",
        "Builtin_TZ",
        "Builtin_UCASE",
        "Builtin_URI",
        "Builtin_UUID",
        "Builtin_YEAR",
        "Builtin_isBLANK",
        "Builtin_isIRI",
        "Builtin_isLITERAL",
        "Builtin_isNUMERIC",
        "Builtin_isURI",
        "Builtin_sameTerm",
    }
)
# Nodes refused wherever they appear, with the reason given to the client.
_UNBOUNDED_REGEX = "patterns from requests would run without a time limit"
_NAMED_REFUSALS = {
    # Python's backtracking regular expressions have no time limit: one crafted pattern could keep
    # a worker busy indefinitely.
    "Builtin_REGEX": ("SPARQL REGEX", _UNBOUNDED_REGEX),
    "Builtin_REPLACE": ("SPARQL REPLACE", _UNBOUNDED_REGEX),
    "ServiceGraphPattern": ("SPARQL SERVICE", "the server does not query other endpoints"),
    "Graph": ("SPARQL GRAPH", _OWN_GRAPH_ONLY),
    "GraphGraphPattern": ("SPARQL GRAPH", _OWN_GRAPH_ONLY),
}
_DATA_KEYWORDS = {"InsertData": "INSERT DATA", "DeleteData": "DELETE DATA", "DeleteWhere": "DELETE WHERE"}
_XSD = str(XSD)
# CompValue instance attributes that are not part of the tree: its name, the evaluation function
# rdflib's grammar attached to an expression node, and the query prologue (prefixes, base).
_INTERNAL_ATTRIBUTES = frozenset({"name", "_evalfn", "prologue"})
# Plain values that may appear in algebra nodes (operators, limits, flags).
_SCALARS = (str, int, float, bool, type(None))


def _parse_sparql(body: bytes, base: str) -> Patch:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"Invalid SPARQL Update: body is not valid UTF-8 (byte {exc.start})") from None
    try:
        parsed = parseUpdate(text)
    except Exception as exc:  # pyparsing's ParseException, or recursion on absurd nesting
        raise BadRequest(one_line(f"Invalid SPARQL Update: {_syntax_message(exc)}")) from None
    # Refuse forbidden operations on the parse tree already, before any further processing.
    for request in parsed.request or ():
        _check_operation_name(request.name)
    try:
        update = translateUpdate(parsed, base=base)
    except Exception as exc:  # e.g. an undeclared prefix
        raise BadRequest(one_line(f"Invalid SPARQL Update: {exc}")) from None
    operations = tuple(update.algebra) if update else ()
    for operation in operations:
        _check_operation(operation)
    return Patch(
        inserts_only=all(op.name == "InsertData" for op in operations),
        media_type=SPARQL_UPDATE,
        operations=operations,
    )


def _check_operation_name(name: str) -> None:
    if name in _FORBIDDEN_OPERATIONS:
        raise BadRequest(f"SPARQL Update operation {_FORBIDDEN_OPERATIONS[name]} is not allowed")
    if name not in _ALLOWED_OPERATIONS:
        raise BadRequest(f"SPARQL Update operation {name} is not allowed")


def _check_operation(op: CompValue) -> None:
    """Validate one translated operation completely; nothing is evaluated before all pass."""
    _check_operation_name(op.name)
    if op.name == "Modify":
        if op.withClause is not None:
            raise _refused("SPARQL WITH")
        if op.using:
            raise _refused("SPARQL USING")
        clauses = [("DELETE", op.delete), ("INSERT", op.insert)]
    else:
        clauses = [(_DATA_KEYWORDS[op.name], op)]
    for keyword, clause in clauses:
        if clause is None:
            continue
        if clause.quads and any(clause.quads.values()):
            raise _refused("SPARQL GRAPH")
        _check_template(keyword, clause.triples or ())
    if op.name == "Modify":
        _check_node(op.where)


def _check_template(keyword: str, triples: Iterable[Triple]) -> None:
    # SPARQL 1.1 Update §3.1.2 and grammar notes: "blank node syntax is not allowed in DELETE WHERE,
    # the DeleteClause for DELETE, nor in DELETE DATA".
    for triple in triples:
        for position, term in zip(_POSITIONS, triple, strict=True):
            if isinstance(term, Variable):
                continue
            if isinstance(term, BNode) and keyword.startswith("DELETE"):
                raise BadRequest(f"Invalid SPARQL Update: blank nodes are not allowed in {keyword}")
            problem = term_problem(term, position)
            if problem is not None:
                raise BadRequest(one_line(f"Invalid SPARQL Update: in {keyword}: {problem}"))


def _check_node(value: Any, evaluated: bool = True) -> None:
    """Walk an algebra tree and refuse any node that is not explicitly allowed.

    rdflib keeps some translated parts as instance attributes that shadow the parse-tree entry of
    the same name (``EXISTS { ... }`` stores its translated pattern as ``.graph`` while the item
    ``graph`` keeps the raw parse tree), and evaluation reads the attribute. So the allow-list is
    applied to what evaluation reads; the shadowed parse trees are still searched for SERVICE and
    GRAPH, so those are refused wherever they are written.
    """
    if isinstance(value, CompValue):
        name = value.name
        if name in _NAMED_REFUSALS:
            raise _refused(*_NAMED_REFUSALS[name])
        if evaluated:
            if name not in _ALLOWED_NODES:
                raise BadRequest(f"SPARQL Update feature {name} is not allowed")
            if name == "Function" and not str(value.iri).startswith(_XSD):
                raise BadRequest(one_line(f"SPARQL function <{value.iri}> is not allowed"))
        attributes = {k: v for k, v in vars(value).items() if k not in _INTERNAL_ATTRIBUTES}
        for key, child in value.items():
            if key != "prologue":
                _check_node(child, evaluated and key not in attributes)
        for child in attributes.values():
            _check_node(child, evaluated)
    elif isinstance(value, Mapping):
        for key, child in value.items():
            _check_node(key, evaluated)
            _check_node(child, evaluated)
    elif isinstance(value, list | tuple | set | frozenset):
        for child in value:
            _check_node(child, evaluated)
    elif not isinstance(value, (Node, Path, *_SCALARS)):
        raise BadRequest(f"SPARQL Update contains an unsupported construct ({type(value).__name__})")


def _apply_sparql(operations: tuple[CompValue, ...], graph: rdflib.Graph) -> None:
    """Run validated operations in order against ``graph`` (a private copy).

    SPARQL 1.1 Update semantics throughout, on the default graph only:

    - §3.1.2 DELETE DATA: "Deleting triples that are not present, or from a graph that is not
      present will have no effect and will result in success." A stale DELETE DATA therefore is not
      a 409 (unlike an N3 Patch deletion): clients that need a precondition send ``If-Match``.
    - §3.1.3: "If any solution produces a triple containing an unbound variable or an illegal RDF
      construct, such as a literal in a subject or predicate position, then that triple is not
      included".
    - Blank nodes in an INSERT template become fresh blank nodes for each solution (and for each
      application of an INSERT DATA).
    """
    for op in operations:
        ctx = QueryContext(graph, initBindings={})
        ctx.prologue = op.prologue
        try:
            if op.name == "InsertData":
                graph += _fill(op.triples, {})
            elif op.name == "DeleteData":
                for triple in op.triples:
                    graph.remove(triple)
            elif op.name == "DeleteWhere":
                for solution in list(evalBGP(ctx, op.triples)):
                    for triple in list(_fill(op.triples, solution)):
                        graph.remove(triple)
            else:  # Modify (§3.1.3): every deletion is made before any insertion
                solutions = list(evalPart(ctx, op.where))
                if op.delete is not None:
                    removals = [t for solution in solutions for t in _fill(op.delete.triples, solution)]
                    for triple in removals:
                        graph.remove(triple)
                if op.insert is not None:
                    graph += [t for solution in solutions for t in _fill(op.insert.triples, solution)]
        except Exception as exc:  # SPARQLError, or a type error deep in an expression: bad input either way
            raise BadRequest(one_line(f"SPARQL Update could not be evaluated: {exc}")) from None


def _fill(template: Iterable[Triple], solution: Mapping[Any, Any]) -> Iterator[Triple]:
    """Instantiate a template with one solution, skipping triples that would not be RDF."""
    fresh: collections.defaultdict[BNode, BNode] = collections.defaultdict(BNode)
    for triple in template:
        terms: list[Node] = []
        for position, term in zip(_POSITIONS, triple, strict=True):
            value: Node | None = term
            if isinstance(term, Variable):
                value = solution.get(term)
            elif isinstance(term, BNode):
                value = fresh[term]
            if value is None or term_problem(value, position) is not None:
                break
            terms.append(value)
        else:
            yield (terms[0], terms[1], terms[2])
