"""Receiving many events for inboxes on this server in one signed request (``pod.remote_inbox`` sends them).

``GET /.well-known/inbox-batch`` answers ``{"maxItems": N, "maxBytes": B}``: how many events (and
bytes) another server may send in one ``POST`` there. The POST must be signed by the sending pod
(RFC 9421, verified like any pod request, replay guard included: the signature covers the whole
body through its digest). Each item ``{"inbox", "event"}`` is then handled as a signed POST of
``event`` to ``inbox`` would be — the same WAC check on the inbox, the same inbox rules
(``pod.inbox``: topic permission, duplicates, copy, forwards) and the same status and error
message — and the answer lists each item's outcome in order:
``{"results": [{"status": 201, "@id": URL}, {"status": 403, "error": "..."}, ...]}``. An item
answered 2xx is durably stored, as its own request's 2xx would say. The copies of a batch are
committed in one transaction (``Inbox.receive_many``), not one each: a fan-out of a thousand events
was a thousand jobs, savepoints and futures on the database writer, and about as many reads.

Only events travel in batches: an item without a topic is refused (400) rather than stored as a plain
notification. A request that is unsigned, fails verification or is malformed is refused as a whole
with the usual error answer, and its sender falls back to one POST per item.
"""

from __future__ import annotations

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
    return web.json_response({"results": await receive_items(app, creds, items)})


async def receive_items(app: web.Application, creds: Credentials, items: list[Any]) -> list[dict[str, Any]]:
    """Each item answered as ``POST <inbox>`` with ``event`` as its body would be, in item order.

    Each item is checked on its own — its shape, its inbox, the WAC check on that inbox — and the
    inbox rules are applied to those that pass, all at once (``Inbox.receive_many``): their copies
    are committed in one transaction rather than one each, and each is still answered with its own
    outcome.
    """
    assert creds.webid is not None
    locator = app[LOCATOR]
    authorizer = app[AUTHORIZER]
    results: list[dict[str, Any]] = []
    accepted: list[tuple[int, str, str]] = []  # (result index, pod, inbox URL)
    events: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("inbox"), str):
            results.append({"status": 400, "error": SHAPE})
            continue
        event = item.get("event")
        if not isinstance(event, dict):
            results.append({"status": 400, "error": "The event of a batch item must be a JSON object"})
            continue
        inbox = item["inbox"]
        target = locator.target_of_url(inbox)
        if target is None or target.path != INBOX:
            results.append({"status": 404, "error": f"{inbox} is not an inbox on this server"})
            continue
        try:
            await authorizer.authorize(creds, "POST", target.pod, INBOX, None)
        except Exception as exc:
            results.append(_failure(inbox, exc))
            continue
        accepted.append((len(results), target.pod, inbox))
        events.append((target.pod, event))
        results.append({})  # answered below
    if not events:
        return results
    outcomes = await app[INBOX_RECEIVER].receive_many(creds.webid, events)
    forwarded = False
    for (at, pod, inbox), outcome in zip(accepted, outcomes, strict=True):
        if isinstance(outcome, Exception):
            results[at] = _failure(inbox, outcome)
        else:
            results[at] = {"status": 201 if outcome.created else 200, "@id": locator.url(pod, outcome.path)}
            forwarded = forwarded or outcome.forwards > 0
    if forwarded:
        app[WORKER].notify()  # forwards to subscribers were queued: send them now, not at the next poll
    return results


def _failure(inbox: str, exc: Exception) -> dict[str, Any]:
    """An item's answer to its error: the status and message a request of its own would get."""
    if isinstance(exc, PodError):
        return {"status": exc.status, "error": exc.message}
    log.error("batch item for %s failed", inbox, exc_info=exc)
    return {"status": 500, "error": "Internal server error"}
