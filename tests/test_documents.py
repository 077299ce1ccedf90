"""Remote documents (WebID profiles, group lists) fetched over real HTTP through the guarded client.

A burst of signed requests from a sender the server has not met yet all need the sender's profile
at once: they share one fetch, so the sender's server is asked once, and a second fetch failing
cannot overwrite the copy the first has just cached (which used to fail deliveries arriving after
it for the failure cache's lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from acl.documents import DocumentError, Documents, DocumentUnavailable
from ldp.identifiers import PodLocator
from ldp.store import ResourceStore
from pod.outbound import OutboundClient

PROFILE = b"<#me> <http://www.w3.org/ns/ldp#inbox> <inbox/> .\n"


class Profiles:
    """A server of one profile whose answers the test scripts: each GET takes ``delays[n]`` seconds
    and succeeds unless ``n`` is in ``failing`` (n counts from 0)."""

    def __init__(self, delays: list[float], failing: frozenset[int] = frozenset()) -> None:
        self.delays = delays
        self.failing = failing
        self.gets = 0

    async def handle(self, request: web.Request) -> web.Response:
        n = self.gets
        self.gets += 1
        await asyncio.sleep(self.delays[min(n, len(self.delays) - 1)])
        if n in self.failing:
            return web.Response(status=500, text="down")
        return web.Response(body=PROFILE, content_type="text/turtle")


@contextlib.asynccontextmanager
async def serving(profiles: Profiles) -> AsyncIterator[tuple[Documents, str]]:
    app = web.Application()
    app.router.add_get("/alice/profile", profiles.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = OutboundClient(allow_loopback=True)
    try:
        documents = Documents(cast(ResourceStore, None), PodLocator("http://pod.test/"), client)
        yield documents, str(server.make_url("/alice/profile#me"))
    finally:
        await client.close()
        await server.close()


async def test_concurrent_requests_for_one_document_share_one_fetch() -> None:
    profiles = Profiles([0.2])
    async with serving(profiles) as (documents, webid):
        graphs = await asyncio.gather(*(documents.graph(webid) for _ in range(20)))
        assert profiles.gets == 1
        assert all(graph is graphs[0] for graph in graphs)
        assert len(graphs[0]) == 1
        assert await documents.graph(webid) is graphs[0]  # and the cache answers afterwards
        assert profiles.gets == 1


async def test_a_failing_fetch_does_not_replace_the_copy_just_cached() -> None:
    """Two requests need the profile; a second fetch, had there been one, would fail later than
    the first succeeds. With one shared fetch both get the profile, and so does the next request."""
    profiles = Profiles([0.1, 0.3], failing=frozenset({1}))
    async with serving(profiles) as (documents, webid):
        first, second = await asyncio.gather(documents.graph(webid), documents.graph(webid))
        assert first is second
        assert await documents.graph(webid) is first
        assert profiles.gets == 1


async def test_a_cancelled_request_does_not_cancel_the_fetch_for_the_others() -> None:
    profiles = Profiles([0.2])
    async with serving(profiles) as (documents, webid):
        impatient = asyncio.ensure_future(documents.graph(webid))
        patient = asyncio.ensure_future(documents.graph(webid))
        await asyncio.sleep(0.05)
        impatient.cancel()
        graph = await patient
        assert len(graph) == 1 and profiles.gets == 1
        with pytest.raises(asyncio.CancelledError):
            await impatient


async def test_a_failed_fetch_is_shared_and_remembered_briefly() -> None:
    profiles = Profiles([0.1], failing=frozenset({0}))
    async with serving(profiles) as (documents, webid):
        results = await asyncio.gather(*(documents.graph(webid) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, DocumentUnavailable) and "HTTP 500" in r.message for r in results)
        with pytest.raises(DocumentError, match="HTTP 500"):
            await documents.graph(webid)  # from the failure cache
        assert profiles.gets == 1


@pytest.mark.parametrize(
    ("status", "unavailable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (408, True),
        (429, True),
        (404, False),
        (410, False),
        (403, False),
    ],
)
async def test_a_server_error_is_unavailable_and_a_refusal_is_not(status: int, unavailable: bool) -> None:
    """Server trouble is 503 with Retry-After (the request may succeed later); a document that is
    not there is 401 (the credentials it was to confirm cannot be)."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, text="no")

    app = web.Application()
    app.router.add_get("/alice/profile", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = OutboundClient(allow_loopback=True)
    try:
        documents = Documents(
            cast(ResourceStore, None), PodLocator("http://pod.test/"), client, failure_ttl=20
        )
        with pytest.raises(DocumentError) as raised:
            await documents.graph(str(server.make_url("/alice/profile#me")))
        assert isinstance(raised.value, DocumentUnavailable) is unavailable
        assert raised.value.status == (503 if unavailable else 401)
        assert f"HTTP {status}" in raised.value.message
        if unavailable:
            assert raised.value.headers == {"Retry-After": "20"}
    finally:
        await client.close()
        await server.close()


async def test_an_unreachable_server_is_unavailable() -> None:
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/alice/profile#me"))
    await server.close()  # nothing listens there any more
    client = OutboundClient(allow_loopback=True)
    try:
        documents = Documents(cast(ResourceStore, None), PodLocator("http://pod.test/"), client)
        with pytest.raises(DocumentUnavailable) as raised:
            await documents.graph(url)
        assert raised.value.status == 503 and raised.value.headers["Retry-After"] == "30"
        with pytest.raises(DocumentUnavailable) as cached:
            await documents.graph(url)  # remembered: Retry-After is the time the failure has left
        assert 1 <= int(cached.value.headers["Retry-After"]) <= 30
        assert cached.value is not raised.value
    finally:
        await client.close()
