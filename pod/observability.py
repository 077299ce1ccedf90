"""Operations: health checks, Prometheus metrics, request ids and structured logs.

- ``GET /.health``: liveness, ``{"status": "ok"}`` without touching the database.
- ``GET /.health/ready``: readiness; the database must answer a trivial query within two seconds and
  the server must not be shutting down, else 503 with ``{"status": "unavailable", "reason": ...}``.
- ``GET /.metrics``: Prometheus text format 0.0.4. Counters and the latency histogram are kept per
  process in plain dicts (the hot path is a few dict updates); with ``--workers N`` every process
  also writes a snapshot to a shared directory once a second, and a scrape, whichever process
  answers it, adds up the others' snapshots, so totals cover the whole server.
- Every request gets an id: a sane incoming ``X-Request-Id`` is kept, otherwise one is generated;
  it is echoed in the response and attached to every log record written while the request runs.
- Logs are text (default) or one JSON object per line (``log_format = "json"``). Access records
  (``pod.access``) carry method, path (never the query string), status and duration, and nothing
  else of the request: no headers, so no API keys, tokens, signatures or cookies, and no bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import sys
import tempfile
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from pod.config import Config
from pod.state import COLLECTOR, LEGACY_UPDATES, NOTIFICATIONS, QUEUE, STORE, WORKER

access_log = logging.getLogger("pod.access")
log = logging.getLogger("pod.observability")

HEALTH_PATH = "/.health"
READY_PATH = "/.health/ready"
METRICS_PATH = "/.metrics"
REQUEST_ID_HEADER = "X-Request-Id"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READY_TIMEOUT = 2.0
FLUSH_INTERVAL = 1.0

# Latency buckets in seconds, 0.5 ms to 10 s: a cached GET answers in well under a millisecond,
# a large upload or listing can take seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Any other method is counted as "other": a label value chosen by clients would let them create
# series without bound.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OUTCOMES = ("delivered", "failed", "retried")
LIVE = ("channels", "legacy_subscriptions", "relay_sent", "relay_dropped")
# Ids from proxies and tracing systems (UUIDs, hex, base64, "Root=1-..."); nothing that could
# break a log line or a header.
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}").fullmatch

REQUEST_ID = web.RequestKey("request_id", str)
_current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled by the running task, if any."""
    return _current_request_id.get()


# -- metrics ---------------------------------------------------------------------------------------


class Metrics:
    """Request counters and latency histograms of this process, plus the snapshot files of the other
    worker processes when it is one of several (:meth:`share`)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        # method -> [count per bucket (not cumulative; the last is +Inf)..., sum of seconds]
        self.latency: dict[str, list[float]] = {}
        self.worker = 0
        self.directory: Path | None = None

    def observe(self, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"
        key = (method, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        cells = self.latency.get(method)
        if cells is None:
            cells = self.latency[method] = [0.0] * (len(BUCKETS) + 2)
        cells[bisect_left(BUCKETS, seconds)] += 1
        cells[-1] += seconds

    def share(self, directory: Path, worker: int) -> None:
        """Take part in a multi-process server: snapshots go to and are read from ``directory``."""
        self.directory, self.worker = directory, worker

    @property
    def snapshot_path(self) -> Path | None:
        return None if self.directory is None else self.directory / f"worker-{self.worker}.json"

    def snapshot(self, figures: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
        """This process's counters, plus ``figures`` (deliveries, gc, live: see ``process_figures``)."""
        return {
            "worker": self.worker,
            "pid": os.getpid(),
            "requests": [[m, s, n] for (m, s), n in self.requests.items()],
            "latency": self.latency,
            **figures,
        }

    def flush(self, figures: Mapping[str, Mapping[str, float]]) -> None:
        """Write this process's snapshot atomically (readers never see half a file)."""
        path = self.snapshot_path
        if path is None:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.snapshot(figures), fh)
        os.replace(tmp, path)

    def snapshots(self, figures: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
        """This process's live figures and the latest snapshot of every other worker."""
        found = [self.snapshot(figures)]
        if self.directory is not None:
            for path in sorted(self.directory.glob("worker-*.json")):
                if path == self.snapshot_path:
                    continue
                try:
                    found.append(json.loads(path.read_bytes()))
                except (OSError, ValueError):  # a worker that has not written yet, or is gone
                    continue
        return found


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(snapshots: Iterable[dict[str, Any]], queue_depth: int | None) -> str:
    """Prometheus text exposition of the sum of ``snapshots``. Label values come from fixed sets
    (methods, status codes, outcomes, worker numbers), so none needs escaping."""
    requests: dict[tuple[str, int], int] = {}
    latency: dict[str, list[float]] = {}
    deliveries = dict.fromkeys(OUTCOMES, 0)
    collections, collecting = 0, 0.0
    live = dict.fromkeys(LIVE, 0)
    workers: list[tuple[int, int, int]] = []
    for snap in snapshots:
        for name, value in (snap.get("live") or {}).items():
            if name in live:
                live[name] += int(value)
        gc = snap.get("gc") or {}
        collections += int(gc.get("collections", 0))
        collecting += float(gc.get("seconds", 0.0))
        served = 0
        for method, status, count in snap["requests"]:
            requests[(method, status)] = requests.get((method, status), 0) + count
            served += count
        for method, cells in snap["latency"].items():
            total = latency.setdefault(method, [0.0] * len(cells))
            for i, value in enumerate(cells):
                total[i] += value
        for outcome in OUTCOMES:
            deliveries[outcome] += int(snap["deliveries"].get(outcome, 0))
        workers.append((int(snap["worker"]), int(snap["pid"]), served))

    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    family("pod_http_requests_total", "counter", "HTTP requests answered, by method and status.")
    for (method, status), count in sorted(requests.items()):
        out.append(f'pod_http_requests_total{{method="{method}",status="{status}"}} {count}')
    family(
        "pod_http_request_duration_seconds",
        "histogram",
        "Time from a request reaching the application to its handler's return, by method.",
    )
    for method, cells in sorted(latency.items()):
        cumulative = 0.0
        for bound, value in zip((*BUCKETS, "+Inf"), cells[:-1], strict=True):
            cumulative += value
            le = bound if isinstance(bound, str) else repr(bound)
            out.append(
                f'pod_http_request_duration_seconds_bucket{{method="{method}",le="{le}"}} '
                f"{_number(cumulative)}"
            )
        out.append(f'pod_http_request_duration_seconds_sum{{method="{method}"}} {cells[-1]!r}')
        out.append(f'pod_http_request_duration_seconds_count{{method="{method}"}} {_number(cumulative)}')
    if queue_depth is not None:
        family(
            "pod_delivery_queue_depth",
            "gauge",
            "Deliveries waiting in the queue (queued or retrying), read from the database when scraped.",
        )
        out.append(f"pod_delivery_queue_depth {queue_depth}")
    family(
        "pod_delivery_attempts_total",
        "counter",
        "Delivery attempts by outcome: delivered, failed (final) or retried (a transient failure,"
        " scheduled again; this is the retry count).",
    )
    for outcome in OUTCOMES:
        out.append(f'pod_delivery_attempts_total{{outcome="{outcome}"}} {deliveries[outcome]}')
    family(
        "pod_gc_full_collections_total",
        "counter",
        "Full garbage collections, run at quiet moments or at least once a minute (pod.collector).",
    )
    out.append(f"pod_gc_full_collections_total {collections}")
    family("pod_gc_full_collection_seconds_total", "counter", "Time the full garbage collections took.")
    out.append(f"pod_gc_full_collection_seconds_total {_number(collecting)}")
    family(
        "pod_notification_subscriptions",
        "gauge",
        "Open live-update subscriptions by protocol: Solid Notifications channels"
        " (WebSocketChannel2023, also those opened through the notification gateway) and"
        " solid-0.1 subscriptions (one per resource a socket watches).",
    )
    out.append(f'pod_notification_subscriptions{{protocol="WebSocketChannel2023"}} {live["channels"]}')
    out.append(f'pod_notification_subscriptions{{protocol="solid-0.1"}} {live["legacy_subscriptions"]}')
    family(
        "pod_change_relay_messages_total",
        "counter",
        "Messages carrying committed changes to the other server processes, so that their"
        " subscribers hear them: sent, or dropped (a peer's buffer was full or the database was"
        " away; those subscribers missed the changes).",
    )
    out.append(f'pod_change_relay_messages_total{{outcome="sent"}} {live["relay_sent"]}')
    out.append(f'pod_change_relay_messages_total{{outcome="dropped"}} {live["relay_dropped"]}')
    family("pod_worker_requests_total", "counter", "HTTP requests answered by each server process.")
    for worker, _, served in sorted(workers):
        out.append(f'pod_worker_requests_total{{worker="{worker}"}} {served}')
    family("pod_worker_info", "gauge", "The server processes: worker number and process id.")
    for worker, pid, _ in sorted(workers):
        out.append(f'pod_worker_info{{worker="{worker}",pid="{pid}"}} 1')
    return "\n".join(out) + "\n"


# -- per-application state ---------------------------------------------------------------------------


class Operations:
    """What the middleware and the operations routes share for one application."""

    def __init__(self, config: Config) -> None:
        self.metrics = Metrics()
        # Access records are written with --access-log, and at debug level as before.
        self.access_log = config.access_log or config.log_level == "debug"
        self.stopping = False


OPERATIONS = web.AppKey("operations", Operations)


def _gc_counts(app: web.Application) -> dict[str, float]:
    collector = app.get(COLLECTOR)
    if collector is None:
        return {}
    return {"collections": collector.collections, "seconds": collector.pause_seconds}


def _live_counts(app: web.Application) -> dict[str, int]:
    counts: dict[str, int] = {}
    notifications = app.get(NOTIFICATIONS)
    if notifications is not None:
        counts["channels"] = notifications.open_channels
        relay = notifications.feed.relay
        if relay is not None:
            counts["relay_sent"], counts["relay_dropped"] = relay.sent, relay.dropped
    legacy = app.get(LEGACY_UPDATES)
    if legacy is not None:
        counts["legacy_subscriptions"] = legacy.subscriptions
    return counts


def process_figures(app: web.Application) -> dict[str, dict[str, Any]]:
    """What this process adds to its metrics snapshot besides requests and latency."""
    return {"deliveries": _delivery_counts(app), "gc": _gc_counts(app), "live": _live_counts(app)}


def _delivery_counts(app: web.Application) -> dict[str, int]:
    worker = app.get(WORKER)
    if worker is None:
        return dict.fromkeys(OUTCOMES, 0)
    stats = worker.stats
    return {"delivered": stats.delivered, "failed": stats.failed, "retried": stats.retried}


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics and the access record of every request. This is the hot path: a clock
    read before and after, a few dict updates, and a log call only when access logs are on."""
    start = time.perf_counter()
    ops = request.app[OPERATIONS]
    request_id = request.headers.get(REQUEST_ID_HEADER)
    if request_id is None or not _SANE_ID(request_id):
        request_id = f"{random.getrandbits(64):016x}"  # reseeded in forked workers
    request[REQUEST_ID] = request_id
    token = _current_request_id.set(request_id)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # the few that pass the error middleware (redirects)
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - start
        ops.metrics.observe(request.method, status, elapsed)
        if ops.access_log:
            duration_ms = round(elapsed * 1000, 3)
            path = _loggable_path(request.rel_url.raw_path)
            access_log.info(
                "%s %s %s %.1fms",
                request.method,
                path,
                status,
                duration_ms,
                extra={"method": request.method, "path": path, "status": status, "duration_ms": duration_ms},
            )
        _current_request_id.reset(token)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare also sees streamed responses, whose headers are sent inside the handler.
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def _only_get(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])


_NO_STORE = {"Cache-Control": "no-store"}


async def health(request: web.Request) -> web.StreamResponse:
    _only_get(request)
    return web.json_response({"status": "ok"}, headers=_NO_STORE)


async def ready(request: web.Request) -> web.StreamResponse:
    _only_get(request)
    app = request.app
    reason = None
    if app[OPERATIONS].stopping:
        reason = "shutting down"
    elif STORE not in app:
        reason = "starting"
    else:
        try:
            # A trivial query that proves the database answers now (acl_epoch would not: on
            # PostgreSQL it is answered from memory while notifications arrive).
            await asyncio.wait_for(app[STORE].accessor.ping(), READY_TIMEOUT)
        except TimeoutError:
            reason = f"database did not answer within {READY_TIMEOUT:g} s"
        except Exception as exc:
            reason = f"database: {type(exc).__name__}: {exc}"
    if reason is not None:
        return web.json_response({"status": "unavailable", "reason": reason}, status=503, headers=_NO_STORE)
    return web.json_response({"status": "ok"}, headers=_NO_STORE)


async def metrics(request: web.Request) -> web.StreamResponse:
    _only_get(request)
    app = request.app
    depth: int | None = None
    queue = app.get(QUEUE)
    if queue is not None:
        try:
            depth = await queue.depth()
        except Exception:  # a broken database must not take the other figures with it
            log.warning("could not read the delivery queue depth", exc_info=True)
    body = render(app[OPERATIONS].metrics.snapshots(process_figures(app)), depth)
    response = web.Response(body=body.encode(), headers=_NO_STORE)
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response


async def _stopping(app: web.Application) -> None:
    app[OPERATIONS].stopping = True  # readiness fails while in-flight requests finish


async def _flusher(app: web.Application) -> AsyncIterator[None]:
    ops = app[OPERATIONS]
    if ops.metrics.directory is None:
        yield
        return

    async def loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                ops.metrics.flush(process_figures(app))
            except OSError:
                log.warning("could not write the metrics snapshot", exc_info=True)

    task = asyncio.create_task(loop(), name="metrics-flush")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(OSError):
        ops.metrics.flush(process_figures(app))


def install_operations(app: web.Application, config: Config) -> None:
    """Register the operations routes (call before the catch-all route) and their hooks; the
    middleware is :func:`observe_middleware`, placed first."""
    app[OPERATIONS] = Operations(config)
    app.on_response_prepare.append(_echo_request_id)
    app.on_shutdown.append(_stopping)
    app.cleanup_ctx.append(_flusher)
    app.router.add_route("*", HEALTH_PATH, health)
    app.router.add_route("*", READY_PATH, ready)
    app.router.add_route("*", METRICS_PATH, metrics)


# -- logging ---------------------------------------------------------------------------------------

_ACCESS_FIELDS = ("method", "path", "status", "duration_ms")
# A notification channel's socket URL carries its credential (an unguessable token) in the path.
_CHANNEL_TOKEN = re.compile(r"(/\.well-known/notifications/ws/)[^/?]+")


def _loggable_path(raw_path: str) -> str:
    """The path as sent (percent-encoded, no query string), with channel tokens redacted."""
    return _CHANNEL_TOKEN.sub(r"\1[redacted]", raw_path)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request it was written in ("-" outside requests in
    text, null in JSON). On the handler, so records of every logger get it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current_request_id.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, request_id, the access
    fields when present, and the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for field in _ACCESS_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                doc[field] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def log_handler(log_format: str, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(config: Config) -> None:
    """The root logger writes to stderr in the configured format and level (replacing any handler)."""
    logging.basicConfig(level=config.log_level.upper(), handlers=[log_handler(config.log_format)], force=True)
