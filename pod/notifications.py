"""Live updates: the Solid Notifications Protocol with the WebSocketChannel2023 channel type.

    discovery     GET <pod>/.well-known/solid            notify:subscription <service>
                  GET <service>                          channel type and features (Turtle / JSON-LD)
    subscription  POST <service> (JSON-LD or Turtle)     200, the channel: id, topic, receiveFrom, endAt
    channel       GET receiveFrom (WebSocket upgrade)    Activity Streams JSON-LD, one message a change
    unsubscribe   DELETE <channel id>                    204, its socket is closed

Apps written with ``@inrupt/solid-client-notifications`` (3.x) speak the protocol's predecessor, the
notification gateway of Inrupt's Enterprise Solid Server, on the same channels:

    discovery     GET <pod>/.well-known/solid            solid:notificationGateway <gateway>
    negotiation   POST <gateway> {"protocols", "features"}     200 {"endpoint", "protocol", "features"}
    connection    POST <endpoint> {"topic", ...features}       200 {"endpoint": receiveFrom, "protocol"}
                  GET receiveFrom (WebSocket upgrade)    the same messages

Such a client has no way to end a channel but closing its socket, so a gateway channel ends with
its socket: it is single-use, unlike a WebSocketChannel2023 channel, which lives until ``endAt``.

Changes reach the channels through a :class:`ChangeFeed`: the resource store, the inbox and the
publisher report each write once it has committed, and the other server processes of the
deployment (``--workers``, several machines on PostgreSQL) pass theirs on (``pod.change_relay``).
A channel's subscription, socket and ``DELETE`` may reach three different processes: its token
(in ``receiveFrom`` and in its id) carries the channel, signed (``pod.channel_tokens``), so any
process can open or end it; a channel ended early is passed on as a change of kind ``Ended``.

Everything is bounded (:class:`Limits`): channels in total and per agent, each channel's lifetime
(``endAt``), the messages waiting for one socket (a reader too slow to keep up is disconnected, it
may reconnect and re-read the topic) and the subscription request's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import WSCloseCode, WSMsgType, hdrs, web
from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.namespace import RDF

from acl.modes import Mode
from acl.wac import Wac
from ldp.accessor import StorageAccessor
from ldp.conneg import choose_rdf_type
from ldp.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PodError,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from ldp.identifiers import PodLocator, Target, parent_of
from ldp.preconditions import etag
from ldp.rdf import normalize_media_type, parse_rdf, serialize_rdf
from pod.auth import authenticate
from pod.channel_tokens import ChannelClaims, ChannelTokens

if TYPE_CHECKING:
    from pod.change_relay import Relay

log = logging.getLogger("pod.notifications")

NOTIFY = Namespace("http://www.w3.org/ns/solid/notifications#")
SOLID = Namespace("http://www.w3.org/ns/solid/terms#")
NOTIFY_CONTEXT = "https://www.w3.org/ns/solid/notification/v1"
AS_CONTEXT = "https://www.w3.org/ns/activitystreams"
WEBSOCKET_CHANNEL = str(NOTIFY.WebSocketChannel2023)
PREFIX = "/.well-known/notifications/"
SERVICE_PATH = PREFIX + "WebSocketChannel2023"
SOCKET_PREFIX = PREFIX + "ws/"
CHANNEL_PREFIX = PREFIX + "channels/"
GATEWAY_PATH = PREFIX + "gateway"  # the notification gateway's negotiation
CONNECTION_PATH = PREFIX + "websocket"  # the gateway's connection endpoint for "ws"
# The gateway's features: "state" as in the Notifications Protocol, "ttl" (seconds) as endAt.
GATEWAY_FEATURES = ("state", "ttl")
JSONLD = "application/ld+json"
SUBSCRIPTION_TYPES = (JSONLD, "application/json", "text/turtle")
FEATURES = (NOTIFY.endAt, NOTIFY.state)
# Features of the protocol this server does not offer: a request that asks for one is refused (422)
# rather than silently given a channel that behaves differently from what was asked.
_UNSUPPORTED = (NOTIFY.startAt, NOTIFY.rate, NOTIFY.accept, NOTIFY.sendTo, NOTIFY.sender)

CREATE, UPDATE, DELETE, ADD, REMOVE = "Create", "Update", "Delete", "Add", "Remove"
ENDED = "Ended"  # a change that is not a write: a channel ended early (its path names its key)


class TooManyChannels(PodError):
    status = 429


class Change(NamedTuple):
    """One committed write: ``kind`` is Create, Update or Delete; ``state`` the new ETag if known.
    (A tuple: every write makes one, and a frozen dataclass costs several times as much to build.)"""

    pod: str
    path: str
    kind: str
    state: str | None = None


Listener = Callable[[Change], None]


class ChangeFeed:
    """Fan-out of committed changes to listeners (the notification channels).

    ``publish`` (a change this process committed) never blocks and never raises into the writer:
    a listener's failure is logged. With a ``relay`` (``pod.change_relay``), the change also goes to
    the other processes of the deployment, which hand it to their own listeners (``deliver``), so a
    channel hears every process's writes whichever process holds it.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.relay: Relay | None = None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, pod: str, path: str, kind: str, state: str | None = None) -> None:
        change = Change(pod, path, kind, state)
        self.deliver(change)
        if self.relay is not None:
            self.relay.send(change)

    def deliver(self, change: Change) -> None:
        """Hand ``change`` to this process's listeners (and to no other process)."""
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("change listener failed for %s %s", change.kind, change.path)


@dataclass
class Limits:
    max_channels: int = 10_000
    per_agent: int = 50
    queue_size: int = 100  # messages waiting for one socket before it is dropped as too slow
    default_ttl: float = 3600.0  # seconds a channel lives when the request names no endAt
    max_ttl: float = 24 * 3600.0
    max_request: int = 16 * 1024  # bytes of a subscription request
    heartbeat: float = 30.0  # WebSocket pings; a peer that stops answering is disconnected


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, size: int) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)
        self.closing = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def offer(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.close(WSCloseCode.TRY_AGAIN_LATER, "receiver too slow: messages were dropped")

    def close(self, code: int, reason: str) -> None:
        """Close from synchronous code (the feed, a timer); the socket's handler then ends."""
        if self.closing:
            return
        self.closing = True
        task = asyncio.get_running_loop().create_task(self.ws.close(code=code, message=reason.encode()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass
class Channel:
    id: str
    token: str
    key: str  # the random part of the token: what a message that the channel ended names
    pod: str
    path: str  # the topic resource
    topic: str
    webid: str
    origin: str | None
    end_at: float  # epoch seconds
    state: str | None = None  # what the subscriber last knew (the ``state`` feature)
    single_use: bool = False  # opened through the gateway: ends when its socket closes
    connection: _Connection | None = field(default=None, repr=False)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.end_at


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _description(channel: Channel, topic: str, receive_from: str) -> dict[str, Any]:
    """A WebSocketChannel2023 channel as a subscription is answered with (``topic`` as asked)."""
    return {
        "@context": [NOTIFY_CONTEXT],
        "id": channel.id,
        "type": WEBSOCKET_CHANNEL,
        "topic": topic,
        "receiveFrom": receive_from,
        "endAt": _iso(channel.end_at),
    }


def _message(kind: str, obj: str, target: str | None = None, state: str | None = None) -> dict[str, Any]:
    """An Activity Streams notification as in Solid Notifications Protocol §"Notification Message"."""
    message: dict[str, Any] = {
        "@context": [AS_CONTEXT, NOTIFY_CONTEXT],
        "id": f"urn:uuid:{uuid.uuid4()}",
        "type": kind,
        "object": obj,
    }
    if target is not None:
        message["target"] = target
    if state is not None:
        message["state"] = state
    message["published"] = _iso(time.time())
    return message


class Notifications:
    """The subscription service, the channels and their sockets for every pod of this server."""

    def __init__(
        self, locator: PodLocator, wac: Wac, accessor: StorageAccessor, limits: Limits | None = None
    ) -> None:
        self.locator = locator
        self.wac = wac
        self.accessor = accessor
        self.limits = limits or Limits()
        self.feed = ChangeFeed()
        self.feed.subscribe(self._on_change)
        self.tokens = ChannelTokens(self._pod_secret)
        self._by_token: dict[str, Channel] = {}
        self._by_topic: dict[tuple[str, str], set[str]] = {}  # (pod, path) → tokens
        self._ended: dict[str, float] = {}  # keys of channels ended early → their endAt

    @property
    def open_channels(self) -> int:
        """Channels this process holds (each is held by the process its socket reached)."""
        return len(self._by_token)

    async def _pod_secret(self, pod: str) -> bytes | None:
        found = await self.accessor.pod_key(pod)
        return None if found is None else found[1]

    # -- discovery ---------------------------------------------------------------------------------
    def service_url(self, pod: str) -> str:
        return self.locator.url(pod, SERVICE_PATH)

    def _describe_service(self, graph: Graph, pod: str) -> None:
        service = URIRef(self.service_url(pod))
        graph.add((service, NOTIFY.channelType, NOTIFY.WebSocketChannel2023))
        for feature in FEATURES:
            graph.add((service, NOTIFY.feature, feature))

    def describe(self, pod: str, graph: Graph) -> None:
        """Add the subscription service to a pod's storage description (Notifications Protocol
        §"Discovery": the storage description links ``notify:subscription`` resources)."""
        desc = URIRef(self.locator.url(pod, "/.well-known/solid"))
        graph.bind("notify", NOTIFY)
        graph.add((desc, NOTIFY.subscription, URIRef(self.service_url(pod))))
        self._describe_service(graph, pod)
        # The gateway of the protocol's predecessor, which @inrupt/solid-client-notifications reads
        # from the first subject of this document (the description itself, see serialize_rdf).
        graph.add((desc, SOLID.notificationGateway, URIRef(self.locator.url(pod, GATEWAY_PATH))))

    def _service_description(self, request: web.Request, pod: str) -> web.Response:
        media = choose_rdf_type(request.headers.get(hdrs.ACCEPT))
        if media == JSONLD:
            doc = {
                "@context": [NOTIFY_CONTEXT],
                "id": self.service_url(pod),
                "channelType": WEBSOCKET_CHANNEL,
                "feature": [str(f) for f in FEATURES],
            }
            body = json.dumps(doc).encode()
        else:
            graph = Graph()
            graph.bind("notify", NOTIFY)
            self._describe_service(graph, pod)
            body = serialize_rdf(graph, media, self.service_url(pod))
        headers = {"Allow": "GET, HEAD, OPTIONS, POST", "Accept-Post": ", ".join(SUBSCRIPTION_TYPES)}
        headers["Content-Type"] = media
        return web.Response(body=b"" if request.method == "HEAD" else body, headers=headers)

    # -- HTTP entry point --------------------------------------------------------------------------
    async def handle(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Every request under ``<pod>/.well-known/notifications/``."""
        if await self.accessor.get(target.pod, "/") is None:
            raise NotFound(f"No pod at {self.locator.pod_root(target.pod)}")
        path, method = target.path, request.method
        if path == SERVICE_PATH:
            if method in ("GET", "HEAD"):
                return self._service_description(request, target.pod)
            if method == "POST":
                return await self._subscribe(request, target)
            if method == "OPTIONS":
                return web.Response(status=204, headers={"Allow": "GET, HEAD, OPTIONS, POST"})
            raise MethodNotAllowed(f"{method} is not allowed on the subscription service")
        if path in (GATEWAY_PATH, CONNECTION_PATH):
            if method == "OPTIONS":
                return web.Response(status=204, headers={"Allow": "OPTIONS, POST"})
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed on the notification gateway")
            if path == GATEWAY_PATH:
                return await self._negotiate(request, target)
            return await self._connect(request, target)
        if path.startswith(SOCKET_PREFIX) and method == "GET":
            return await self._socket(request, target.pod, path[len(SOCKET_PREFIX) :])
        if path.startswith(CHANNEL_PREFIX) and method == "DELETE":
            return await self._unsubscribe(request, target)
        raise NotFound(f"{self.locator.url(target.pod, path)} not found")

    # -- subscription ------------------------------------------------------------------------------
    async def _subscribe(self, request: web.Request, target: Target) -> web.Response:
        creds = await authenticate(request, target)
        if creds.webid is None:
            raise Unauthorized("Authentication required to subscribe to notifications")
        media = normalize_media_type(request.headers.get(hdrs.CONTENT_TYPE))
        if media not in SUBSCRIPTION_TYPES:
            raise UnsupportedMediaType(
                f"A subscription request must be application/ld+json or text/turtle, not {media}"
            )
        body = await self._request_body(request)
        if media == "application/json":
            media = JSONLD
        if media == JSONLD:
            self._json_object(body)
        graph = parse_rdf(body, media, self.service_url(target.pod))
        subject, topic, end_at, state = self._read_request(graph)
        channel, receive_from = await self._open(request, target, creds.webid, topic, end_at, state)
        answer = _description(channel, topic, receive_from)
        if state is not None:
            answer["state"] = state
        log.info("channel %s on %s for %s (subject %s)", channel.id, topic, creds.webid, subject)
        return web.Response(status=200, text=json.dumps(answer), content_type=JSONLD)

    async def _request_body(self, request: web.Request) -> bytes:
        body = await request.read()
        if len(body) > self.limits.max_request:
            raise PayloadTooLarge(f"A subscription request is limited to {self.limits.max_request} bytes")
        if not body.strip():
            raise BadRequest("No request body was sent")
        return body

    @staticmethod
    def _json_object(body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest("The subscription request is not valid JSON") from None
        if not isinstance(doc, dict):
            raise BadRequest("The subscription request must be a JSON object")
        return doc

    async def _open(
        self,
        request: web.Request,
        target: Target,
        webid: str,
        topic: str,
        end_at: float | None,
        state: str | None,
        *,
        single_use: bool = False,
    ) -> tuple[Channel, str]:
        """A new channel on ``topic`` for ``webid`` once it may read the topic; the channel and
        its ``receiveFrom`` URL."""
        topic_target = self.locator.target_of_url(topic)
        if topic_target is None or topic_target.pod != target.pod:
            raise UnprocessableEntity(f"The topic {topic} is not a resource of this storage")
        origin = request.headers.get("Origin")
        await self.wac.refresh()
        if Mode.READ not in await self.wac.modes(topic_target.pod, topic_target.path, webid, origin):
            # Notifications Protocol: a subscription needs read access to the topic resource.
            raise Forbidden(f"{webid} lacks read access to {topic}")
        self._sweep()
        if len(self._by_token) >= self.limits.max_channels:
            raise TooManyChannels("Too many notification channels on this server; try again later")
        mine = sum(1 for c in self._by_token.values() if c.webid == webid)
        if mine >= self.limits.per_agent:
            raise TooManyChannels(
                f"{webid} already has {mine} notification channels (limit {self.limits.per_agent})"
            )
        now = time.time()
        if end_at is not None and end_at <= now:
            raise UnprocessableEntity("endAt must be in the future")
        end = min(end_at if end_at is not None else now + self.limits.default_ttl, now + self.limits.max_ttl)
        key = secrets.token_hex(16)
        claims = ChannelClaims(key, topic_target.path, webid, origin, end, state, single_use)
        channel = self._register(target.pod, await self.tokens.issue(target.pod, claims), claims)
        return channel, self._receive_from(channel)

    def _register(self, pod: str, token: str, claims: ChannelClaims) -> Channel:
        channel = self._channel(pod, token, claims)
        self._by_token[token] = channel
        self._by_topic.setdefault((channel.pod, channel.path), set()).add(token)
        return channel

    def _channel(self, pod: str, token: str, claims: ChannelClaims) -> Channel:
        return Channel(
            # The id carries the token too: any process can then tell whose channel it is.
            id=self.locator.url(pod, CHANNEL_PREFIX + token),
            token=token,
            key=claims.id,
            pod=pod,
            path=claims.path,
            topic=self.locator.url(pod, claims.path),
            webid=claims.webid,
            origin=claims.origin,
            end_at=claims.end_at,
            state=claims.state,
            single_use=claims.single_use,
        )

    def _receive_from(self, channel: Channel) -> str:
        http_url = self.locator.url(channel.pod, SOCKET_PREFIX + channel.token)
        scheme, rest = http_url.split(":", 1)
        return ("wss" if scheme == "https" else "ws") + ":" + rest

    async def _known(self, pod: str, token: str, *, register: bool) -> Channel | None:
        """The channel ``token`` names: this process's own, or one another process opened (with
        ``--workers`` or several machines, a socket or a DELETE may reach any process), read from
        the signed token; None when it is unknown, expired or ended early."""
        channel = self._by_token.get(token)
        if channel is not None:
            return channel if channel.pod == pod else None
        claims = await self.tokens.read(pod, token)
        if claims is None or claims.end_at <= time.time() or claims.id in self._ended:
            return None
        if not register:
            return self._channel(pod, token, claims)
        self._sweep()
        if len(self._by_token) >= self.limits.max_channels:
            raise TooManyChannels("Too many notification channels on this server; try again later")
        return self._register(pod, token, claims)

    # -- the notification gateway (the protocol's predecessor) --------------------------------------
    async def _negotiate(self, request: web.Request, target: Target) -> web.Response:
        """``{"protocols": ["ws"], "features": [...]}`` → where to ask for a "ws" connection and
        which of the asked-for features it offers. Public, like the service description."""
        doc = self._json_object(await self._request_body(request))
        protocols, features = doc.get("protocols", []), doc.get("features", [])
        if not isinstance(protocols, list) or not isinstance(features, list):
            raise BadRequest('"protocols" and "features" must be lists')
        if "ws" not in protocols:
            raise UnprocessableEntity(f'This server offers the "ws" protocol only, not {protocols}')
        answer = {
            "endpoint": self.locator.url(target.pod, CONNECTION_PATH),
            "protocol": "ws",
            "features": [f for f in GATEWAY_FEATURES if f in features],
        }
        return web.json_response(answer)

    async def _connect(self, request: web.Request, target: Target) -> web.Response:
        """``{"topic": ..., "state"?, "ttl"?}`` → a single-use channel: its ``receiveFrom`` as the
        ``endpoint``, with the channel's description beside it (``id`` ends it early)."""
        creds = await authenticate(request, target)
        if creds.webid is None:
            raise Unauthorized("Authentication required to subscribe to notifications")
        doc = self._json_object(await self._request_body(request))
        topic = doc.get("topic")
        if not isinstance(topic, str):
            raise UnprocessableEntity('The request must name one "topic" resource')
        unsupported = sorted(set(doc) - {"topic", *GATEWAY_FEATURES})
        if unsupported:
            raise UnprocessableEntity(f"Unsupported features: {', '.join(unsupported)}")
        ttl, state = doc.get("ttl"), doc.get("state")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
            raise UnprocessableEntity('"ttl" must be a positive number of seconds')
        if state is not None and not isinstance(state, str):
            raise UnprocessableEntity('"state" must be a string')
        end_at = None if ttl is None else time.time() + float(ttl)
        channel, receive_from = await self._open(
            request, target, creds.webid, topic, end_at, state, single_use=True
        )
        answer = {"endpoint": receive_from, "protocol": "ws", **_description(channel, topic, receive_from)}
        log.info("gateway channel %s on %s for %s", channel.id, topic, creds.webid)
        return web.json_response(answer)

    @staticmethod
    def _read_request(graph: Graph) -> tuple[object, str, float | None, str | None]:
        subjects = set(graph.subjects(RDF.type, None))
        if not subjects:
            raise UnprocessableEntity("The subscription request names no channel type")
        subject = next((s for s in subjects if (s, RDF.type, NOTIFY.WebSocketChannel2023) in graph), None)
        if subject is None:
            types = ", ".join(sorted(str(t) for t in graph.objects(None, RDF.type)))
            raise UnprocessableEntity(
                f"Unsupported channel type {types}; this server offers {WEBSOCKET_CHANNEL}"
            )
        topics = [t for t in graph.objects(subject, NOTIFY.topic) if isinstance(t, URIRef)]
        if len(topics) != 1:
            raise UnprocessableEntity("The subscription request must name exactly one topic resource")
        for feature in _UNSUPPORTED:
            if (subject, feature, None) in graph:
                raise UnprocessableEntity(f"The feature {feature} is not supported")
        end_at: float | None = None
        end = graph.value(subject, NOTIFY.endAt)
        if end is not None:
            value = end.toPython() if isinstance(end, Literal) else None
            if not isinstance(value, datetime):
                raise UnprocessableEntity(f"endAt is not an xsd:dateTime: {end}")
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            end_at = value.timestamp()
        state = graph.value(subject, NOTIFY.state)
        return subject, str(topics[0]), end_at, None if state is None else str(state)

    async def _unsubscribe(self, request: web.Request, target: Target) -> web.Response:
        creds = await authenticate(request, target)
        if creds.webid is None:
            raise Unauthorized("Authentication required to end a notification channel")
        token = target.path[len(CHANNEL_PREFIX) :]
        channel = await self._known(target.pod, token, register=False)
        if channel is None or channel.webid != creds.webid:
            raise NotFound(f"No notification channel {self.locator.url(target.pod, target.path)}")
        await self._end(channel)
        return web.Response(status=204)

    async def _end(self, channel: Channel) -> None:
        """End ``channel`` before its time in every process, this one included
        (``_channel_ended``): its token stays valid until endAt, so each must remember it, and so
        must a process that starts later (``load_ended``), from the database."""
        await self.accessor.end_channel(channel.key, channel.end_at)
        self.feed.publish(channel.pod, CHANNEL_PREFIX + channel.key, ENDED, repr(channel.end_at))

    async def load_ended(self) -> None:
        """The channels ended early before this process started (after its relay is listening, so
        that none ended meanwhile is missed)."""
        self._ended.update(await self.accessor.ended_channels())

    def _channel_ended(self, change: Change) -> None:
        key = change.path[len(CHANNEL_PREFIX) :]
        try:
            end_at = float(change.state or "")
        except ValueError:
            return
        self._ended[key] = end_at
        for channel in [c for c in self._by_token.values() if c.key == key and c.pod == change.pod]:
            self._drop(channel, WSCloseCode.OK, "channel ended")

    # -- channels ----------------------------------------------------------------------------------
    def _drop(self, channel: Channel, code: int, reason: str) -> None:
        self._by_token.pop(channel.token, None)
        tokens = self._by_topic.get((channel.pod, channel.path))
        if tokens is not None:
            tokens.discard(channel.token)
            if not tokens:
                del self._by_topic[(channel.pod, channel.path)]
        if channel.connection is not None:
            channel.connection.close(code, reason)

    def _sweep(self) -> None:
        now = time.time()
        for channel in [c for c in self._by_token.values() if c.expired(now)]:
            self._drop(channel, WSCloseCode.GOING_AWAY, "channel expired")
        for key in [k for k, end_at in self._ended.items() if end_at <= now]:
            del self._ended[key]

    async def _may_read(self, channel: Channel) -> bool:
        """Re-checked before every message: an ACL change since subscribing takes effect at once
        (one cheap epoch read; parsed ACLs come from the WAC cache)."""
        await self.wac.refresh()
        return Mode.READ in await self.wac.modes(channel.pod, channel.path, channel.webid, channel.origin)

    async def _socket(self, request: web.Request, pod: str, token: str) -> web.StreamResponse:
        """WebSocketChannel2023: the ``receiveFrom`` URL, whose token (signed, unforgeable) is the
        credential (browsers cannot send an Authorization header with a WebSocket); read access to
        the topic is checked again before the socket opens."""
        self._sweep()
        channel = await self._known(pod, token, register=True)
        if channel is None:
            raise NotFound("Unknown or expired notification channel")
        if channel.connection is not None:
            raise Conflict("This notification channel already has a connected socket")
        ws = web.WebSocketResponse(heartbeat=self.limits.heartbeat, max_msg_size=4096)
        if not ws.can_prepare(request).ok:
            raise BadRequest("receiveFrom is a WebSocket endpoint: send a WebSocket upgrade request")
        if not await self._may_read(channel):
            self._drop(channel, WSCloseCode.POLICY_VIOLATION, "access revoked")
            raise Forbidden(f"{channel.webid} no longer has read access to {channel.topic}")
        if channel.connection is not None:  # another connect won the race during the check
            raise Conflict("This notification channel already has a connected socket")
        conn = channel.connection = _Connection(ws, self.limits.queue_size)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(max(0.0, channel.end_at - time.time()), self._expire, channel, conn)
        sender: asyncio.Task[None] | None = None
        try:
            await ws.prepare(request)
            await self._initial_state(channel, conn)
            sender = loop.create_task(self._send_loop(channel, conn))
            async for msg in ws:  # the channel is one-way: anything the client sends is ignored
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            timer.cancel()
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            if channel.connection is conn:
                channel.connection = None
            if channel.single_use:
                try:
                    await self._end(channel)
                except Exception as exc:  # shutting down: the database may be closed already
                    log.warning("could not record the end of channel %s: %s", channel.key, exc)
            if not ws.closed:
                await ws.close()
        return ws

    def _expire(self, channel: Channel, conn: _Connection) -> None:
        self._drop(channel, WSCloseCode.GOING_AWAY, "channel expired")
        conn.close(WSCloseCode.GOING_AWAY, "channel expired")

    async def _initial_state(self, channel: Channel, conn: _Connection) -> None:
        """The ``state`` feature: when the topic changed since the state the subscriber named, say
        so as soon as the socket opens."""
        if channel.state is None:
            return
        record = await self.accessor.get(channel.pod, channel.path)
        current = None if record is None else etag(record.version, record.content_type)
        if current != channel.state:
            kind = DELETE if record is None else UPDATE
            conn.offer(_message(kind, channel.topic, state=current))
        channel.state = None

    async def _send_loop(self, channel: Channel, conn: _Connection) -> None:
        while True:
            message = await conn.queue.get()
            if channel.expired():
                self._expire(channel, conn)
                return
            if not await self._may_read(channel):
                self._drop(channel, WSCloseCode.POLICY_VIOLATION, "access revoked")
                conn.close(WSCloseCode.POLICY_VIOLATION, "access revoked")
                return
            try:
                await conn.ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError):
                return

    def _on_change(self, change: Change) -> None:
        if change.kind == ENDED:
            self._channel_ended(change)
            return
        # Every write passes here: build messages only for resources someone watches.
        if not self._by_topic:
            return
        watched = (change.pod, change.path) in self._by_topic
        parent = parent_of(change.path)
        parent_watched = (
            parent is not None and change.kind in (CREATE, DELETE) and (change.pod, parent) in self._by_topic
        )
        if not (watched or parent_watched):
            return
        url = self.locator.url(change.pod, change.path)
        if watched:
            self._deliver(change.pod, change.path, _message(change.kind, url, state=change.state))
        if parent_watched and parent is not None:
            kind = ADD if change.kind == CREATE else REMOVE
            self._deliver(change.pod, parent, _message(kind, url, self.locator.url(change.pod, parent)))

    def _deliver(self, pod: str, path: str, message: dict[str, Any]) -> None:
        for token in self._by_topic.get((pod, path), ()):
            channel = self._by_token[token]
            if channel.connection is not None:
                channel.connection.offer(message)

    async def close(self, app: web.Application | None = None) -> None:
        """Close every socket (server shutdown); channels end with the process."""
        for channel in list(self._by_token.values()):
            if channel.connection is not None:
                channel.connection.close(WSCloseCode.GOING_AWAY, "server shutdown")
        await asyncio.sleep(0)


__all__ = [
    "CHANNEL_PREFIX",
    "CONNECTION_PATH",
    "GATEWAY_PATH",
    "PREFIX",
    "SERVICE_PATH",
    "Change",
    "ChangeFeed",
    "Channel",
    "Limits",
    "Notifications",
]
