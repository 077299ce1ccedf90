"""Application factory: ``create_app(config)`` wires storage, the store and the middlewares."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ldp.sqlite import SqliteAccessor
from ldp.store import ResourceStore
from pod.config import Config
from pod.cors import add_cors_headers, preflight_middleware
from pod.errors import error_middleware
from pod.handlers import dispatch
from pod.pods import create_pod, pod_info
from pod.state import CONFIG, LOCATOR, STORE

log = logging.getLogger("pod")


async def _storage(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    accessor = SqliteAccessor(config.database_path)
    await accessor.open()
    app[STORE] = ResourceStore(accessor, app[LOCATOR])
    if config.demo_pod and not await accessor.pods():
        info = await create_pod(accessor, app[LOCATOR], config.demo_pod, config.oidc_issuer)
        log.info("created demo pod %s at %s (WebID %s)", info.name, info.url, info.webid)
    yield
    await accessor.close()


def create_app(config: Config) -> web.Application:
    # Middleware order: preflights are answered before anything can refuse them; every error,
    # including aiohttp's own (413), becomes a response in one place.
    app = web.Application(
        middlewares=[preflight_middleware, error_middleware],
        client_max_size=config.max_body_size,
        handler_args={"max_field_size": 16384},
    )
    app[CONFIG] = config
    app[LOCATOR] = config.locator()
    app.cleanup_ctx.append(_storage)
    app.on_response_prepare.append(add_cors_headers)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


__all__ = ["create_app", "pod_info"]
