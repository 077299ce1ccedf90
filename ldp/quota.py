"""Per-pod storage quotas (``pod_quota``): the bytes of one pod's resource bodies.

A pod server on the internet receives writes from more than its owner: an inbox is open to any
agent with ``acl:Append``, and events arrive from other servers. Without a limit one flood fills
the disk of every pod on the server. With ``pod_quota`` set, a write that would take its pod past
the limit is refused with 413 and a message naming the pod, its use and its limit; a write that
shrinks a pod, and any delete, is always allowed, so a full pod can be emptied.

While a quota is configured, the database keeps each pod's use exact (``pod_usage``): counted when
a server first starts with a quota, then kept by triggers in the very transactions that change
resources, whatever path a write takes. On SQLite they cost a publish a quarter more instructions
(a sub-program per row, and a journal per statement); without a quota there are none. Every
process sharing a database must have the same ``pod_quota``: each sets the triggers up, or removes
them, when it starts with a setting that differs from theirs.

A write is checked against that figure before it is committed, not inside the commit, so writes
to one pod that race can together go past the limit by what they carry; the next one then finds
the pod full. Checking inside the commit would put a lookup and a failure path into every group
commit, for one byte-exact limit. Far from its limit (below 90%), a pod's figure is read at most
once a second per process, with what the process accepted since added to it; a refusal always
comes from a fresh read. With several processes, what the others write within that second also
counts only at the next read.

The limit is the server's configuration. Events a full pod cannot take are refused to their
senders (413, final: the delivery is recorded as failed with that message, and ``pod replay``
sends it again once the owner made room); an event the pod already holds, sent again by a sender
that missed the first answer, is still answered as held (200).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from ldp.accessor import Record, Write
from ldp.errors import PayloadTooLarge


class Quota:
    # A pod's use, once read, is trusted for this long while the pod stays clear of its limit: far
    # from it, a write then costs no read (on PostgreSQL a round trip per write and pod); near it,
    # every write reads the exact figure.
    FRESH = 1.0
    NEAR = 0.9
    MEMO = 4096

    def __init__(self, usage: Callable[[str], Awaitable[int]], limit: int = 0) -> None:
        self.usage = usage
        self.limit = limit  # bytes; 0 for none
        self._known: dict[str, tuple[float, int]] = {}  # pod → (read at, bytes then + accepted since)

    async def check(self, pod: str, growth: int, planned: int = 0) -> None:
        """Refuse (413) a write that adds ``growth`` bytes to ``pod``, on top of ``planned`` bytes
        of writes to it already accepted for the same transaction, if that passes the limit."""
        if self.limit <= 0 or growth <= 0:
            return
        now = time.monotonic()
        known = self._known.get(pod)
        if known is not None and now - known[0] < self.FRESH and known[1] + growth <= self.NEAR * self.limit:
            read_at, used = known  # what was accepted since the read, ``planned`` included
        else:
            read_at, used = now, await self.usage(pod) + planned
        if used + growth > self.limit:
            raise PayloadTooLarge(
                f"Storage quota exceeded: pod {pod} holds {used} bytes of its {self.limit}, "
                f"and this write needs {growth} more"
            )
        if len(self._known) >= self.MEMO:
            self._known.clear()
        self._known[pod] = (read_at, used + growth)

    async def check_replace(self, pod: str, current: Record | None, body: bytes) -> None:
        """``check`` for a write of ``body`` in place of ``current`` (None: a new resource)."""
        await self.check(pod, len(body) - (0 if current is None else len(current.body)))

    async def check_writes(self, pod: str, writes: Iterable[Write], planned: int = 0) -> int:
        """``check`` for new resources ``writes``; their size, to plan further writes with."""
        growth = sum(len(w.body) for w in writes)
        await self.check(pod, growth, planned)
        return growth


async def _nothing_stored(pod: str) -> int:
    return 0


NO_QUOTA = Quota(_nothing_stored)
