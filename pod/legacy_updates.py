"""Live updates in the ``solid-0.1`` WebSocket protocol ("websockets-pubsub").

The Solid Notifications Protocol (``pod.notifications``) is the standard; this older protocol is
what the Solid data browser (SolidOS, through rdflib.js's UpdateManager) and the conformance suite
``solid-crud-tests`` still speak, so the server offers both:

    discovery   every resource's response: ``Updates-Via: ws(s)://<server>/.updates``
    connect     a WebSocket (subprotocol ``solid-0.1``); the server says ``protocol solid-0.1``
    identify    optional: ``auth <Authorization header>`` and ``dpop <DPoP proof for GET of the
                resource>``, the way solid-crud-tests' client sends them
    subscribe   ``sub <resource URL>`` → ``ack <resource URL>``
    changes     ``pub <resource URL>`` for a change of the resource, and for its container when a
                member is created or deleted

The original protocol has no access control at all: anyone who knew a URL heard when it changed.
Here a ``sub`` needs read access to the resource, as the agent the ``auth``/``dpop`` lines prove
(Solid-OIDC; an unproven or absent identity is the public), and is refused with ``error <URL>
<reason>`` otherwise; access is checked again before every ``pub``. The other processes' changes
arrive through the same feed as for the standard channels (``pod.change_relay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from acl.credentials import Authenticator
from acl.modes import Mode
from acl.wac import Wac
from ldp.errors import BadRequest, PodError
from ldp.headers import UPDATES_PATH as PATH
from ldp.identifiers import PodLocator, parent_of
from pod.notifications import CREATE, DELETE, ENDED, Change

log = logging.getLogger("pod.legacy_updates")

PROTOCOL = "solid-0.1"
MAX_SOCKETS = 10_000
MAX_SUBSCRIPTIONS = 1_000  # per socket: a data browser watches the documents it shows
MAX_LINE = 8_192  # a DPoP proof and an access token fit


@dataclass(eq=False)
class _Session:
    ws: web.WebSocketResponse
    origin: str | None
    authorization: str | None = None
    dpop: str | None = None
    # (pod, path) → the agent it subscribed as (None: the public)
    watching: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # subscriptions whose access check is under way → the pubs that arrived meanwhile
    pending: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))


class LegacyUpdates:
    def __init__(
        self,
        locator: PodLocator,
        wac: Wac,
        authenticator: Callable[[], Authenticator],
        subscribe: Callable[[Callable[[Change], None]], object],
    ) -> None:
        self.locator = locator
        self.wac = wac
        self.authenticator = authenticator
        self._watchers: dict[tuple[str, str], set[_Session]] = {}
        self._sessions: set[_Session] = set()
        subscribe(self._on_change)

    @property
    def subscriptions(self) -> int:
        """Resources watched over this process's sockets, counted once per socket."""
        return sum(len(session.watching) for session in self._sessions)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(PROTOCOL,), heartbeat=30.0, max_msg_size=MAX_LINE)
        if not ws.can_prepare(request).ok:
            raise BadRequest(f"{PATH} is the solid-0.1 WebSocket endpoint: send a WebSocket upgrade")
        if len(self._sessions) >= MAX_SOCKETS:
            raise web.HTTPServiceUnavailable(text="Too many update sockets; try again later")
        await ws.prepare(request)
        session = _Session(ws, request.headers.get("Origin"))
        self._sessions.add(session)
        sender = asyncio.get_running_loop().create_task(self._send_loop(session))
        try:
            session.queue.put_nowait(f"protocol {PROTOCOL}")
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                for line in msg.data.splitlines():
                    await self._command(session, line.strip())
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            self._forget(session)
            if not ws.closed:
                await ws.close()
        return ws

    async def _command(self, session: _Session, line: str) -> None:
        verb, _, value = line.partition(" ")
        value = value.strip()
        if verb == "auth":
            # "auth undefined" and the like (a client with no session) identify nobody.
            session.authorization = value if " " in value else None
        elif verb == "dpop":
            session.dpop = value if value.count(".") == 2 else None
        elif verb == "sub":
            await self._subscribe(session, value)
        elif line:
            self._say(session, f"error unknown command {verb[:100]}")

    async def _subscribe(self, session: _Session, url: str) -> None:
        target = self.locator.target_of_url(url)
        if target is None:
            self._say(session, f"error {url[:2000]} is not a resource of this server")
            return
        key = (target.pod, target.path)
        if key not in session.watching and len(session.watching) >= MAX_SUBSCRIPTIONS:
            self._say(session, f"error {url} too many subscriptions on this socket")
            return
        # Listening starts now, before the checks that may wait: a client that writes right after
        # sending its sub (as solid-crud-tests does) must hear of that write.
        if key not in session.watching:
            session.pending.setdefault(key, [])
            self._watchers.setdefault(key, set()).add(session)
        try:
            proven, webid = await self._identify(session, target.pod, url)
            allowed = proven and await self._may_read(target.pod, target.path, webid, session.origin)
        except BaseException:
            self._settle(session, key, None, allowed=False)
            raise
        if not proven:
            self._settle(session, key, None, allowed=False)
            return
        if not allowed:
            self._settle(session, key, None, allowed=False)
            self._say(session, f"error {url} forbidden")
            return
        self._say(session, f"ack {url}")
        self._settle(session, key, webid, allowed=True)

    def _settle(self, session: _Session, key: tuple[str, str], webid: str | None, *, allowed: bool) -> None:
        """End a subscription's wait: watch and send what arrived meanwhile, or stop listening."""
        held = session.pending.pop(key, [])
        if allowed:
            session.watching[key] = webid
            for line in held:
                self._say(session, line)
        elif key not in session.watching:
            self._unwatch(session, key)

    async def _identify(self, session: _Session, pod: str, url: str) -> tuple[bool, str | None]:
        """The agent the ``auth``/``dpop`` lines prove for a GET of ``url`` (None: the public), or
        (False, None), an error said, when they prove nothing."""
        webid: str | None = None
        if session.authorization is not None:
            headers = {"Authorization": session.authorization}
            if session.dpop is not None:
                headers["DPoP"] = session.dpop
            try:
                creds = await self.authenticator().authenticate(
                    method="GET", url=url, pod=pod, headers=headers, body=None
                )
            except PodError as exc:
                self._say(session, f"error {url} {exc.message}")
                return False, None
            webid = creds.webid
        return True, webid

    async def _may_read(self, pod: str, path: str, webid: str | None, origin: str | None) -> bool:
        await self.wac.refresh()
        return Mode.READ in await self.wac.modes(pod, path, webid, origin)

    def _say(self, session: _Session, line: str) -> None:
        try:
            session.queue.put_nowait(line)
        except asyncio.QueueFull:  # a reader too slow to keep up: it may reconnect and subscribe again
            self._forget(session)
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().create_task(session.ws.close())

    async def _send_loop(self, session: _Session) -> None:
        while True:
            line = await session.queue.get()
            if line.startswith("pub "):
                target = self.locator.target_of_url(line[4:])
                if target is None:
                    continue
                key = (target.pod, target.path)
                if key not in session.watching:
                    continue
                if not await self._may_read(target.pod, target.path, session.watching[key], session.origin):
                    self._unwatch(session, key)  # access revoked since the sub
                    continue
            try:
                await session.ws.send_str(line)
            except (ConnectionError, RuntimeError):
                return

    def _on_change(self, change: Change) -> None:
        if change.kind == ENDED or not self._watchers:
            return
        self._publish(change.pod, change.path)
        parent = parent_of(change.path)
        if parent is not None and change.kind in (CREATE, DELETE):
            self._publish(change.pod, parent)

    def _publish(self, pod: str, path: str) -> None:
        sessions = self._watchers.get((pod, path))
        if sessions:
            line = f"pub {self.locator.url(pod, path)}"
            for session in list(sessions):
                held = session.pending.get((pod, path))
                if held is not None and (pod, path) not in session.watching:
                    held.append(line)
                else:
                    self._say(session, line)

    def _unwatch(self, session: _Session, key: tuple[str, str]) -> None:
        session.watching.pop(key, None)
        sessions = self._watchers.get(key)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._watchers[key]

    def _forget(self, session: _Session) -> None:
        for key in list(session.watching):
            self._unwatch(session, key)
        self._sessions.discard(session)

    async def close(self) -> None:
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.ws.close()
