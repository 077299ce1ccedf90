"""scripts/bench: throughput and latency of the pod server under fixed-concurrency load.

A benchmark, not a test: it starts the server (fresh temp data dir, free loopback port) or uses
``--url``, runs each named workload and prints its figures, its target and PASS/MISS. Two kinds:

- load workloads: a warm-up and a measured period of one repeated request at ``--connections``
  with ``wrk`` (Python/aiohttp fallback in a separate process when wrk cannot be had): requests/s,
  p50/p99 latency, non-2xx count, CPU of the server, the load generator and everything else;
- measurements that drive the server their own way and print their own lines (``acl``: WAC checks
  in-process; ``fanout``: one event to many subscribers on a second server; ``rss``: memory while
  a million events are stored; ``floor``: a bare aiohttp application on the server's CPU, what
  any request costs before the server does anything of its own).

``--compare`` runs get / notify / list against our server and against the Community Solid Server
(installed from npm into the temp dir) and prints the ratios; ``--backends`` runs the core workloads
(get, post) on SQLite and PostgreSQL with 1 and 2 worker processes. Everything the bench starts
(servers, load generators, scratch PostgreSQL databases, temp dirs) is stopped or removed on exit.

Adding a load workload: write a plain (synchronous) ``prepare(ctx) -> Spec`` that creates its
fixtures over HTTP with ``ctx.request`` (or in bulk with ``ctx.setup``) and returns the request to
repeat (fixed path, or ``{i}`` rotating over ``rotate`` paths), and register it with
``@workload(NAME, TITLE, target_rps=..., target_p99_ms=...)``; registry order is run order, ``--only``
selects. A workload whose load is not one repeated request can point ``Spec.lua`` at its own wrk
script (printing the same ``BENCHJSON`` line as workload.lua), or be a ``@measure`` that returns its
figures. Workloads on events live in ``workloads_events.py``.

Exit status: 0 clean run (targets missed or not), 1 some workload on our server had non-2xx or
socket errors, 2 setup failure (server did not start, fixtures refused, no load generator).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The workload modules import this one as ``bench``; when it runs as a script it is ``__main__``,
# and without this they would import (and register into) a second copy of it.
sys.modules.setdefault("bench", sys.modules[__name__])

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PYTHON = os.environ.get("BENCH_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
FIXTURE = (HERE / "fixtures" / "small.ttl").read_bytes()
TURTLE = "text/turtle"
JSONLD = "application/ld+json"
POD = "alice"  # the demo pod of the server the bench starts
PROFILE_RATE = 250  # py-spy samples per second
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# A small Linked Data Notification; its context is inline, so neither server fetches anything.
NOTIFICATION = json.dumps(
    {
        "@context": {"as": "https://www.w3.org/ns/activitystreams#"},
        "@type": "as:Announce",
        "as:actor": {"@id": "http://127.0.0.1/bench/profile#me"},
        "as:object": {"@id": "http://127.0.0.1/bench/article"},
        "as:summary": "scripts/bench notification",
    }
).encode()


# -- workloads -------------------------------------------------------------------------------------
@dataclass
class Spec:
    """The one request a workload repeats. ``path`` may contain ``{i}``, replaced by a counter modulo
    ``rotate`` (0: the path is fixed). ``before`` runs just before the measured period, ``after``
    just after it and returns extra lines to print (e.g. how long the delivery queue took to drain)."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    rotate: int = 0
    lua: Path = HERE / "workload.lua"
    note: str = ""
    before: Callable[[], None] | None = None
    after: Callable[[], list[str]] | None = None
    min_seconds_compared: int = 0  # with --compare: measure at least this long (slow peers)


@dataclass
class Workload:
    name: str
    title: str
    prepare: Callable[[Context], Spec] | None = None  # a load workload ...
    measure: Callable[[Context], dict[str, Any]] | None = None  # ... or a measurement
    target_rps: float | None = None
    target_p99_ms: float | None = None
    own_server: bool = False  # needs the bench's own server (its data dir), not --url
    uses_server: bool = True  # False: runs in-process, no server needed
    budget: Callable[[argparse.Namespace], float] | None = None  # seconds, for the run's time bound

    def seconds(self, args: argparse.Namespace) -> float:
        if self.budget is not None:
            return self.budget(args)
        return float(args.warmup + args.duration + 90)


WORKLOADS: dict[str, Workload] = {}
CORE = ("get", "post")  # what --backends runs unless --only says otherwise
COMPARED = ("get", "notify", "list")  # what --compare runs against CSS


def workload(
    name: str,
    title: str,
    target_rps: float | None = None,
    target_p99_ms: float | None = None,
    own_server: bool = False,
    budget: Callable[[argparse.Namespace], float] | None = None,
) -> Callable[[Callable[[Context], Spec]], Any]:
    def register(fn: Callable[[Context], Spec]) -> Callable[[Context], Spec]:
        WORKLOADS[name] = Workload(
            name,
            title,
            prepare=fn,
            target_rps=target_rps,
            target_p99_ms=target_p99_ms,
            own_server=own_server,
            budget=budget,
        )
        return fn

    return register


def measure(
    name: str,
    title: str,
    budget: Callable[[argparse.Namespace], float],
    own_server: bool = True,
    uses_server: bool = True,
) -> Callable[[Callable[[Context], dict[str, Any]]], Any]:
    """Register a measurement: ``fn(ctx)`` prints its lines (``say``) and returns its figures, with
    ``verdict`` (PASS / MISS / None) and ``target`` (text)."""

    def register(fn: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
        WORKLOADS[name] = Workload(
            name, title, measure=fn, own_server=own_server, uses_server=uses_server, budget=budget
        )
        return fn

    return register


def say(name: str, text: str) -> None:
    print(f"{name:<8} {text}", flush=True)


class SetupError(Exception):
    pass


class Skipped(Exception):
    """The workload cannot run in this configuration (e.g. needs the bench's own server)."""


@workload("get", "GET small public Turtle (10 triples)", target_rps=5000)
def _get(ctx: Context) -> Spec:
    path = ctx.path("public.ttl")
    _, _, resp = ctx.expect(ctx.request("PUT", path, FIXTURE, ctx.writing(TURTLE)), 201, 204, 205)
    spec = Spec("GET", path, {"Accept": TURTLE}, note=ctx.make_public(path, resp))
    ctx.expect(ctx.request("GET", path, None, spec.headers), 200)
    return spec


PUT_PATHS = 1000


@workload("put", f"PUT small Turtle, replace over {PUT_PATHS} paths")
def _put(ctx: Context) -> Spec:
    # Replace-heavy: every path exists before the warm-up, so each measured PUT replaces a resource.
    template = ctx.path("put/r{i}.ttl")
    headers = ctx.writing(TURTLE)
    for i in range(PUT_PATHS):
        ctx.expect(ctx.request("PUT", template.replace("{i}", str(i)), FIXTURE, headers), 201, 204)
    return Spec("PUT", template, headers, FIXTURE, rotate=PUT_PATHS, note=f"replace-heavy, {ctx.auth_note}")


@workload("post", "POST small Turtle into a container (creates; durable)", target_rps=3000)
def _post(ctx: Context) -> Spec:
    container = ctx.path("post/")
    ctx.expect(ctx.request("PUT", container, b"", ctx.writing(TURTLE)), 201, 204)
    spec = Spec("POST", container, ctx.writing(TURTLE), FIXTURE, note=f"create-heavy, {ctx.auth_note}")
    ctx.expect(ctx.request("POST", container, FIXTURE, spec.headers), 201)
    return spec


@workload("notify", "POST small JSON-LD notification into a public container (anonymous; durable)")
def _notify(ctx: Context) -> Spec:
    container = ctx.path("notify/")
    note = ctx.public_container(container, "acl:Read, acl:Append, acl:Write")
    spec = Spec("POST", container, {"Content-Type": JSONLD}, NOTIFICATION, note=f"anonymous; {note}")
    ctx.expect(ctx.request("POST", container, NOTIFICATION, spec.headers), 201)
    return spec


LIST_CHILDREN = 1000


@workload("list", f"GET a public container listing {LIST_CHILDREN} children (Turtle)")
def _list(ctx: Context) -> Spec:
    container = ctx.path("list/")
    note = ctx.public_container(container, "acl:Read")
    headers = ctx.writing(TURTLE)
    for i in range(LIST_CHILDREN):
        ctx.expect(ctx.request("PUT", f"{container}r{i}.ttl", FIXTURE, headers), 201, 204)
    # A slow peer answers a listing in a fraction of a second alone, so at 32 connections each
    # request waits seconds: with --compare it is measured for at least 30 s (and wrk waits 60 s).
    spec = Spec("GET", container, {"Accept": TURTLE}, note=f"anonymous; {note}", min_seconds_compared=30)
    _, body, _ = ctx.expect(ctx.request("GET", container, None, spec.headers), 200)
    missing = [i for i in (0, LIST_CHILDREN // 2, LIST_CHILDREN - 1) if f"r{i}.ttl".encode() not in body]
    if missing:
        raise SetupError(f"listing of {container} lacks children {missing}: {body[:300]!r}")
    return spec


@measure(
    "acl",
    "cost of one cached WAC check, in-process (real SQLite pod)",
    budget=lambda a: 180,
    uses_server=False,
)
def _acl(ctx: Context) -> dict[str, Any]:
    bench = ctx.bench
    assert bench is not None and bench.tmp is not None
    tmp = Path(tempfile.mkdtemp(prefix="wac-", dir=bench.tmp))
    iterations = 20000
    cmd = bench.pinned([PYTHON, str(HERE / "wac_micro.py"), str(tmp), str(iterations)], bench.pin_load)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    shutil.rmtree(tmp, ignore_errors=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if done.returncode != 0 or line is None:
        raise SetupError(f"wac_micro.py failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
    limit = 10.0  # µs: "a cached check costs microseconds"
    judged = [c for c in result["cases"] if c["name"] not in ("topic-1000", "uncached", "refresh")]
    for c in result["cases"]:
        say(
            "acl",
            f"{c['name']:<13} mean {c['mean_us']:>7.2f} µs  p50 {c['p50_us']:>7.2f}  "
            f"p99 {c['p99_us']:>7.2f}  (n={c['n']})  {c['what']}",
        )
    worst = max(judged, key=lambda c: c["mean_us"])
    verdict = "PASS" if worst["mean_us"] <= limit else "MISS"
    say(
        "acl",
        f"cached checks: worst mean {worst['mean_us']:.2f} µs ({worst['name']}); "
        f"target ≤{limit:g} µs mean  {verdict}",
    )
    return {
        **result,
        "worst_cached_mean_us": worst["mean_us"],
        "target": f"≤{limit:g} µs mean",
        "verdict": verdict,
    }


@measure(
    "floor",
    "bare aiohttp on the server's CPU (no middleware, auth or storage): GET, and a JSON POST answered 201",
    budget=lambda a: 2 * (a.warmup + a.duration) + 90,
    own_server=False,
    uses_server=False,
)
def _floor(ctx: Context) -> dict[str, Any]:
    """What a request costs before the server does anything of its own: read each workload's rate
    against it (at full load, one core's microseconds per request are 1e6 / rate)."""
    bench = ctx.bench
    assert bench is not None
    args = bench.args
    port = free_port()
    app = bench._spawn("floor", [PYTHON, str(HERE / "floor_app.py"), str(port)], bench.pin_server, port)
    event = {"recipient": "http://127.0.0.1/bob/profile/card#me", "topic": "bench/topic#add"}
    body = json.dumps({**event, "data": {"n": 0, "name": "Ada", "email": "ada@example.org"}}).encode()
    out: dict[str, Any] = {"verdict": None, "target": "none (a reference)"}
    try:
        bench._wait_ready(app, "/", 30, None)
        origin = f"http://127.0.0.1:{port}"
        for name, spec in (
            ("get", Spec("GET", "/")),
            ("post", Spec("POST", "/", {"Content-Type": "application/json"}, body)),
        ):
            if args.warmup > 0:
                bench.run_load(origin, spec, args.warmup)
            cpu0 = app.cpu_seconds() or 0.0
            res = bench.run_load(origin, spec, args.duration)
            seconds = res["duration_us"] / 1e6
            rps = res["requests"] / seconds
            cpu_pct = 100 * ((app.cpu_seconds() or 0.0) - cpu0) / seconds
            out[name] = {
                "rps": round(rps, 1),
                "p99_ms": round(res["latency_us"]["p99"] / 1000, 2),
                "cpu_pct": round(cpu_pct, 1),
                "us_per_request": round(1e6 / rps * cpu_pct / 100, 1),
            }
            say(
                "floor",
                f"{spec.method:<4} {rps:>9.1f} req/s  p99 {out[name]['p99_ms']:.2f} ms  server CPU "
                f"{cpu_pct:.0f}%: {out[name]['us_per_request']:.1f} µs of CPU per request",
            )
    finally:
        bench.stop(app)
    return out


# -- context for workloads -------------------------------------------------------------------------
class Context:
    """What a workload gets: the bench's own container on one server and a keep-alive HTTP client,
    plus (``server``) that server's process and data, for bulk set-up with the project's modules."""

    def __init__(
        self,
        base_url: str,
        auth: dict[str, str],
        auth_note: str,
        owner: str | None,
        bench: Bench | None = None,
        server: ServerProc | None = None,
    ) -> None:
        self.auth = auth  # headers that make a request the pod owner's (API key, ...); {} for none
        self.auth_note = auth_note
        self.owner = owner  # the owner's WebID, when known: kept in control of the public ACL
        self.bench = bench
        self.server = server  # the bench's own pod server (None for --url and for CSS)
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._conn: http.client.HTTPConnection | None = None
        self.last = ""

    def path(self, rel: str) -> str:
        return self.base_path + rel

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.last = f"{method} {path}"
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, data, resp
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def writing(self, content_type: str) -> dict[str, str]:
        return {"Content-Type": content_type, **self.auth}

    def expect(
        self, result: tuple[int, bytes, http.client.HTTPResponse], *ok: int
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        status, data, _ = result
        if status not in ok:
            raise SetupError(f"fixture setup: {self.last} → {status} (wanted {ok}): {data[:300]!r}")
        return result

    @staticmethod
    def acl_link(resp: http.client.HTTPResponse) -> str | None:
        for link in resp.headers.get_all("Link") or []:
            for part in link.split(","):
                if 'rel="acl"' in part or "rel=acl" in part:
                    return part.split(">")[0].strip().lstrip("<")
        return None

    def make_public(self, path: str, resp: http.client.HTTPResponse) -> str:
        """Give ``path`` its own ACL: public Read (and the owner's full control), when the server
        advertises ACLs (``Link: rel="acl"``). Returns how the resource is read."""
        acl = self.acl_link(resp)
        if acl is None:
            return "no ACLs advertised; read as is"
        if self.owner is None:
            return "server has ACLs but owner WebID unknown: read as is (public there?)"
        acl_path = urlsplit(acl).path or acl
        name = path.rsplit("/", 1)[1]
        doc = (
            "@prefix acl: <http://www.w3.org/ns/auth/acl#> .\n"
            "@prefix foaf: <http://xmlns.com/foaf/0.1/> .\n"
            f"<#owner> a acl:Authorization; acl:agent <{self.owner}>; acl:accessTo <./{name}>;\n"
            "    acl:mode acl:Read, acl:Write, acl:Control .\n"
            f"<#public> a acl:Authorization; acl:agentClass foaf:Agent; acl:accessTo <./{name}>;\n"
            "    acl:mode acl:Read .\n"
        ).encode()
        self.expect(self.request("PUT", acl_path, doc, self.writing(TURTLE)), 201, 204, 205)
        return "anonymous read, public by its own ACL"

    def public_container(self, container: str, modes: str) -> str:
        """Create ``container`` and give it an ACL granting ``modes`` to everyone (foaf:Agent) on it
        and, by acl:default, on its members; the owner keeps full control."""
        _, _, resp = self.expect(self.request("PUT", container, b"", self.writing(TURTLE)), 201, 204, 205)
        acl = self.acl_link(resp)
        if acl is None:
            return "no ACLs advertised; used as is"
        if self.owner is None:
            return "server has ACLs but owner WebID unknown: used as is (public there?)"
        doc = (
            "@prefix acl: <http://www.w3.org/ns/auth/acl#> .\n"
            "@prefix foaf: <http://xmlns.com/foaf/0.1/> .\n"
            f"<#owner> a acl:Authorization; acl:agent <{self.owner}>; acl:accessTo <./>; acl:default <./>;\n"
            "    acl:mode acl:Read, acl:Write, acl:Control .\n"
            "<#public> a acl:Authorization; acl:agentClass foaf:Agent; acl:accessTo <./>; acl:default <./>;\n"
            f"    acl:mode {modes} .\n"
        ).encode()
        self.expect(self.request("PUT", urlsplit(acl).path or acl, doc, self.writing(TURTLE)), 201, 204, 205)
        return f"public ({modes.replace('acl:', '')}) by the container's ACL"

    # -- the bench's own server only ---------------------------------------------------------------
    def own(self) -> tuple[Bench, ServerProc]:
        if self.bench is None or self.server is None or self.server.data_dir is None:
            raise Skipped("needs the bench's own server (not --url)")
        return self.bench, self.server

    def setup(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """Bulk set-up on the server's data with the project's modules (``setup_pods.py``)."""
        bench, server = self.own()
        return bench.setup(server, ops)

    def metrics(self) -> dict[str, float]:
        """Delivery figures from ``/.metrics``: queue depth and attempts by outcome."""
        status, body, _ = self.request("GET", "/.metrics")
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("pod_delivery_queue_depth "):
                out["depth"] = float(line.split()[1])
            m = re.match(r'pod_delivery_attempts_total\{outcome="(\w+)"\} (\S+)', line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def wait_drained(self, timeout: float) -> tuple[float, float]:
        """Wait until the delivery queue is empty: (seconds waited, deliveries still queued)."""
        start = time.monotonic()
        depth = self.metrics().get("depth", 0.0)
        while depth > 0 and time.monotonic() - start < timeout:
            time.sleep(0.2)
            depth = self.metrics().get("depth", 0.0)
        return time.monotonic() - start, depth

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- processes -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    """A server the bench started, in its own session (so its process group is its workers)."""

    label: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    data_dir: Path | None = None
    database: str = ""
    workers: int = 1

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def pids(self) -> list[int]:
        """The server and its descendants (``--workers`` children run in process groups of their own)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def cpu_seconds(self) -> float | None:
        total, tick = 0.0, os.sysconf("SC_CLK_TCK")
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                continue
        return total

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return total

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp: Path | None = None
        self.server: ServerProc | None = None  # the server being measured (CPU%, --profile)
        self.servers: list[ServerProc] = []
        self.children: list[subprocess.Popen[bytes]] = []
        self.databases: list[str] = []  # scratch PostgreSQL databases to drop
        self.pin_server: str | None = None
        self.pin_load: str | None = None

    # Cleanup runs from finally and from the signal handler (SIGINT/SIGTERM/SIGHUP raise SystemExit).
    def cleanup(self) -> None:
        for server in list(self.servers):
            self.stop(server, wait=15)
        procs = list(self.children)
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.children.clear()
        self.servers.clear()
        self.server = None
        for name in list(self.databases):
            self.drop_database(name)
        if self.tmp is not None and not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def plan_pinning(self) -> str:
        cpus = sorted(os.sched_getaffinity(0))
        if self.args.no_pin:
            return "not pinned (--no-pin)"
        if shutil.which("taskset") is None:
            return "not pinned (taskset not found)"
        if len(cpus) < 2:
            return f"not pinned (only {len(cpus)} CPU available)"
        self.pin_load = str(cpus[-1])
        if self.args.url:
            return f"load generator on CPU {self.pin_load}; server external (not pinned by bench)"
        self.pin_server = ",".join(str(c) for c in cpus[:-1])
        return f"server on CPU {self.pin_server}, load generator on CPU {self.pin_load} (taskset)"

    def pinned(self, cmd: list[str], cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus, *cmd] if cpus else cmd

    # -- servers -----------------------------------------------------------------------------------
    def _spawn(self, label: str, cmd: list[str], cpus: str | None, port: int, **kw: Any) -> ServerProc:
        assert self.tmp is not None
        log_path = self.tmp / f"{label}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                self.pinned(cmd, cpus),
                cwd=kw.pop("cwd", ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = ServerProc(label, proc, log_path, port, **kw)
        self.servers.append(server)
        return server

    def _wait_ready(self, server: ServerProc, path: str, timeout: float, ready_line: str | None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not server.alive():
                raise SetupError(
                    f"{server.label} server exited with status {server.proc.returncode}:\n{server.log_tail()}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                conn.request("GET", path, headers={"Accept": TURTLE})
                conn.getresponse().read()
                conn.close()
                # Answering (any status: the pod root may not be public); with several workers, the
                # parent prints its listening line once every worker serves.
                if ready_line is None or ready_line in server.log.read_text(errors="replace"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SetupError(f"{server.label} server not ready after {timeout:.0f} s:\n{server.log_tail()}")

    def start_pod_server(
        self,
        label: str,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        database: str = "",
        workers: int = 1,
        demo_pod: str = POD,
        cpus: str | None = None,
    ) -> ServerProc:
        assert self.tmp is not None
        port = port or free_port()
        data_dir = data_dir or self.tmp / f"data-{label}"
        base = f"http://127.0.0.1:{port}/"
        cmd = [PYTHON, "-m", "pod", "serve", "--data-dir", str(data_dir), "--port", str(port)]
        cmd += ["--base-url", base, "--demo-pod", demo_pod, "--allow-loopback"]
        if database:
            cmd += ["--database", database]
        if workers != 1:
            cmd += ["--workers", str(workers)]
        if self.args.auth == "webid-header":
            cmd.append("--unsafe-webid-header")
        server = self._spawn(label, cmd, cpus, port, data_dir=data_dir, database=database, workers=workers)
        self._wait_ready(
            server, f"/{demo_pod}/" if demo_pod else "/.health", 60, "listening" if workers > 1 else None
        )
        return server

    def start_css(self, server_js: Path, cpus: str | None) -> ServerProc:
        import css

        assert self.tmp is not None
        port = free_port()
        data = self.tmp / "css-data"
        data.mkdir()
        server = self._spawn(
            "css", css.command(server_js, port, data), cpus, port, cwd=server_js.parent.parent
        )
        self._wait_ready(server, "/", 120, None)
        return server

    def stop(self, server: ServerProc, wait: float = 30) -> None:
        """SIGTERM (a graceful stop; the parent of --workers children stops them), SIGKILL to the
        server and its descendants if it has not exited within ``wait`` seconds."""
        if server.alive():
            pids = server.pids()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                for pid in [server.pid, *pids]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                server.proc.wait(timeout=5)
        if server in self.servers:
            self.servers.remove(server)
        if self.server is server:
            self.server = None

    # -- PostgreSQL scratch databases --------------------------------------------------------------
    def _pg(self, sql: str) -> None:
        code = (
            "import asyncio, sys, asyncpg\n"
            "async def main():\n"
            "    conn = await asyncpg.connect(sys.argv[1], timeout=5)\n"
            "    try:\n"
            "        await conn.execute(sys.argv[2])\n"
            "    finally:\n"
            "        await conn.close()\n"
            "asyncio.run(main())\n"
        )
        done = subprocess.run(
            [PYTHON, "-c", code, self.args.postgres, sql], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise SetupError(
                f"PostgreSQL at {self.args.postgres}: {sql}: {done.stderr.strip().splitlines()[-1:]}"
            )

    def create_database(self) -> str:
        name = f"pod_bench_{uuid.uuid4().hex[:10]}"
        self._pg(f"CREATE DATABASE {name}")
        self.databases.append(name)
        parts = urlsplit(self.args.postgres)
        return str(parts._replace(path="/" + name).geturl())

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(SetupError, subprocess.SubprocessError, OSError):
            self._pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if name in self.databases:
            self.databases.remove(name)

    # -- set-up with the project's modules ---------------------------------------------------------
    def setup(self, server: ServerProc, ops: list[dict[str, Any]], base: str | None = None) -> dict[str, Any]:
        assert server.data_dir is not None
        plan = {
            "data_dir": str(server.data_dir),
            "base_url": base or server.base,
            "database": server.database,
            "ops": ops,
        }
        return self.setup_on(plan)

    def setup_on(self, plan: dict[str, Any]) -> dict[str, Any]:
        done = subprocess.run(
            [PYTHON, str(HERE / "setup_pods.py")],
            cwd=ROOT,
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise SetupError(f"setup_pods.py failed (did the project's API change?):\n{done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def owner_auth(self, server: ServerProc) -> tuple[dict[str, str], str, str | None]:
        """Credentials for the bench's own server: (headers, description, owner WebID)."""
        if self.args.auth == "none":
            return {}, "no credentials", None
        info = self.setup(server, [{"op": "pods", "names": [POD], "key": self.args.auth == "apikey"}])[
            "pods"
        ][POD]
        if self.args.auth == "webid-header":
            return {"Authorization": f"WebID {info['webid']}"}, "owner via unsafe WebID header", info["webid"]
        return {"X-Api-Key": info["key"]}, "owner via API key (X-Api-Key)", info["webid"]

    def publish_events(
        self,
        ctx: Context,
        path: str,
        key: str,
        recipient: str,
        events: int,
        *,
        batch: int = 100,
        connections: int = 4,
        report_every: int = 0,
        timeout: float = 3600,
    ) -> Iterator[tuple[int, float] | dict[str, Any]]:
        """Publish ``events`` events with publisher.py (pinned to the load CPU); yields (events
        stored, seconds) at each progress line, then the result dict."""
        spec = {
            "origin": ctx.origin,
            "path": path,
            "headers": {"X-Api-Key": key},
            "recipient": recipient,
            "topic": "realestate/contact#add",
            "events": events,
            "batch": batch,
            "connections": connections,
            "report_every": report_every or events,
            "timeout": timeout,
        }
        proc = subprocess.Popen(
            self.pinned([PYTHON, str(HERE / "publisher.py"), json.dumps(spec)], self.pin_load),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children.append(proc)
        result: dict[str, Any] | None = None
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("PROGRESS "):
                    _, n, s = line.split()
                    yield int(n), float(s)
                elif line.startswith("BENCHJSON "):
                    result = json.loads(line[len("BENCHJSON ") :])
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            self.children.remove(proc)
        if result is None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SetupError(f"publisher.py printed no result (exit {proc.returncode}):\n{err[-2000:]}")
        if proc.stderr:
            proc.stderr.close()
        yield result

    # -- load generation ---------------------------------------------------------------------------
    def run_load(
        self, origin: str, spec: Spec, seconds: int, profile_to: Path | None = None
    ) -> dict[str, Any]:
        assert self.tmp is not None
        body_file = self.tmp / f"body-{uuid.uuid4().hex[:8]}"
        body_file.write_bytes(spec.body or b"")
        conns = self.args.connections
        if self.args.loadgen == "wrk":
            threads = self.args.threads or (1 if self.pin_load else min(2, os.cpu_count() or 1))
            cmd = [
                "wrk",
                f"-t{threads}",
                f"-c{conns}",
                f"-d{seconds}s",
                "--timeout",
                f"{self.args.request_timeout}s",
                "--latency",
                "-s",
                str(spec.lua),
                origin + "/",
                "--",
                f"method={spec.method}",
                f"path={spec.path}",
                f"rotate={spec.rotate}",
                f"step={threads}",
            ]
            if spec.body is not None:
                cmd.append(f"body={body_file}")
            cmd += [f"header={k}:{v}" for k, v in spec.headers.items()]
        else:
            cmd = [
                sys.executable,
                str(HERE / "loadgen.py"),
                json.dumps(
                    {
                        "origin": origin,
                        "method": spec.method,
                        "path": spec.path,
                        "rotate": spec.rotate,
                        "headers": spec.headers,
                        "body_file": str(body_file) if spec.body is not None else None,
                        "connections": conns,
                        "duration": seconds,
                    }
                ),
            ]
        profiler = self.start_profiler(profile_to, self.profile_seconds(seconds)) if profile_to else None
        proc = subprocess.Popen(
            self.pinned(cmd, self.pin_load),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children.append(proc)
        try:
            out, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            raise SetupError(f"load generator did not finish within {seconds + 60:.0f} s") from None
        finally:
            if proc.poll() is not None:  # still running (signal): left to cleanup()
                self.children.remove(proc)
            body_file.unlink(missing_ok=True)
        if profiler is not None:
            self.finish_profiler(profiler)
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("BENCHJSON "):
                result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
                result["raw"] = out.decode(errors="replace")
                return result
        raise SetupError(
            f"load generator printed no result (exit {proc.returncode}):\n"
            f"{out.decode(errors='replace')[-2000:]}\n{err.decode(errors='replace')[-2000:]}"
        )

    # -- optional profiling (py-spy, when installed) -----------------------------------------------
    @staticmethod
    def profile_seconds(seconds: int) -> int:
        return max(1, min(seconds - 2, 5)) if seconds > 3 else 1

    def start_profiler(
        self, out: Path, length: int, pid: int | None = None, delay: float = 1.0
    ) -> subprocess.Popen[bytes] | None:
        """py-spy ``pid`` (default: the measured server) and its worker processes for ``length``
        seconds after ``delay``; raw (collapsed) stacks go to ``out``, summarised afterwards."""
        pid = pid or (self.server.pid if self.server else self.args.server_pid)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not pid or not Path(spy).exists():
            print("  (profiling skipped: needs py-spy on PATH or in the venv, and a known server pid)")
            return None
        cmd = [spy, "record", "--pid", str(pid), "--subprocesses", "--duration", str(length)]
        cmd += ["--rate", str(PROFILE_RATE), "--nonblocking", "--format", "raw", "--output", str(out)]
        if self.args.profile_gil:
            cmd.append("--gil")
        proc = subprocess.Popen(
            self.pinned(["sh", "-c", f'sleep {delay}; exec "$@"', "sh", *cmd], self.pin_load),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.children.append(proc)
        return proc

    def finish_profiler(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=5)
            err = b"timed out"
        finally:
            if proc.poll() is not None:
                self.children.remove(proc)
        if proc.returncode != 0:
            print(f"  (py-spy failed: {err.decode(errors='replace').strip()[-300:]})")

    def wait_idle(self, bound: float = 60.0) -> float:
        """Wait until the measured server is idle (under 20% of a core over 0.25 s): requests a
        warm-up left in flight, or work it queued, must not run into the measured period."""
        if self.server is None:
            return 0.0
        start = time.monotonic()
        last = self.server.cpu_seconds() or 0.0
        while time.monotonic() - start < bound:
            time.sleep(0.25)
            now = self.server.cpu_seconds() or 0.0
            if now - last < 0.05:
                break
            last = now
        return time.monotonic() - start

    def server_cpu_seconds(self) -> float | None:
        """User+system CPU of the measured server and its workers (or --server-pid's process)."""
        if self.server is not None:
            return self.server.cpu_seconds()
        pid = self.args.server_pid
        if not pid:
            return None
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None


class RssSampler:
    """Samples a server's RSS every ``interval`` seconds in a thread; ``peak`` after ``stop()``."""

    def __init__(self, server: ServerProc, interval: float = 0.01) -> None:
        self.server = server
        self.interval = interval
        self.peak = server.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.server.rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self.server.rss_bytes())
        return self.peak


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def machine_busy_seconds() -> float:
    """CPU seconds the machine (all CPUs) spent running tasks since boot, from /proc/stat: user, nice,
    system and steal; interrupt/softirq time (loopback networking) is left out, as it is no other
    program's load."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    user, nice, system = fields[0], fields[1], fields[2]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU seconds of the local PostgreSQL server's processes (``postgres`` by name), read from /proc."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if stat[stat.index("(") + 1 : stat.rindex(")")] != "postgres":
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def summarise_profile(path: Path, seconds: float, rate: int, top: int = 12) -> list[str]:
    """Top functions of a py-spy raw (collapsed) profile, line numbers merged: self and inclusive %
    of all samples, plus how busy the event-loop thread and the other (writer) threads were."""
    if not path.exists():
        return []
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = loop = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, num = line.rpartition(" ")
        if not stack or not num.isdigit():
            continue
        count = int(num)
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ")]  # --subprocesses prefixes a pid frame
        if not frames:
            continue
        total += count
        if not frames[0].startswith("Thread._bootstrap"):
            loop += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return []
    lines = [
        f"    py-spy: {total} samples in {seconds:g} s at {rate} Hz ({loop} event-loop thread, "
        f"{total - loop} other threads; nonblocking sampling drops some)",
        "    top self time (% of samples):",
    ]
    lines += [f"      {100 * n / total:5.1f}%  {f}" for f, n in self_t.most_common(top)]
    lines.append("    top inclusive time (% of samples; event-loop/startup plumbing left out):")
    skip = (
        "run_forever",
        "_run_once",
        "Handle._run",
        "run_until_complete",
        "<module>",
        "_run_module_as_main",
        "_run_code",
        "main (pod",
        "serve (pod",
        "run_app",
        "Thread._bootstrap",
        "Thread.run",
        "_handle_request",
        "Application._handle",
        "_fix_request_current_app",
        "_middleware",
        "supervise (pod",
        "_child (pod",
    )
    shown = 0
    for f, n in incl.most_common():
        if any(s in f for s in skip):
            continue
        lines.append(f"      {100 * n / total:5.1f}%  {f}")
        shown += 1
        if shown >= top:
            break
    return lines


# -- reporting -------------------------------------------------------------------------------------
def figures(
    w: Workload,
    spec: Spec,
    res: dict[str, Any],
    cpu: float | None,
    load_cpu: float,
    machine_cpu: float,
    db_cpu: float | None = None,
) -> dict[str, Any]:
    seconds = res["duration_us"] / 1e6
    statuses = {int(k): v for k, v in res["statuses"].items()}
    non2xx = sum(n for s, n in statuses.items() if not 200 <= s <= 299)
    errs = res["errors"]
    socket_errors = errs["connect"] + errs["read"] + errs["write"] + errs["timeout"]
    rps = res["requests"] / seconds if seconds else 0.0
    p99 = res["latency_us"]["p99"] / 1000
    verdict = None
    if w.target_rps is not None or w.target_p99_ms is not None:
        ok = (w.target_rps is None or rps >= w.target_rps) and (
            w.target_p99_ms is None or p99 <= w.target_p99_ms
        )
        verdict = "PASS" if ok else "MISS"
    out: dict[str, Any] = {
        "title": w.title,
        "method": spec.method,
        "note": spec.note,
        "requests": res["requests"],
        "seconds": round(seconds, 3),
        "rps": round(rps, 1),
        # Successful (2xx) answers per second: what a peer that fails under load really served.
        "ok_rps": round((res["requests"] - non2xx) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(res["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(res["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(res["latency_us"]["max"] / 1000, 2),
        "non2xx": non2xx,
        "socket_errors": socket_errors,
        "errors": errs,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "target_rps": w.target_rps,
        "target_p99_ms": w.target_p99_ms,
        "verdict": verdict,
        "valid": not (non2xx or socket_errors),
        "server_cpu_pct": None if cpu is None else round(100 * cpu / seconds, 1),
        "loadgen_cpu_pct": round(100 * load_cpu / seconds, 1),
        # Everything else on the machine during the measured period (other users' builds/tests skew figures).
        # ... less the PostgreSQL server's processes, when the server runs on it (reported apart).
        "other_cpu_pct": None
        if cpu is None
        else round(max(0.0, 100 * (machine_cpu - cpu - load_cpu - (db_cpu or 0.0)) / seconds), 1),
        "db_cpu_pct": None if db_cpu is None else round(100 * db_cpu / seconds, 1),
    }
    if not out["valid"] and out["verdict"]:
        out["verdict"] = "INVALID"  # errors: the rate counts failures, so it proves nothing
    if res.get("first_error"):
        out["first_error"] = res["first_error"]
    return out


def target_text(f: dict[str, Any]) -> str:
    parts = []
    if f.get("target_rps"):
        parts.append(f"≥{f['target_rps']:.0f}/s")
    if f.get("target_p99_ms"):
        parts.append(f"p99≤{f['target_p99_ms']:g}ms")
    return " ".join(parts) or "—"


def print_row(name: str, f: dict[str, Any]) -> None:
    verdict = f["verdict"] or ""
    cpu = f"{f['server_cpu_pct']:.0f}%" if f["server_cpu_pct"] is not None else "?"
    load = f"{f['loadgen_cpu_pct']:.0f}%"
    other = f"{f['other_cpu_pct']:.0f}%" if f["other_cpu_pct"] is not None else "?"
    flag = "  <-- ERRORS" if f["non2xx"] or f["socket_errors"] else ""
    if f.get("db_cpu_pct") is not None:
        flag = f"  PostgreSQL {f['db_cpu_pct']:.0f}%{flag}"
    print(
        f"{name:<8} {f['rps']:>10.1f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} {f['non2xx']:>8d} "
        f"{f['socket_errors']:>7d} {cpu:>6} {load:>6} {other:>6} {target_text(f):>17} {verdict:<7}{flag}",
        flush=True,
    )


HEADER = (
    f"{'workload':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sockerr':>7} "
    f"{'server':>6} {'loadgn':>6} {'other':>6} {'target':>17} verdict\n"
    f"{'':<45}{'(CPU, % of one core)':^20}"
)


def loud(lines: list[str]) -> None:
    bar = "!" * 78
    print(f"\n{bar}")
    for line in lines:
        print(f"!!! {line}")
    print(bar, flush=True)


# -- running workloads -----------------------------------------------------------------------------
def run_suite(bench: Bench, ctx: Context, names: list[str], judge: bool = True) -> dict[str, dict[str, Any]]:
    """Run ``names`` against ``ctx``'s server, printing a row (or lines) each; returns the figures.
    ``judge=False`` (a peer server): our targets are not applied."""
    args = bench.args
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    print(f"\n{HEADER}", flush=True)
    for name in names:
        w = WORKLOADS[name]
        try:
            if w.measure is not None:
                results[name] = {"title": w.title, "kind": "measure", **w.measure(ctx)}
                continue
            assert w.prepare is not None
            spec = w.prepare(ctx)
        except Skipped as exc:
            say(name, f"skipped: {exc}")
            results[name] = {"title": w.title, "skipped": str(exc), "verdict": None}
            continue
        if args.warmup > 0:
            bench.run_load(ctx.origin, spec, args.warmup)
            bench.wait_idle()
        if spec.before is not None:
            spec.before()
        db = bench.server is not None and bool(bench.server.database)
        db0 = postgres_cpu_seconds() if db else 0.0
        cpu0, load0, mach0 = bench.server_cpu_seconds(), children_cpu_seconds(), machine_busy_seconds()
        prof = (
            profile_dir / f"{name}{'-' + bench.server.label if bench.server else ''}.txt"
            if profile_dir
            else None
        )
        seconds = max(args.duration, spec.min_seconds_compared if args.compare else 0)
        res = bench.run_load(ctx.origin, spec, seconds, prof)
        cpu1, load1, mach1 = bench.server_cpu_seconds(), children_cpu_seconds(), machine_busy_seconds()
        db_cpu = postgres_cpu_seconds() - db0 if db else None
        if not judge:
            w = Workload(w.name, w.title, w.prepare)
        f = figures(
            w,
            spec,
            res,
            None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            load1 - load0,
            mach1 - mach0,
            db_cpu,
        )
        results[name] = f
        print_row(name, f)
        if args.verbose:
            print(f"         ({spec.note})")
            print(res["raw"])
        if spec.after is not None:
            for line in spec.after():
                say("", line)
        if prof:
            for line in summarise_profile(prof, bench.profile_seconds(seconds), PROFILE_RATE):
                print(line)
        if bench.server is not None and not bench.server.alive():
            raise SetupError(
                f"server died during {name} (status {bench.server.proc.returncode}):\n"
                + bench.server.log_tail()
            )
    return results


def start_measured_server(
    bench: Bench, label: str, database: str = "", workers: int = 1
) -> tuple[ServerProc, Context]:
    server = bench.start_pod_server(label, database=database, workers=workers, cpus=bench.pin_server)
    bench.server = server
    auth, auth_note, owner = bench.owner_auth(server)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    ctx = Context(server.base + f"{POD}/bench-{run_id}/", auth, auth_note, owner, bench, server)
    return server, ctx


def describe(args: argparse.Namespace, report: dict[str, Any]) -> None:
    print(
        f"load:        {report['loadgen']}, {args.connections} connections, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per load workload"
    )
    print(f"pinning:     {report['pinning']}")
    if args.profile:
        print(f"profiling:   py-spy → {args.profile}/ (figures are skewed by sampling)")


def run_default(bench: Bench, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    needs_server = args.url or any(WORKLOADS[n].uses_server for n in args.names)
    if args.url:
        base = args.url if args.url.endswith("/") else args.url + "/"
        report["server"] = f"external {base}"
        auth = dict(_header(h) for h in args.header)
        auth_note = "credentials from --header" if auth else "no credentials"
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        ctx = Context(base + f"bench-{run_id}/", auth, auth_note, args.webid, bench, None)
    elif needs_server:
        server, ctx = start_measured_server(bench, "pod")
        report["server"] = f"pod serve pid {server.pid} at {server.base} (SQLite, temp data dir)"
    else:
        report["server"] = "none needed"
        ctx = Context("http://127.0.0.1:1/", {}, "none", None, bench, None)
    report["auth"] = ctx.auth_note
    print(f"server:      {report['server']}")
    describe(args, report)
    if needs_server:
        print(f"writes:      {ctx.auth_note}")
        print(f"fixtures:    {ctx.origin}{ctx.base_path}")
    try:
        return run_suite(bench, ctx, args.names)
    finally:
        ctx.close()


def run_compare(bench: Bench, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    import css

    assert bench.tmp is not None
    print(
        f"peer:        installing Community Solid Server {css.VERSION} with npm (cache {css.CACHE}) ...",
        flush=True,
    )
    started = time.monotonic()
    try:
        server_js, how = css.install(bench.tmp / "css")
    except css.InstallError as exc:
        raise SetupError(str(exc)) from None
    print(f"             {how}, node {css.node_version()}, in {time.monotonic() - started:.0f} s")
    describe(args, report)
    sections: dict[str, dict[str, Any]] = {}

    server, ctx = start_measured_server(bench, "pod")
    print(
        f"\n== our server: pod serve pid {server.pid} at {server.base} (SQLite, one process); "
        f"{ctx.auth_note} for set-up"
    )
    try:
        sections["ours"] = run_suite(bench, ctx, args.names)
    finally:
        ctx.close()
        bench.stop(server)

    peer = bench.start_css(server_js, bench.pin_server)
    bench.server = peer
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    peer_ctx = Context(
        peer.base + f"bench-{run_id}/",
        {},
        "anonymous (its root ACL gives everyone full access)",
        None,
        bench,
        None,
    )
    print(
        f"\n== Community Solid Server {css.VERSION}: pid {peer.pid} at {peer.base} "
        f"({css.CONFIG}, one process)"
    )
    try:
        sections["css"] = run_suite(bench, peer_ctx, args.names, judge=False)
    finally:
        peer_ctx.close()
        bench.stop(peer)

    target = 50.0
    print(
        f"\ncomparison (req/s and p99 at {args.connections} connections, one process each; "
        f"target ≥{target:g}x on each)"
    )
    print("(rates count 2xx answers only; p99 ratio = CSS p99 / ours)")
    print(
        f"{'workload':<8} {'ours/s':>9} {'p99 ms':>8} {'CSS/s':>9} {'p99 ms':>8} {'ratio':>8} "
        f"{'p99 ratio':>9}  verdict"
    )
    ratios: dict[str, Any] = {}
    for name in args.names:
        a, b = sections["ours"].get(name, {}), sections["css"].get(name, {})
        if "rps" not in a or "rps" not in b:
            continue
        ratio = a["ok_rps"] / b["ok_rps"] if b["ok_rps"] else float("inf")
        p99_ratio = b["p99_ms"] / a["p99_ms"] if a["p99_ms"] else float("inf")
        valid = a["valid"] and a["requests"] > 0 and b["requests"] > 0
        verdict = ("PASS" if ratio >= target else "MISS") if valid else "INVALID"
        ratios[name] = {
            "ratio": round(ratio, 2),
            "p99_ratio": round(p99_ratio, 2),
            "target": target,
            "verdict": verdict,
        }
        notes = []
        if not valid:
            notes.append("ours had errors or no answers")
        if not b["valid"]:
            notes.append(f"CSS failed {b['non2xx'] + b['socket_errors']} of {b['requests']} requests")
        print(
            f"{name:<8} {a['ok_rps']:>9.1f} {a['p99_ms']:>8.2f} {b['ok_rps']:>9.1f} {b['p99_ms']:>8.2f} "
            f"{ratio:>7.1f}x {p99_ratio:>8.1f}x  {verdict}" + (f"  ({'; '.join(notes)})" if notes else "")
        )
    for name, f in sections["css"].items():
        if f.get("non2xx") or f.get("socket_errors"):
            print(
                f"  CSS {name}: {f['non2xx']} non-2xx, {f['socket_errors']} socket errors; "
                f"statuses {f['statuses']}; "
                f"errors {f['errors']}"
                + (f"; first: {f['first_error'][:160]!r}" if f.get("first_error") else "")
            )
    report["compare"] = {"peer": f"{css.PACKAGE} {css.CONFIG}", "ratios": ratios}
    return sections


def parse_backends(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, count = item.partition(":")
        name = {"pg": "postgresql", "postgres": "postgresql"}.get(name, name)
        if name not in ("sqlite", "postgresql") or (count and not count.isdigit()) or count == "0":
            raise ValueError(item)
        out.append((name, int(count or 1)))
    return out


def run_backends(bench: Bench, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    describe(args, report)
    sections: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for backend, workers in args.backend_list:
        label = f"{backend}-w{workers}"
        print(f"\n== {backend}, {workers} worker process{'es' if workers > 1 else ''}", flush=True)
        server: ServerProc | None = None
        db_name = ""
        try:
            database = bench.create_database() if backend == "postgresql" else ""
            db_name = bench.databases[-1] if database else ""
            server, ctx = start_measured_server(bench, label, database, workers)
            print(
                f"server:      pod serve pid {server.pid} at {server.base}"
                + (f" on {database}" if database else " (SQLite)")
            )
            try:
                sections[label] = run_suite(bench, ctx, args.names)
            finally:
                ctx.close()
        except SetupError as exc:
            first = str(exc).strip().splitlines()
            reason = next((x for x in reversed(first) if "error" in x.lower()), first[0] if first else "?")
            problems[label] = reason
            say(label, f"could not be exercised: {reason}")
        finally:
            if server is not None:
                bench.stop(server)
            if db_name:
                bench.drop_database(db_name)
    labels = [f"{b}-w{w}" for b, w in args.backend_list]
    print(
        f"\nbackends (req/s / p99 ms at {args.connections} connections; CPU of the server's processes"
        " + PostgreSQL's, % of one core)"
    )
    print(f"{'workload':<8} " + " ".join(f"{label:>30}" for label in labels))
    for name in args.names:
        cells = []
        for label in labels:
            f = sections.get(label, {}).get(name)
            if label in problems:
                cells.append(f"{'not exercised':>30}")
            elif not f or "rps" not in f:
                cells.append(f"{'—':>30}")
            else:
                cpu = f"{f['server_cpu_pct']:.0f}%" if f["server_cpu_pct"] is not None else "?"
                if f.get("db_cpu_pct") is not None:
                    cpu += f"+{f['db_cpu_pct']:.0f}%"
                mark = "" if f["valid"] else "!"
                cells.append(f"{f['rps']:>9.1f}/s {f['p99_ms']:>6.2f} ms {cpu:>9}{mark:1}")
        print(f"{name:<8} " + " ".join(cells))
    for label, reason in problems.items():
        print(f"  {label}: not exercised — {reason}")
    if bench.pin_server and "," not in bench.pin_server and any(w > 1 for _, w in args.backend_list):
        print(
            f"  note: every server process is pinned to CPU {bench.pin_server} (the other runs the load "
            "generator), so several workers share one core here; --no-pin lets them spread"
        )
    report["backends_not_exercised"] = problems
    return sections


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workloads: "
        + "; ".join(f"{w.name} ({w.title})" for w in WORKLOADS.values())
        + f". --compare runs {', '.join(COMPARED)}; --backends runs {', '.join(CORE)} (or --only).",
    )
    p.add_argument(
        "--duration", type=int, default=10, metavar="S", help="measured seconds per load workload (10)"
    )
    p.add_argument(
        "--warmup", type=int, default=2, metavar="S", help="warm-up seconds per load workload (2; 0 for none)"
    )
    p.add_argument("--connections", type=int, default=32, metavar="N", help="concurrent connections (32)")
    p.add_argument(
        "--threads", type=int, default=0, metavar="N", help="wrk threads (default 1 when pinned, else 2)"
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these workloads")
    p.add_argument(
        "--request-timeout",
        type=int,
        default=0,
        metavar="S",
        help="wrk counts a request unanswered after S seconds as a timeout (5; 60 with --compare)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also install the Community Solid Server 7.2.0 from npm and run get, notify and list "
        "against it and against our server; print both and the ratios",
    )
    p.add_argument(
        "--backends",
        nargs="?",
        const="sqlite,sqlite:2,postgresql,postgresql:2",
        metavar="LIST",
        help="run the core workloads (get, post; or --only) on each of these server set-ups: "
        "BACKEND[:WORKERS] comma-separated, BACKEND sqlite or postgresql (a scratch database on "
        "--postgres, dropped after); default sqlite,sqlite:2,postgresql,postgresql:2",
    )
    p.add_argument(
        "--postgres",
        default=os.environ.get("POD_BENCH_POSTGRES", PG_ADMIN),
        metavar="URL",
        help=f"PostgreSQL to create scratch databases on (default {PG_ADMIN}, or POD_BENCH_POSTGRES)",
    )
    p.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        metavar="N",
        help="rss: events to store (1000000; e.g. 50000 for a quick run)",
    )
    p.add_argument(
        "--batch", type=int, default=100, metavar="N", help="rss: events per publish request (100)"
    )
    p.add_argument(
        "--subscribers",
        type=int,
        default=1000,
        metavar="N",
        help="fanout: subscribers on the second server (1000)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="N",
        help="fanout: events sent one after another (3; the first is cold)",
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help="bench a running server: a writable container URL "
        "(e.g. http://127.0.0.1:8080/alice/); fixtures go in a new bench-<id>/ under it and are left there",
    )
    p.add_argument(
        "--server-pid", type=int, metavar="PID", help="with --url: the server's pid, for CPU%% and --profile"
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="with --url: a header that authorizes writes there (e.g. 'X-Api-Key: spk_...'); repeatable",
    )
    p.add_argument(
        "--webid", metavar="URI", help="with --url: the owner's WebID, kept in control of the public ACL"
    )
    p.add_argument(
        "--auth",
        choices=["apikey", "webid-header", "none"],
        default="apikey",
        help="writes to the bench's own server: as the owner by a minted API key (default), by the "
        "test-only WebID header (server started with --unsafe-webid-header), or with no credentials",
    )
    p.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator (auto: wrk, installed with apt-get when missing; else Python/aiohttp)",
    )
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin server and load generator to separate CPUs"
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the server during each workload (figures then skewed); "
        "writes DIR/NAME.txt (collapsed stacks) and prints the top functions",
    )
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL, so the figures are "
        "where CPU time goes (waits on the disk or the network left out)",
    )
    p.add_argument("--json", action="store_true", help="print all figures as one JSON object at the end")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server logs, databases)")
    p.add_argument("-v", "--verbose", action="store_true", help="print wrk's own output")
    args = p.parse_args(argv)
    if args.compare and args.backends:
        p.error("--compare and --backends are separate runs")
    if (args.compare or args.backends) and args.url:
        p.error("--compare and --backends start their own servers; not with --url")
    if args.compare:
        default = list(COMPARED)
    elif args.backends:
        default = list(CORE)
    else:
        default = list(WORKLOADS)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else default
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    if args.compare or args.backends:
        measures = [n for n in names if WORKLOADS[n].measure is not None]
        if measures:
            p.error(f"--compare and --backends run load workloads only, not {', '.join(measures)}")
    if args.backends:
        try:
            args.backend_list = parse_backends(args.backends)
        except ValueError as exc:
            p.error(f"--backends: bad entry {exc} (want sqlite, postgresql, sqlite:2, ...)")
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        p.error("--duration must be > 0, --warmup >= 0, --connections >= 1")
    if args.events < 1 or args.batch < 1 or args.subscribers < 1 or args.rounds < 1:
        p.error("--events, --batch, --subscribers and --rounds must be >= 1")
    args.names = names
    args.request_timeout = args.request_timeout or (60 if args.compare else 5)
    return args


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"scripts/bench: --header wants 'Name: value', not {text!r}")
    return name.strip(), value.strip()


def ensure_wrk() -> bool:
    if shutil.which("wrk"):
        return True
    print("wrk not found; installing it (apt-get install -y wrk) ...", flush=True)
    quiet: dict[str, Any] = {
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "timeout": 300,
        "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    }
    try:
        if subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return shutil.which("wrk") is not None


def time_bound(args: argparse.Namespace) -> int:
    """Seconds the whole run may take, whatever happens: each workload's own bound, per server."""
    per_server = sum(WORKLOADS[n].seconds(args) for n in args.names) + 90
    if args.compare:
        import css

        return int(120 + css.INSTALL_TIMEOUT + 2 * per_server + 120)
    if args.backends:
        return int(120 + len(args.backend_list) * (per_server + 60))
    return int(120 + per_server)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = Bench(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(time_bound(args))

    report: dict[str, Any] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
    }
    sections: dict[str, dict[str, Any]] = {}
    try:
        if args.loadgen in ("auto", "wrk") and ensure_wrk():
            args.loadgen = "wrk"
            version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
            report["loadgen"] = version[0].split(" Copyright")[0] if version else "wrk"
        elif args.loadgen == "wrk":
            print("wrk is not available", file=sys.stderr)
            return 2
        else:
            args.loadgen = "python"
            report["loadgen"] = "python aiohttp (separate process)"
        bench.tmp = Path(tempfile.mkdtemp(prefix="pod-bench-"))
        report["pinning"] = bench.plan_pinning()
        if args.compare:
            sections = run_compare(bench, args, report)
        elif args.backends:
            sections = run_backends(bench, args, report)
        else:
            sections = {"ours": run_default(bench, args, report)}
    except SetupError as exc:
        loud([f"BENCH ABORTED: {line}" for line in str(exc).splitlines()] or ["BENCH ABORTED"])
        report["aborted"] = str(exc)
        if args.json:
            print(json.dumps(report))
        return 2
    finally:
        signal.alarm(0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let cleanup (bounded) finish
        bench.cleanup()

    report["runs"] = sections
    ours = {k: v for k, v in sections.items() if k != "css"}
    rows = [
        (f"{label}/{n}" if len(ours) > 1 else n, f) for label, figs in ours.items() for n, f in figs.items()
    ]
    bad = [(n, f) for n, f in rows if f.get("non2xx") or f.get("socket_errors")]
    report["ok"] = not bad
    missed = [n for n, f in rows if f.get("verdict") == "MISS"]
    judged = [n for n, f in rows if f.get("verdict")]
    if not args.compare:
        print(
            f"\ntargets: {'all met' if not missed else 'MISSED by ' + ', '.join(missed)}"
            f"{'' if judged else ' (none in this selection)'}"
        )
    busy = [n for n, f in rows if (f.get("other_cpu_pct") or 0) > 15]
    if busy:
        print(
            f"note: other processes used >15% of a core during {', '.join(busy)}: "
            "the machine was shared, figures are pessimistic"
        )
    if bad:
        loud(
            ["THIS RUN HAD ERRORS — its figures are not valid:"]
            + [
                f"{n}: {f['non2xx']} non-2xx, {f['socket_errors']} socket errors; statuses {f['statuses']}; "
                f"errors {f['errors']}"
                + (f"; first: {f['first_error'][:200]!r}" if f.get("first_error") else "")
                for n, f in bad
            ]
        )
    if args.json:
        print(json.dumps(report))
    return 1 if bad else 0


import workloads_events  # noqa: E402,F401  (registers publish, inbox, fanout, rss after the above)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
