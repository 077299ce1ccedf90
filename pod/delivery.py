"""The delivery worker: takes due rows from the durable queue and delivers them.

- ``inbox`` deliveries go to the recipient's inbox, discovered from its WebID profile
  (``ldp:inbox``, cached). A pod on this server is delivered in-process through the same inbox
  rules; another server gets an LDN POST signed by the sending pod (RFC 9421), or, when it takes
  them, the deliveries to its inboxes in signed batches (``pod.remote_inbox``).
- ``webhook`` deliveries POST the event JSON with ``X-Signature: sha256=<HMAC of the body>``.

Network errors and 5xx answers are retried with exponential backoff and jitter; a 4xx is final and
recorded with the receiver's message; a delivery older than ``max_age`` fails. All outbound
traffic goes through the guarded client (per-host connection limits, keep-alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rdflib import Graph, URIRef

from acl.documents import DocumentError, DocumentRefused, Documents
from acl.signatures import PodKey, load_pod_key
from ldp.errors import PodError
from ldp.identifiers import PodLocator
from ldp.vocab import LDP
from pod.outbound import BlockedAddress, OutboundClient, OutboundError
from pod.queue import Delivery, DeliveryQueue, backoff
from pod.remote_inbox import InboxSender

log = logging.getLogger("pod.delivery")

LocalReceive = Callable[[str, str, dict[str, object]], Awaitable[object]]
PodKeyLoader = Callable[[str], Awaitable[tuple[str, bytes] | None]]
_INBOXES_REMEMBERED = 8192
# How long the worker waits, after a claim, for its deliveries to finish joining batches before it
# claims by free slots instead: they join within a few turns of the loop (their inboxes and keys
# are known by then), so this only bounds what a claim mixing batches and single requests waits.
_JOIN_WAIT = 0.05


class Retry(Exception):
    """A failure worth trying again later (network error, 5xx, receiver unavailable)."""


class Refused(Exception):
    """A final refusal (4xx): recorded with the receiver's message, not retried."""


@dataclass
class Stats:
    delivered: int = 0
    failed: int = 0
    retried: int = 0


def _error_text(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return f"HTTP {status}: {doc['error']}"
    except (ValueError, UnicodeDecodeError):
        pass
    return f"HTTP {status}"


def webhook_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class DeliveryWorker:
    def __init__(
        self,
        queue: DeliveryQueue,
        locator: PodLocator,
        documents: Documents,
        outbound: OutboundClient,
        receive_local: LocalReceive,
        pod_key: PodKeyLoader,
        *,
        max_age: float = 3 * 24 * 3600.0,
        max_backoff: float = 600.0,
        concurrency: int = 64,
        batched: int = 1024,
        batch_claim: int = 256,
        timeout: float = 10.0,
    ) -> None:
        self.queue = queue
        self.locator = locator
        self.documents = documents
        self.outbound = outbound
        self.receive_local = receive_local
        self.pod_key = pod_key
        self.max_age = max_age
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.batched = batched
        self.batch_claim = batch_claim
        self.timeout = timeout
        self.stats = Stats()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._keys: dict[str, PodKey] = {}
        self._in_flight: set[int] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._own_requests = 0  # deliveries in flight that are not riding in a batch
        self._freed = asyncio.Event()  # a delivery finished or joined a batch
        self._claimed = 0  # how many the last claim took
        self._joined = 0  # how many of them have joined a batch so far
        self._joining_until = 0.0  # until when to wait for them to join (see _run)
        self._outcomes: list[tuple[int, str, str, float | None]] = []  # to record in the next write
        self._recorded: asyncio.Future[None] | None = None  # that write, once scheduled
        # WebID -> (its profile graph, weakly: the Documents cache decides how long graphs live; the
        # ldp:inbox found in it)
        self._inboxes: dict[str, tuple[weakref.ref[Graph], str]] = {}
        self.sender = InboxSender(outbound, timeout=timeout)

    def notify(self) -> None:
        """New deliveries were committed: look at the queue now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-worker")

    async def stop(self) -> None:
        """Stop claiming, abandon the attempts in progress and give their deliveries back, so that
        another worker takes them at once rather than when their leases run out (receivers drop
        a duplicate of an attempt that had in fact arrived)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        claimed = sorted(self._in_flight)
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self.sender.close()
        if claimed:
            await self.queue.release(claimed)
        self._in_flight.clear()

    async def _claim(self, limit: int) -> list[Delivery]:
        # A claim sent to the database commits even if stop() cancels the loop meanwhile: wait for
        # it and record what it took, so that stop() releases those leases too.
        claim = asyncio.ensure_future(self.queue.claim(limit))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._in_flight.update(d.id for d in await claim)
            raise

    async def _run(self) -> None:
        """Claim and start deliveries while there is room, then sleep until there is work.

        Room is counted twice. ``concurrency`` bounds the deliveries making requests of their own
        (webhooks, single LDN POSTs, pods here): more would only wait for a connection, and their
        time limit would run out waiting. A delivery that joins a batch to another server stops
        counting there — the batch is one request — and the loop claims the next ones at once, so
        a fan-out leaves in batches as fast as it is claimed; ``batched`` bounds how many ride in
        batches at a time (each holds a lease meanwhile), and so how many go out one by one at once
        when a receiver refuses a batch as a whole. While everything a claim took leaves in
        batches, the next claim takes up to ``batch_claim``: a claim is a write, and a fan-out of a
        thousand then leaves in a few rounds rather than sixteen.
        """
        running = self._running
        while True:
            self._wake.clear()
            self._freed.clear()
            room = self.batched - len(running)
            if self._claimed and self._joined >= self._claimed:
                # Everything the last claim took left in batches: this is a fan-out to servers that
                # take them, and claiming in larger rounds sends it sooner (a claim is a write).
                capacity = min(room, self.batch_claim)
            elif 0 < self._joined < self._claimed and time.monotonic() < self._joining_until:
                # The last claim is on its way into batches: claiming the few slots its first
                # deliveries freed would send the rest of the fan-out in small claims and batches.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._joining_until - time.monotonic()):
                        await self._freed.wait()
                continue
            else:
                capacity = min(self.concurrency - self._own_requests, room)
            claimed = await self._claim(capacity) if capacity > 0 else []
            if capacity > 0:
                # Only a claim starts a new count: a pass that found no room must not forget how
                # the last claim's deliveries are leaving.
                self._claimed, self._joined = len(claimed), 0
                self._joining_until = time.monotonic() + _JOIN_WAIT
            for delivery in claimed:
                self._in_flight.add(delivery.id)
                self._own_requests += 1
                task = asyncio.create_task(self._deliver(delivery))
                running.add(task)
                task.add_done_callback(self._done)
            if capacity <= 0 or len(claimed) == capacity:
                await self._freed.wait()  # full: wait for a slot
                continue
            if claimed:
                continue  # more may have become due meanwhile
            # Idle: sleep until woken by a local commit, the next due retry, or a poll that notices
            # deliveries queued by another process on the same database.
            due = await self.queue.next_due()
            wait = 1.0 if due is None else min(1.0, max(0.01, due - time.time()))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation (stop())
            # that arrives as the event is set, and this loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._freed.set()

    async def _deliver(self, delivery: Delivery) -> None:
        outcome: tuple[int, str, str, float | None]
        counted = True

        def release() -> None:
            """Stop counting this delivery toward ``concurrency``: it is over."""
            nonlocal counted
            if counted:
                counted = False
                self._own_requests -= 1
                self._freed.set()

        def joined() -> None:
            """It joined a batch: it makes no request of its own."""
            self._joined += 1
            release()

        try:
            try:
                if delivery.kind == "webhook":
                    await self._webhook(delivery)
                else:
                    await self._inbox(delivery, joined)
            except (Refused, DocumentRefused, BlockedAddress) as exc:
                self.stats.failed += 1
                outcome = (delivery.id, "failed", str(exc), None)
            except (Retry, OutboundError, DocumentError) as exc:
                message = str(exc) if not isinstance(exc, PodError) else exc.message
                if time.time() - delivery.created > self.max_age:
                    self.stats.failed += 1
                    outcome = (
                        delivery.id,
                        "failed",
                        f"gave up after {delivery.attempts + 1} attempts: {message}",
                        None,
                    )
                else:
                    self.stats.retried += 1
                    delay = min(self.max_backoff, backoff(delivery.attempts + 1))
                    outcome = (delivery.id, "pending", message, time.time() + delay)
            except Exception as exc:  # a bug must not lose the delivery: retry it later
                log.exception("delivery %s failed unexpectedly", delivery.id)
                outcome = (
                    delivery.id,
                    "pending",
                    f"internal error: {type(exc).__name__}",
                    time.time() + 30.0,
                )
            else:
                self.stats.delivered += 1
                outcome = (delivery.id, "delivered", "", None)
            await self._record(outcome)
        finally:
            release()
            self._in_flight.discard(delivery.id)

    async def _record(self, outcome: tuple[int, str, str, float | None]) -> None:
        """Record an outcome in the queue, in one write with the others settled in the same turn
        of the event loop (a batch answer settles up to a hundred at once): a write per delivery
        was most of what the writer did during a fan-out. Returns once it is committed."""
        self._outcomes.append(outcome)
        if self._recorded is None:
            self._recorded = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._write_outcomes, self._recorded)
        # Shielded: a delivery cancelled meanwhile (stop()) must not cancel the others' write.
        await asyncio.shield(self._recorded)

    def _write_outcomes(self, done: asyncio.Future[None]) -> None:
        outcomes, self._outcomes, self._recorded = self._outcomes, [], None

        def settle(write: asyncio.Future[None]) -> None:
            if done.cancelled():
                return
            if write.cancelled():
                done.cancel()
            elif (exc := write.exception()) is not None:
                done.set_exception(exc)
            else:
                done.set_result(None)

        asyncio.ensure_future(self.queue.finish(outcomes)).add_done_callback(settle)

    async def key_for(self, pod: str) -> PodKey:
        """The pod's signing key (loaded once)."""
        return await self._key(pod)

    async def _key(self, pod: str) -> PodKey:
        key = self._keys.get(pod)
        if key is None:
            found = await self.pod_key(pod)
            if found is None:
                raise Refused(f"pod {pod} has no signing key")
            key = self._keys[pod] = load_pod_key(*found)
        return key

    async def _inbox(self, delivery: Delivery, batched: Callable[[], None] | None = None) -> None:
        local = self.locator.target_of_url(delivery.recipient)
        if local is not None and not delivery.target:
            try:
                await self.receive_local(
                    local.pod, self.locator.webid(delivery.sender), json.loads(delivery.payload)
                )
            except PodError as exc:
                if exc.status >= 500:
                    raise Retry(exc.message) from None
                raise Refused(f"HTTP {exc.status}: {exc.message}") from None
            return
        inbox = delivery.target or await self._discover_inbox(delivery.recipient)
        key = await self._key(delivery.sender)
        # Signed, and batched with the other deliveries to the same server when it takes batches.
        response = await self.sender.send(key, inbox, delivery.payload, batched=batched)
        self._judge(response.status, response.body)

    async def _discover_inbox(self, webid: str) -> str:
        """The ``ldp:inbox`` of ``webid``, from its profile (cached by ``Documents``); what was
        found in a graph is remembered while the cache holds that same graph."""
        graph = await self.documents.graph(webid)
        known = self._inboxes.get(webid)
        if known is not None and known[0]() is graph:
            return known[1]
        inboxes = [str(o) for o in graph.objects(URIRef(webid), LDP.inbox)]
        if not inboxes:
            raise Refused(f"{webid} has no ldp:inbox")
        if len(self._inboxes) >= _INBOXES_REMEMBERED:
            self._inboxes.clear()
        self._inboxes[webid] = (weakref.ref(graph), inboxes[0])
        return inboxes[0]

    async def _webhook(self, delivery: Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Signature": webhook_signature(delivery.secret, delivery.payload),
            "X-Event-Id": delivery.event_id,
        }
        response = await self.outbound.post(delivery.target, delivery.payload, headers, timeout=self.timeout)
        self._judge(response.status, response.body)

    @staticmethod
    def _judge(status: int, body: bytes) -> None:
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status not in (408, 429):
            raise Refused(_error_text(status, body))
        raise Retry(_error_text(status, body))
