"""scripts/bench workloads of the event API (imported by bench.py, which they register into).

- ``publish``: POST of one event to ``/publish/`` for a recipient pod on the same server, at
  ``--connections``; a 201 means the event and its delivery are on disk. Deliveries run in the
  same process meanwhile; afterwards the bench waits for the queue to drain and says how fast.
- ``inbox``: GET of the first page (50) of an inbox holding a few thousand delivered events.
- ``fanout``: one event to a pod (``hub``) whose ``--subscribers`` subscribers live on a second
  server process: time from the publish until every copy is stored there.
- ``rss``: the server's resident memory while ``--events`` events are stored (curve and delta),
  then while a container with that many children is listed.

All need the bench's own server: fixtures are made in bulk with the project's modules
(``setup_pods.py``) on its data, as ``pod create`` / ``pod grant`` / ``pod subscribe`` /
``pod key create`` would make them one by one.
"""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from bench import (
    POD,
    PROFILE_RATE,
    TURTLE,
    Context,
    RssSampler,
    SetupError,
    Spec,
    measure,
    mib,
    say,
    summarise_profile,
    workload,
)

TOPIC = "realestate/contact"
EVENT_TOPIC = TOPIC + "#add"
DRAIN_TIMEOUT = 300.0
INBOX_EVENTS = 3000
FANOUT_TARGET_MS = 250.0
FLAT_MIB = 16.0  # RSS growth still called flat: this much, or 10% of the starting RSS if larger


def _publisher(ctx: Context) -> dict[str, Any]:
    """The bench pod (publisher): its WebID, /publish/ path and an owner API key."""
    info: dict[str, Any] = ctx.setup([{"op": "pods", "names": [POD], "key": True}])["pods"][POD]
    from urllib.parse import urlsplit

    info["publish"] = urlsplit(info["url"]).path + "publish/"
    return info


def _recipients(ctx: Context, names: list[str], publisher: str) -> dict[str, Any]:
    """Pods on the same server that let ``publisher`` publish on the topic, each with an owner key."""
    pods: dict[str, Any] = ctx.setup(
        [{"op": "pods", "names": names, "key": True, "publish": {"agent": publisher, "topic": TOPIC}}]
    )["pods"]
    return pods


def _event(recipient: str, n: int = 0) -> bytes:
    return json.dumps(
        {
            "recipient": recipient,
            "topic": EVENT_TOPIC,
            "data": {"n": n, "name": "Ada", "email": "ada@example.org"},
        }
    ).encode()


def _drain_hooks(ctx: Context) -> tuple[Any, Any]:
    start: dict[str, float] = {}

    def before() -> None:
        start.update(ctx.metrics())
        start["t"] = time.monotonic()

    def after() -> list[str]:
        end = ctx.metrics()
        elapsed = max(1e-6, time.monotonic() - start.get("t", time.monotonic()))
        during = end.get("delivered", 0) - start.get("delivered", 0)
        queued = end.get("depth", 0)
        waited, left = ctx.wait_drained(DRAIN_TIMEOUT)
        final = ctx.metrics()
        drained = final.get("delivered", 0) - end.get("delivered", 0)
        lines = [
            f"deliveries: {during:,.0f} made during the run ({during / elapsed:,.0f}/s), "
            f"{queued:,.0f} still queued at its end, drained in {waited:.1f} s "
            f"({drained / waited if waited > 0.05 else 0:,.0f}/s)"
        ]
        if left:
            lines.append(
                f"deliveries: {left:,.0f} still queued after {DRAIN_TIMEOUT:.0f} s: later figures are skewed"
            )
        failed = final.get("failed", 0) - start.get("failed", 0)
        if failed:
            lines.append(f"deliveries: {failed:,.0f} FAILED (see the server log)")
        return lines

    return before, after


@workload(
    "publish",
    "POST one event to /publish/ for a recipient on this server (durable)",
    target_rps=8000,
    target_p99_ms=15,
    own_server=True,
    budget=lambda a: a.warmup + a.duration + DRAIN_TIMEOUT + 120,
)
def _publish(ctx: Context) -> Spec:
    me = _publisher(ctx)
    bob = _recipients(ctx, ["bob"], me["webid"])["bob"]
    ctx.wait_drained(DRAIN_TIMEOUT)
    headers = {"Content-Type": "application/json", "X-Api-Key": me["key"]}
    body = _event(bob["webid"])
    ctx.expect(ctx.request("POST", me["publish"], body, headers), 201)
    before, after = _drain_hooks(ctx)
    note = "one event per request, app API key; recipient pod on this server (in-process delivery)"
    return Spec("POST", me["publish"], headers, body, note=note, before=before, after=after)


@workload(
    "inbox",
    f"GET an inbox page of 50 events (JSON) from an inbox of {INBOX_EVENTS}",
    target_rps=6000,
    own_server=True,
    budget=lambda a: a.warmup + a.duration + DRAIN_TIMEOUT + 180,
)
def _inbox(ctx: Context) -> Spec:
    assert ctx.bench is not None
    me = _publisher(ctx)
    carol = _recipients(ctx, ["carol"], me["webid"])["carol"]
    ctx.wait_drained(DRAIN_TIMEOUT)
    *_, result = ctx.bench.publish_events(ctx, me["publish"], me["key"], carol["webid"], INBOX_EVENTS)
    if not isinstance(result, dict) or result["events"] != INBOX_EVENTS:
        raise SetupError(f"publishing the inbox's events: {result}")
    waited, left = ctx.wait_drained(DRAIN_TIMEOUT)
    if left:
        raise SetupError(f"{left:.0f} deliveries to carol still queued after {waited:.0f} s")
    from urllib.parse import urlsplit

    path = urlsplit(carol["url"]).path + "inbox/"
    headers = {"Accept": "application/json", "X-Api-Key": carol["key"]}
    held, token = 0, ""
    while True:
        query = f"?limit=500&from={token}" if token else "?limit=500"
        _, data, _ = ctx.expect(ctx.request("GET", path + query, None, headers), 200)
        page = json.loads(data)
        if not page["contains"]:
            break
        held += len(page["contains"])
        token = page["next"]
    _, data, _ = ctx.expect(ctx.request("GET", path, None, headers), 200)
    first = json.loads(data)
    if len(first["contains"]) != 50 or held < INBOX_EVENTS:
        raise SetupError(f"inbox holds {held} events, first page {len(first['contains'])} (wanted 50)")
    return Spec("GET", path, headers, note=f"first page (oldest 50, full events) of {held}; owner API key")


# -- fan-out ---------------------------------------------------------------------------------------
@measure(
    "fanout",
    "one event to N subscribers on a second server process: publish → all copies stored",
    budget=lambda a: 300 + a.subscribers * 0.2 + a.rounds * 90,
)
def _fanout(ctx: Context) -> dict[str, Any]:
    bench, server = ctx.own()
    assert bench.tmp is not None
    n, rounds = bench.args.subscribers, bench.args.rounds
    from bench import free_port

    started = time.monotonic()
    me = _publisher(ctx)
    hub_webid = server.base + "hub/profile/card#me"
    port_b = free_port()
    base_b = f"http://127.0.0.1:{port_b}/"
    data_b = bench.tmp / "data-fanout-b"
    # Server B (not yet started): N subscriber pods, each letting the hub publish on the topic.
    out_b = bench.setup_on(
        {
            "data_dir": str(data_b),
            "base_url": base_b,
            "database": "",
            "ops": [
                {"op": "pods", "prefix": "sub", "count": n, "publish": {"agent": hub_webid, "topic": TOPIC}}
            ],
        }
    )
    subscribers = [p["webid"] for _, p in sorted(out_b["pods"].items())]
    # Server A (running): the hub, which the publisher may publish to, with N subscribe grants and
    # N subscriptions (inboxes discovered from the subscribers' profiles).
    out_a = ctx.setup(
        [
            {"op": "pods", "names": ["hub"], "publish": {"agent": me["webid"], "topic": TOPIC}},
            {"op": "hub", "pod": "hub", "topic": TOPIC, "subscribers": subscribers},
        ]
    )
    if out_a["pods"]["hub"]["webid"] != hub_webid:
        raise SetupError(f"hub WebID {out_a['pods']['hub']['webid']} is not the expected {hub_webid}")
    # B gets the CPU the load generator would use (idle here); A keeps its own.
    server_b = bench.start_pod_server(
        "fanout-b", data_dir=data_b, port=port_b, demo_pod="", cpus=bench.pin_load
    )
    setup_s = time.monotonic() - started
    say(
        "fanout",
        f"set-up {setup_s:.1f} s: {n} subscriber pods on server B (pid {server_b.pid}, {base_b}), "
        f"hub pod on server A with {n} subscribe grants and subscriptions",
    )
    db = sqlite3.connect(f"file:{data_b / 'pod.sqlite3'}?mode=ro", uri=True, timeout=30)
    headers = {"Content-Type": "application/json", "X-Api-Key": me["key"]}
    results: list[dict[str, Any]] = []

    def one_round(label: str) -> dict[str, Any]:
        ctx.wait_drained(60)
        base_id = db.execute("SELECT coalesce(max(id), 0) FROM resources").fetchone()[0]
        cpu_a, cpu_b = server.cpu_seconds() or 0.0, server_b.cpu_seconds() or 0.0
        t0 = time.time()
        status, body, _ = ctx.request("POST", me["publish"], _event(hub_webid), headers)
        t_ack = time.time()
        if status != 201:
            raise SetupError(f"publish to the hub → {status}: {body[:300]!r}")
        deadline = t0 + 60
        count, last = 0, None
        while True:
            count, last = db.execute(
                "SELECT count(*), max(created) FROM resources WHERE id > ? AND parent = '/inbox/'", (base_id,)
            ).fetchone()
            if count >= n or time.time() > deadline:
                break
            time.sleep(0.002)
        seen = time.time()
        # CPU time of each server over the round (the batches' answers included): steadier than
        # the wall time on a busy host, so rounds on different days can be compared.
        time.sleep(0.1)
        r = {
            "round": label,
            "copies": count,
            "ack_ms": round((t_ack - t0) * 1000, 1),
            "stored_ms": round(((last or seen) - t0) * 1000, 1),
            "seen_ms": round((seen - t0) * 1000, 1),
            "cpu_a_ms": round(((server.cpu_seconds() or 0.0) - cpu_a) * 1000),
            "cpu_b_ms": round(((server_b.cpu_seconds() or 0.0) - cpu_b) * 1000),
        }
        done = "all" if count >= n else f"ONLY {count} of"
        say(
            "fanout",
            f"{label:<6} {done} {n} copies stored {r['stored_ms']:>8.1f} ms after the publish "
            f"(201 after {r['ack_ms']:.1f} ms; last copy seen by polling B at {r['seen_ms']:.1f} ms; "
            f"CPU A {r['cpu_a_ms']} ms, B {r['cpu_b_ms']} ms)",
        )
        return r

    try:
        for i in range(rounds):
            results.append(one_round("cold" if i == 0 else f"warm{i}"))
        prof_lines: list[str] = []
        if bench.args.profile:
            out = Path(bench.args.profile)
            out.mkdir(parents=True, exist_ok=True)
            spies = [
                (label, path, bench.start_profiler(path, 3, pid=pid, delay=0))
                for label, pid, path in (
                    ("A (publisher, hub)", server.pid, out / "fanout-A.txt"),
                    ("B (subscribers)", server_b.pid, out / "fanout-B.txt"),
                )
            ]
            time.sleep(0.5)  # py-spy attached
            one_round("profiled")
            for label, path, spy in spies:
                if spy is not None:
                    bench.finish_profiler(spy)
                prof_lines += [f"  server {label}:", *summarise_profile(path, 3, PROFILE_RATE)]
        for line in prof_lines:
            print(line)
    finally:
        db.close()
        bench.stop(server_b)
    warm = [r["stored_ms"] for r in results[1:] if r["copies"] >= n]
    judged = (
        statistics.median(warm) if warm else (results[0]["stored_ms"] if results[0]["copies"] >= n else None)
    )
    complete = all(r["copies"] >= n for r in results)
    verdict = "PASS" if complete and judged is not None and judged <= FANOUT_TARGET_MS else "MISS"
    basis = "median of the warm rounds" if warm else "the only round"
    say(
        "fanout",
        f"{judged if judged is not None else '—'} ms ({basis}); target ≤{FANOUT_TARGET_MS:g} ms  {verdict}",
    )
    return {
        "subscribers": n,
        "rounds": results,
        "ms": judged,
        "setup_s": round(setup_s, 1),
        "target": f"≤{FANOUT_TARGET_MS:g} ms",
        "verdict": verdict,
    }


# -- memory ----------------------------------------------------------------------------------------
def _flat(before: int, after: int) -> tuple[bool, float]:
    limit = max(FLAT_MIB * 2**20, 0.10 * before)
    return after - before <= limit, limit


def _stream(
    ctx: Context, path: str, headers: dict[str, str], sampler: RssSampler
) -> tuple[int, int, int, float]:
    """GET ``path`` reading the body in 64 KiB pieces: (status, bytes, children counted, seconds)."""
    child = re.compile(rb"/publish/[0-9a-f]{32}")
    conn = http.client.HTTPConnection(ctx.host, ctx.port, timeout=600)
    t0 = time.monotonic()
    total = children = 0
    tail = b""
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        while True:
            piece = resp.read(65536)
            if not piece:
                break
            total += len(piece)
            window = tail + piece
            children += len(child.findall(window)) - len(child.findall(tail))
            tail = window[-64:]
        status = resp.status
    finally:
        conn.close()
    return status, total, children, time.monotonic() - t0


@measure(
    "rss",
    "server RSS while --events events are stored, then while a container of that many children is listed",
    budget=lambda a: 900 + a.events / 200,
)
def _rss(ctx: Context) -> dict[str, Any]:
    bench, server = ctx.own()
    args = bench.args
    n = args.events
    me = _publisher(ctx)
    dave = _recipients(ctx, ["dave"], me["webid"])["dave"]
    ctx.wait_drained(DRAIN_TIMEOUT)
    idle = server.rss_bytes()
    warm_n = min(5000, n)
    for _ in bench.publish_events(ctx, me["publish"], me["key"], dave["webid"], warm_n, batch=args.batch):
        pass
    ctx.wait_drained(DRAIN_TIMEOUT)
    warm = server.rss_bytes()
    procs = f" ({server.workers} processes, summed)" if server.workers > 1 else ""
    say(
        "rss", f"RSS{procs} idle {mib(idle)}; after a warm-up of {warm_n:,} events {mib(warm)} (the baseline)"
    )
    every = max(args.batch, n // 10)
    curve: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    bound = 600 + n / 250
    for item in bench.publish_events(
        ctx,
        me["publish"],
        me["key"],
        dave["webid"],
        n,
        batch=args.batch,
        connections=8,
        report_every=every,
        timeout=bound,
    ):
        if isinstance(item, dict):
            result = item
            continue
        stored, secs = item
        rss = server.rss_bytes()
        depth = ctx.metrics().get("depth", 0)
        curve.append({"events": stored, "seconds": secs, "rss": rss, "queued": depth})
        say(
            "rss",
            f"{stored:>10,} events stored in {secs:7.1f} s ({stored / secs:>6,.0f}/s)  RSS {mib(rss):>11} "
            f"({(rss - warm) / 2**20:+7.1f} MiB)  deliveries queued {depth:>9,.0f}",
        )
    if result.get("errors"):
        raise SetupError(
            f"publishing stopped after {result.get('events')} events: {result.get('first_error')}"
        )
    publish_s = time.monotonic() - t0
    waited, left = ctx.wait_drained(600 + n / 400)
    after = server.rss_bytes()
    ok, limit = _flat(warm, after)
    say(
        "rss",
        f"{n:,} events published in {publish_s:.0f} s ({n / publish_s:,.0f}/s, batches of {args.batch}); "
        f"deliveries drained {waited:.0f} s later" + (f", {left:,.0f} STILL QUEUED" if left else ""),
    )
    verdict_store = "PASS" if ok and not left else "MISS"
    say(
        "rss",
        f"after storing: RSS {mib(after)}, {(after - warm) / 2**20:+.1f} MiB over the baseline; "
        f"target flat (≤ +{limit / 2**20:.0f} MiB)  {verdict_store}",
    )

    # A container with (at least) that many children: the publisher's /publish/, as Turtle.
    before_list = server.rss_bytes()
    sampler = RssSampler(server)
    status, size, children, secs = _stream(
        ctx, me["publish"], {"Accept": TURTLE, "X-Api-Key": me["key"]}, sampler
    )
    peak = sampler.stop()
    after_list = server.rss_bytes()
    ok_list, limit_list = _flat(before_list, peak)
    verdict_list = "PASS" if ok_list and status == 200 and children >= n else "MISS"
    say(
        "rss",
        f"GET {me['publish']} (Turtle): {status}, {children:,} children, "
        f"{size / 2**20:.1f} MiB in {secs:.1f} s; "
        f"RSS {mib(before_list)} before, peak {mib(peak)} ({(peak - before_list) / 2**20:+.1f} MiB), "
        f"{mib(after_list)} after; target flat (≤ +{limit_list / 2**20:.0f} MiB)  {verdict_list}",
    )
    verdict = "PASS" if verdict_store == "PASS" and verdict_list == "PASS" else "MISS"
    return {
        "events": n,
        "rss_idle": idle,
        "rss_baseline": warm,
        "rss_after": after,
        "curve": curve,
        "publish_s": round(publish_s, 1),
        "drain_s": round(waited, 1),
        "listing": {
            "status": status,
            "children": children,
            "bytes": size,
            "seconds": round(secs, 2),
            "rss_before": before_list,
            "rss_peak": peak,
            "rss_after": after_list,
        },
        "target": "flat",
        "verdict": verdict,
    }
