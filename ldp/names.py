"""Fresh names and versions: server-chosen resource names, event names, version tags.

Names are 32 hex digits: the time in milliseconds (12 digits) followed by 80 random bits (20
digits), drawn from the system CSPRNG a block at a time.

The time first makes names that sort in the order they were made, so each new resource (a POSTed
document, an event, its copies and topic links) lands at the end of the ranges of the database's
indexes it shares with the others made at about the same time (paths, event ids), where the
writes committed together share a few pages; wholly random names (``uuid4``) put each of them on
a page of its own, and a group commit wrote several pages of the log per write. Eighty random
bits keep names unguessable and distinct across processes. A name reveals when it was made to
the millisecond, which the resource's ``Last-Modified`` says anyway.

One ``os.urandom`` call per name or version would be a system call that releases the GIL, which
the caller then waits to get back (from the event loop, if the caller is the database writer
thread, or the other way round): buffering makes it one per ``_BLOCK`` draws. A forked child
(``pod serve --workers``) starts with an empty buffer, so no two processes hand out the same bytes.
"""

from __future__ import annotations

import os
import threading
import time


class _RandomSource:
    """Bytes from ``os.urandom``, drawn a block at a time; safe to use from any thread."""

    _BLOCK = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buffer, self._at = b"", 0
        self._lock = threading.Lock()

    def take(self, count: int) -> bytes:
        with self._lock:
            at = self._at
            if at + count > len(self._buffer):
                self._buffer, at = os.urandom(max(self._BLOCK, count)), 0
            self._at = at + count
            return self._buffer[at : at + count]


_random = _RandomSource()


def new_name() -> str:
    """A fresh name: 32 hex digits, in the order they are made (to the millisecond), unguessable
    and never repeated."""
    return f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{_random.take(10).hex()}"


def random_hex(count: int) -> str:
    """``count`` random bytes as hex (version tags)."""
    return _random.take(count).hex()
