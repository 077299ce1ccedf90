"""``pod serve --workers N``: N server processes answering on one port.

The parent binds the address first, with ``SO_REUSEPORT`` and without listening: that reserves the
port (any other program's bind fails), reports a bad address or a port in use once, before any
child starts, and resolves port 0. It then forks the children; each binds its own listening socket
on that port with ``SO_REUSEPORT`` and the Linux kernel spreads new connections over them by a hash
of the connection's addresses. A socket shared by all children would be simpler, but asyncio
accepts every pending connection at once on each wake-up, so one process would take a burst of new
connections (and keep them, with keep-alive) while the others idle. The held socket never listens,
so it is not given connections.

The children share the database (SQLite in WAL mode, or PostgreSQL): the delivery queue is claimed
with leases, so each delivery is made by one process. They run in their own process group: the
parent alone receives terminal and service-manager signals and forwards SIGTERM exactly once to
each child (a second signal would cut aiohttp's graceful shutdown short). A child whose parent has
disappeared shuts itself down. When a child exits on its own, the parent stops the others and exits
with status 1, leaving restarts to the service manager; after SIGTERM or SIGINT it exits with 0
once every child has finished its in-flight requests.

The first child starts alone and creates the database if needed (schema, WAL mode, demo pod); the
others start once it serves. The parent prints the listening line once, when every child is
serving; children print nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from aiohttp import web

from pod.config import Config, ConfigError
from pod.observability import OPERATIONS

log = logging.getLogger("pod.workers")
PARENT_CHECK_INTERVAL = 1.0
_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass(frozen=True)
class Child:
    """What one worker process needs from its parent."""

    index: int
    port: int
    metrics_dir: Path
    parent_pid: int
    ready_fd: int

    def prepare(self, app: web.Application) -> None:
        """Share metrics with the other workers and stop when the parent is gone."""
        app[OPERATIONS].metrics.share(self.metrics_dir, self.index)
        app.cleanup_ctx.append(self._watch_parent)

    def ready(self, text: str) -> None:
        """Tell the parent this process is serving; the first worker's text is what it prints."""
        with os.fdopen(self.ready_fd, "w", encoding="utf-8") as pipe:
            pipe.write(text if self.index == 0 else "ready")

    async def _watch_parent(self, app: web.Application) -> AsyncIterator[None]:
        async def watch() -> None:
            while os.getppid() == self.parent_pid:
                await asyncio.sleep(PARENT_CHECK_INTERVAL)
            log.warning("the parent process is gone; shutting down")
            os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.create_task(watch(), name="parent-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _reserve(host: str, port: int) -> socket.socket:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers above 1 needs SO_REUSEPORT (Linux)")
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _read_all(fd: int) -> str:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def supervise(config: Config, run_child: Callable[[Child], int]) -> int:
    """Fork ``config.workers`` children that each exit with what ``run_child`` returns; return the
    exit status of the whole."""
    holder = _reserve(config.host, config.port)
    port = int(holder.getsockname()[1])
    metrics_dir = Path(tempfile.mkdtemp(prefix="pod-metrics-"))
    children: dict[int, int] = {}  # pid -> worker index
    readers: list[int] = []  # read ends of the children's ready pipes, until read
    signalled: set[int] = set()
    stopping = False

    def stop_children() -> None:
        for pid in children:
            if pid not in signalled:
                signalled.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        stop_children()

    def fork(index: int) -> None:
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.setpgid(0, 0)
                holder.close()
                for fd in (*readers, read_fd):
                    os.close(fd)
                for s in _SIGNALS:
                    signal.signal(s, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                code = run_child(Child(index, port, metrics_dir, os.getppid(), write_fd))
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        readers.append(read_fd)
        children[pid] = index

    status = 0
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no signal between two forks
    previous = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    try:
        # The first worker starts alone: it creates the database (schema, WAL mode, demo pod), which
        # several processes starting on a new file at once would race for.
        fork(0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        texts = [_read_all(readers.pop())]  # each child closes its end once it serves, or dies
        if texts[0] and not stopping:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            for index in range(1, config.workers):
                fork(index)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            while readers:
                texts.append(_read_all(readers.pop(0)))
        if len(texts) == config.workers and all(texts) and not stopping:
            pids = ", ".join(str(pid) for pid in children)
            print(f"{texts[0]}\n  {config.workers} worker processes (pids {pids})", flush=True)
        while children:
            pid, wait_status = os.wait()
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if not stopping:
                log.error("worker %d (pid %d) exited with status %d; stopping the others", index, pid, code)
                stopping = True
                status = 1
                stop_children()
            elif code != 0:
                status = 1
        return status
    except BaseException:
        stop_children()  # e.g. a fork failed part-way: leave no worker behind
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        for s, handler in previous.items():
            signal.signal(s, handler)
        for fd in readers:
            os.close(fd)
        holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
