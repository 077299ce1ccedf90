"""Entity tags and conditional requests (RFC 9110 §8.8 and §13).

A resource has one version per stored state; each representation of it (Turtle, JSON-LD, ...) gets
its own strong ETag ``"<version>-<format>"``, because RFC 9110 §8.8.3 requires different
representations to have different strong validators. ``If-Match`` on a write compares the version
part only, so a client may send back the ETag of whichever representation it read.

The date preconditions (``If-Modified-Since``, ``If-Unmodified-Since``) compare with
``Last-Modified``, which has one-second resolution: a resource changed twice within one second
looks unchanged to a client that only holds the date. That is the nature of dates (§8.8.2); a
client that holds an ETag as well sends ``If-None-Match`` / ``If-Match``, and the date is then
ignored, as §13.1.3 and §13.1.4 require.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from ldp.accessor import Record
from ldp.errors import PreconditionFailed

_FORMAT_CODES = {
    "text/turtle": "ttl",
    "application/ld+json": "jsonld",
    "application/n-triples": "nt",
    "text/n3": "n3",
}

# RFC 9110 §5.6.7: "A recipient that parses a timestamp value in an HTTP field MUST accept all three
# HTTP-date formats": IMF-fixdate, the obsolete RFC 850 form and asctime. Matched whole, so a list
# of dates (which §13.1.3 says to ignore) or trailing junk is not taken for its first date.
_HTTP_DATE = re.compile(
    r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT"
    r"|[A-Z][a-z]{5,8}, \d{2}-[A-Z][a-z]{2}-\d{2} \d{2}:\d{2}:\d{2} GMT"
    r"|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}"
)


@dataclass(frozen=True)
class Conditions:
    """The precondition fields of a request (RFC 9110 §13.1), as sent."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Conditions:
        return cls(
            headers.get("If-Match"),
            headers.get("If-None-Match"),
            headers.get("If-Modified-Since"),
            headers.get("If-Unmodified-Since"),
        )


NO_CONDITIONS = Conditions()


def etag(version: str, media_type: str) -> str:
    return f'"{version}-{_FORMAT_CODES.get(media_type, "raw")}"'


def http_timestamp(value: str | None) -> int | None:
    """An HTTP-date as whole epoch seconds, or None when absent or not one valid HTTP-date (the
    date preconditions then do not apply: §13.1.3 and §13.1.4 say to ignore such a field)."""
    if value is None:
        return None
    value = value.strip()
    if _HTTP_DATE.fullmatch(value) is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:  # asctime carries no zone; HTTP dates are always UTC
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def last_modified(record: Record) -> int:
    """The resource's ``Last-Modified``, in the whole seconds the header carries."""
    return math.floor(record.modified)


def _versions(header: str) -> set[str]:
    """Versions named by an ETag list header; weak tags never match strongly (RFC 9110 §8.8.3.2)."""
    versions: set[str] = set()
    for item in header.split(","):
        tag = item.strip()
        if tag.startswith('"') and tag.endswith('"') and len(tag) >= 2:
            versions.add(tag[1:-1].split("-", 1)[0])
    return versions


def _check_unchanged(record: Record | None, cond: Conditions) -> None:
    """Steps 1 and 2 of RFC 9110 §13.2.2: ``If-Match``, or else ``If-Unmodified-Since``."""
    if cond.if_match is not None:
        if record is None:
            raise PreconditionFailed("If-Match failed: the resource does not exist")
        if cond.if_match.strip() != "*" and record.version not in _versions(cond.if_match):
            raise PreconditionFailed("If-Match failed: the resource has changed")
        return
    # §13.1.4: "A recipient MUST ignore If-Unmodified-Since if the request contains an If-Match
    # header field", and when the resource has no modification date (it does not exist).
    since = http_timestamp(cond.if_unmodified_since)
    if since is not None and record is not None and last_modified(record) > since:
        raise PreconditionFailed("If-Unmodified-Since failed: the resource has changed since then")


def check_write(record: Record | None, cond: Conditions) -> None:
    """Evaluate preconditions of a state-changing request; 412 when one fails (RFC 9110 §13.2.2).
    ``If-Modified-Since`` applies to GET and HEAD only (§13.1.3) and is not looked at here."""
    _check_unchanged(record, cond)
    if cond.if_none_match is not None and record is not None:
        if cond.if_none_match.strip() == "*":
            raise PreconditionFailed("If-None-Match failed: the resource already exists")
        if record.version in _versions(cond.if_none_match):
            raise PreconditionFailed("If-None-Match failed: the resource has not changed")


def check_read(record: Record, cond: Conditions) -> None:
    """412 for a GET/HEAD whose ``If-Match`` or ``If-Unmodified-Since`` fails."""
    _check_unchanged(record, cond)


def not_modified(record: Record, cond: Conditions) -> bool:
    """True when a GET/HEAD should answer 304 (RFC 9110 §13.2.2 steps 3 and 4)."""
    if cond.if_none_match is not None:
        return cond.if_none_match.strip() == "*" or record.version in _versions(cond.if_none_match)
    # §13.1.3: ignored when If-None-Match is present (above) or the value is not a valid date; 304
    # when "the selected representation's last modification date is earlier or equal to the date
    # provided in the field value".
    since = http_timestamp(cond.if_modified_since)
    return since is not None and last_modified(record) <= since


def range_applies(record: Record, tag: str, if_range: str | None) -> bool:
    """RFC 9110 §13.1.5: without ``If-Range`` a ``Range`` applies; with it, only when the validator
    it names is still current: the representation's strong ETag, exactly, or its ``Last-Modified``
    date, exactly and only while that date is a strong validator (§8.8.2.2: the resource last
    changed at least a second before now; otherwise a second change in the same second would look
    the same). Otherwise the whole representation is sent."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"'):
        return value == tag
    if value.startswith("W/"):
        return False  # "A valid entity-tag can be distinguished from a valid HTTP-date": weak never
    since = http_timestamp(value)
    return since is not None and since == last_modified(record) and record.modified <= time.time() - 1
