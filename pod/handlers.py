"""LDP request handlers: one per method, each a thin layer between HTTP and ``ldp.store``.

Handlers parse what the request says (target, headers, body), call the store, and describe the
result with the shared header writers. They never build error responses: they raise domain errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from ldp.accessor import Record
from ldp.conneg import accepts, choose_rdf_type
from ldp.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    PodError,
    Unauthorized,
)
from ldp.headers import (
    STORAGE_DESCRIPTION_PATH,
    created_headers,
    http_date,
    resource_headers,
    storage_links,
)
from ldp.identifiers import PodLocator, Target, is_container
from ldp.listing import stream_listing
from ldp.patch import parse_patch
from ldp.preconditions import Conditions, check_read, etag, not_modified, range_applies
from ldp.ranges import select_range
from ldp.rdf import is_rdf_type, normalize_media_type
from ldp.store import ResourceStore
from ldp.vocab import LDP
from pod.auth import authenticate
from pod.events_http import (
    REPLAY_PATH,
    event_with_deliveries,
    handle_publish,
    handle_replay,
    handle_subscription,
    inbox_page,
    is_self_service_subscription,
    receive_event,
    wants_json,
    wants_plain_json,
)
from pod.inbox import INBOX, is_event
from pod.keys_api import handle_keys, is_keys_path
from pod.notifications import PREFIX as NOTIFICATIONS_PREFIX
from pod.publish import PUBLISH
from pod.state import AUTHORIZER, LOCATOR, NOTIFICATIONS, PARSED_PATCH, PERMISSIONS, STORE
from pod.subscriptions import SUBSCRIPTIONS_PATH, parse_subscriptions

_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel\s*=\s*"?([^",;]+)"?')
_CONTAINER_TYPES = {str(LDP.BasicContainer), str(LDP.Container)}
_LISTING_PAGE = 1000

TARGET = web.RequestKey("target", Target)

Handler = Callable[[web.Request, Target], Awaitable[web.StreamResponse]]


def _locator(request: web.Request) -> PodLocator:
    return request.app[LOCATOR]


def _store(request: web.Request) -> ResourceStore:
    return request.app[STORE]


def target_of(request: web.Request) -> Target:
    """The pod and path a request addresses (cached on the request)."""
    target = request.get(TARGET)
    if target is None:
        target = _locator(request).locate(request.host, request.raw_path)
        request[TARGET] = target
    return target


def _conditions(request: web.Request) -> Conditions:
    return Conditions.of(request.headers)


def _headers(request: web.Request, target: Target, exists: bool) -> dict[str, str]:
    headers = resource_headers(_locator(request), target.pod, target.path, exists)
    permissions = request.get(PERMISSIONS)
    if permissions is not None and request.get(TARGET) == target:
        headers["WAC-Allow"] = permissions.header()
    return headers


def _not_found(request: web.Request, target: Target) -> NotFound:
    return NotFound(
        f"{_locator(request).url(target.pod, target.path)} not found",
        headers=_headers(request, target, False),
    )


def _content_type(request: web.Request) -> str:
    """Solid Protocol §5.2: a write without Content-Type is refused (400), since the server cannot know
    how to interpret the body."""
    media = normalize_media_type(request.headers.get(hdrs.CONTENT_TYPE))
    if media is None or "/" not in media:
        raise BadRequest("Content-Type header is required")
    return media


async def _body(request: web.Request) -> bytes:
    return await request.read()


# -- GET / HEAD ------------------------------------------------------------------------------------
async def handle_get(request: web.Request, target: Target) -> web.StreamResponse:
    store = _store(request)
    if target.path == STORAGE_DESCRIPTION_PATH:
        return await _storage_description(request, target)
    record = await store.accessor.get(target.pod, target.path)
    if record is None:
        raise _not_found(request, target)
    cond = _conditions(request)
    check_read(record, cond)
    accept = request.headers.get(hdrs.ACCEPT)
    headers = _headers(request, target, True)
    headers["Last-Modified"] = http_date(record.modified)
    # Without it a browser may reuse a read for a while without asking (heuristic freshness from
    # Last-Modified, RFC 9111 §4.2.2), and miss what another client wrote meanwhile. Revalidating
    # costs a 304 when nothing changed.
    headers["Cache-Control"] = "no-cache"
    if is_container(record.path):
        media = choose_rdf_type(accept)
        return await _container(request, target, record, media, headers, cond)
    if is_rdf_type(record.content_type):
        media = choose_rdf_type(accept, record.content_type)
    else:
        media = record.content_type
        if accept and not accepts(accept, media):
            raise NotAcceptable(f"This resource is only available as {media}")
    tag = headers["ETag"] = etag(record.version, media)
    if not_modified(record, cond):
        return web.Response(status=304, headers=headers)
    body = record.body if media == record.content_type else store.representation(target.pod, record, media)
    headers["Content-Type"] = media
    headers["Accept-Ranges"] = "bytes"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return web.Response(status=200, headers=headers)
    # RFC 9110 §14.2: range handling is defined for GET only; §13.2.2 step 5: If-Range after the
    # other preconditions.
    wanted = request.headers.get(hdrs.RANGE)
    if wanted is not None and range_applies(record, tag, request.headers.get(hdrs.IF_RANGE)):
        span = select_range(wanted, len(body))
        if span is not None:
            headers["Content-Range"] = span.content_range()
            return web.Response(status=206, body=span.of(body), headers=headers)
    return web.Response(status=200, body=body, headers=headers)


async def _container(
    request: web.Request,
    target: Target,
    record: Record,
    media: str,
    headers: dict[str, str],
    cond: Conditions,
) -> web.StreamResponse:
    """A container's listing is streamed, so a ``Range`` on it is ignored (RFC 9110 §14.2 allows
    that) and answered in full."""
    store, locator = _store(request), _locator(request)
    headers["ETag"] = etag(record.version, media)
    headers["Content-Type"] = media
    if not_modified(record, cond):
        return web.Response(status=304, headers=headers)
    if request.method == "HEAD":
        return web.Response(status=200, headers=headers)
    url = locator.url(target.pod, target.path)
    head = store.container_head(target.pod, record)
    children = store.accessor.iter_children(target.pod, target.path, _LISTING_PAGE)
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    async for chunk in stream_listing(head, url, children, lambda p: locator.url(target.pod, p), media):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _storage_description(request: web.Request, target: Target) -> web.StreamResponse:
    """Solid Protocol §4.1: the storage description, advertised by ``rel=storageDescription``."""
    store, locator = _store(request), _locator(request)
    if await store.accessor.get(target.pod, "/") is None:
        raise _not_found(request, target)
    media = choose_rdf_type(request.headers.get(hdrs.ACCEPT))
    root = locator.pod_root(target.pod)
    body = store.storage_description(target.pod, root, media)
    headers = _headers(request, target, True)
    headers["Content-Type"] = media
    return web.Response(body=b"" if request.method == "HEAD" else body, headers=headers)


# -- PUT / POST / PATCH / DELETE -------------------------------------------------------------------
async def handle_put(request: web.Request, target: Target) -> web.StreamResponse:
    media = _content_type(request)
    record, created = await _store(request).put(
        target.pod, target.path, media, await _body(request), _conditions(request)
    )
    return _written(request, target, record, created)


def _written(request: web.Request, target: Target, record: Record, created: bool) -> web.Response:
    headers = _headers(request, target, True)
    headers["ETag"] = etag(record.version, record.content_type)
    if created:
        headers["Location"] = _locator(request).url(target.pod, target.path)
        return web.Response(status=201, headers=headers)
    return web.Response(status=204, headers=headers)


def _wants_container(request: web.Request) -> bool:
    for value in request.headers.getall(hdrs.LINK, []):
        for uri, rel in _LINK_RE.findall(value):
            if rel.strip() == "type" and uri in _CONTAINER_TYPES:
                return True
    return False


async def handle_post(request: web.Request, target: Target) -> web.StreamResponse:
    store = _store(request)
    if not is_container(target.path):
        if await store.accessor.get(target.pod, target.path) is None:
            raise _not_found(request, target)
        raise MethodNotAllowed("POST is only allowed on containers", headers=_headers(request, target, True))
    media = _content_type(request)
    body = await _body(request)
    record = await store.post(
        target.pod, target.path, request.headers.get("Slug"), _wants_container(request), media, body
    )
    locator = _locator(request)
    headers = created_headers(locator, target.pod, target.path, record.path)
    headers["Location"] = locator.member_url(target.pod, target.path, record.path[len(target.path) :])
    headers["ETag"] = etag(record.version, record.content_type)
    return web.Response(status=201, headers=headers)


async def handle_patch(request: web.Request, target: Target) -> web.StreamResponse:
    media = _content_type(request)
    record, created = await _store(request).patch(
        target.pod, target.path, media, await _body(request), _conditions(request), request.get(PARSED_PATCH)
    )
    return _written(request, target, record, created)


async def handle_delete(request: web.Request, target: Target) -> web.StreamResponse:
    await _store(request).delete(target.pod, target.path, _conditions(request))
    return web.Response(status=204)


async def handle_options(request: web.Request, target: Target) -> web.StreamResponse:
    exists = await _store(request).accessor.get(target.pod, target.path) is not None
    return web.Response(status=204, headers=_headers(request, target, exists))


HANDLERS: dict[str, Handler] = {
    "GET": handle_get,
    "HEAD": handle_get,
    "PUT": handle_put,
    "POST": handle_post,
    "PATCH": handle_patch,
    "DELETE": handle_delete,
    "OPTIONS": handle_options,
}


async def authorize(request: web.Request, target: Target) -> None:
    """Credentials ▸ required modes ▸ permissions, before any handler runs.

    Whether a PATCH needs Append or Write depends on what it does, so it is parsed first. A PATCH
    that does not parse is authorized as the most demanding kind, and its error reported only to
    those allowed to make it, so a malformed request reveals nothing to strangers.
    """
    creds = await authenticate(request, target)
    inserts_only = False
    patch_error: PodError | None = None
    if request.method == "PATCH":
        try:
            url = _locator(request).url(target.pod, target.path)
            parsed = parse_patch(await request.read(), _content_type(request), url)
            request[PARSED_PATCH] = parsed
            inserts_only = parsed.inserts_only
        except PodError as exc:
            patch_error = exc
    try:
        permissions = await request.app[AUTHORIZER].authorize(
            creds, request.method, target.pod, target.path, request.headers.get("Origin"), inserts_only
        )
    except (Unauthorized, Forbidden) as refused:
        if request.method in ("GET", "HEAD"):
            # Solid Protocol §4.1 (ldp.headers.storage_links): a refused read names the storage
            # too, which is how a client finds the storage's services for a resource it may not read.
            refused.headers["Link"] = storage_links(_locator(request), target.pod)
        raise
    if permissions is not None:
        request[PERMISSIONS] = permissions
    if patch_error is not None:
        raise patch_error


async def _event_route(request: web.Request, target: Target) -> web.StreamResponse | None:
    """The event API's behaviour on top of an authorized LDP request, or None for plain LDP."""
    method, path = request.method, target.path
    if method == "POST" and path == INBOX:
        try:
            doc = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if is_event(doc):
            return await receive_event(request, target, doc)
    elif method == "GET" and path == INBOX and wants_plain_json(request):
        return await inbox_page(request, target)
    elif method == "GET" and path.startswith(PUBLISH) and not is_container(path) and wants_json(request):
        return await event_with_deliveries(request, target)
    elif method == "PUT" and path == SUBSCRIPTIONS_PATH:
        parse_subscriptions(await request.read())  # refuse a list the server could not use
    return None


async def dispatch(request: web.Request) -> web.StreamResponse:
    handler = HANDLERS.get(request.method)
    target = target_of(request)
    if handler is None:
        raise MethodNotAllowed(f"Method {request.method} is not supported")
    if target.path.startswith(NOTIFICATIONS_PREFIX):
        return await request.app[NOTIFICATIONS].handle(request, target)  # its own access rules
    if is_keys_path(target.path):
        return await handle_keys(request, target)
    if target.path == REPLAY_PATH:
        return await handle_replay(request, target)
    if target.path == PUBLISH and request.method == "POST":
        return await handle_publish(request, target)  # authenticated by its API key, not by WAC
    if is_self_service_subscription(request, target):
        await authenticate(request, target)
        return await handle_subscription(request, target)
    await authorize(request, target)
    special = await _event_route(request, target)
    if special is not None:
        return special
    return await handler(request, target)
