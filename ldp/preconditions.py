"""Entity tags and conditional requests (RFC 9110 §8.8.3 and §13).

A resource has one version per stored state; each representation of it (Turtle, JSON-LD, ...) gets
its own strong ETag ``"<version>-<format>"``, because RFC 9110 §8.8.3 requires different
representations to have different strong validators. ``If-Match`` on a write compares the version
part only, so a client may send back the ETag of whichever representation it read.
"""

from __future__ import annotations

from ldp.accessor import Record
from ldp.errors import PreconditionFailed

_FORMAT_CODES = {
    "text/turtle": "ttl",
    "application/ld+json": "jsonld",
    "application/n-triples": "nt",
    "text/n3": "n3",
}


def etag(version: str, media_type: str) -> str:
    return f'"{version}-{_FORMAT_CODES.get(media_type, "raw")}"'


def _versions(header: str) -> set[str]:
    """Versions named by an ETag list header; weak tags never match strongly (RFC 9110 §8.8.3.2)."""
    versions: set[str] = set()
    for item in header.split(","):
        tag = item.strip()
        if tag.startswith('"') and tag.endswith('"') and len(tag) >= 2:
            versions.add(tag[1:-1].split("-", 1)[0])
    return versions


def check_write(record: Record | None, if_match: str | None, if_none_match: str | None) -> None:
    """Evaluate preconditions of a state-changing request; 412 when one fails (RFC 9110 §13.2.2)."""
    if if_match is not None:
        if record is None:
            raise PreconditionFailed("If-Match failed: the resource does not exist")
        if if_match.strip() != "*" and record.version not in _versions(if_match):
            raise PreconditionFailed("If-Match failed: the resource has changed")
    if if_none_match is not None and record is not None:
        if if_none_match.strip() == "*":
            raise PreconditionFailed("If-None-Match failed: the resource already exists")
        if record.version in _versions(if_none_match):
            raise PreconditionFailed("If-None-Match failed: the resource has not changed")


def not_modified(record: Record, if_none_match: str | None) -> bool:
    """True when a GET/HEAD should answer 304 (RFC 9110 §13.1.2)."""
    if if_none_match is None:
        return False
    return if_none_match.strip() == "*" or record.version in _versions(if_none_match)


def check_read(record: Record, if_match: str | None) -> None:
    if if_match is not None and if_match.strip() != "*" and record.version not in _versions(if_match):
        raise PreconditionFailed("If-Match failed: the resource has changed")
