"""Operations over real HTTP: health and readiness, Prometheus metrics, request ids, structured logs
that never contain credentials or bodies, and the configuration of all of it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pod import observability
from pod.app import create_app
from pod.cli import _config, build_parser
from pod.config import ConfigError, load_config
from pod.observability import BUCKETS, log_handler
from pod.queue import NewDelivery
from pod.state import API_KEYS, COLLECTOR, QUEUE, STORE, WORKER
from tests.conftest import ALICE, ClientFactory, make_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)")


def parse_metrics(text: str) -> tuple[dict[str, str], Samples]:
    """Prometheus text format 0.0.4 into ({family: type}, {(name, sorted labels): value}); every
    line must be a comment or a well-formed sample of a declared family."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family declared twice: {name}"
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample of an undeclared family: {line!r}"
        pairs = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels or "")))
        samples[(name, pairs)] = float(value)
    return types, samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scrape(client: TestClient[Any, Any]) -> tuple[dict[str, str], Samples]:
    response = await client.get("/.metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_metrics(await response.text())


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything every logger writes at DEBUG, formatted as JSON and as text."""
    json_out, text_out = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers = [log_handler("json", json_out), log_handler("text", text_out)]
    level = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    yield json_out, text_out
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


async def quiet_client(aiohttp_client: Any, tmp_path: Path, **overrides: Any) -> TestClient[Any, Any]:
    """A server without aiohttp's own access logger (``pod serve`` turns it off too), so that
    the captured logs are the ones the server itself writes."""
    server = TestServer(create_app(make_config(tmp_path, **overrides)))
    await server.start_server(access_log=None)
    client: TestClient[Any, Any] = await aiohttp_client(server)
    return client


# -- health ----------------------------------------------------------------------------------------


async def test_liveness_does_not_touch_the_database_readiness_does(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(as_agent=None)
    for path in ("/.health", "/.health/ready"):
        response = await client.get(path)
        assert (response.status, await response.json()) == (200, {"status": "ok"})
        assert response.headers["Cache-Control"] == "no-store"

    async def broken() -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(client.app[STORE].accessor, "ping", broken)
    live = await client.get("/.health")
    assert (live.status, await live.json()) == (200, {"status": "ok"})
    ready = await client.get("/.health/ready")
    assert ready.status == 503
    assert await ready.json() == {
        "status": "unavailable",
        "reason": "database: OperationalError: disk I/O error",
    }


async def test_readiness_gives_up_on_a_database_that_does_not_answer(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(as_agent=None)

    async def stuck() -> int:
        await asyncio.sleep(30)
        return 0

    monkeypatch.setattr(observability, "READY_TIMEOUT", 0.1)
    monkeypatch.setattr(client.app[STORE].accessor, "ping", stuck)
    started = time.monotonic()
    response = await client.get("/.health/ready")
    assert time.monotonic() - started < 5
    assert response.status == 503
    assert (await response.json())["reason"] == "database did not answer within 0.1 s"


async def test_readiness_fails_once_shutdown_begins(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    await client.app.shutdown()  # what SIGTERM triggers before in-flight requests finish
    response = await client.get("/.health/ready")
    assert response.status == 503
    assert (await response.json())["reason"] == "shutting down"
    assert (await client.get("/.health")).status == 200


async def test_server_routes_need_no_credentials_and_take_only_get(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    for path in ("/.health", "/.health/ready", "/.metrics"):
        assert (await client.get(path)).status == 200, path
        assert (await client.head(path)).status == 200, path
        refused = await client.put(path, data=b"x")
        assert refused.status == 405, path
        assert refused.headers["Allow"] == "GET,HEAD"
        assert (await refused.json())["error"] == "Method Not Allowed"
    # the pods' own routes still go through access control
    assert (await client.get("/alice/")).status == 401


# -- metrics ---------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_method_and_status_with_a_latency_histogram(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    for _ in range(3):
        assert (await client.get("/alice/profile/card")).status == 200
    assert (await client.get("/alice/missing")).status == 404
    put = await client.put("/alice/a.ttl", data="<#a> <#b> <#c> .", headers={"Content-Type": "text/turtle"})
    assert put.status == 201
    assert (await client.request("PROPFIND", "/alice/")).status == 405  # WebDAV: not served

    types, samples = await scrape(client)
    assert types == {
        "pod_http_requests_total": "counter",
        "pod_http_request_duration_seconds": "histogram",
        "pod_delivery_queue_depth": "gauge",
        "pod_delivery_attempts_total": "counter",
        "pod_gc_full_collections_total": "counter",
        "pod_gc_full_collection_seconds_total": "counter",
        "pod_notification_subscriptions": "gauge",
        "pod_change_relay_messages_total": "counter",
        "pod_worker_requests_total": "counter",
        "pod_worker_info": "gauge",
    }
    requests = {k[1]: v for k, v in samples.items() if k[0] == "pod_http_requests_total"}
    assert requests == {
        (("method", "GET"), ("status", "200")): 3,
        (("method", "GET"), ("status", "404")): 1,
        (("method", "PUT"), ("status", "201")): 1,
        (("method", "other"), ("status", "405")): 1,  # clients cannot invent label values
    }
    bounds = [
        dict(labels)["le"]
        for (name, labels) in samples
        if name == "pod_http_request_duration_seconds_bucket" and ("method", "GET") in labels
    ]
    assert bounds == [repr(b) for b in BUCKETS] + ["+Inf"]
    cumulative = [
        sample(samples, "pod_http_request_duration_seconds_bucket", method="GET", le=le) for le in bounds
    ]
    assert cumulative == sorted(cumulative)  # type: ignore[type-var]
    assert cumulative[-1] == 4 == sample(samples, "pod_http_request_duration_seconds_count", method="GET")
    total = sample(samples, "pod_http_request_duration_seconds_sum", method="GET")
    assert total is not None and 0 < total < 10
    assert sample(samples, "pod_worker_requests_total", worker="0") == 6

    # the scrape itself is counted by the next one
    _, again = await scrape(client)
    assert sample(again, "pod_http_requests_total", method="GET", status="200") == 4


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[TestServer, list[str]]]:
    """Webhook receivers: /ok accepts, /flaky fails once then accepts, /gone refuses for good."""
    calls: list[str] = []
    flaky = [500]

    async def hook(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        calls.append(name)
        if name == "flaky" and flaky:
            return web.Response(status=flaky.pop())
        return web.Response(status=410 if name == "gone" else 200)

    app = web.Application()
    app.router.add_post("/{name}", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, calls
    await server.close()


async def test_metrics_count_full_garbage_collections(make_client: ClientFactory) -> None:
    client = await make_client()
    app = client.app
    assert app is not None
    _, before = await scrape(client)
    collector = app[COLLECTOR]
    collector.collect()
    collector.collect()
    _, after = await scrape(client)
    counted = {
        name: (sample(before, name), sample(after, name))
        for name in ("pod_gc_full_collections_total", "pod_gc_full_collection_seconds_total")
    }
    collections, seconds = counted.values()
    assert collections[0] is not None and collections[1] == collections[0] + 2
    assert seconds[0] is not None and seconds[1] is not None and seconds[1] > seconds[0]
    assert seconds[1] == pytest.approx(collector.pause_seconds)


async def test_metrics_show_queue_depth_and_delivery_outcomes(
    make_client: ClientFactory, hooks: tuple[TestServer, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pod.delivery.backoff", lambda attempts: 0.05)
    server, calls = hooks
    client = await make_client(as_agent=None)
    app = client.app
    await app[WORKER].stop()  # hold the deliveries so that the depth can be seen
    deliveries = [
        NewDelivery(
            f"urn:event:{name}", "alice", "webhook", ALICE, b"{}", target=str(server.make_url(f"/{name}"))
        )
        for name in ("ok", "flaky", "gone")
    ]
    await app[QUEUE].commit("alice", [], deliveries)
    _, before = await scrape(client)
    assert sample(before, "pod_delivery_queue_depth") == 3
    for outcome in ("delivered", "failed", "retried"):
        assert sample(before, "pod_delivery_attempts_total", outcome=outcome) == 0

    app[WORKER].start()
    deadline = time.monotonic() + 10
    while await app[QUEUE].depth() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    _, after = await scrape(client)
    assert sorted(calls) == ["flaky", "flaky", "gone", "ok"]
    assert sample(after, "pod_delivery_queue_depth") == 0
    assert sample(after, "pod_delivery_attempts_total", outcome="delivered") == 2
    assert sample(after, "pod_delivery_attempts_total", outcome="failed") == 1
    assert sample(after, "pod_delivery_attempts_total", outcome="retried") == 1


# -- request ids -----------------------------------------------------------------------------------


async def test_request_ids_are_generated_or_kept_and_echoed_on_every_response(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    first, second = await client.get("/alice/profile/card"), await client.get("/alice/profile/card")
    ids = [first.headers["X-Request-Id"], second.headers["X-Request-Id"]]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids) and ids[0] != ids[1]

    kept = "Root=1-67891233-abcdef012345678912345678"
    assert (await client.get("/alice/", headers={"X-Request-Id": kept})).headers["X-Request-Id"] == kept
    for insane in ("has spaces in it", "x" * 129, 'quote"d', "semi;colon"):
        echoed = (await client.get("/alice/", headers={"X-Request-Id": insane})).headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{16}", echoed), insane

    # errors, streamed container listings, CORS preflights and the server routes carry one too
    preflight = await client.options(
        "/alice/", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"}
    )
    anonymous = await client.get("/alice/", headers={"Authorization": ""})
    for response in (
        await client.get("/alice/missing"),
        await client.get("/alice/"),
        preflight,
        anonymous,
        await client.get("/.health"),
    ):
        assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-Request-Id"]), response.status


# -- logs ------------------------------------------------------------------------------------------


async def test_json_logs_one_object_per_line_with_request_ids(
    aiohttp_client: Any,
    tmp_path: Path,
    captured: tuple[io.StringIO, io.StringIO],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    json_out, text_out = captured
    client = await quiet_client(aiohttp_client, tmp_path, access_log=True)

    async def boom(pod: str, path: str) -> None:
        raise RuntimeError("storage exploded")

    ok = await client.get("/alice/profile/card?x=1", headers={"X-Request-Id": "trace-1"})
    assert ok.status == 200
    monkeypatch.setattr(client.app[STORE].accessor, "get", boom)
    failed = await client.get("/alice/notes/a%20b.ttl", headers={"Authorization": f"WebID {ALICE}"})
    assert failed.status == 500
    failed_id = failed.headers["X-Request-Id"]

    records = [json.loads(line) for line in json_out.getvalue().splitlines()]
    for record in records:
        assert {"time", "level", "logger", "message", "request_id"} <= record.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    access = [r for r in records if r["logger"] == "pod.access"]
    assert [(r["method"], r["path"], r["status"], r["request_id"]) for r in access] == [
        ("GET", "/alice/profile/card", 200, "trace-1"),  # the path without its query
        ("GET", "/alice/notes/a%20b.ttl", 500, failed_id),
    ]
    assert all(isinstance(r["duration_ms"], float) and r["level"] == "INFO" for r in access)
    (error,) = [r for r in records if r["logger"] == "pod.errors"]
    assert error["level"] == "ERROR" and error["request_id"] == failed_id
    assert "RuntimeError: storage exploded" in error["exception"]
    # records written outside any request have a null id
    (created,) = [r for r in records if r["message"].startswith("created demo pod alice")]
    assert (created["logger"], created["request_id"]) == ("pod", None)
    text = text_out.getvalue()
    assert f"pod.access [{failed_id}]: GET /alice/notes/a%20b.ttl 500 " in text


async def test_logs_never_contain_keys_tokens_signatures_cookies_or_bodies(
    aiohttp_client: Any, tmp_path: Path, captured: tuple[io.StringIO, io.StringIO]
) -> None:
    json_out, text_out = captured
    client = await quiet_client(aiohttp_client, tmp_path, access_log=True, log_level="debug")
    _, real_key = await client.app[API_KEYS].create("alice", ALICE)
    secrets = {
        "real_key": real_key,
        "bad_key": "sk-bad-key-a9f4c1",
        "bearer": "eyBearerTokenC0ffee",
        "dpop_token": "eyDpopAccessToken5150",
        "dpop_proof": "eyDpopProofJwt8086",
        "signature": "c2lnbmF0dXJlLXNlY3JldA",
        "cookie": "session-cookie-77aa",
        "body": "body-text-secret-3141",
        "query": "query-token-2718",
    }
    sent = [
        await client.put(
            "/alice/notes/n.ttl",
            data=f'<#n> <#says> "{secrets["body"]}" .',
            headers={"x-api-key": secrets["real_key"], "Content-Type": "text/turtle"},
        ),
        await client.get("/alice/notes/", headers={"x-api-key": secrets["real_key"]}),
        await client.get("/alice/notes/", headers={"x-api-key": secrets["bad_key"]}),
        await client.get("/alice/", headers={"Authorization": f"Bearer {secrets['bearer']}"}),
        await client.get(
            "/alice/",
            headers={"Authorization": f"DPoP {secrets['dpop_token']}", "DPoP": secrets["dpop_proof"]},
        ),
        await client.post(
            "/alice/inbox/",
            data=json.dumps({"note": secrets["body"]}),
            headers={
                "Content-Type": "application/ld+json",
                "Signature-Input": 'sig1=("@method");keyid="https://x.example/k";created=1',
                "Signature": f"sig1=:{secrets['signature']}:",
            },
        ),
        await client.get("/alice/profile/card", headers={"Cookie": f"session={secrets['cookie']}"}),
        await client.get(f"/alice/profile/card?access_token={secrets['query']}"),
        await client.post(
            "/alice/publish/",
            data=json.dumps({"recipient": ALICE, "topic": "a/b#c", "data": {"s": secrets["body"]}}),
            headers={"x-api-key": secrets["bad_key"], "Content-Type": "application/json"},
        ),
    ]
    assert [r.status for r in sent] == [201, 200, 401, 401, 401, 401, 200, 200, 401]

    logs = json_out.getvalue() + text_out.getvalue()
    # the requests were logged (so the absence below means something) ...
    access = [json.loads(line) for line in json_out.getvalue().splitlines() if '"pod.access"' in line]
    assert len(access) == len(sent)
    # ... and no credential, signature, cookie, query or body is among what was written
    for name, value in secrets.items():
        assert value not in logs, f"{name} leaked into the logs"


# -- configuration ---------------------------------------------------------------------------------


def test_operations_options_from_flags_environment_and_file(tmp_path: Path) -> None:
    defaults = load_config({}, environ={})
    assert (defaults.log_format, defaults.access_log, defaults.workers, defaults.shutdown_timeout) == (
        "text",
        False,
        1,
        30,
    )
    env = {
        "POD_LOG_FORMAT": "json",
        "POD_ACCESS_LOG": "true",
        "POD_WORKERS": "4",
        "POD_SHUTDOWN_TIMEOUT": "5",
    }
    from_env = load_config({}, environ=env)
    assert (from_env.log_format, from_env.access_log, from_env.workers, from_env.shutdown_timeout) == (
        "json",
        True,
        4,
        5,
    )
    toml = tmp_path / "pod.toml"
    toml.write_text('log_format = "json"\nworkers = 3\n')
    assert load_config({}, config_file=str(toml), environ={}).workers == 3
    args = build_parser().parse_args(
        ["serve", "--workers", "2", "--log-format", "json", "--access-log", "--shutdown-timeout", "7"]
    )
    flags = _config(args)
    assert (flags.log_format, flags.access_log, flags.workers, flags.shutdown_timeout) == ("json", True, 2, 7)
    for bad in ({"log_format": "xml"}, {"workers": "0"}, {"workers": "-1"}, {"shutdown_timeout": "-1"}):
        with pytest.raises(ConfigError):
            load_config(bad, environ={})


def test_channel_tokens_are_redacted_from_access_paths() -> None:
    from pod.observability import _loggable_path

    token = "Zq3-secret_TOKEN"
    logged = _loggable_path(f"/alice/.well-known/notifications/ws/{token}")
    assert token not in logged and logged.endswith("/ws/[redacted]")
    assert _loggable_path("/alice/notes/a%20b") == "/alice/notes/a%20b"


async def test_metrics_show_live_update_subscriptions(make_client: ClientFactory) -> None:
    client = await make_client()
    _, before = await scrape(client)
    gauge = "pod_notification_subscriptions"
    assert sample(before, gauge, protocol="WebSocketChannel2023") == 0
    assert sample(before, gauge, protocol="solid-0.1") == 0
    # One process alone has no peer to pass changes to: nothing sent, nothing dropped.
    assert sample(before, "pod_change_relay_messages_total", outcome="sent") == 0
    assert sample(before, "pod_change_relay_messages_total", outcome="dropped") == 0
    turtle = {"Content-Type": "text/turtle"}
    await client.put("/alice/public/n.ttl", headers=turtle, data="")
    public_read = f"""@prefix acl: <http://www.w3.org/ns/auth/acl#> .
<#owner> a acl:Authorization ; acl:agent <{ALICE}> ; acl:accessTo <./> ; acl:default <./> ;
    acl:mode acl:Read, acl:Write, acl:Control .
<#public> a acl:Authorization ; acl:agentClass <http://xmlns.com/foaf/0.1/Agent> ;
    acl:accessTo <./> ; acl:default <./> ; acl:mode acl:Read .
"""
    assert (await client.put("/alice/public/.acl", headers=turtle, data=public_read)).status == 201
    channel = await client.post(
        "/alice/.well-known/notifications/WebSocketChannel2023",
        data=json.dumps(
            {
                "@context": ["https://www.w3.org/ns/solid/notification/v1"],
                "type": "http://www.w3.org/ns/solid/notifications#WebSocketChannel2023",
                "topic": "http://pod.test/alice/public/n.ttl",
            }
        ),
        headers={"Content-Type": "application/ld+json"},
    )
    assert channel.status == 200
    legacy = await client.ws_connect("/.updates", protocols=("solid-0.1",))
    assert (await legacy.receive_str(timeout=5)) == "protocol solid-0.1"
    for path in ("/alice/public/n.ttl", "/alice/public/"):
        await legacy.send_str(f"sub http://pod.test{path}")
        assert (await legacy.receive_str(timeout=5)) == f"ack http://pod.test{path}"
    _, during = await scrape(client)
    assert sample(during, gauge, protocol="WebSocketChannel2023") == 1
    assert sample(during, gauge, protocol="solid-0.1") == 2
    await legacy.close()
    for _ in range(50):  # the server notices the close on its next read
        _, after = await scrape(client)
        if sample(after, gauge, protocol="solid-0.1") == 0:
            break
        await asyncio.sleep(0.02)
    assert sample(after, gauge, protocol="solid-0.1") == 0
