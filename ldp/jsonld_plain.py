"""Which JSON-LD documents Oxigraph reads exactly as the reference path does.

Every JSON-LD write is read as RDF to be validated, and pyld (the reference: bundled contexts,
:mod:`ldp.jsonld`) spends some 150 µs on a small notification where Oxigraph's JSON-LD parser
spends about 12. The two are not interchangeable on every input: Oxigraph knows no remote contexts
(it refuses them, which is fine), and, following JSON-LD 1.1's "to RDF" algorithm, it silently
leaves out statements whose IRIs are not well-formed and values whose language tags are not,
where the reference path refuses the document with a 400 naming the problem. A client must get
the same answer whichever path reads its document.

So Oxigraph is used only on *plain* documents, where neither difference can arise: every string
that can become an IRI (``@id`` and ``@type`` values, property names, term definitions) is a
well-formed IRI (or a compact IRI, term or blank node label) with none of the characters the
reference refuses; contexts are inline objects of simple term definitions (no ``@vocab``,
``@base``, ``@language`` or type coercion to ``@id``/``@vocab``, which turn arbitrary strings into
IRIs); no language tags, lists or JSON literals; no lone surrogates; property names are terms of
the context or absolute IRIs. Anything else goes to the reference path. ``tests/test_rdf.py``
checks that the two agree on a corpus and on generated documents.
"""

from __future__ import annotations

import re

import pyoxigraph as ox

# What the reference refuses in an IRI (ldp.rdf._BAD_IRI), '%' (escapes Oxigraph may judge
# differently), and lone surrogates.
_UNPLAIN = re.compile(r'[\x00-\x20<>"{}|^`\\%\ud800-\udfff]')
_SURROGATE = re.compile("[\ud800-\udfff]")
# Keywords whose presence anywhere sends a document to the reference path.
# (Lists: the two disagree on lists of lists.)
_UNPLAIN_KEYWORDS = frozenset({"@language", "@vocab", "@base", "@direction", "@import", "@context", "@list"})
_PLAIN_CONTAINERS = frozenset({"@set"})
_MAX_NODES = 10_000  # a bigger document is rare enough to take the reference path


def _plain_iri(text: str) -> bool:
    if not text or _UNPLAIN.search(text):
        return False
    if text.startswith("_:") or ":" not in text:
        return True  # a blank node label, or a term / relative reference
    try:
        ox.NamedNode(text)  # absolute or compact: must parse as an IRI (Oxigraph's own rule)
    except ValueError:
        return False
    return True


def _absolute(text: str) -> bool:
    """What a term definition maps to: an absolute or compact IRI (relative ones, blank nodes and
        keywords are refused or treated apart by the reference). Also what a property name must be when
    it is no term of the context."""
    return ":" in text and not text.startswith(("_:", "@")) and _plain_iri(text)


def _plain_context(context: object) -> bool:
    for local in context if isinstance(context, list) else [context]:
        if not isinstance(local, dict):
            return False  # a context by URL (bundled or refused) or null: the reference decides
        for term, definition in local.items():
            if term.startswith("@") or not _plain_iri(term):
                return False
            if isinstance(definition, str):
                if not _absolute(definition):
                    return False
            elif isinstance(definition, dict):
                for key, value in definition.items():
                    if not isinstance(value, str):
                        return False
                    if key == "@container":
                        if value not in _PLAIN_CONTAINERS:
                            return False
                    elif key not in ("@id", "@type") or not _absolute(value):
                        return False
            else:
                return False
    return True


def plain_jsonld(doc: object) -> bool:
    """Whether Oxigraph's reading of ``doc`` (parsed JSON) is the reference path's reading."""
    if not isinstance(doc, dict | list):
        return False
    terms: set[str] = set()
    if isinstance(doc, dict) and "@context" in doc:
        context = doc["@context"]
        if not _plain_context(context):
            return False
        for local in context if isinstance(context, list) else [context]:
            terms.update(local)
    stack: list[object] = [doc]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            return False
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return False
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "@context":
                    if node is not doc:
                        return False  # scoped contexts below the top: the reference decides
                    continue
                if key in _UNPLAIN_KEYWORDS:
                    return False
                if not key.startswith("@") and key not in terms and not _absolute(key):
                    # An undefined term is dropped with its value, but Oxigraph still emits the
                    # nodes of a list under it.
                    return False
                if key in ("@id", "@type"):
                    for name in value if isinstance(value, list) else [value]:
                        if not isinstance(name, str) or (name.startswith("@") or not _plain_iri(name)):
                            return False  # includes "@json" literals and keyword-typed values
                stack.append(value)
    return True
