"""Sending events to inboxes on other servers: one signed LDN POST each, or signed batches of many.

A fan-out sends one event to many inboxes, and when they live on one other server each copy was one
request: one RFC 9421 signature made here, and one request handled and one signature verified
there. The receiver's share dominated: an Ed25519 verification alone costs it about as much as
storing the copy, so a thousand subscribers on one server cost a thousand verifications however
fast everything else was.

A server of this kind therefore says at ``<origin>/.well-known/inbox-batch`` (``GET``, JSON
``{"maxItems": N, "maxBytes": B}``) that it takes up to N events for its inboxes in one POST there,
signed by the sending pod like any delivery, and answers each item exactly as a POST of that event
to that inbox would have been answered (``pod.batch_inbox``). The body is::

    {"items": [{"inbox": "<inbox URL>", "event": {<the event, as an LDN POST carries it>}}, ...]}

and the answer ``{"results": [{"status": 201, "@id": ...} | {"status": 403, "error": ...}, ...]}``,
in item order.

:class:`InboxSender` is what the delivery worker calls for each remote inbox delivery. Deliveries
from one pod to one origin that arrive in the same turn of the event loop — a claimed wave of a
fan-out — leave together, in requests of at most ``batch_items`` events and ``batch_bytes`` bytes
(or less, as the receiver says), sent in parallel. A lone delivery is one POST as before, and the
origin is only asked about batches once two deliveries wait for it. Whatever the batch path cannot
settle goes out as single POSTs, so each delivery ends as it would have without batches:

- an origin that does not describe batches (any other server, an older one, an error) gets single
  POSTs; its answer is remembered for ``ttl`` (``failure_ttl`` after a network error or a 5xx);
- a 2xx answer settles each item by its own status (a 4xx is final for that item, a 5xx retried);
- 408, 429 and 5xx answers and network errors are every item's answer (all retried later);
- any other answer (a 4xx such as a refused signature or an oversized batch, a redirect) sends the
  items as single POSTs at once, so each gets the verdict its own request gets; 404, 405 and 501
  also stop batches to that origin for ``ttl``.

Every request, batch or single, is signed, sent through the guarded outbound client and verified by
the receiver, which keeps its replay guard per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from yarl import URL

from acl.signatures import PodKey, sign_request
from pod.outbound import OutboundClient, OutboundError, OutboundResponse

BATCH_PATH = "/.well-known/inbox-batch"
BATCH_MEDIA = "application/json"
LDN_MEDIA = "application/ld+json"
# The most events a receiver here takes in one batch (``pod.batch_inbox`` announces it).
MAX_BATCH_ITEMS = 1000
_PROBE_BYTES = 16 * 1024
_ITEM_OVERHEAD = 32  # bytes a batch adds around each event, besides the inbox URL


@dataclass(frozen=True, slots=True)
class _Limits:
    """What an origin takes in one batch; ``items`` 1 means no batches."""

    items: int
    size: int


_NO_BATCHES = _Limits(1, 0)


@dataclass(slots=True)
class _Item:
    inbox: str
    payload: bytes
    future: asyncio.Future[OutboundResponse]
    batched: Callable[[], None] | None


@lru_cache(maxsize=4096)
def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, as yarl normalises it; None otherwise.
    Asked for every remote delivery, of a few thousand inboxes at most at a time: remembered."""
    try:
        parsed = URL(url)
        if not parsed.absolute or parsed.scheme not in ("http", "https") or not parsed.raw_host:
            return None
        return str(parsed.origin())
    except (ValueError, TypeError):
        return None


def batch_body(items: list[tuple[str, bytes]]) -> bytes:
    """The batch document for (inbox URL, event payload) pairs. Payloads are the stored JSON of the
    deliveries, spliced in as they are: decoding and encoding them again would cost more than the
    request. A payload that is not JSON makes the batch malformed, which the receiver refuses as a
    whole; the items then go out one by one, each judged on its own."""
    parts = [b'{"items":[']
    for i, (inbox, payload) in enumerate(items):
        if i:
            parts.append(b",")
        parts += [b'{"inbox":', json.dumps(inbox).encode(), b',"event":', payload, b"}"]
    parts.append(b"]}")
    return b"".join(parts)


def batch_results(body: bytes, count: int) -> list[tuple[int, bytes]] | None:
    """Each item's (status, body) from a batch answer, or None if it is not one for ``count`` items.

    An item's body is what a single POST would have carried (``{"error": ...}`` for a refusal), so the
    worker records the receiver's reason the same way.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return None
    out: list[tuple[int, bytes]] = []
    for result in results:
        if not isinstance(result, dict):
            return None
        status = result.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            return None
        error = result.get("error")
        out.append((status, json.dumps({"error": error}).encode() if isinstance(error, str) else b""))
    return out


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class InboxSender:
    """Signs and sends event deliveries to remote inboxes, batching per origin where the receiver
    allows it (see the module docstring). One per delivery worker; :meth:`close` when it stops."""

    def __init__(
        self,
        outbound: OutboundClient,
        *,
        batch_items: int = 100,
        batch_bytes: int = 1024 * 1024,
        timeout: float = 10.0,
        ttl: float = 300.0,
        failure_ttl: float = 30.0,
        max_origins: int = 4096,
    ) -> None:
        self.outbound = outbound
        self.batch_items = batch_items
        self.batch_bytes = batch_bytes
        self.timeout = timeout
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.max_origins = max_origins
        self._limits: OrderedDict[str, tuple[float, _Limits]] = OrderedDict()  # origin -> (until, limits)
        self._probes: dict[str, asyncio.Future[_Limits]] = {}
        self._waiting: dict[tuple[str, str], tuple[PodKey, list[_Item]]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    async def send(
        self, key: PodKey, inbox: str, payload: bytes, *, batched: Callable[[], None] | None = None
    ) -> OutboundResponse:
        """Deliver ``payload`` (an event, JSON-LD) to ``inbox`` signed with ``key``: the receiver's
        answer to this one event, or an :class:`OutboundError` as the outbound client raises them.
        ``batched`` is called if the delivery leaves in a batch rather than in a request of its own."""
        origin = origin_of(inbox)
        known = self._known(origin) if origin is not None else None
        if origin is None or self.batch_items <= 1 or (known is not None and known.items <= 1):
            return await self._single(key, inbox, payload)
        loop = asyncio.get_running_loop()
        item = _Item(inbox, payload, loop.create_future(), batched)
        slot = (origin, key.key_id)
        waiting = self._waiting.get(slot)
        if waiting is None:
            self._waiting[slot] = (key, [item])
            # Dispatched on the next turn of the loop: deliveries claimed together reach this point
            # in the same turn (their inbox and key are cached by then), so they leave together.
            loop.call_soon(self._flush, slot)
        else:
            waiting[1].append(item)
            if known is not None and len(waiting[1]) >= known.items:
                self._flush(slot)  # a full batch leaves at once: the receiver starts on it meanwhile
        return await item.future

    async def close(self) -> None:
        """Abandon the requests in progress (the worker gives their deliveries back to the queue)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, items in self._waiting.values():
            for item in items:
                item.future.cancel()
        self._waiting.clear()

    # -- what each origin takes --------------------------------------------------------------------
    def _known(self, origin: str) -> _Limits | None:
        entry = self._limits.get(origin)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    async def _limits_of(self, origin: str) -> _Limits:
        known = self._known(origin)
        if known is not None:
            return known
        probe = self._probes.get(origin)
        if probe is None:
            # One probe per origin however many deliveries wait for it; shielded, so that a
            # delivery cancelled meanwhile does not cancel it for the others.
            probe = self._probes[origin] = self._spawn(self._probe(origin))
            probe.add_done_callback(lambda _: self._probes.pop(origin, None))
        return await asyncio.shield(probe)

    async def _probe(self, origin: str) -> _Limits:
        try:
            response = await self.outbound.get(
                origin + BATCH_PATH,
                headers={"Accept": BATCH_MEDIA},
                timeout=min(5.0, self.timeout),
                max_bytes=_PROBE_BYTES,
                follow_redirects=False,
            )
        except OutboundError:
            return self._remember(origin, _NO_BATCHES, self.failure_ttl)
        if response.status >= 500 or response.status in (408, 429):
            return self._remember(origin, _NO_BATCHES, self.failure_ttl)
        limits = _NO_BATCHES
        if response.status == 200:
            try:
                doc = json.loads(response.body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                doc = None
            if isinstance(doc, dict):
                items = _positive_int(doc.get("maxItems")) or 1
                size = _positive_int(doc.get("maxBytes")) or self.batch_bytes
                if items > 1:
                    limits = _Limits(min(items, self.batch_items), min(size, self.batch_bytes))
        return self._remember(origin, limits, self.ttl)

    def _remember(self, origin: str, limits: _Limits, ttl: float) -> _Limits:
        self._limits[origin] = (time.monotonic() + ttl, limits)
        self._limits.move_to_end(origin)
        while len(self._limits) > self.max_origins:
            self._limits.popitem(last=False)
        return limits

    # -- sending -----------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _flush(self, slot: tuple[str, str]) -> None:
        waiting = self._waiting.pop(slot, None)
        if waiting is None:
            return
        key, queued = waiting
        items = [item for item in queued if not item.future.done()]  # cancelled waiters drop out
        if items:
            self._spawn(self._settle(items, self._dispatch(slot[0], key, items)))

    async def _dispatch(self, origin: str, key: PodKey, items: list[_Item]) -> None:
        """Split ``items`` into batches the origin takes and send them; a lone item (or an origin
        that takes no batches) goes as single POSTs."""
        limits = _NO_BATCHES if len(items) == 1 else await self._limits_of(origin)
        chunks: list[list[_Item]] = []
        chunk: list[_Item] = []
        size = 0
        for item in items:
            cost = len(item.payload) + len(item.inbox) + _ITEM_OVERHEAD
            if chunk and (len(chunk) >= limits.items or size + cost > limits.size):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += cost
        chunks.append(chunk)
        await asyncio.gather(
            *(
                self._settle(part, self._batch(origin, key, part))
                if len(part) > 1
                else self._settle(part, self._single_into(key, part[0]))
                for part in chunks
            )
        )

    @staticmethod
    async def _settle(items: list[_Item], work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` for ``items``; whatever happens to it, no item is left without an answer."""
        try:
            await work
        except BaseException as exc:
            for item in items:
                if not item.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        item.future.cancel()
                    else:
                        item.future.set_exception(_copy(exc))
            if not isinstance(exc, Exception):
                raise

    async def _batch(self, origin: str, key: PodKey, items: list[_Item]) -> None:
        for item in items:
            if item.batched is not None:
                item.batched()
        url = origin + BATCH_PATH
        body = batch_body([(item.inbox, item.payload) for item in items])
        headers = {"Content-Type": BATCH_MEDIA}
        headers.update(sign_request(key, "POST", url, headers, body))
        try:
            response = await self.outbound.post(
                url, body, headers, timeout=self.timeout, follow_redirects=False
            )
        except OutboundError as exc:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(_copy(exc))
            return
        status = response.status
        if 200 <= status < 300:
            results = batch_results(response.body, len(items))
            for i, item in enumerate(items):
                if item.future.done():
                    continue
                if results is None:
                    item.future.set_exception(
                        OutboundError(f"malformed batch answer from {origin} (HTTP {status})")
                    )
                else:
                    item_status, item_body = results[i]
                    item.future.set_result(OutboundResponse(item_status, {}, item_body, item.inbox))
            return
        if (status >= 500 and status != 501) or status in (408, 429):
            for item in items:  # the receiver's trouble, not the items': all are retried later
                if not item.future.done():
                    item.future.set_result(response)
            return
        if status in (404, 405, 501):
            self._remember(origin, _NO_BATCHES, self.ttl)  # the origin no longer takes batches
        await asyncio.gather(*(self._single_into(key, item) for item in items))

    async def _single_into(self, key: PodKey, item: _Item) -> None:
        if item.future.done():
            return
        try:
            response = await self._single(key, item.inbox, item.payload)
        except OutboundError as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(response)

    async def _single(self, key: PodKey, inbox: str, payload: bytes) -> OutboundResponse:
        headers = {"Content-Type": LDN_MEDIA}
        headers.update(sign_request(key, "POST", inbox, headers, payload))
        return await self.outbound.post(inbox, payload, headers, timeout=self.timeout)


def _copy(exc: BaseException) -> BaseException:
    """A fresh exception of the same kind and message for each waiter: one instance raised in many
    tasks would collect all their tracebacks."""
    if isinstance(exc, OutboundError):
        return type(exc)(str(exc))
    try:
        return type(exc)(*exc.args)
    except Exception:
        return RuntimeError(str(exc))
