"""Real ``pod serve`` processes for multi-server tests: start, wait, stop, kill, restart, CLI, HTTP.

Every server gets a free loopback port, its own data directory and a log file (stdout and stderr of
every run, appended, each run under a header). Its database is the one the running test's backend
gives its data directory (``tests.databases``): the SQLite file there, or a PostgreSQL schema of its
own; pass ``database=`` to have several servers share one. Everything is bounded by timeouts, and
:class:`Procs`, used as a fixture, stops every process it started (SIGTERM, then SIGKILL) and prints
the tail of each server log, which pytest shows when the test failed::

    @pytest.fixture
    def procs(tmp_path: Path) -> Iterator[Procs]:
        with Procs(tmp_path) as manager:
            yield manager

    def test_two_servers(procs: Procs) -> None:
        a = procs.server("a", demo_pod="alice")
        b = procs.server("b", demo_pod="bob", unsafe_webid_header=True)
        a.cli("grant", "alice", "--agent", b.webid("bob"), "--publish", "realestate")
        profile = request("GET", b.webid("bob"))  # Response(status, headers, body)
        a.kill()      # SIGKILL
        a.start()     # same data dir and port
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tests.databases import current, db

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0
HTTP_TIMEOUT = 15.0
READY = "Solid pod server listening on"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without the caller's ``POD_*`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def check(self) -> CliResult:
        if self.returncode != 0:
            raise AssertionError(f"pod {' '.join(self.args)} exited {self.returncode}: {self.stderr.strip()}")
        return self


# Runs several CLI commands in one interpreter (saves ~0.5 s of start-up per command); each command
# still goes through ``pod.cli.main`` exactly as ``python -m pod`` would.
_BATCH = """
import contextlib, io, json, sys
from pod.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results.append([code, out.getvalue(), err.getvalue()])
sys.stdout.write(json.dumps(results))
"""


class ServerProcess:
    """One ``pod serve`` process with a fixed data directory, port and base URL across restarts."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        demo_pod: str,
        unsafe_webid_header: bool = False,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        database: str | None = None,
        base_url: str | None = None,
    ) -> None:
        self.name = name
        self.dir = workdir / name
        self.data_dir = self.dir / "data"
        self.database = current().for_dir(self.data_dir) if database is None else database
        self.log_path = self.dir / "server.log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        # The public base URL: its own address, or that of a load balancer in front of several.
        self.base_url = base_url or f"http://127.0.0.1:{self.port}/"
        self.demo_pod = demo_pod
        self.unsafe_webid_header = unsafe_webid_header
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self._log_offset = 0

    # -- URLs ------------------------------------------------------------------------------------------
    def url(self, pod: str, path: str = "") -> str:
        return f"{self.base_url}{pod}/{path.lstrip('/')}"

    def webid(self, pod: str) -> str:
        return self.url(pod, "profile/card#me")

    @property
    def common_args(self) -> list[str]:
        database = ["--database", self.database] if self.database else []
        return ["--data-dir", str(self.data_dir), "--base-url", self.base_url, *database]

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Start (or restart) on the same data directory and port; returns once it accepts requests."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Spawn the process without waiting (start several, then :meth:`wait_ready` on each)."""
        if self.running:
            raise RuntimeError(f"server {self.name} is already running")
        self.runs += 1
        args = [
            sys.executable, "-m", "pod", "serve", *self.common_args,
            "--port", str(self.port), "--demo-pod", self.demo_pod, "--allow-loopback",
        ]  # fmt: skip
        if self.unsafe_webid_header:
            args.append("--unsafe-webid-header")
        with self.log_path.open("ab") as log:
            log.write(f"\n===== run {self.runs}: {' '.join(args[1:])}\n".encode())
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=clean_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals meant for the test runner do not reach it
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Wait for the line ``pod serve`` prints once its socket is bound."""
        if self.proc is None:
            raise RuntimeError(f"server {self.name} was not launched")
        deadline = time.monotonic() + timeout
        while True:
            if READY in self.log_text(self._log_offset):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"server {self.name} not ready after {timeout} s:\n{self.tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (graceful: the worker gives back its leases), SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        self.proc = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with whatever was in flight."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        self.proc = None

    def restart(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    # -- logs ------------------------------------------------------------------------------------------
    def log_text(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- CLI and database --------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> CliResult:
        """``python -m pod ARGS --data-dir ... --base-url ...`` against this server's data."""
        full = (*args, *self.common_args)
        done = subprocess.run(
            [sys.executable, "-m", "pod", *full],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(full, done.returncode, done.stdout, done.stderr)

    def cli_many(self, commands: Sequence[Sequence[str]], timeout: float = CLI_TIMEOUT) -> list[CliResult]:
        """Several CLI commands in one process, in order; every one must succeed."""
        argvs = [[*c, *self.common_args] for c in commands]
        done = subprocess.run(
            [sys.executable, "-c", _BATCH],
            cwd=ROOT,
            env=clean_env(),
            input=json.dumps(argvs),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"CLI batch failed ({done.returncode}): {done.stderr.strip()}")
        return [
            CliResult(tuple(argv), code, out, err).check()
            for argv, (code, out, err) in zip(argvs, json.loads(done.stdout), strict=True)
        ]

    @contextlib.contextmanager
    def db(self) -> Iterator[Any]:
        """A read-only look at the server's database (``tests.databases.db``): SQLite's WAL lets it
        share the file with the server; on PostgreSQL it reads the server's schema."""
        with db(self.data_dir, self.database) as conn:
            yield conn


class Procs:
    """Creates servers under one temporary directory and cleans all of them up."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[ServerProcess] = []

    def server(
        self,
        name: str,
        *,
        demo_pod: str,
        unsafe_webid_header: bool = False,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        database: str | None = None,
        base_url: str | None = None,
    ) -> ServerProcess:
        """A new server (started unless ``start`` is false); it is cleaned up with the others.
        ``database`` (default: the test backend's database for its data directory) and
        ``base_url`` let several servers act as one, as behind a load balancer."""
        server = ServerProcess(
            self.workdir,
            name,
            demo_pod=demo_pod,
            unsafe_webid_header=unsafe_webid_header,
            env=env,
            database=database,
            base_url=base_url,
        )
        self.servers.append(server)
        return server.start() if start else server

    def start_all(self, *servers: ServerProcess, timeout: float = START_TIMEOUT) -> None:
        """Start several servers at once (their start-ups overlap) and wait until all are ready."""
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(timeout)

    def close(self) -> None:
        """Stop every server (SIGTERM, SIGKILL after 5 s) and print the end of each log, which pytest
        shows with a failed test's report."""
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop(timeout=5.0)
            with contextlib.suppress(Exception):
                server.kill()
        for server in self.servers:
            print(f"\n----- server {server.name} ({server.log_path}), last lines:\n{server.tail()}")

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- HTTP --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    json_body: Any = None,
    timeout: float = HTTP_TIMEOUT,
) -> Response:
    """One plain HTTP/1.1 request (no redirects, no retries, the path sent exactly as given)."""
    parts = urlsplit(url)
    all_headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target or "/", body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.05) -> T:
    """Call ``probe`` until ``done(result)``; returns the last result (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval)
