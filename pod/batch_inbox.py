"""Receiving many events for inboxes on this server in one signed request (``pod.remote_inbox`` sends them).

``GET /.well-known/inbox-batch`` answers ``{"maxItems": N, "maxBytes": B}``: how many events (and
bytes) another server may send in one ``POST`` there. The POST must be signed by the sending pod
(RFC 9421, verified like any pod request, replay guard included: the signature covers the whole
body through its digest). Each item ``{"inbox", "event"}`` is then handled as a signed POST of
``event`` to ``inbox`` would be — the same WAC check on the inbox, the same inbox rules
(``pod.inbox``: topic permission, duplicates, copy, forwards) and the same status and error
message — and the answer lists each item's outcome in order:
``{"results": [{"status": 201, "@id": URL}, {"status": 403, "error": "..."}, ...]}``. An item
answered 2xx is durably stored, as its own request's 2xx would say.

Only events travel in batches: an item without a topic is refused (400) rather than stored as a plain
notification. A request that is unsigned, fails verification or is malformed is refused as a whole
with the usual error answer, and its sender falls back to one POST per item.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import hdrs, web

from acl.credentials import Credentials
from ldp.errors import BadRequest, PayloadTooLarge, PodError, Unauthorized, UnsupportedMediaType
from ldp.identifiers import PodLocator
from ldp.rdf import normalize_media_type
from pod.inbox import INBOX
from pod.remote_inbox import BATCH_MEDIA, BATCH_PATH, MAX_BATCH_ITEMS
from pod.state import AUTHENTICATOR, AUTHORIZER, CONFIG, INBOX_RECEIVER, LOCATOR, WORKER

log = logging.getLogger("pod.batch_inbox")

SHAPE = 'A batch is {"items": [{"inbox": URL, "event": {...}}, ...]} with at least one item'


def install_batch_inbox(app: web.Application) -> None:
    """Register the batch route (call before the catch-all route)."""
    app.router.add_route("GET", BATCH_PATH, describe)
    app.router.add_route("POST", BATCH_PATH, receive_batch)


async def describe(request: web.Request) -> web.StreamResponse:
    return web.json_response({"maxItems": MAX_BATCH_ITEMS, "maxBytes": request.app[CONFIG].max_body_size})


def request_url(locator: PodLocator, host: str | None, raw_path: str) -> str:
    """The URL the sender must have signed, built from configuration as for pod requests: on a pod's
    own host in subdomain mode (senders post to the origin of the inboxes), else the base origin."""
    if locator.mode == "subdomain":
        try:
            return locator.request_url(locator.locate(host, locator.base_path).pod, raw_path)
        except PodError:
            pass
    return f"{locator.scheme}://{locator.netloc}{raw_path}"


async def receive_batch(request: web.Request) -> web.StreamResponse:
    app = request.app
    headers = request.headers
    verifier = app[AUTHENTICATOR].signatures
    if "Signature-Input" not in headers and "Signature" not in headers:
        raise Unauthorized("A batch of events must be signed by the sending pod")
    if verifier is None:
        raise Unauthorized("Signed requests are not accepted by this server")
    body = await request.read()
    url = request_url(app[LOCATOR], request.host, request.raw_path)
    sender = await verifier.verify(request.method, url, headers, body)
    media = normalize_media_type(headers.get(hdrs.CONTENT_TYPE))
    if media != BATCH_MEDIA:
        raise UnsupportedMediaType(f"A batch of events must be sent as {BATCH_MEDIA}, not {media}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(SHAPE) from None
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest(SHAPE)
    if len(items) > MAX_BATCH_ITEMS:
        raise PayloadTooLarge(f"A batch holds at most {MAX_BATCH_ITEMS} events, not {len(items)}")
    creds = Credentials(webid=sender, scheme="signature")
    results = await asyncio.gather(*(_item(app, creds, item) for item in items))
    if any(result["status"] == 201 for result in results):
        app[WORKER].notify()  # the copies' forwards to subscribers are queued
    return web.json_response({"results": results})


async def _item(app: web.Application, creds: Credentials, item: Any) -> dict[str, Any]:
    """One item, answered as ``POST <inbox>`` with ``event`` as its body would be."""
    if not isinstance(item, dict) or not isinstance(item.get("inbox"), str):
        return {"status": 400, "error": SHAPE}
    event = item.get("event")
    if not isinstance(event, dict):
        return {"status": 400, "error": "The event of a batch item must be a JSON object"}
    locator = app[LOCATOR]
    inbox = item["inbox"]
    target = locator.target_of_url(inbox)
    if target is None or target.path != INBOX:
        return {"status": 404, "error": f"{inbox} is not an inbox on this server"}
    assert creds.webid is not None
    try:
        await app[AUTHORIZER].authorize(creds, "POST", target.pod, INBOX, None)
        received = await app[INBOX_RECEIVER].receive(target.pod, creds.webid, event)
    except PodError as exc:
        return {"status": exc.status, "error": exc.message}
    except Exception:
        log.exception("batch item for %s failed", inbox)
        return {"status": 500, "error": "Internal server error"}
    return {"status": 201 if received.created else 200, "@id": locator.url(target.pod, received.path)}
