"""Application factory: ``create_app(config)`` wires storage, access control and the middlewares."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from acl.apikeys import ApiKeys
from acl.authorizer import Authorizer
from acl.credentials import Authenticator
from acl.documents import Documents
from acl.oidc import DpopVerifier
from acl.signatures import SignatureVerifier, webid_key_from_graph
from acl.wac import Wac
from ldp.errors import Conflict
from ldp.headers import UPDATES_PATH
from ldp.quota import Quota
from ldp.store import ResourceStore
from pod.backend import open_backend
from pod.batch_inbox import install_batch_inbox
from pod.change_relay import open_relay
from pod.collector import QuietCollector
from pod.config import Config
from pod.cors import add_cors_headers, preflight_middleware
from pod.delivery import DeliveryWorker
from pod.errors import error_middleware
from pod.handlers import dispatch
from pod.inbox import Inbox
from pod.legacy_updates import LegacyUpdates
from pod.notifications import Notifications
from pod.observability import OPERATIONS, install_operations, observe_middleware
from pod.outbound import OutboundClient, OutboundError
from pod.pods import create_pod
from pod.publish import Publisher, RemoteTopicCheck
from pod.replay import SharedSignatureReplay
from pod.state import (
    API_KEYS,
    AUTHENTICATOR,
    AUTHORIZER,
    COLLECTOR,
    CONFIG,
    DOCUMENTS,
    INBOX_RECEIVER,
    LEGACY_UPDATES,
    LOCATOR,
    NOTIFICATIONS,
    OUTBOUND,
    PUBLISHER,
    QUEUE,
    STORE,
    WORKER,
)

log = logging.getLogger("pod")


async def _outbound(app: web.Application) -> AsyncIterator[None]:
    client = OutboundClient(allow_loopback=app[CONFIG].allow_loopback)
    app[OUTBOUND] = client
    yield
    await client.close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    locator = app[LOCATOR]
    backend = await open_backend(config)
    accessor, queue = backend.accessor, backend.queue
    store = ResourceStore(accessor, locator)
    documents = Documents(store, locator, app[OUTBOUND])
    app[STORE] = store
    app[DOCUMENTS] = documents
    app[API_KEYS] = keys = ApiKeys(backend.keys)
    app[AUTHORIZER] = Authorizer(Wac(accessor, locator, documents.group_members), accessor, locator)
    outbound = app[OUTBOUND]

    async def fetch_json(url: str) -> Any:
        response = await outbound.get(url, headers={"Accept": "application/json"}, timeout=5.0)
        if not 200 <= response.status < 300:
            raise OutboundError(f"HTTP {response.status} from {url}")
        return response.json()

    async def resolve_key(key_id: str) -> tuple[str, dict[str, str]]:
        return webid_key_from_graph(await documents.graph(key_id), key_id)

    dpop = DpopVerifier(
        fetch_json=fetch_json, issuers_of=documents.oidc_issuers, shared_replay=backend.claims
    )
    app[AUTHENTICATOR] = Authenticator(
        keys,
        dpop=dpop,
        signatures=SignatureVerifier(
            resolve_key, replay_cache=SharedSignatureReplay(backend.claims) if backend.claims else None
        ),
        unsafe_webid_header=config.unsafe_webid_header,
    )
    wac = app[AUTHORIZER].wac
    inbox = Inbox(accessor, queue, locator, wac)
    worker = DeliveryWorker(
        queue,
        locator,
        documents,
        outbound,
        inbox.receive,
        accessor.pod_key,
        max_age=config.delivery_max_age,
        max_backoff=config.delivery_max_backoff,
    )
    app[QUEUE], app[INBOX_RECEIVER], app[WORKER] = queue, inbox, worker
    app[PUBLISHER] = publisher = Publisher(
        queue, locator, wac, RemoteTopicCheck(documents, outbound, worker.key_for), accessor.pod_exists
    )
    app[NOTIFICATIONS] = notifications = Notifications(locator, wac, accessor)
    store.on_change = inbox.on_change = publisher.on_change = notifications.feed.publish
    store.quota = inbox.quota = publisher.quota = Quota(accessor.usage, config.pod_quota)
    await accessor.track_usage(config.pod_quota > 0)
    feed = notifications.feed
    feed.relay = await open_relay(backend.name, accessor, config.data_dir, feed.deliver)
    await notifications.load_ended()
    app[LEGACY_UPDATES] = LegacyUpdates(locator, wac, lambda: app[AUTHENTICATOR], feed.subscribe)
    store.describers.append(notifications.describe)
    if config.unsafe_webid_header:
        log.warning(
            "UNSAFE: 'Authorization: WebID <uri>' is trusted without proof (--unsafe-webid-header). "
            "Anyone can act as any agent. Use this only for conformance tests."
        )
    if config.demo_pod and not await accessor.pods():
        try:
            info = await create_pod(accessor, locator, config.demo_pod, config.oidc_issuer)
            log.info("created demo pod %s at %s (WebID %s)", info.name, info.url, info.webid)
        except Conflict:
            pass  # another process on the same database (--workers, several machines) was first
    worker.start()  # resumes whatever a previous run left queued
    yield
    await worker.stop()
    if feed.relay is not None:
        await feed.relay.close()
    await backend.close()


async def _start_collector(app: web.Application) -> None:
    """Full garbage collections at quiet moments (``pod.collector``), counted from requests
    answered and deliveries settled. Started after the cleanup contexts, once storage is open and
    the startup heap is built, so that ``start`` freezes all of it."""
    metrics = app[OPERATIONS].metrics
    stats = app[WORKER].stats

    def activity() -> int:
        return sum(metrics.requests.values()) + stats.delivered + stats.failed + stats.retried

    app[COLLECTOR] = collector = QuietCollector(activity)
    collector.start()


async def _stop_collector(app: web.Application) -> None:
    if COLLECTOR in app:
        await app[COLLECTOR].stop()


async def _close_sockets(app: web.Application) -> None:
    if NOTIFICATIONS in app:
        await app[NOTIFICATIONS].close()
    if LEGACY_UPDATES in app:
        await app[LEGACY_UPDATES].close()


async def _legacy_updates(request: web.Request) -> web.StreamResponse:
    return await request.app[LEGACY_UPDATES].handle(request)


def create_app(config: Config) -> web.Application:
    # Middleware order: every request gets its id and is measured first; preflights are answered
    # before anything can refuse them; every error, including aiohttp's own (413), becomes a
    # response in one place.
    app = web.Application(
        middlewares=[observe_middleware, preflight_middleware, error_middleware],
        client_max_size=config.max_body_size,
        handler_args={"max_field_size": 16384},
    )
    app[CONFIG] = config
    app[LOCATOR] = config.locator()
    app.cleanup_ctx.append(_outbound)
    app.cleanup_ctx.append(_storage)
    app.on_startup.append(_start_collector)  # after the cleanup contexts: storage is open
    app.on_cleanup.append(_stop_collector)
    app.on_response_prepare.append(add_cors_headers)
    app.on_shutdown.append(_close_sockets)
    install_operations(app, config)  # /.health, /.metrics: server routes before the pods' catch-all
    install_batch_inbox(app)  # /.well-known/inbox-batch: events from another server, many at once
    app.router.add_get(UPDATES_PATH, _legacy_updates)  # solid-0.1 live updates (Updates-Via)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
