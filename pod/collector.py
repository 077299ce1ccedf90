"""Full garbage collections at quiet moments, not in the middle of a burst of work.

CPython collects its oldest generation when enough objects have survived into it since the last
time; a full collection walks every tracked object the process holds, and a server that has
worked for a while holds many: parsed WebID profiles of the pods it delivers to, subscriptions,
the read cache, keep-alive connections. On a sending server that had fanned out to a thousand
subscribers each full collection took 50 to 100 ms, found nothing to free (the survivors were those
caches), and came in the middle of the next fan-out — often more than once — adding its whole
length to the time until the last copy was stored.

So the process takes full collections into its own hands: the startup heap (modules, bundled
contexts, templates) is frozen out of the collector's sight once, the automatic trigger of the
oldest generation is set so high it never fires, and :class:`QuietCollector` runs a full
collection itself when the server has been quiet for a moment (no request answered and no
delivery settled in the last ``quiet`` seconds), at most every ``min_interval`` seconds, and
regardless of activity once ``max_interval`` has passed, so that reference cycles among long-lived
objects are still freed under constant load. The young generations are collected as CPython
always does: most cyclic garbage dies there, in pauses of a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("pod.collector")

# Collections of the middle generation before CPython would collect the oldest on its own: never.
DEFERRED = 1_000_000
# Collections of the middle generation since the last full one before a quiet moment is used for
# another (CPython's own default for the oldest generation's threshold).
WORTH_IT = 10


class QuietCollector:
    """Runs full collections when ``activity()`` (a counter of work done) has not moved for
    ``quiet`` seconds; see the module docstring. One per process: :meth:`start` changes the
    interpreter's collection thresholds, :meth:`stop` restores them."""

    def __init__(
        self,
        activity: Callable[[], int],
        *,
        quiet: float = 0.5,
        min_interval: float = 10.0,
        max_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.activity = activity
        self.quiet = quiet
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.clock = clock
        self.collections = 0
        self.pause_seconds = 0.0
        self._last = clock()
        self._thresholds: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Freeze what starting allocated, defer full collections to this collector, start it."""
        gc.collect()
        gc.freeze()
        self._last = self.clock()
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            gc.set_threshold(self._thresholds[0], self._thresholds[1], DEFERRED)
        self._task = asyncio.create_task(self._run(), name="quiet-collector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def due(self, quiet: bool) -> bool:
        """Whether to collect now: something has aged into the oldest generation since the last
        full collection, and the server is quiet (and has not collected for ``min_interval``) or
        ``max_interval`` has passed."""
        if gc.get_count()[2] < WORTH_IT:
            return False
        since = self.clock() - self._last
        return since >= self.max_interval or (quiet and since >= self.min_interval)

    def collect(self) -> float:
        """One full collection now; returns its length in seconds."""
        started = time.perf_counter()
        found = gc.collect()
        elapsed = time.perf_counter() - started
        self._last = self.clock()
        self.collections += 1
        self.pause_seconds += elapsed
        log.debug("full garbage collection: %.1f ms, %d unreachable objects", elapsed * 1000, found)
        return elapsed

    async def _run(self) -> None:
        seen = self.activity()
        while True:
            await asyncio.sleep(self.quiet)
            now = self.activity()
            quiet, seen = now == seen, now
            if self.due(quiet):
                self.collect()
                seen = self.activity()
