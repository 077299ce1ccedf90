"""Committed changes passed between the server processes of one deployment.

A live-update channel (Solid Notifications) lives in the process that holds its socket, but with
``--workers N`` the kernel spreads requests over N processes, and several machines share one
PostgreSQL database: most writes a channel should hear are made by another process. Each process
therefore sends the changes it commits to the others, and hands those it receives to its own
channels (``ChangeFeed.deliver``), never back to the others.

- :class:`SocketRelay`: processes on one machine that share a data directory (SQLite). Each binds
  a Unix datagram socket in ``<data dir>/changes/`` (a directory only the server's user may enter,
  so no other local user can send or read changes); sending is one ``sendto`` per peer for all the
  changes of one event-loop pass, and never blocks: a peer whose buffer is full misses them, as a
  reader too slow for its channel would.
- :class:`PostgresRelay`: processes anywhere on one PostgreSQL database; ``NOTIFY pod_changes``
  (at most one every 10 ms per process), heard on the connection that already listens for ACL
  changes.

Changes are hints for live updates, not data: the resources themselves are in the database, so a
change that misses a process (a full buffer, a reconnecting listener) costs a notification, never
a write. The one guarantee is the order of one process's changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from pod.notifications import Change

log = logging.getLogger("pod.changes")

Deliver = Callable[[Change], None]
_DATAGRAM = 60_000  # bytes a datagram carries at most (Linux takes ~200 KiB; stay well below)
_RESCAN = 1.0  # seconds between looks at which peers exist
_SUFFIX = ".sock"


class Relay(Protocol):
    sent: int  # messages (datagrams, NOTIFYs) that left this process
    dropped: int  # messages that could not be sent: their changes reached no other process

    async def open(self) -> None: ...

    def send(self, change: Change) -> None:
        """Pass ``change``, committed by this process, to the others (without blocking)."""

    async def close(self) -> None: ...


def encode(changes: list[Change], limit: int) -> list[bytes]:
    """``changes`` as JSON arrays of ``[pod, path, kind, state]``, each at most ``limit`` bytes
    (a change that alone is larger, a path of tens of kilobytes, is left out)."""
    out: list[bytes] = []
    batch: list[str] = []
    size = 2
    for change in changes:
        item = json.dumps([change.pod, change.path, change.kind, change.state], separators=(",", ":"))
        if len(item) + 2 > limit:
            continue
        if batch and size + len(item) + 1 > limit:
            out.append(("[" + ",".join(batch) + "]").encode())
            batch, size = [], 2
        batch.append(item)
        size += len(item) + 1
    if batch:
        out.append(("[" + ",".join(batch) + "]").encode())
    return out


def decode(data: bytes | str) -> list[Change]:
    """What ``encode`` made; anything else (a stray or truncated message) gives nothing."""
    try:
        items = json.loads(data)
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [
        Change(item[0], item[1], item[2], item[3])
        for item in items
        if isinstance(item, list)
        and len(item) == 4
        and all(isinstance(v, str) for v in item[:3])
        and (item[3] is None or isinstance(item[3], str))
    ]


class _Coalescing:
    """Changes sent during one event-loop pass (or within ``window`` seconds) go out together."""

    window = 0.0

    def __init__(self) -> None:
        self._pending: list[Change] = []
        self.closed = False
        self.sent = 0
        self.dropped = 0
        self._warned = -math.inf

    def _lost(self, reason: object) -> None:
        """Count a message that did not go out, with a warning at most once a minute: a peer that
        cannot keep up, or a database that is away, would otherwise fill the log."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned >= 60:
            self._warned = now
            log.warning(
                "live updates: changes did not reach other processes (%d so far): %s", self.dropped, reason
            )

    def send(self, change: Change) -> None:
        if self.closed or not self._wanted():
            return
        if not self._pending:
            loop = asyncio.get_running_loop()
            if self.window:
                loop.call_later(self.window, self._flush_pending)
            else:
                loop.call_soon(self._flush_pending)
        self._pending.append(change)

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._flush(pending)

    def _wanted(self) -> bool:
        return True

    def _flush(self, changes: list[Change]) -> None:
        raise NotImplementedError


class SocketRelay(_Coalescing):
    """Processes on one machine sharing ``directory`` (see the module's docstring)."""

    def __init__(self, directory: Path, deliver: Deliver) -> None:
        super().__init__()
        self.directory = directory
        self.deliver = deliver
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        self._dir_fd = -1
        self._sock: socket.socket | None = None
        self._peers: list[str] = []
        self._scanned = -_RESCAN

    def _at(self, name: str) -> str:
        # A Unix socket's path may be 107 bytes at most, and a data directory's path may be longer:
        # through the directory's descriptor every name is short.
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    async def open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._at(self.name))
            sock.setblocking(False)
        except OSError:
            sock.close()
            os.close(self._dir_fd)
            self._dir_fd = -1
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    async def close(self) -> None:
        self._flush_pending()
        self.closed = True
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                os.unlink(self._at(self.name))
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def peers(self) -> list[str]:
        """The other processes' sockets, looked up at most once a second: a process that starts
        hears the others' changes from its start, and is heard by them within a second."""
        now = time.monotonic()
        if now - self._scanned >= _RESCAN and self._dir_fd >= 0:
            self._scanned = now
            with os.scandir(self._dir_fd) as entries:
                self._peers = [e.name for e in entries if e.name.endswith(_SUFFIX) and e.name != self.name]
        return self._peers

    def _wanted(self) -> bool:
        return self._sock is not None and bool(self.peers())

    def _flush(self, changes: list[Change]) -> None:
        sock = self._sock
        if sock is None:
            return
        datagrams = encode(changes, _DATAGRAM)
        for peer in list(self._peers):
            for datagram in datagrams:
                try:
                    sock.sendto(datagram, self._at(peer))
                    self.sent += 1
                except BlockingIOError:
                    self._lost(f"{peer} had no room for them")
                except (ConnectionRefusedError, FileNotFoundError):
                    # Its process has ended (a crash leaves the socket file): forget it.
                    with contextlib.suppress(OSError):
                        os.unlink(self._at(peer))
                    with contextlib.suppress(ValueError):
                        self._peers.remove(peer)
                    break
                except OSError as exc:
                    log.warning("cannot pass changes to %s: %s", peer, exc)
                    break

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(_DATAGRAM + 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("reading changes from other processes: %s", exc)
                return
            for change in decode(data):
                self.deliver(change)


@runtime_checkable
class Notifier(Protocol):
    """What :class:`PostgresRelay` needs of the database: a way to ``NOTIFY`` and to hear it."""

    async def notify(self, channel: str, payload: str) -> None: ...

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None: ...


class PostgresRelay(_Coalescing):
    """Processes on one PostgreSQL database: ``NOTIFY pod_changes`` with this process's token, so
    that it skips its own."""

    CHANNEL = "pod_changes"
    LIMIT = 7_900  # NOTIFY's payload must be shorter than 8,000 bytes
    # A NOTIFY is a statement for the database (and a lock at its commit): under a flood of writes,
    # at most one every 10 ms per process, carrying all of them, for 10 ms more latency at worst.
    window = 0.01

    def __init__(self, database: Notifier, deliver: Deliver) -> None:
        super().__init__()
        self.database = database
        self.deliver = deliver
        self.token = secrets.token_hex(6)
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        await self.database.listen(self.CHANNEL, self._heard)

    def _flush(self, changes: list[Change]) -> None:
        prefix = self.token + " "
        for payload in encode(changes, self.LIMIT - len(prefix)):
            task = asyncio.get_running_loop().create_task(self._notify(prefix + payload.decode()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify(self, payload: str) -> None:
        try:
            await self.database.notify(self.CHANNEL, payload)
            self.sent += 1
        except Exception as exc:  # the database is away: those changes reach no other process
            self._lost(exc)

    def _heard(self, payload: str) -> None:
        token, _, data = payload.partition(" ")
        if token != self.token:
            for change in decode(data):
                self.deliver(change)

    async def close(self) -> None:
        self._flush_pending()
        self.closed = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def open_relay(backend: str, database: object, data_dir: Path, deliver: Deliver) -> Relay | None:
    """The relay for this deployment's backend, open; None (and a warning) when it cannot be had:
    live updates then hear this process's writes only."""
    relay: SocketRelay | PostgresRelay
    if backend == "postgresql":
        assert isinstance(database, Notifier)
        relay = PostgresRelay(database, deliver)
    else:
        relay = SocketRelay(data_dir / "changes", deliver)
    try:
        await relay.open()
    except OSError as exc:
        log.warning("live updates will hear this process's writes only: %s", exc)
        return None
    return relay
