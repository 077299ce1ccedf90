"""The outbound client: address rules, redirects, caps, pooling and error translation.

Everything runs against a real aiohttp server on 127.0.0.1. No other address may receive traffic from
this machine, so an autouse fixture replaces aiohttp's connect step with one that records every target
and refuses anything but loopback: a test that expects a refusal asserts that nothing was even tried.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohappyeyeballs
import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from pod.outbound import (
    BlockedAddress,
    GuardedResolver,
    OutboundClient,
    OutboundError,
    OutboundResponse,
    OutboundTimeout,
    ResponseTooLarge,
    StaticResolver,
    TooManyRedirects,
    _guarded_socket_factory,
    address_refusal,
    check_url,
)

# --- safety net and helpers -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the code under test tried to connect to; non-loopback ones are never connected."""
    attempts: list[str] = []
    real = aiohappyeyeballs.start_connection

    async def guarded(addr_infos: Any, **kw: Any) -> socket.socket:
        targets = [str(info[4][0]) for info in addr_infos]
        attempts.extend(targets)
        if any(target not in ("127.0.0.1", "::1") for target in targets):
            raise OSError(f"test safety net: connection to {targets} not allowed")
        return await real(addr_infos, **kw)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", guarded)
    return attempts


class ForbiddenResolver(AbstractResolver):
    """Fails the test if the client ever asks it anything."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pytest.fail(f"resolver called for {host}")

    async def close(self) -> None:
        return None


def request_log() -> tuple[aiohttp.TraceConfig, list[str]]:
    """An aiohttp trace hook recording each request the session starts (before any connection)."""
    started: list[str] = []
    trace = aiohttp.TraceConfig()

    async def on_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
        started.append(str(params.url))

    trace.on_request_start.append(on_start)
    return trace, started


class Upstream:
    """A small remote server: its base URL and what it received."""

    def __init__(self) -> None:
        self.server: TestServer | None = None
        self.hits: list[web.Request] = []
        self.peers: list[Any] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    routes = web.RouteTableDef()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        up.hits.append(request)
        up.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        response: web.StreamResponse = await handler(request)
        return response

    @routes.get("/ok")
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="hello", headers={"X-Thing": "1"})

    @routes.get("/json")
    async def as_json(request: web.Request) -> web.Response:
        return web.json_response({"a": 1})

    @routes.route("*", "/echo")
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "body": (await request.read()).decode(),
                "headers": dict(request.headers),
            }
        )

    @routes.route("*", "/redirect")
    async def redirect(request: web.Request) -> web.Response:
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"Location": request.query["to"]})

    @routes.get("/chain/{n}")
    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(text="end of chain")
        return web.Response(status=302, headers={"Location": f"/chain/{n - 1}"})

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/loop"})

    @routes.get("/sized/{n}")
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]))

    @routes.get("/huge-announced")
    async def huge_announced(request: web.Request) -> web.StreamResponse:
        # Announces 10 MiB, sends a little, then stalls: only an up-front check fails fast.
        response = web.StreamResponse(headers={"Content-Length": str(10 * 1024 * 1024)})
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.sleep(30)
        return response

    @routes.get("/endless")
    async def endless(request: web.Request) -> web.StreamResponse:
        # Chunked, no length, never ends on its own: the client must stop reading.
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100_000):
            await response.write(b"y" * 1024)
        return response

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="too late")

    @routes.get("/slow-body")
    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"start")
        await asyncio.sleep(30)
        return response

    @routes.get("/busy")
    async def busy(request: web.Request) -> web.Response:
        up.in_flight += 1
        up.max_in_flight = max(up.max_in_flight, up.in_flight)
        await asyncio.sleep(0.1)
        up.in_flight -= 1
        return web.Response(text="done")

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    up.server = TestServer(app, host="127.0.0.1")
    await up.server.start_server()
    try:
        yield up
    finally:
        await up.server.close()


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., OutboundClient]]:
    """Build clients that are closed after the test."""
    clients: list[OutboundClient] = []

    def factory(**kw: Any) -> OutboundClient:
        client = OutboundClient(**kw)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


def pod_names() -> StaticResolver:
    """Two names for the loopback test server, so tests can use host names without DNS."""
    return StaticResolver({"pod.example": "127.0.0.1", "other.example": "127.0.0.1"})


# --- address rules ----------------------------------------------------------------------------------

REFUSED_LITERALS = [
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.5.4/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.2.10/",
    "http://198.18.0.1/",
    "http://240.0.0.1/",
    "https://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[ff02::1]/",
    "http://[::]/",
    "http://[2001:db8::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[2002:a00:1::]/",  # 6to4 for 10.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 for 169.254.169.254
    "http://[::127.0.0.1]/",  # deprecated IPv4-compatible form
    "http://2130706433/",  # 127.0.0.1 as one number
    "http://0x7f.1/",
    "http://127.1/",
    "http://10.0.0.1./",
]
LOOPBACK_LITERALS = ["http://127.0.0.1/", "http://127.5.6.7:8080/", "http://[::1]/", "http://localhost/"]


@pytest.mark.parametrize("url", REFUSED_LITERALS + LOOPBACK_LITERALS)
async def test_non_public_literals_refused_before_anything_is_sent(
    url: str, make: Callable[..., OutboundClient], connections: list[str]
) -> None:
    trace, started = request_log()
    client = make(resolver=ForbiddenResolver(), trace_configs=[trace])
    with pytest.raises(BlockedAddress) as caught:
        await client.get(url)
    assert "refused host" in str(caught.value)
    assert started == [] and connections == []
    with pytest.raises(BlockedAddress):
        check_url(url)


@pytest.mark.parametrize("url", REFUSED_LITERALS)
async def test_allow_loopback_does_not_open_other_ranges(
    url: str, make: Callable[..., OutboundClient], connections: list[str]
) -> None:
    trace, started = request_log()
    client = make(allow_loopback=True, resolver=ForbiddenResolver(), trace_configs=[trace])
    with pytest.raises(BlockedAddress):
        await client.get(url)
    assert started == [] and connections == []
    with pytest.raises(BlockedAddress):
        check_url(url, allow_loopback=True)


@pytest.mark.parametrize("url", LOOPBACK_LITERALS)
def test_check_url_allows_loopback_only_when_asked(url: str) -> None:
    check_url(url, allow_loopback=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.org/file",
        "file:///etc/passwd",
        "gopher://example.org/",
        "ws://example.org/",
        "/relative/path",
        "http:///no-host",
        "http://user:pass@example.org/",
        "http://user@example.org/",
        "http://@example.org/",
        "http://example.org:0/",
    ],
)
async def test_bad_urls_refused(
    url: str, make: Callable[..., OutboundClient], connections: list[str]
) -> None:
    with pytest.raises(BlockedAddress):
        check_url(url)
    with pytest.raises(BlockedAddress):
        await make(resolver=ForbiddenResolver()).get(url)
    assert connections == []


def test_credentials_message_does_not_echo_them() -> None:
    with pytest.raises(BlockedAddress) as caught:
        check_url("https://alice:hunter2@example.org/")
    assert "hunter2" not in str(caught.value) and "example.org" in str(caught.value)


def test_public_urls_pass_the_pre_check() -> None:
    for url in (
        "https://example.org/profile/card#me",
        "http://example.org:8443/x",
        "https://[2606:4700::1]/",
    ):
        check_url(url)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 to a public address
        ("10.1.2.3", "private"),
        ("172.31.255.255", "private"),
        ("100.127.0.1", "shared (CGNAT)"),
        ("169.254.1.1", "link-local"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private (ULA)"),
        ("fec0::1", "site-local"),
        ("ff05::2", "multicast"),
        ("239.1.1.1", "multicast"),
        ("203.0.113.7", "documentation"),
        ("::ffff:192.168.0.1", "private (IPv4 embedded in IPv6)"),
        ("not an address", "unparsable"),
    ],
)
def test_address_rules(address: str, reason: str | None) -> None:
    assert address_refusal(address) == reason


def test_loopback_exemption_covers_only_plain_forms() -> None:
    assert address_refusal("127.0.0.1", allow_loopback=True) is None
    assert address_refusal("127.200.0.1", allow_loopback=True) is None
    assert address_refusal("::1", allow_loopback=True) is None
    assert address_refusal("::ffff:127.0.0.1", allow_loopback=True) is not None
    assert address_refusal("10.0.0.1", allow_loopback=True) == "private"


# --- resolved addresses -----------------------------------------------------------------------------


async def test_hostname_resolving_to_private_address_refused(
    make: Callable[..., OutboundClient], connections: list[str]
) -> None:
    client = make(allow_loopback=True, resolver=StaticResolver({"internal.example": "10.1.2.3"}))
    with pytest.raises(BlockedAddress) as caught:
        await client.get("http://internal.example/")
    message = str(caught.value)
    assert "internal.example" in message and "private" in message and "10.1.2.3" in message
    assert connections == []


async def test_any_bad_address_in_an_answer_refuses_the_name(
    make: Callable[..., OutboundClient], upstream: Upstream, connections: list[str]
) -> None:
    client = make(
        allow_loopback=True, resolver=StaticResolver({"mixed.example": ["127.0.0.1", "169.254.169.254"]})
    )
    with pytest.raises(BlockedAddress, match="link-local"):
        await client.get(f"http://mixed.example:{upstream.port}/ok")
    assert connections == [] and upstream.hits == []


async def test_hostname_resolving_to_loopback_follows_the_flag(
    make: Callable[..., OutboundClient], upstream: Upstream, connections: list[str]
) -> None:
    url = f"http://pod.example:{upstream.port}/ok"
    with pytest.raises(BlockedAddress, match="loopback"):
        await make(resolver=pod_names()).get(url)
    assert connections == []
    response = await make(allow_loopback=True, resolver=pod_names()).get(url)
    assert response.status == 200 and response.body == b"hello"
    assert upstream.hits[0].host == f"pod.example:{upstream.port}"


async def test_guarded_resolver_checks_every_answer() -> None:
    """A name that rebinds between lookups is refused on the lookup that returns the bad address."""
    answers = iter(["127.0.0.1", "10.0.0.7"])

    class Rebinding(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return await StaticResolver({host: next(answers)}).resolve(host, port, family)

        async def close(self) -> None:
            return None

    guard = GuardedResolver(Rebinding(), allow_loopback=True)
    assert (await guard.resolve("flip.example", 80))[0]["host"] == "127.0.0.1"
    with pytest.raises(BlockedAddress, match="private"):
        await guard.resolve("flip.example", 80)


def test_socket_factory_refuses_non_public_peers() -> None:
    """The last check before connect(), whatever path the address took."""
    factory = _guarded_socket_factory(False)
    with pytest.raises(OSError, match="link-local"):
        factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80)))
    with pytest.raises(OSError, match="loopback"):
        factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    sock = _guarded_socket_factory(True)((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    sock.close()


# --- plain exchanges ----------------------------------------------------------------------------------


async def test_loopback_refused_by_default(
    make: Callable[..., OutboundClient], upstream: Upstream, connections: list[str]
) -> None:
    with pytest.raises(BlockedAddress, match="loopback"):
        await make().get(upstream.url("/ok"))
    assert upstream.hits == [] and connections == []


async def test_loopback_allowed_with_flag(make: Callable[..., OutboundClient], upstream: Upstream) -> None:
    response = await make(allow_loopback=True).get(upstream.url("/ok"))
    assert isinstance(response, OutboundResponse)
    assert (response.status, response.body, response.url) == (200, b"hello", upstream.url("/ok"))
    assert response.headers["x-thing"] == "1" and response.headers["X-THING"] == "1"
    assert upstream.hits[0].headers["User-Agent"] == "solid-pod"


async def test_localhost_name_allowed_with_flag(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    """The system resolver answers ``localhost`` from the hosts file; the flag lets that answer through."""
    response = await make(allow_loopback=True).get(f"http://localhost:{upstream.port}/ok")
    assert response.body == b"hello"


async def test_json_and_custom_headers(make: Callable[..., OutboundClient], upstream: Upstream) -> None:
    client = make(allow_loopback=True, user_agent="pod-test/1")
    assert (await client.get(upstream.url("/json"))).json() == {"a": 1}
    echoed = (await client.get(upstream.url("/echo"), headers={"Accept": "text/turtle"})).json()
    assert echoed["headers"]["Accept"] == "text/turtle" and echoed["headers"]["User-Agent"] == "pod-test/1"
    with pytest.raises(OutboundError, match="not valid JSON"):
        (await client.get(upstream.url("/ok"))).json()


async def test_post_sends_body(make: Callable[..., OutboundClient], upstream: Upstream) -> None:
    response = await make(allow_loopback=True).post(
        upstream.url("/echo"), b'{"x": 1}', headers={"Content-Type": "application/ld+json"}
    )
    echoed = response.json()
    assert echoed["method"] == "POST" and echoed["body"] == '{"x": 1}'
    assert echoed["headers"]["Content-Type"] == "application/ld+json"


async def test_connections_are_pooled_and_limited_per_host(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    client = make(allow_loopback=True, per_host=2)
    for _ in range(3):
        await client.get(upstream.url("/ok"))
    assert len(set(upstream.peers)) == 1  # keep-alive: one connection served all three
    await asyncio.gather(*(client.get(upstream.url("/busy")) for _ in range(6)))
    assert upstream.max_in_flight == 2


async def test_client_restarts_after_close(upstream: Upstream) -> None:
    async with OutboundClient(allow_loopback=True) as client:
        assert (await client.get(upstream.url("/ok"))).status == 200
    assert (await client.get(upstream.url("/ok"))).status == 200  # lazily reopened
    await client.close()


# --- redirects -----------------------------------------------------------------------------------------


async def test_redirects_are_followed_and_final_url_reported(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    response = await make(allow_loopback=True).get(upstream.url("/chain/3#me"))
    assert response.body == b"end of chain"
    assert response.url == upstream.url("/chain/0#me")  # RFC 9110 §10.2.2: the fragment carries over
    assert len(upstream.hits) == 4


async def test_redirect_to_metadata_address_refused(
    make: Callable[..., OutboundClient], upstream: Upstream, connections: list[str]
) -> None:
    url = upstream.url("/redirect?to=http://169.254.169.254/latest/meta-data/")
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254.*link-local"):
        await make(allow_loopback=True).get(url)
    assert set(connections) == {"127.0.0.1"} and len(upstream.hits) == 1


@pytest.mark.parametrize(
    "target",
    [
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "http://user:pass@127.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "http://internal.example/",
    ],
)
async def test_redirect_targets_are_checked_like_urls(
    target: str, make: Callable[..., OutboundClient], upstream: Upstream, connections: list[str]
) -> None:
    client = make(allow_loopback=True, resolver=StaticResolver({"internal.example": "10.9.9.9"}))
    with pytest.raises(BlockedAddress):
        await client.request("GET", f"{upstream.url('/redirect')}?status=307&to={target}")
    assert set(connections) <= {"127.0.0.1"} and len(upstream.hits) == 1


async def test_redirect_loop_caps_out(make: Callable[..., OutboundClient], upstream: Upstream) -> None:
    with pytest.raises(TooManyRedirects):
        await make(allow_loopback=True).get(upstream.url("/loop"))
    assert len(upstream.hits) == 6  # the first request and five redirects
    with pytest.raises(TooManyRedirects):
        await make(allow_loopback=True, max_redirects=1).get(upstream.url("/chain/2"))
    assert (await make(allow_loopback=True, max_redirects=2).get(upstream.url("/chain/2"))).status == 200


async def test_redirects_not_followed_on_request(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    response = await make(allow_loopback=True).get(upstream.url("/loop"), follow_redirects=False)
    assert response.status == 301 and response.headers["Location"] == "/loop"


@pytest.mark.parametrize(
    ("status", "method"), [(301, "GET"), (302, "GET"), (303, "GET"), (307, "POST"), (308, "POST")]
)
async def test_post_redirect_method_rules(
    status: int, method: str, make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    response = await make(allow_loopback=True).post(
        upstream.url(f"/redirect?status={status}&to=/echo"),
        b"payload",
        headers={"Content-Type": "text/plain"},
    )
    echoed = response.json()
    assert echoed["method"] == method
    if method == "GET":
        assert echoed["body"] == "" and "Content-Type" not in echoed["headers"]
    else:
        assert echoed["body"] == "payload" and echoed["headers"]["Content-Type"] == "text/plain"
    assert [hit.method for hit in upstream.hits] == ["POST", method]


async def test_303_after_put_becomes_get(make: Callable[..., OutboundClient], upstream: Upstream) -> None:
    response = await make(allow_loopback=True).request(
        "PUT", upstream.url("/redirect?status=303&to=/echo"), body=b"data"
    )
    assert response.json()["method"] == "GET"


async def test_credentials_not_forwarded_to_another_origin(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    client = make(allow_loopback=True, resolver=pod_names())
    secret = {"Authorization": "DPoP token", "DPoP": "proof", "Accept": "application/json"}
    same = await client.get(upstream.url("/redirect?to=/echo"), headers=secret)
    assert same.json()["headers"]["Authorization"] == "DPoP token"
    elsewhere = f"http://other.example:{upstream.port}/echo"
    moved = await client.get(upstream.url(f"/redirect?to={elsewhere}"), headers=secret)
    forwarded = moved.json()["headers"]
    assert "Authorization" not in forwarded and "DPoP" not in forwarded
    assert forwarded["Accept"] == "application/json" and moved.url == elsewhere


# --- caps ----------------------------------------------------------------------------------------------


async def test_body_at_the_cap_is_accepted(make: Callable[..., OutboundClient], upstream: Upstream) -> None:
    response = await make(allow_loopback=True, max_bytes=1000).get(upstream.url("/sized/1000"))
    assert len(response.body) == 1000
    with pytest.raises(ResponseTooLarge):
        await make(allow_loopback=True, max_bytes=1000).get(upstream.url("/sized/1001"))


async def test_announced_length_over_cap_fails_before_reading(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    client = make(allow_loopback=True, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ResponseTooLarge, match="exceeds 2097152 bytes"):
        await client.get(upstream.url("/huge-announced"))
    assert loop.time() - started < 2  # the server stalls after 100 bytes: only the header check is fast


async def test_chunked_body_over_cap_stops_reading(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    client = make(allow_loopback=True, timeout=5)
    with pytest.raises(ResponseTooLarge, match="exceeds 50000 bytes"):
        await client.get(upstream.url("/endless"), max_bytes=50_000)


async def test_slow_response_times_out(make: Callable[..., OutboundClient], upstream: Upstream) -> None:
    client = make(allow_loopback=True, timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(OutboundTimeout) as caught:
        await client.get(upstream.url("/slow?token=s3cret"))
    assert loop.time() - started < 2
    assert "s3cret" not in str(caught.value) and "0.3 s" in str(caught.value)
    with pytest.raises(OutboundTimeout):  # per-call override, and the cap covers reading the body
        await make(allow_loopback=True).get(upstream.url("/slow-body"), timeout=0.3)


# --- network failures ---------------------------------------------------------------------------------


async def test_connection_refused_is_an_outbound_error(make: Callable[..., OutboundClient]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OutboundError, match="cannot connect") as caught:
        await make(allow_loopback=True).get(f"http://127.0.0.1:{port}/")
    assert type(caught.value) is OutboundError


async def test_unknown_name_is_an_outbound_error(make: Callable[..., OutboundClient]) -> None:
    with pytest.raises(OutboundError, match="cannot resolve") as caught:
        await make(resolver=StaticResolver({})).get("https://nowhere.example/secret/path")
    assert type(caught.value) is OutboundError and "secret" not in str(caught.value)


async def test_tls_to_a_plain_http_server_is_an_outbound_error(
    make: Callable[..., OutboundClient], upstream: Upstream
) -> None:
    with pytest.raises(OutboundError) as caught:
        await make(allow_loopback=True).get(f"https://127.0.0.1:{upstream.port}/ok")
    assert not isinstance(caught.value, (BlockedAddress, OutboundTimeout))
