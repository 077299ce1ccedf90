"""Range requests (RFC 9110 §14) and the date preconditions (§13.1.3, §13.1.4, §13.1.5), through HTTP."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from rdflib.compare import isomorphic

from ldp.rdf import parse_rdf

BLOB = bytes(range(256)) * 4  # 1,024 bytes, each offset recognisable
PNG = {"Content-Type": "image/png"}
TTL = {"Content-Type": "text/turtle"}


async def _blob(client: TestClient[Any, Any], path: str = "/alice/pic.png") -> None:
    assert (await client.put(path, headers=PNG, data=BLOB)).status == 201


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-24", 1000, 1023),
        ("bytes=-5000", 0, 1023),  # a suffix longer than the resource is all of it
        ("bytes=1000-5000", 1000, 1023),  # a last-pos past the end is cut to it
        ("BYTES = 10-19", 10, 19),  # the unit is case-insensitive
        ("bytes=10-19, 15-29", 10, 29),  # overlapping ranges make one
        ("bytes=10-19,20-29", 10, 29),  # ... as do touching ones
        ("bytes=5000-, 0-0", 0, 0),  # the unsatisfiable one is dropped
        ("bytes=,0-3,", 0, 3),  # empty list elements are allowed
    ],
)
async def test_one_range_is_206(
    client: TestClient[Any, Any], range_header: str, start: int, end: int
) -> None:
    await _blob(client)
    response = await client.get("/alice/pic.png", headers={"Range": range_header})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/1024"
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert await response.read() == BLOB[start : end + 1]


@pytest.mark.parametrize(
    "range_header",
    [
        "items=0-9",  # a unit this server does not know is ignored (§14.2)
        "bytes=9-0",  # last before first: invalid, the field is ignored
        "bytes=a-b",
        "bytes=-",
        "bytes=0-9,100-109",  # disjoint ranges: the whole representation
        "bytes=" + ",".join(f"{i}-{i}" for i in range(17)),  # too many ranges
    ],
)
async def test_ignored_ranges_send_everything(client: TestClient[Any, Any], range_header: str) -> None:
    await _blob(client)
    response = await client.get("/alice/pic.png", headers={"Range": range_header})
    assert response.status == 200
    assert "Content-Range" not in response.headers
    assert await response.read() == BLOB


@pytest.mark.parametrize("range_header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0", "bytes=2000-,3000-"])
async def test_unsatisfiable_range_is_416(client: TestClient[Any, Any], range_header: str) -> None:
    await _blob(client)
    response = await client.get("/alice/pic.png", headers={"Range": range_header})
    assert response.status == 416
    assert response.headers["Content-Range"] == "bytes */1024"
    assert "1024 bytes" in (await response.json())["error"]


async def test_documents_advertise_ranges_head_and_containers_ignore_them(
    client: TestClient[Any, Any],
) -> None:
    await _blob(client)
    head = await client.head("/alice/pic.png", headers={"Range": "bytes=0-9"})
    assert head.status == 200  # range handling is defined for GET only (§14.2)
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["Content-Length"] == "1024"
    listing = await client.get("/alice/", headers={"Range": "bytes=0-9", "Accept": "text/turtle"})
    assert listing.status == 200
    assert "Content-Range" not in listing.headers
    parse_rdf(await listing.read(), "text/turtle", "http://pod.test/alice/")  # the whole listing
    empty = await client.put("/alice/empty.bin", headers={"Content-Type": "application/octet-stream"})
    assert empty.status == 201
    nothing = await client.get("/alice/empty.bin", headers={"Range": "bytes=0-"})
    assert (nothing.status, await nothing.read()) == (200, b"")


async def test_range_of_a_converted_rdf_representation(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/n.ttl", headers=TTL, data="<#a> <#b> <#c> .")
    full = await client.get("/alice/n.ttl", headers={"Accept": "application/ld+json"})
    whole = await full.read()
    part = await client.get(
        "/alice/n.ttl", headers={"Accept": "application/ld+json", "Range": "bytes=0-9"}
    )
    assert part.status == 206
    assert part.headers["ETag"] == full.headers["ETag"]
    assert await part.read() == whole[:10]
    assert part.headers["Content-Range"] == f"bytes 0-9/{len(whole)}"


async def test_if_range(client: TestClient[Any, Any]) -> None:
    await _blob(client)
    first = await client.get("/alice/pic.png")
    tag, date = first.headers["ETag"], first.headers["Last-Modified"]
    ranged = {"Range": "bytes=0-3"}
    assert (await client.get("/alice/pic.png", headers={**ranged, "If-Range": tag})).status == 206
    weak = await client.get("/alice/pic.png", headers={**ranged, "If-Range": f"W/{tag}"})
    assert weak.status == 200  # a weak tag never matches (§13.1.5)
    # The date was written less than a second ago, so it is not yet a strong validator.
    assert (await client.get("/alice/pic.png", headers={**ranged, "If-Range": date})).status == 200
    await asyncio.sleep(1.1)
    assert (await client.get("/alice/pic.png", headers={**ranged, "If-Range": date})).status == 206
    # Changed since: the whole new representation, not a piece of it spliced onto the old one.
    assert (await client.put("/alice/pic.png", headers=PNG, data=BLOB[::-1])).status == 204
    for validator in (tag, date):
        stale = await client.get("/alice/pic.png", headers={**ranged, "If-Range": validator})
        assert stale.status == 200
        assert await stale.read() == BLOB[::-1]


def _date(offset: float) -> str:
    return formatdate(time.time() + offset, usegmt=True)


async def test_if_modified_since(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/n.ttl", headers=TTL, data="<#a> <#b> <#c> .")
    first = await client.get("/alice/n.ttl")
    date = first.headers["Last-Modified"]
    same = await client.get("/alice/n.ttl", headers={"If-Modified-Since": date})
    assert same.status == 304
    assert same.headers["ETag"] == first.headers["ETag"]
    assert (await client.head("/alice/n.ttl", headers={"If-Modified-Since": date})).status == 304
    older = await client.get("/alice/n.ttl", headers={"If-Modified-Since": _date(-3600)})
    assert older.status == 200
    assert isomorphic(
        parse_rdf(await older.read(), "text/turtle", "http://pod.test/alice/n.ttl"),
        parse_rdf(b"<#a> <#b> <#c> .", "text/turtle", "http://pod.test/alice/n.ttl"),
    )
    # Ignored: when If-None-Match is present, and when the value is not exactly one HTTP-date.
    other_tag = {"If-None-Match": '"other"', "If-Modified-Since": date}
    assert (await client.get("/alice/n.ttl", headers=other_tag)).status == 200
    for bad in ("yesterday", f"{date}, {date}", date.replace("GMT", "PST")):
        assert (await client.get("/alice/n.ttl", headers={"If-Modified-Since": bad})).status == 200
    # The obsolete forms an HTTP recipient must still accept (§5.6.7).
    later = time.time() + 3600
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(later))
    asctime = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(later))
    for form in (rfc850, asctime):
        assert (await client.get("/alice/n.ttl", headers={"If-Modified-Since": form})).status == 304
    # A container's date moves with its membership.
    listing = await client.get("/alice/")
    await asyncio.sleep(1.1)
    await client.put("/alice/new.ttl", headers=TTL, data="")
    since = {"If-Modified-Since": listing.headers["Last-Modified"]}
    assert (await client.get("/alice/", headers=since)).status == 200


async def test_if_unmodified_since(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/n.ttl", headers=TTL, data="<#a> <#b> <#c> .")
    stale = {**TTL, "If-Unmodified-Since": _date(-3600)}
    refused = await client.put("/alice/n.ttl", headers=stale, data="<#x> <#y> <#z> .")
    assert refused.status == 412
    assert "If-Unmodified-Since" in (await refused.json())["error"]
    assert (await client.delete("/alice/n.ttl", headers=stale)).status == 412
    assert (await client.get("/alice/n.ttl", headers=stale)).status == 412
    body = await (await client.get("/alice/n.ttl")).read()
    assert isomorphic(
        parse_rdf(body, "text/turtle", "http://pod.test/alice/n.ttl"),
        parse_rdf(b"<#a> <#b> <#c> .", "text/turtle", "http://pod.test/alice/n.ttl"),
    )  # nothing changed
    # If-Match takes precedence (§13.1.4), and a resource that does not exist has no date to fail.
    tag = (await client.get("/alice/n.ttl")).headers["ETag"]
    with_tag = {**stale, "If-Match": tag}
    assert (await client.put("/alice/n.ttl", headers=with_tag, data="<#a> <#b> <#d> .")).status == 204
    assert (await client.put("/alice/fresh.ttl", headers=stale, data="")).status == 201
    fine = {**TTL, "If-Unmodified-Since": _date(3600)}
    patch = await client.patch(
        "/alice/n.ttl",
        headers={**fine, "Content-Type": "application/sparql-update"},
        data="INSERT DATA { <#e> <#f> <#g> . }",
    )
    assert patch.status == 204
    assert (await client.delete("/alice/n.ttl", headers=fine)).status == 204
    assert (await client.get("/alice/n.ttl")).status == 404


async def test_reads_are_revalidated_by_caches(client: TestClient[Any, Any]) -> None:
    await client.put("/alice/n.ttl", headers=TTL, data="<#a> <#b> <#c> .")
    for path in ("/alice/n.ttl", "/alice/"):
        read = await client.get(path)
        assert read.headers["Cache-Control"] == "no-cache"
        again = await client.get(path, headers={"If-None-Match": read.headers["ETag"]})
        assert (again.status, again.headers["Cache-Control"]) == (304, "no-cache")
