"""Range requests (RFC 9110 §14): a byte range of a document's representation.

Media players need them (a browser seeks in an audio or video file by asking for the bytes it
wants, and Safari will not play a video whose server does not answer ranges), as do downloads that
resume. A range is taken from the exact bytes of the representation that is sent, so it applies to
converted RDF representations too; each has its own strong ETag for ``If-Range``.

One range is answered with 206 and ``Content-Range``. A request for several ranges is answered the
same way when they overlap or touch and so make one; otherwise the whole representation is sent
with 200, as §14.2 allows ("A server MAY ignore the Range header field"): no client in use asks
several disjoint ranges of a pod resource, and a multipart answer is a tool for amplification.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ldp.errors import RangeNotSatisfiable

# §14.2: "An origin server MUST ignore a Range header field that contains a range unit it does not
# understand"; range units are case-insensitive (§14.1). More specs than this are ignored too.
_MAX_SPECS = 16
_SPEC = re.compile(r"(\d*)-(\d*)")


class ByteRange(NamedTuple):
    """Bytes ``start`` to ``end`` inclusive of a representation of ``length`` bytes."""

    start: int
    end: int
    length: int

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.length}"

    def of(self, body: bytes) -> bytes:
        return body[self.start : self.end + 1]


def _parse(header: str) -> list[tuple[int | None, int | None]] | None:
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parsed: list[tuple[int | None, int | None]] = []
    for item in specs.split(","):
        item = item.strip()
        if not item:
            continue  # list syntax (RFC 9110 §5.6.1) allows empty elements
        found = _SPEC.fullmatch(item)
        if found is None or found.group(1) == found.group(2) == "":
            return None
        first = int(found.group(1)) if found.group(1) else None
        last = int(found.group(2)) if found.group(2) else None
        if first is not None and last is not None and last < first:
            return None  # §14.1.1: such a range-spec is invalid; the whole field is ignored
        parsed.append((first, last))
    if not parsed or len(parsed) > _MAX_SPECS:
        return None
    return parsed


def select_range(header: str | None, length: int) -> ByteRange | None:
    """The one range of ``length`` bytes to send, or None to send them all (no ``Range``, one that
    is ignored, or disjoint ranges). Raises RangeNotSatisfiable (416) when no range of the field
    lies within the representation (§14.1.1: "a range-spec is satisfiable if it includes at least
    one octet of the selected representation")."""
    if header is None or length == 0:
        # §14.1.1: of an empty representation only a suffix range would be satisfiable, and it has
        # no octet to send: the (empty) whole is the answer.
        return None
    specs = _parse(header)
    if specs is None:
        return None
    spans: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:  # suffix: the last ``last`` bytes
            assert last is not None
            if last > 0:
                spans.append((max(0, length - last), length - 1))
        elif first < length:
            spans.append((first, length - 1 if last is None else min(last, length - 1)))
    if not spans:
        raise RangeNotSatisfiable(
            f"No byte range of {header.strip()!r} lies within the {length} bytes of the resource",
            headers={"Content-Range": f"bytes */{length}"},
        )
    spans.sort()
    start, end = spans[0]
    for first, last in spans[1:]:
        if first > end + 1:
            return None  # disjoint: the whole representation (see the module docstring)
        end = max(end, last)
    return ByteRange(start, end, length)
