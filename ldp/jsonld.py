"""JSON-LD processing that never touches the network.

A JSON-LD document names its ``@context`` by URL, and a processor with the default document loader
dereferences that URL. On a server that would let any client make it issue requests (to internal
addresses, slow hosts, huge documents) and would make parsing depend on third-party uptime. So the
only contexts this server knows are the files bundled in ``data/contexts/`` (listed by URL in
``data/contexts/index.json``); every other URL is refused with ``400 Bad Request``.

Contexts are read and parsed once per process. Processed contexts are kept in a cache of our own
rather than pyld's process-wide one, so nothing another caller resolved with a different loader can
leak into request handling.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyld import jsonld
from pyld.context_resolver import ContextResolver

from ldp.errors import BadRequest, PodError

__all__ = ["CONTEXTS_DIR", "bundled_context_urls", "document_loader", "jsonld_to_dataset", "jsonld_to_nquads"]

CONTEXTS_DIR = Path(__file__).resolve().parent.parent / "data" / "contexts"

# Processed contexts: the bundled ones by URL, plus inline contexts by their canonical JSON (pyld caches
# those too). Inline contexts come from clients, so the cache is bounded.
_RESOLVED_CACHE_SIZE = 256

_index: dict[str, Path] | None = None
_documents: dict[Path, Any] = {}
_lock = threading.Lock()


def _load_index() -> dict[str, Path]:
    global _index
    if _index is None:
        with (CONTEXTS_DIR / "index.json").open(encoding="utf-8") as f:
            raw: dict[str, str] = json.load(f)
        _index = {url: CONTEXTS_DIR / name for url, name in raw.items()}
    return _index


def bundled_context_urls() -> frozenset[str]:
    """The context URLs this server can resolve (the keys of ``data/contexts/index.json``)."""
    return frozenset(_load_index())


def _bundled_document(url: str) -> Any | None:
    path = _load_index().get(url)
    if path is None:
        return None
    doc = _documents.get(path)
    if doc is None:
        with _lock:
            doc = _documents.get(path)
            if doc is None:
                with path.open(encoding="utf-8") as f:
                    doc = json.load(f)
                _documents[path] = doc
    return doc


def document_loader(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pyld document loader that serves bundled contexts and refuses everything else.

    Raises ``BadRequest`` naming the URL for any context that is not bundled. pyld wraps loader
    errors in its own ``JsonLdError``; :func:`jsonld_to_nquads` and :func:`jsonld_to_dataset` unwrap
    them again so callers see the ``BadRequest``.
    """
    doc = _bundled_document(url)
    if doc is None:
        raise BadRequest(f"Remote JSON-LD context not allowed: {url}")
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        # pyld edits context documents in place while resolving them; the parsed file stays pristine.
        "document": copy.deepcopy(doc),
        # "static" lets pyld keep the processed context in the resolver cache: bundled files never change.
        "tag": "static",
    }


class _BoundedCache(dict[str, Any]):
    """The shared cache handed to pyld's ``ContextResolver``: a dict that forgets its oldest entries."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self and len(self) >= _RESOLVED_CACHE_SIZE:
            # Racing evictions from other threads may remove entries first; losing any one is fine.
            with contextlib.suppress(KeyError, StopIteration, RuntimeError):
                del self[next(iter(self))]
        super().__setitem__(key, value)


_resolved_contexts = _BoundedCache()


def _options(base: str) -> dict[str, Any]:
    return {
        "base": base,
        "documentLoader": document_loader,
        "contextResolver": ContextResolver(_resolved_contexts, document_loader),
    }


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _translate(exc: BaseException) -> PodError:
    """Turn a pyld failure into the error the client should see.

    A refused context surfaces as pyld's generic "could not expand" error with our ``BadRequest``
    somewhere in its cause chain: that one is returned as is. Otherwise the innermost pyld message is
    the specific one ("Invalid JSON-LD syntax; ...").
    """
    message = "could not be processed"
    for cause in _causes(exc):
        if isinstance(cause, PodError):
            return cause
        if isinstance(cause, jsonld.JsonLdError) and cause.args:
            message = str(cause.args[0])
        elif isinstance(cause, RecursionError):
            message = "document is nested too deeply"
    return BadRequest(f"Invalid application/ld+json: {message}"[:300])


def _check_document(doc: object) -> None:
    # pyld treats a string input as a URL to fetch; only parsed JSON objects and arrays are documents.
    if not isinstance(doc, dict | list):
        raise BadRequest("Invalid application/ld+json: the document must be a JSON object or array")


def jsonld_to_nquads(doc: object, base: str) -> str:
    """Convert a parsed JSON-LD document to N-Quads, resolving relative IRIs against ``base``.

    Raises ``BadRequest`` for a context that is not bundled and for invalid JSON-LD.
    """
    _check_document(doc)
    options = _options(base)
    options["format"] = "application/n-quads"
    try:
        result = jsonld.to_rdf(doc, options)
    except Exception as exc:  # pyld fails on some hostile input in its own code (TypeError, UnicodeError)
        raise _translate(exc) from None
    return str(result)


def jsonld_to_dataset(doc: object, base: str) -> dict[str, list[dict[str, Any]]]:
    """Convert a parsed JSON-LD document to pyld's RDF dataset form, without serialising it.

    The result maps ``"@default"`` and each named graph's IRI to a list of triples, each triple a
    dict with ``subject``, ``predicate`` and ``object`` entries of the form ``{"type": "IRI" |
    "blank node" | "literal", "value": ..., "datatype": ..., "language": ...}``. Building terms from
    this directly skips writing and re-reading N-Quads. Errors as for :func:`jsonld_to_nquads`.
    """
    _check_document(doc)
    try:
        result = jsonld.to_rdf(doc, _options(base))
    except Exception as exc:  # pyld fails on some hostile input in its own code (TypeError, UnicodeError)
        raise _translate(exc) from None
    dataset: dict[str, list[dict[str, Any]]] = result
    return dataset
