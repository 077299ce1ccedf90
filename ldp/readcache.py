"""A cache of read results that is valid exactly as long as the database has not changed.

Point reads are cheap in SQLite, but on the request path they are not free: every statement is a
read transaction (a lock on the WAL index) and a trip out of the interpreter, and a plain GET makes
three of them (the pod root, the ACL epoch, the resource). Under a read-heavy load they were the
largest single cost of a request. This cache answers repeated reads from memory and drops
everything the moment anything is committed, by this process or any other: the caller gives it a
*stamp* that changes on every commit (SQLite's ``PRAGMA data_version``, which "will be different
if changes were committed to the database by any other connection in the interim"), and the cache
compares it before answering. A write therefore never serves a stale read, in this process or in
another worker on the same file; only an unchanged database is served from memory.

The stamp is read at most once per event-loop pass: a write that a request waits for is resolved
through the loop, so a coroutine that resumes after its write, or a request that arrives after
another process answered, always runs in a later pass, and sees the new stamp.

Memory is bounded by entry count and by bytes (large bodies are not kept): a few MiB hold the
hot set, and a process's footprint does not grow with what it has served.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Final

MISS: Final = object()


class ReadCache:
    def __init__(
        self,
        stamp: Callable[[], int],
        max_entries: int = 8192,
        max_bytes: int = 8 << 20,  # a working set of hot resources, pages and ACLs; RSS stays flat
        max_item_bytes: int = 256 << 10,
    ) -> None:
        self._stamp = stamp
        self._seen: int | None = None
        self._checked = False
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self.hits = 0
        self.misses = 0
        self.generation = 0  # counts clears (see put)

    def _validate(self) -> None:
        if self._checked:
            return
        stamp = self._stamp()
        if stamp != self._seen:
            self.clear()
            self._seen = stamp
        try:
            asyncio.get_running_loop().call_soon(self._expire)
            self._checked = True
        except RuntimeError:  # no loop (a synchronous caller): check on every read
            pass

    def _expire(self) -> None:
        self._checked = False

    def get(self, key: Hashable) -> Any:
        """The cached value for ``key``, or ``MISS``."""
        self._validate()
        entry = self._items.get(key)
        if entry is None:
            self.misses += 1
            return MISS
        self._items.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: Any, size: int = 0, generation: int | None = None) -> None:
        """Keep ``value`` (read after ``get`` returned ``MISS`` in the same loop pass, or, when the
        reading awaited, only if the cache is still at the ``generation`` it had at the ``get``:
        otherwise the database may have changed after the read and before the cache noticed)."""
        if generation is not None and generation != self.generation:
            return
        size += 64  # the entry itself
        if size > self.max_item_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._items[key] = (value, size)
        self._bytes += size
        while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
        self.generation += 1
