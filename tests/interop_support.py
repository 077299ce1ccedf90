"""What the interop tests with Solid client libraries share (``tests/test_interop_*.py``).

Each of them drives a Node script in ``tests/interop`` (its line protocol and login are in
``tests/interop/driver.mjs``) against a real ``pod serve`` process (``tests.procs``) hosting the
pods ``bob`` (the demo pod) and ``alice``, whose WebID profiles name the test OpenID Provider
(``tests.oidc_issuer``, on a thread of its own) as their ``solid:oidcIssuer``. The script logs in as
bob by the client credentials grant, so the library's requests carry DPoP-bound tokens; the test
checks what the library reports against the server over plain HTTP, as bob, as alice (DPoP tokens
minted by the same provider) and anonymously.

The Node packages come from ``tests/interop/package-lock.json`` (``npm ci`` into the gitignored
``tests/interop/node_modules`` when it is missing or stale). The tests skip only when ``node`` or
``npm`` is not on PATH.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin

import pytest
from rdflib import Graph

from tests.oidc_issuer import ClientKey, OidcIssuer, ThreadedIssuer, make_proof
from tests.procs import Procs, Response, ServerProcess, request
from tests.rdf_exact import exact_graph

INTEROP = Path(__file__).resolve().parent / "interop"
STAMP = INTEROP / "node_modules" / ".interop-installed"
STEP_TIMEOUT = 30.0


# -- the Node side ------------------------------------------------------------------------------------


def _wanted_stamp() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((INTEROP / name).read_bytes())
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout
    return f"{digest.hexdigest()[:32]} node-{node.strip()}"


@pytest.fixture(scope="session")
def node_packages() -> Path:
    """``tests/interop/node_modules`` installed from the lock file: ``npm ci`` again whenever
    package.json, the lock or the Node version changed since the last install (a stamp file)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH: the interop tests need Node.js")
    wanted = _wanted_stamp()
    if not STAMP.is_file() or STAMP.read_text().strip() != wanted:
        STAMP.unlink(missing_ok=True)
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise AssertionError(f"npm ci failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        STAMP.write_text(wanted + "\n")
    return INTEROP / "node_modules"


class StepFailed(AssertionError):
    """A library call the scenario expected to succeed threw; carries what the server answered."""

    def __init__(self, answer: Mapping[str, Any]) -> None:
        self.answer = answer
        super().__init__(
            f"step {answer.get('step')} failed (status {answer.get('status')}): {answer.get('error')}\n"
            f"requests: {json.dumps(answer.get('requests'), indent=1)}"
        )


class Scenario:
    """``node <script>`` as a coroutine: one JSON command in, one JSON answer out. Lines the script
    writes outside any answer (they carry no ``step``: a pushed notification, say) are kept apart
    for :meth:`next_push`."""

    def __init__(self, script: Path, workdir: Path) -> None:
        self.stderr_path = workdir / f"{script.stem}-{secrets.token_hex(3)}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            ["node", str(script)],
            cwd=INTEROP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        self._answers: queue.Queue[bytes] = queue.Queue()
        self._pushes: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: BinaryIO) -> None:
        for line in stream:
            parsed = json.loads(line) if line.strip() else None
            if isinstance(parsed, dict) and "step" not in parsed:
                self._pushes.put(parsed)
            else:
                self._answers.put(line)
        self._answers.put(b"")  # end of output

    def send(self, step: str, **arguments: Any) -> dict[str, Any]:
        """Run one step; the answer whether or not the library call succeeded."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"step": step, **arguments}).encode() + b"\n")
        self.proc.stdin.flush()
        try:
            line = self._answers.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"step {step}: no answer in {STEP_TIMEOUT} s\n{self.stderr()}") from None
        if not line:
            raise AssertionError(f"step {step}: the script exited ({self.proc.poll()})\n{self.stderr()}")
        answer: dict[str, Any] = json.loads(line)
        assert answer["step"] == step
        print(f"--- {step}: {json.dumps(answer)}")  # pytest shows it when the test fails
        return answer

    def run(self, step: str, **arguments: Any) -> dict[str, Any]:
        """Run one step that must succeed; its whole answer (``result`` and ``requests``)."""
        answer = self.send(step, **arguments)
        if not answer["ok"]:
            raise StepFailed(answer)
        return answer

    def next_push(self, timeout: float) -> dict[str, Any]:
        """The next line the script wrote on its own, waiting at most ``timeout`` seconds."""
        try:
            push = self._pushes.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing pushed in {timeout} s\n{self.stderr()}") from None
        print(f"--- pushed: {json.dumps(push)}")
        return push

    def pending_pushes(self) -> list[dict[str, Any]]:
        """What was pushed and not yet taken, without waiting."""
        found: list[dict[str, Any]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                found.append(self._pushes.get_nowait())
        return found

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._stderr.close()


# -- agents over plain HTTP ---------------------------------------------------------------------------


@dataclass
class Agent:
    """Plain HTTP as one WebID: a DPoP-bound token from the test provider and a proof per request."""

    issuer: OidcIssuer
    webid: str
    key: ClientKey = field(default_factory=ClientKey.generate)

    def __post_init__(self) -> None:
        self.token = self.issuer.mint_token(self.webid, self.key.jkt, lifetime=600)

    def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ) -> Response:
        proof = make_proof(self.key, method, url, access_token=self.token)
        auth = {"Authorization": f"DPoP {self.token}", "DPoP": proof}
        return request(method, url, headers={**auth, **(headers or {})}, body=body)


def anonymous(
    method: str, url: str, *, headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> Response:
    return request(method, url, headers=headers, body=body)


def turtle(response: Response, base: str) -> Graph:
    """The Turtle body of a 200, its literals exactly as served (``tests.rdf_exact``)."""
    assert response.status == 200, (response.status, response.body[:500])
    assert response.headers["content-type"].startswith("text/turtle"), response.headers
    return exact_graph(response.body, base)


def acl_url_of(response: Response, url: str) -> str:
    """The ACL a resource advertises (``Link: <...>; rel="acl"``), absolute."""
    for link in response.headers["link"].split(","):
        target, _, params = link.partition(";")
        if 'rel="acl"' in params.replace(" ", ""):
            return urljoin(url, target.strip().strip("<>"))
    raise AssertionError(f"no rel=acl in {response.headers['link']}")


def requests_of(answer: Mapping[str, Any], method: str) -> list[dict[str, Any]]:
    return [r for r in answer["requests"] if r["method"] == method]


# -- the world ----------------------------------------------------------------------------------------


@dataclass
class World:
    server: ServerProcess
    issuer: OidcIssuer
    scenario: Scenario
    bob: Agent  # the owner of pod bob, for plain-HTTP checks
    alice: Agent  # the owner of pod alice: "another agent" on bob's pod

    def url(self, path: str) -> str:
        return self.server.url("bob", path)


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with ThreadedIssuer() as running:
        yield running


@contextlib.contextmanager
def running_world(script: Path, issuer: OidcIssuer, procs: Procs, tmp_path: Path) -> Iterator[World]:
    """A server with the pods bob and alice, and ``script`` logged in as bob."""
    server = procs.server("pods", demo_pod="bob", env={"POD_OIDC_ISSUER": issuer.url})
    server.cli("create", "alice", "--oidc-issuer", issuer.url).check()
    scenario = Scenario(script, tmp_path)
    try:
        login(scenario, issuer, server.webid("bob"))
        yield World(
            server,
            issuer,
            scenario,
            Agent(issuer, server.webid("bob")),
            Agent(issuer, server.webid("alice")),
        )
    finally:
        scenario.close()


def login(scenario: Scenario, issuer: OidcIssuer, webid: str) -> None:
    """Register a client for ``webid`` with the provider and log the script in with it."""
    client_id, secret = f"app-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    issuer.register_client(client_id, secret, webid)
    answer = scenario.run("login", issuer=issuer.url, clientId=client_id, clientSecret=secret)
    assert answer["result"] == {"isLoggedIn": True, "webId": webid}
