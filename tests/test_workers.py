"""Real ``pod serve`` processes: graceful shutdown on SIGTERM and ``--workers N`` on one port.

Servers run through ``tests.procs`` (free loopback port, own data directory, log file); options
that ``ServerProcess`` has no argument for are given as ``POD_*`` environment variables, which
``pod serve`` reads like flags.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.procs import ROOT, Procs, Response, ServerProcess, clean_env, free_port, request, wait_for
from tests.test_operations import parse_metrics, sample

TOPIC = "realestate/contact#add"
APP = "https://crm.example/app#id"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path) as manager:
        yield manager


class SlowRemote:
    """A remote agent on loopback. Its WebID profiles name an inbox that takes POSTs and does not
    answer until the test ends, so a delivery to it stays claimed (in flight); profiles under
    ``/slow/`` take a second to arrive, which keeps a publish to them in flight."""

    def __init__(self) -> None:
        self.posted = threading.Event()
        self.slow_profile_asked = threading.Event()
        self.release = threading.Event()
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/slow/"):
                    remote.slow_profile_asked.set()
                    time.sleep(1.0)
                body = f"<#me> <http://www.w3.org/ns/ldp#inbox> <{remote.url}inbox/> .".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/turtle")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                remote.posted.set()
                remote.release.wait(30)
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def remote() -> Iterator[SlowRemote]:
    agent = SlowRemote()
    yield agent
    agent.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_finishes_the_request_in_flight_and_releases_claimed_deliveries(
    procs: Procs, remote: SlowRemote
) -> None:
    server = procs.server("a", demo_pod="alice")
    key = server.cli("key", "create", "alice", "--agent", APP, "--json").check().json()["key"]

    def publish(webid: str) -> Response:
        event = {"recipient": webid, "topic": TOPIC, "data": {"type": "Note"}}
        return request("POST", server.url("alice", "publish/"), headers={"x-api-key": key}, json_body=event)

    assert publish(remote.url + "profile#me").status == 201
    assert remote.posted.wait(15), "the delivery was never attempted"
    with server.db() as conn:
        ((state, lease),) = conn.execute("SELECT state, lease_until FROM deliveries").fetchall()
    assert state == "pending" and lease > time.time()  # claimed: its POST is waiting for an answer

    # A publish that waits a second for the recipient's profile: SIGTERM arrives meanwhile.
    answers: list[Response] = []
    slow = threading.Thread(target=lambda: answers.append(publish(remote.url + "slow/profile#me")))
    slow.start()
    assert remote.slow_profile_asked.wait(10)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    # stop accepting: new connections are refused while the publish is still in flight
    assert wait_for(lambda: refused(server.port), bool, timeout=5)
    assert server.proc.poll() is None and slow.is_alive()
    slow.join(15)
    (answer,) = answers
    assert answer.status == 201, answer.body
    assert server.proc.wait(10) == 0

    with server.db() as conn:
        rows = conn.execute(
            "SELECT recipient, state, lease_until, attempts FROM deliveries ORDER BY id"
        ).fetchall()
    # both deliveries are on disk; the claimed ones were given back for another process to take at
    # once rather than when their lease ran out, and the interrupted attempt does not count
    assert [r[0] for r in rows] == [remote.url + "profile#me", remote.url + "slow/profile#me"]
    assert [r[1:] for r in rows] == [("pending", 0, 0), ("pending", 0, 0)]
    assert "Traceback" not in server.log_text()


def metrics_of(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = request("GET", server.base_url + ".metrics")
    assert response.status == 200
    return parse_metrics(response.body.decode())[1]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


SECRETS = {
    "x-api-key": "sk-worker-secret-1f2e",
    "Authorization": "Bearer eyWorkerToken99",
    "Cookie": "s=ck42",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_workers_share_one_port_and_stop_together(procs: Procs) -> None:
    env = {"POD_WORKERS": "2", "POD_LOG_FORMAT": "json", "POD_ACCESS_LOG": "true"}
    server = procs.server("w", demo_pod="alice", unsafe_webid_header=True, env=env)
    assert server.proc is not None
    output = server.log_text()
    assert output.count("Solid pod server listening on") == 1  # printed once, by the parent
    (printed,) = re.findall(r"2 worker processes \(pids (\d+), (\d+)\)", output)
    pids = {int(p) for p in printed}
    assert all(parent_of(pid) == server.proc.pid for pid in pids)

    owner = {"Authorization": f"WebID {server.webid('alice')}"}
    for i in range(12):  # each request on a new connection; the kernel spreads them
        headers = {**owner, "Content-Type": "text/turtle"}
        put = request(
            "PUT", server.url("alice", f"n{i}.ttl"), headers=headers, body=f"<#n> <#i> {i} .".encode()
        )
        assert put.status == 201
    # every write is visible through whichever process answers the read
    for i in range(12):
        assert request("GET", server.url("alice", f"n{i}.ttl"), headers=owner).status == 200
    for name, value in SECRETS.items():
        assert request("GET", server.url("alice", ""), headers={name: value}).status == 401

    # every process answered, and a scrape (answered by either) adds up both
    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return metrics_of(server)

    def complete(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
        # Every count must have arrived: the other process's figures are a snapshot written once a
        # second, so the GETs can all be counted (answered by the scraped process) while that
        # snapshot still predates some of the PUTs.
        expected = {("PUT", "201"): 12, ("GET", "200"): 12, ("GET", "401"): len(SECRETS)}
        return all(
            (sample(samples, "pod_http_requests_total", method=m, status=st) or 0) >= n
            for (m, st), n in expected.items()
        )

    samples = wait_for(scraped, complete, timeout=10, interval=0.2)
    assert sample(samples, "pod_http_requests_total", method="PUT", status="201") == 12
    assert sample(samples, "pod_http_requests_total", method="GET", status="401") == len(SECRETS)
    info = {dict(labels)["pid"] for (name, labels) in samples if name == "pod_worker_info"}
    assert info == {str(pid) for pid in pids}
    served = [sample(samples, "pod_worker_requests_total", worker=w) or 0 for w in ("0", "1")]
    assert all(count > 0 for count in served), served
    # Each process passed its committed writes to the other, and none was lost on the way.
    assert (sample(samples, "pod_change_relay_messages_total", outcome="sent") or 0) > 0
    assert sample(samples, "pod_change_relay_messages_total", outcome="dropped") == 0

    assert server.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    lines = [line for line in server.log_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r["logger"] == "pod.access"]
    assert len(access) >= 24 + len(SECRETS)
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["request_id"]) for r in access)
    assert not [r for r in records if r["level"] == "ERROR"]
    text = server.log_text()
    for value in SECRETS.values():
        assert value not in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_a_worker_that_dies_stops_the_others_and_the_parent_fails(procs: Procs) -> None:
    server = procs.server("d", demo_pod="alice", env={"POD_WORKERS": "2"})
    assert server.proc is not None
    (printed,) = re.findall(r"2 worker processes \(pids (\d+), (\d+)\)", server.log_text())
    first, second = (int(p) for p in printed)
    subprocess.run(["kill", "-KILL", str(first)], check=True)
    assert server.proc.wait(10) == 1
    assert not Path(f"/proc/{second}").exists()
    assert "exited with status -9; stopping the others" in server.log_text()


def test_a_port_in_use_is_reported_once_before_any_worker_starts(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "pod", "serve", "--workers", "3", "--port", str(port),
             "--data-dir", str(tmp_path)],
            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "pod: error: [Errno 98] Address already in use"
    assert "listening" not in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_reads_cached_by_one_worker_follow_writes_through_the_other(procs: Procs) -> None:
    """Each process keeps repeated reads in memory (ldp.readcache); a write or an ACL change
    answered by either process must show in the very next read, whichever process answers it."""
    server = procs.server("c", demo_pod="alice", unsafe_webid_header=True, env={"POD_WORKERS": "2"})
    owner = {"Authorization": f"WebID {server.webid('alice')}"}
    url, acl = server.url("alice", "cached.ttl"), server.url("alice", "cached.ttl.acl")
    public = (
        "@prefix acl: <http://www.w3.org/ns/auth/acl#> .\n@prefix foaf: <http://xmlns.com/foaf/0.1/> .\n"
        f"<#o> a acl:Authorization; acl:agent <{server.webid('alice')}>; acl:accessTo <./cached.ttl>;"
        " acl:mode acl:Read, acl:Write, acl:Control .\n"
    )
    everyone = "<#p> a acl:Authorization; acl:agentClass foaf:Agent; acl:accessTo <./cached.ttl>;"
    everyone += " acl:mode acl:Read .\n"
    writing = {**owner, "Content-Type": "text/turtle"}
    for version in range(3):
        body = f"<#n> <#version> {version} .".encode()
        assert request("PUT", url, headers=writing, body=body).status in (201, 205, 204)
        assert request("PUT", acl, headers=writing, body=(public + everyone).encode()).status in (
            201,
            204,
            205,
        )
        for _ in range(16):  # new connections: the kernel spreads them over both processes
            got = request("GET", url)
            assert got.status == 200 and got.body == body, (version, got.status, got.body)
        assert request("PUT", acl, headers=writing, body=public.encode()).status in (201, 204, 205)
        for _ in range(16):
            assert request("GET", url).status == 401
