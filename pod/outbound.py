"""The one HTTP client the server uses for everything it fetches or sends.

WebID profiles, OIDC discovery and JWKS, group documents, LDN inbox deliveries and webhooks all name
URLs that someone else chose. Fetching them naively lets any client make the server talk to its own
loopback interface, the cloud metadata service or the private network behind it (SSRF). So every
outbound request goes through :class:`OutboundClient`, which:

* accepts only ``http``/``https`` URLs without userinfo;
* refuses every address that is not globally reachable, checked in three places: the URL's host when it
  is an IP literal (before anything is sent), every DNS answer (a resolver wrapper, so a name that
  rebinds to a private address is refused at connection time), and the socket address actually
  connected to (the last word, whatever path the address took to get there);
* follows redirects itself, re-checking each hop, at most ``max_redirects`` times;
* bounds each request by total time and by response size.

Exceptions, all carrying a message that is safe to log or show (it names the origin, never the path or
query, which may hold secrets such as webhook tokens)::

    OutboundError
    ├── BlockedAddress      the URL or an address it leads to is refused by the rules above
    ├── ResponseTooLarge    the body exceeds the size cap
    ├── TooManyRedirects    more hops than allowed
    └── OutboundTimeout     the total time cap elapsed

Connection errors, DNS failures and TLS failures are plain :class:`OutboundError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = [
    "BlockedAddress",
    "GuardedResolver",
    "OutboundClient",
    "OutboundError",
    "OutboundResponse",
    "OutboundTimeout",
    "ResponseTooLarge",
    "StaticResolver",
    "TooManyRedirects",
    "address_refusal",
    "check_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundError(Exception):
    """Base of every outbound failure; the message is safe to log and to show to a client."""


class BlockedAddress(OutboundError):
    """The URL, or an address it resolves or redirects to, is refused; the message names host and reason."""


class ResponseTooLarge(OutboundError):
    """The response body (announced or actually read) exceeds the size cap."""


class TooManyRedirects(OutboundError):
    """The redirect chain is longer than allowed, which includes redirect loops."""


class OutboundTimeout(OutboundError):
    """The whole exchange, redirects and body included, took longer than the time cap."""


# --- address rules --------------------------------------------------------------------------------------

# Explicit tables rather than ``is_global`` alone: the stdlib's classification has changed between patch
# releases (3.11.7 calls 224.0.0.1 global, for example), and the reason shown in errors should be precise.
# The IANA special-purpose registries are the source (RFC 6890 and its updates).
_V4_RULES: Final = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved (6to4 relay)"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the limited broadcast address
    )
)
_V6_RULES: Final = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/8", "reserved"),  # includes the deprecated IPv4-compatible ::a.b.c.d form
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "private (ULA)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_PLAIN_LOOPBACK: Final = "loopback"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any.

    Such addresses reach the embedded IPv4 host, so they must obey that host's rules.
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str | IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why the server must not connect to ``address``, or None when it is a public address.

    ``allow_loopback`` permits only the plain loopback forms (127.0.0.0/8 and ::1), never an IPv4-mapped
    or otherwise embedded one: no legitimate configuration spells loopback that way, and attackers do.
    Anything that does not parse as an IP address is refused, since it cannot be classified.
    """
    if isinstance(address, str):
        try:
            ip: IPAddress = ipaddress.ip_address(address)
        except ValueError:
            return "unparsable"
    else:
        ip = address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = address_refusal(embedded, allow_loopback=False)
            return None if reason is None else f"{reason} (IPv4 embedded in IPv6)"
        rules: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = _V6_RULES
    else:
        rules = _V4_RULES
    for network, reason in rules:
        if ip in network:
            if reason == _PLAIN_LOOPBACK and allow_loopback:
                return None
            return reason
    if not ip.is_global:
        return "non-global"
    return None


def _origin(url: URL) -> str:
    """Scheme, host and port only: what error messages may name without leaking paths or tokens."""
    try:
        return str(url.origin())
    except ValueError:
        return "<invalid URL>"


def _is_numeric_host(host: str) -> bool:
    """Whether a URL parser would read ``host`` as an IPv4 address (WHATWG: its last label is numeric).

    Resolvers accept legacy forms such as ``2130706433``, ``0x7f.1`` or ``127.1``; they are refused
    unless they are a canonical dotted quad, so that what is checked is exactly what is connected to.
    """
    last = host.rstrip(".").rsplit(".", 1)[-1].lower()
    if last.startswith("0x"):
        return all(c in "0123456789abcdef" for c in last[2:])
    return last.isdigit()


def _checked_url(url: str | URL, *, allow_loopback: bool) -> URL:
    """Parse and check ``url``; the parsed object is what gets requested, so no second parser disagrees."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        netloc = urlsplit(str(url)).netloc
        scheme, host, port = parsed.scheme, parsed.raw_host, parsed.port
    except (ValueError, TypeError):
        raise BlockedAddress("invalid URL") from None
    if not parsed.absolute or scheme not in ("http", "https"):
        raise BlockedAddress(f"refused URL scheme {scheme or '(none)'!r}: only http and https are fetched")
    if not host:
        raise BlockedAddress("refused URL without a host")
    if "@" in netloc or parsed.raw_user is not None or parsed.raw_password is not None:
        raise BlockedAddress(f"refused URL with credentials for host {host}")
    if port is None or not 0 < port < 65536:
        raise BlockedAddress(f"refused URL with invalid port for host {host}")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        reason = address_refusal(literal, allow_loopback=allow_loopback)
        if reason is not None:
            raise BlockedAddress(f"refused host {host}: {reason} address")
    elif _is_numeric_host(host):
        raise BlockedAddress(f"refused host {host}: not a canonical IP address")
    else:
        name = host.rstrip(".")
        # RFC 6761 §6.3: localhost names resolve to loopback; refuse them without asking DNS.
        if (name == "localhost" or name.endswith(".localhost")) and not allow_loopback:
            raise BlockedAddress(f"refused host {host}: loopback address")
    return parsed


def check_url(url: str, *, allow_loopback: bool = False) -> None:
    """Refuse a URL before any traffic: scheme, userinfo, port, IP-literal and localhost-name rules.

    Host names are checked again on every DNS answer and connection by :class:`OutboundClient`; this
    pre-check lets callers reject obviously bad URLs (for example when a client registers a webhook)
    with a clear message.
    """
    _checked_url(url, allow_loopback=allow_loopback)


# --- connection-time guards ------------------------------------------------------------------------------


class GuardedResolver(AbstractResolver):
    """Wraps a resolver and refuses a name when any of its addresses is not public.

    Refusing the whole answer (rather than dropping the bad addresses) makes a name that mixes public
    and private addresses fail loudly instead of working by luck. aiohttp caches only answers that pass,
    so a name that later rebinds to a private address is refused on its next resolution.
    """

    def __init__(self, inner: AbstractResolver, *, allow_loopback: bool = False, owns_inner: bool = True):
        self._inner = inner
        self._allow_loopback = allow_loopback
        self._owns_inner = owns_inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = address_refusal(result["host"], allow_loopback=self._allow_loopback)
            if reason is not None:
                raise BlockedAddress(f"refused host {host}: resolves to {reason} address {result['host']}")
        return results

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


class StaticResolver(AbstractResolver):
    """Answers from a fixed name → addresses table, for tests and local demos that must not use DNS.

    Wrapped by :class:`GuardedResolver` like any other resolver, so its answers obey the address rules.
    Unknown names fail as DNS failures do.
    """

    def __init__(self, table: Mapping[str, str | Sequence[str]]):
        self._table = {
            name.lower().rstrip("."): (addrs,) if isinstance(addrs, str) else tuple(addrs)
            for name, addrs in table.items()
        }

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._table.get(host.lower().rstrip("."))
        if not addresses:
            raise OSError(f"{host} is not in the static resolver table")
        results: list[ResolveResult] = []
        for address in addresses:
            ip_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, ip_family):
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=address,
                        port=port,
                        family=ip_family,
                        proto=0,
                        flags=socket.AI_NUMERICHOST,
                    )
                )
        if not results:
            raise OSError(f"{host} has no address of the requested family")
        return results

    async def close(self) -> None:
        return None


class _RefusedConnect(OSError):
    """Raised by the socket factory; an OSError so aiohttp reports it like any failed connection."""


def _guarded_socket_factory(allow_loopback: bool) -> Any:
    """A socket factory that refuses to create a socket for a non-public peer.

    This is the last check before ``connect()``: whatever path an address took (IP literal, resolver,
    DNS cache), the socket is only made for an address that passes the rules.
    """

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        reason = address_refusal(str(sockaddr[0]), allow_loopback=allow_loopback)
        if reason is not None:
            raise _RefusedConnect(f"refused connection to {reason} address {sockaddr[0]}")
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


# --- responses ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboundResponse:
    """A fully read response. ``url`` is the final URL after redirects; ``headers`` is case-insensitive."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    def json(self) -> Any:
        """The body parsed as JSON; a malformed body is an :class:`OutboundError`, like any bad fetch."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise OutboundError(f"response from {_origin(URL(self.url))} is not valid JSON") from None


_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
# Headers that carry the caller's credentials: not forwarded to another origin (as browsers and httpx do).
_CREDENTIAL_HEADERS: Final = ("Authorization", "Proxy-Authorization", "Cookie", "DPoP")
# Headers that describe the request content: dropped when a redirect turns the request into a GET.
_CONTENT_HEADERS: Final = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Content-Language",
    "Content-Location",
    "Content-Digest",
    "Digest",
    "Transfer-Encoding",
)
_CHUNK: Final = 64 * 1024


class OutboundClient:
    """Pooled, address-checked, size- and time-bounded HTTP client; see the module docstring.

    ``resolver`` replaces the system resolver (always wrapped by :class:`GuardedResolver`), so tests
    can map names to 127.0.0.1 without DNS; ``trace_configs`` are aiohttp's request hooks, for metrics
    or for tests that must prove nothing was sent. Use ``async with`` or :meth:`start`/:meth:`close`.
    """

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        timeout: float = 10.0,
        max_bytes: int = 2 * 1024 * 1024,
        max_redirects: int = 5,
        per_host: int = 8,
        user_agent: str = "solid-pod",
        resolver: AbstractResolver | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        if timeout <= 0 or max_bytes < 0 or max_redirects < 0 or per_host < 1:
            raise ValueError(
                "timeout and per_host must be positive, max_bytes and max_redirects not negative"
            )
        self.allow_loopback = allow_loopback
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.per_host = per_host
        self.user_agent = user_agent
        self._resolver = resolver
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None
        self._guard: GuardedResolver | None = None

    async def start(self) -> None:
        """Create the pooled session; also done lazily by the first request."""
        if self._session is not None and not self._session.closed:
            return
        inner = self._resolver if self._resolver is not None else DefaultResolver()
        self._guard = GuardedResolver(
            inner, allow_loopback=self.allow_loopback, owns_inner=self._resolver is None
        )
        connector = aiohttp.TCPConnector(
            limit_per_host=self.per_host,
            resolver=self._guard,
            socket_factory=_guarded_socket_factory(self.allow_loopback),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The server fetches on behalf of many unrelated users: never carry cookies between them.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Environment proxies would connect somewhere other than the checked address.
            trust_env=False,
            # The total cap is enforced around the whole exchange, redirects and body included.
            timeout=aiohttp.ClientTimeout(total=None),
            headers={"User-Agent": self.user_agent},
            trace_configs=self._trace_configs or None,
        )

    async def close(self) -> None:
        """Close pooled connections and the resolver; a later request starts a new session."""
        session, self._session = self._session, None
        guard, self._guard = self._guard, None
        if session is not None:
            await session.close()
        if guard is not None:  # the connector closes only resolvers it created itself
            await guard.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def get(self, url: str, **kw: Any) -> OutboundResponse:
        return await self.request("GET", url, **kw)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> OutboundResponse:
        return await self.request("POST", url, body=body, headers=headers, **kw)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
        max_bytes: int | None = None,
        follow_redirects: bool = True,
    ) -> OutboundResponse:
        """Send one request, following redirects, and return the fully read response.

        Raises :class:`OutboundError` (or a subclass) for every refusal and every network failure.
        """
        limit = self.timeout if timeout is None else timeout
        size_cap = self.max_bytes if max_bytes is None else max_bytes
        if limit <= 0 or size_cap < 0:
            raise ValueError("timeout must be positive and max_bytes not negative")
        target = _checked_url(url, allow_loopback=self.allow_loopback)
        try:
            async with asyncio.timeout(limit):
                return await self._exchange(
                    method.upper(), target, CIMultiDict(headers or {}), body, size_cap, follow_redirects
                )
        except TimeoutError:
            raise OutboundTimeout(f"request to {_origin(target)} took longer than {limit:g} s") from None

    async def _exchange(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | None,
        size_cap: int,
        follow_redirects: bool,
    ) -> OutboundResponse:
        await self.start()
        assert self._session is not None
        hops = 0
        while True:
            try:
                async with self._session.request(
                    method, url.with_fragment(None), headers=headers, data=body, allow_redirects=False
                ) as response:
                    location = response.headers.get("Location")
                    if follow_redirects and response.status in _REDIRECTS and location is not None:
                        if hops >= self.max_redirects:
                            raise TooManyRedirects(
                                f"more than {self.max_redirects} redirects, last from {_origin(url)}"
                            )
                        hops += 1
                        next_url = self._redirect_target(url, location)
                        method, body = self._redirect_method(method, body, response.status, headers)
                        if next_url.origin() != url.origin():
                            for name in _CREDENTIAL_HEADERS:
                                headers.popall(name, None)
                        url = next_url
                        continue
                    content = await self._read_body(response, size_cap, url)
                    return OutboundResponse(
                        status=response.status,
                        headers=CIMultiDictProxy(CIMultiDict(response.headers)),
                        body=content,
                        url=str(url),
                    )
            except OutboundError:
                raise
            # The cause stays chained for the log's traceback; callers only ever see OutboundError.
            except aiohttp.ClientConnectorDNSError as exc:
                raise OutboundError(f"cannot resolve host of {_origin(url)}") from exc
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
                raise OutboundError(f"TLS failure talking to {_origin(url)}") from exc
            except aiohttp.ClientConnectorError as exc:
                refused = _refused_connect(exc)
                if refused is not None:
                    raise BlockedAddress(f"refused host {url.raw_host}: {refused}") from exc
                why = (exc.os_error.strerror or str(exc.os_error) or "connection failed").lower()
                raise OutboundError(f"cannot connect to {_origin(url)}: {why}") from exc
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise OutboundError(f"request to {_origin(url)} failed: {_describe(exc)}") from exc

    def _redirect_target(self, current: URL, location: str) -> URL:
        """Resolve and check a Location; RFC 9110 §10.2.2: a target without fragment inherits ours."""
        try:
            target = current.join(URL(location))
        except (ValueError, TypeError):
            raise OutboundError(f"invalid redirect location from {_origin(current)}") from None
        if not target.raw_fragment and current.raw_fragment:
            target = target.with_fragment(current.fragment)
        return _checked_url(target, allow_loopback=self.allow_loopback)

    @staticmethod
    def _redirect_method(
        method: str, body: bytes | None, status: int, headers: CIMultiDict[str]
    ) -> tuple[str, bytes | None]:
        """The method and body of the next hop (RFC 9110 §15.4).

        303: "a user agent can perform a retrieval request targeting that URI (a GET or HEAD request if
        using HTTP)". 301/302: "a user agent MAY change the request method from POST to GET", which is
        what every browser does. 307/308 keep method and content.
        """
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            for name in _CONTENT_HEADERS:
                headers.popall(name, None)
            return "GET", None
        return method, body

    @staticmethod
    async def _read_body(response: aiohttp.ClientResponse, size_cap: int, url: URL) -> bytes:
        """Read at most ``size_cap`` bytes, refusing early when Content-Length already says more."""
        too_large = f"response from {_origin(url)} exceeds {size_cap} bytes"
        if response.content_length is not None and response.content_length > size_cap:
            response.close()
            raise ResponseTooLarge(too_large)
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > size_cap:
                response.close()  # drop the connection rather than drain an unbounded body
                raise ResponseTooLarge(too_large)
            chunks.append(chunk)
        return b"".join(chunks)


def _refused_connect(exc: aiohttp.ClientConnectorError) -> str | None:
    """The socket factory's refusal inside a connection error, if that is what stopped the connection."""
    error: BaseException | None = exc.os_error
    while error is not None:
        if isinstance(error, _RefusedConnect):
            return str(error)
        error = error.__cause__ or error.__context__
    if "refused connection to" in str(exc.os_error):  # several addresses, all refused: one combined error
        return "all addresses refused"
    return None


def _describe(exc: BaseException) -> str:
    """A short, path-free description of a low-level failure."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "malformed response body"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad response ({exc.status})" if exc.status else "bad response"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return type(exc).__name__
