"""HTTP endpoints of the event API, on top of LDP.

- ``POST <pod>/publish/``: publish (``x-api-key``);
- ``GET <pod>/publish/<id>`` as JSON: the event and the state of each of its deliveries;
- ``POST <pod>/inbox/`` with an event: receive it (the sender authenticated by signature, or any
  agent the topic rule admits); other notifications are stored as plain LDN;
- ``GET <pod>/inbox/`` with ``Accept: application/json``: pages of events, oldest first;
- ``POST`` / ``DELETE <pod>/settings/subscriptions``: an agent that may read a topic manages its
  own subscription to it;
- ``POST <pod>/.well-known/replay``: the owner queues failed or past deliveries again.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import hdrs, web

from acl.modes import read
from ldp.accessor import Record
from ldp.conneg import parse_accept
from ldp.errors import BadRequest, Forbidden, MethodNotAllowed, Unauthorized
from ldp.identifiers import PodLocator, Target
from ldp.rdf import normalize_media_type
from ldp.readcache import MISS, ReadCache
from pod.auth import require_owner
from pod.events import TOPIC_FILTER_RE, filter_container, parse_time
from pod.grants import subscribe
from pod.inbox import INBOX, is_event
from pod.publish import PUBLISH, parse_body, require_api_key
from pod.state import (
    API_KEYS,
    AUTHORIZER,
    CREDENTIALS,
    INBOX_RECEIVER,
    LOCATOR,
    PUBLISHER,
    QUEUE,
    STORE,
    WORKER,
)
from pod.subscriptions import (
    SUBSCRIPTIONS_PATH,
    Subscription,
)

PAGE = 50
MAX_PAGE = 500
REPLAY_PATH = "/.well-known/replay"


def wants_plain_json(request: web.Request) -> bool:
    """``Accept: application/json`` preferred over RDF: the event API's JSON shapes."""
    for media, q in parse_accept(request.headers.get(hdrs.ACCEPT)):
        if q <= 0:
            continue
        if media == "application/json":
            return True
        if media in ("text/turtle", "application/ld+json", "application/n-triples", "text/n3", "*/*"):
            return False
    return False


def wants_json(request: web.Request) -> bool:
    """JSON or JSON-LD asked for explicitly (not just accepted through ``*/*``)."""
    return any(
        q > 0 and media in ("application/json", "application/ld+json")
        for media, q in parse_accept(request.headers.get(hdrs.ACCEPT))
    )


# -- publishing ---------------------------------------------------------------------------------------
async def handle_publish(request: web.Request, target: Target) -> web.StreamResponse:
    app = request.app
    key = await app[API_KEYS].verify(require_api_key(request.headers), target.pod)
    raw = await request.read()
    events = parse_body(request.headers.get(hdrs.CONTENT_TYPE), raw)
    # Pods on this server receive their copies in the publish's own transaction, through their inbox.
    published = await app[PUBLISHER].publish(target.pod, key.agent, events, app[INBOX_RECEIVER])
    worker = app[WORKER]
    worker.stats.delivered += published.delivered
    if published.queued:
        worker.notify()
    urls = published.urls
    batch = raw.lstrip()[:1] == b"["  # a batch is answered with an array, in request order
    body: Any = [{"id": url} for url in urls] if batch else {"id": urls[0]}
    return web.json_response(body, status=201, headers={"Location": urls[0]})


async def event_with_deliveries(request: web.Request, target: Target) -> web.StreamResponse:
    """The stored event plus, per recipient: delivered (when), retrying (attempts, next attempt,
    last error) or failed (why)."""
    app = request.app
    record = await app[STORE].read(target.pod, target.path)
    doc = json.loads(record.body)
    url = app[LOCATOR].url(target.pod, target.path)
    # Only this pod's own deliveries: a pod on the same server that received the event queues its
    # forwards to its subscribers under the same shared event id, and those are not the
    # publisher's business (on another server the publisher could not see them either).
    doc["deliveries"] = [d.as_json() for d in await app[QUEUE].for_event(url) if d.sender == target.pod]
    return web.json_response(doc, content_type="application/ld+json")


# -- inbox --------------------------------------------------------------------------------------------
async def receive_event(request: web.Request, target: Target, doc: dict[str, Any]) -> web.StreamResponse:
    creds = request[CREDENTIALS]
    if creds.webid is None:
        raise Unauthorized("Events must come from an authenticated sender")
    received = await request.app[INBOX_RECEIVER].receive(target.pod, creds.webid, doc)
    if received.created:
        request.app[WORKER].notify()
    location = request.app[LOCATOR].url(target.pod, received.path)
    return web.json_response(
        {"@id": location}, status=201 if received.created else 200, headers={"Location": location}
    )


def _since(by: str, value: str | None) -> tuple[int, float]:
    if value is None or value == "":
        return 0, 0.0
    try:
        if by == "token":
            return int(value), 0.0
        if by == "timestamp":
            return 0, float(value) / 1000.0
        if by == "datetime":
            return 0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(f"Invalid from for by={by}: {value}") from None
    raise BadRequest(f"Invalid by: {by} (expected token, timestamp or datetime)")


async def inbox_page(request: web.Request, target: Target) -> web.StreamResponse:
    query = request.query
    by = query.get("by", "token")
    fmt = query.get("format", "full")
    if fmt not in ("full", "links"):
        raise BadRequest(f"Invalid format: {fmt} (expected full or links)")
    try:
        limit = int(query.get("limit", PAGE))
    except ValueError:
        raise BadRequest(f"Invalid limit: {query.get('limit')}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    after, since = _since(by, query.get("from"))
    app = request.app
    accessor = app[STORE].accessor
    # The page is a function of the database and the query alone (who may read it was decided
    # before): where the storage keeps a read cache, the assembled page is kept in it too.
    cache: ReadCache | None = getattr(accessor, "cache", None)
    key = ("inbox-page", target.pod, target.path, by, after, since, limit, fmt)
    if cache is not None:
        cached = cache.get(key)
        if cached is not MISS:
            return web.Response(body=cached, content_type="application/json")
        generation = cache.generation
    rows = await accessor.arrivals(target.pod, target.path, after, since, limit)
    page = _page(app[LOCATOR], target, rows, fmt, by, after)
    if cache is not None:
        cache.put(key, page, len(page), generation)
    return web.Response(body=page, content_type="application/json")


def _page(
    locator: PodLocator, target: Target, rows: list[tuple[int, Record, float]], fmt: str, by: str, after: int
) -> bytes:
    # Items are stored JSON (validated when written), so a page is assembled from the stored bytes
    # rather than decoded and encoded again: that was most of the cost of serving a page.
    items: list[bytes] = []
    for _, record, _created in rows:
        body = record.body.strip()
        if fmt == "full" and body[:1] in (b"{", b"[") and _embeddable(record.content_type, body):
            items.append(body)
        else:
            items.append(json.dumps(locator.url(target.pod, record.path)).encode())
    next_token = str(rows[-1][0]) if rows else (str(after) if by == "token" and after else "")
    return b'{"contains": [' + b", ".join(items) + b'], "next": ' + json.dumps(next_token).encode() + b"}"


def _embeddable(content_type: str, body: bytes) -> bool:
    """JSON text that can go into the page as is. JSON-LD was parsed when it was written; plain
    JSON is stored unchecked (it is not RDF), so it is checked here."""
    media = normalize_media_type(content_type)
    if media == "application/ld+json":
        return True
    if media != "application/json":
        return False
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


# -- subscriptions ------------------------------------------------------------------------------------
async def handle_subscription(request: web.Request, target: Target) -> web.StreamResponse:
    """An agent that may read a topic adds (POST) or removes (DELETE ?topic=) its own subscription."""
    app = request.app
    creds = request[CREDENTIALS]
    if creds.webid is None:
        raise Unauthorized("Authentication required to manage a subscription")
    doc: dict[str, Any] = {}
    if request.method == "POST":
        try:
            doc = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest("request body is not valid JSON object") from None
        if not isinstance(doc, dict):
            raise BadRequest("request body is not valid JSON object")
        topic = doc.get("topic")
    else:
        topic = request.query.get("topic", "")
    if not isinstance(topic, str) or not TOPIC_FILTER_RE.match(topic):
        raise BadRequest("No valid topic found")
    wac = app[AUTHORIZER].wac
    await wac.refresh()
    if not await wac.allows(
        target.pod, [read(filter_container(topic))], creds.webid, request.headers.get("Origin")
    ):
        raise Forbidden(f"{creds.webid} may not read topic {topic}")
    options = {name: doc.get(name) for name in ("inbox", "webhook")}
    for name, value in options.items():
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Invalid {name} URL: {value}")
    secret = doc.get("secret", "")
    await subscribe(
        app[STORE],
        target.pod,
        creds.webid,
        topic,
        inbox=options["inbox"],
        webhook=options["webhook"],
        secret=secret if isinstance(secret, str) else "",
        remove=request.method == "DELETE",
    )
    return web.Response(status=201 if request.method == "POST" else 204)


def is_self_service_subscription(request: web.Request, target: Target) -> bool:
    if target.path != SUBSCRIPTIONS_PATH:
        return False
    return request.method == "POST" or (request.method == "DELETE" and "topic" in request.query)


# -- replay -------------------------------------------------------------------------------------------
async def handle_replay(request: web.Request, target: Target) -> web.StreamResponse:
    app = request.app
    locator = app[LOCATOR]
    await require_owner(request, target, "replay deliveries")
    if request.method != "POST":
        raise MethodNotAllowed(f"{request.method} is not supported on {locator.url(target.pod, target.path)}")
    since = parse_time(request.query.get("from"), 0.0)
    until = parse_time(request.query.get("to"), float("inf"))
    states = request.query.get("states", "failed").split(",")
    if not set(states) <= {"failed", "delivered"}:
        raise BadRequest("states must be failed and/or delivered")
    count = await app[QUEUE].replay(target.pod, since, until, states)
    app[WORKER].notify()
    return web.json_response({"replayed": count})


__all__ = [
    "INBOX",
    "PUBLISH",
    "REPLAY_PATH",
    "Subscription",
    "event_with_deliveries",
    "handle_publish",
    "handle_replay",
    "handle_subscription",
    "inbox_page",
    "is_event",
    "is_self_service_subscription",
    "receive_event",
    "wants_json",
    "wants_plain_json",
]
