"""Content negotiation on the ``Accept`` header (RFC 9110 §12.5.1).

RDF resources can be served in any of :data:`ldp.rdf.RDF_MEDIA_TYPES`; the choice follows the
client's preferences and falls back to Turtle, the one format every Solid client reads:

    Solid Protocol, Resource Representations: "When a server creates a resource on HTTP PUT, POST
    or PATCH requests such that the request's representation data encodes an RDF document [...],
    the server MUST accept GET requests on this resource when the value of the Accept header
    requests a representation in text/turtle or application/ld+json"

Matching follows RFC 9110: each candidate gets the q-value of the most specific media range that
matches it, and a q-value of 0 means "not acceptable".
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from ldp.errors import NotAcceptable
from ldp.rdf import RDF_MEDIA_TYPES

__all__ = ["accepts", "choose_rdf_type", "parse_accept"]

DEFAULT_RDF_TYPE = "text/turtle"
_JSON_LD = "application/ld+json"
_JSON = "application/json"

# How specific a media range is; a higher rank wins both for matching and for ties.
_ANY = 0  # */*
_TYPE = 1  # text/*
_ALIAS = 2  # application/json standing in for application/ld+json
_EXACT = 3  # text/turtle


class _Range(NamedTuple):
    type: str
    subtype: str
    q: float
    rank: int


def _parse_q(value: str) -> float | None:
    # RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
    try:
        q = float(value)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None


def _ranges(header: str | None) -> list[_Range]:
    ranges: list[_Range] = []
    if not header:
        return ranges
    for item in header.split(","):
        media_range, *params = item.split(";")
        media_range = media_range.strip().lower()
        type_, sep, subtype = media_range.partition("/")
        type_, subtype = type_.strip(), subtype.strip()
        if not sep or not type_ or not subtype or (type_ == "*" and subtype != "*"):
            continue  # malformed ranges are ignored, as browsers and servers commonly do
        q: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                q = _parse_q(value.strip())
        if q is None:
            continue
        rank = _ANY if type_ == "*" else _TYPE if subtype == "*" else _EXACT
        ranges.append(_Range(type_, subtype, q, rank))
    return ranges


def parse_accept(header: str | None) -> list[tuple[str, float]]:
    """Parse an ``Accept`` header into ``(media_range, q)`` pairs, most preferred first.

    Ordered by q-value, then by specificity (``text/turtle`` before ``text/*`` before ``*/*``),
    then by position in the header. Malformed entries are skipped. Entries with ``q=0`` are kept:
    they mark a type as not acceptable.
    """
    ranges = sorted(_ranges(header), key=lambda r: (-r.q, -r.rank))
    return [(f"{r.type}/{r.subtype}", r.q) for r in ranges]


def _match(ranges: list[_Range], media_type: str) -> tuple[float, int] | None:
    """The ``(q, rank)`` of the most specific range matching ``media_type``, if any does.

    ``application/json`` counts as a range for JSON-LD (JSON-LD is JSON), less specific than
    naming ``application/ld+json`` but more specific than ``application/*``.
    """
    type_, _, subtype = media_type.partition("/")
    best: tuple[float, int] | None = None
    for r in ranges:
        if r.rank == _EXACT and r.type == type_ and r.subtype == subtype:
            rank = _EXACT
        elif media_type == _JSON_LD and r.rank == _EXACT and f"{r.type}/{r.subtype}" == _JSON:
            rank = _ALIAS
        elif (r.rank == _TYPE and r.type == type_) or r.rank == _ANY:
            rank = r.rank
        else:
            continue
        # Among ranges of equal specificity (a repeated range), the client's first word counts.
        if best is None or rank > best[1]:
            best = (r.q, rank)
    return best


@lru_cache(maxsize=512)  # clients send few distinct Accept headers; this runs on every read
def choose_rdf_type(accept: str | None, stored_type: str | None = None) -> str:
    """Pick the RDF media type to serve for an ``Accept`` header.

    No header, or only wildcards, gives ``text/turtle``. Otherwise the candidate with the highest
    q-value wins; among equals, the one the client named most specifically, then the type the
    resource is stored in if the client named it exactly (serving it needs no conversion), then
    ``text/turtle``. ``application/json`` selects JSON-LD when nothing better matches.

    Raises ``NotAcceptable`` listing the available types when no candidate is acceptable.
    """
    ranges = _ranges(accept)
    if not ranges:
        # No header, or one with nothing parseable in it: the client states no preference.
        return DEFAULT_RDF_TYPE
    best: tuple[float, int, int, int, int] | None = None
    chosen = DEFAULT_RDF_TYPE
    for position, candidate in enumerate(RDF_MEDIA_TYPES):
        match = _match(ranges, candidate)
        if match is None or match[0] <= 0.0:
            continue
        q, rank = match
        key = (
            round(q * 1000),
            rank,
            int(candidate == stored_type and rank == _EXACT),
            int(candidate == DEFAULT_RDF_TYPE),
            -position,
        )
        if best is None or key > best:
            best, chosen = key, candidate
    if best is None:
        raise _not_acceptable(accept)
    return chosen


def _not_acceptable(accept: str | None) -> NotAcceptable:
    return NotAcceptable(
        f"No acceptable representation for Accept: {accept}; available: {', '.join(RDF_MEDIA_TYPES)}"
    )


@lru_cache(maxsize=512)
def accepts(accept: str | None, media_type: str) -> bool:
    """Whether a representation of ``media_type`` (e.g. a stored ``image/png``) is acceptable.

    A missing ``Accept`` header accepts everything (RFC 9110 §12.5.1: "A request without any
    Accept header field implies that the user agent will accept any media type in response"); so
    does one with nothing parseable in it.
    """
    ranges = _ranges(accept)
    if not ranges:
        return True
    match = _match(ranges, media_type.split(";", 1)[0].strip().lower())
    return match is not None and match[0] > 0.0
