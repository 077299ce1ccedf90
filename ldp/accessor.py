"""The storage accessor: the narrow interface every backend implements.

A backend stores bytes, a media type, a version and containment, and makes each write atomic with
the precondition that guards it. It knows nothing of RDF, HTTP or Solid rules: those live once in
``ldp.store``. Keeping this small is what lets a PostgreSQL backend be a second implementation rather
than a fork.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ldp.errors import Conflict, NotFound
from ldp.identifiers import is_acl, is_container, parent_of
from ldp.names import random_hex

P = TypeVar("P")  # a Together job's part
C = TypeVar("C")  # what a backend's job runs on: a connection, a transaction
J = TypeVar("J")  # a group commit's job, or what holds it


@dataclass(frozen=True, slots=True)
class Record:
    """One stored resource. Containers keep their own (non-containment) triples as Turtle in ``body``."""

    path: str
    content_type: str
    body: bytes
    version: str
    modified: float


class VersionMismatch(Conflict):
    """The resource changed (or appeared, or vanished) since the caller read it."""


ANY_VERSION = "*"  # expect: the resource exists, whatever its version
ABSENT = ""  # expect: the resource does not exist


# -- rules every backend applies the same way ------------------------------------------------------


def new_version() -> str:
    return random_hex(8)


def check_expect(current: str | None, expect: str | None, path: str) -> None:
    """Raise VersionMismatch unless the stored version ``current`` (None: absent) meets ``expect``."""
    if expect is None:
        return
    if expect == ABSENT:
        if current is not None:
            raise VersionMismatch(f"{path} already exists")
    elif current is None:
        raise VersionMismatch(f"{path} does not exist")
    elif expect != ANY_VERSION and expect != current:
        raise VersionMismatch(f"{path} was modified concurrently")


def twin_of(path: str) -> str:
    """The other resource of the same name: ``/a`` for ``/a/`` and back; both cannot exist."""
    return path[:-1] if is_container(path) else path + "/"


def missing_containers(chain: Sequence[str], existing: Container[str]) -> list[str]:
    """The containers of ``chain`` (a path's ancestors, root first) that a write must create, given
    which of them and of their document twins ``existing`` holds. A document where a container
    must be is a conflict; a missing root means there is no such pod."""
    missing: list[str] = []
    for container in chain:
        if container not in existing:
            if container != "/" and container[:-1] in existing:
                raise Conflict(f"{container[:-1]} is a document, not a container")
            if container == "/":
                raise NotFound("No such pod")
            missing.append(container)
    return missing


class _Children(Protocol):
    async def children(self, pod: str, container: str, after: str = "", limit: int = 1000) -> list[str]: ...


async def iterate_children(source: _Children, pod: str, container: str, page: int) -> AsyncIterator[str]:
    """Every child path of ``container`` in order, read ``page`` at a time so that a container of a
    million members is never held in memory; other requests run between pages."""
    after = ""
    while True:
        batch = await source.children(pod, container, after, page)
        for path in batch:
            yield path
        if len(batch) < page:
            return
        after = batch[-1]
        await asyncio.sleep(0)


# -- schema migrations -----------------------------------------------------------------------------


class DatabaseError(Exception):
    """The database cannot be used: unreachable, refused, or its schema is newer than this server."""


@dataclass(frozen=True, slots=True)
class PodDeletion:
    """What ``delete_pod`` removed."""

    resources: int
    api_keys: int
    deliveries: int


RETIRED_NAME = (
    "The pod name {pod} belonged to a pod that was deleted; it is not given out again, so that its"
    " WebID, which other pods' access rules may still name, cannot pass to someone else"
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered step of a backend's schema. Each is applied once, in order, in one transaction,
    and recorded in the database's ``schema_migrations`` table; released steps are never edited."""

    version: int
    name: str
    sql: str


def pending(migrations: Sequence[Migration], applied: set[int]) -> list[Migration]:
    """The steps still to apply; DatabaseError if a newer server already migrated the database."""
    latest = max(m.version for m in migrations)
    newest = max(applied, default=0)
    if newest > latest:
        raise DatabaseError(
            f"the database schema is at version {newest}; this server knows versions up to {latest}"
        )
    return [m for m in sorted(migrations, key=lambda m: m.version) if m.version not in applied]


@dataclass(frozen=True, slots=True)
class Write:
    """Create or replace ``path``.

    ``expect`` is None (unconditional), ``ABSENT``, ``ANY_VERSION`` or a version string; the write
    fails with VersionMismatch when the stored state differs. Missing ancestor containers are
    created in the same transaction.
    """

    path: str
    content_type: str
    body: bytes
    expect: str | None = None


@dataclass(frozen=True, slots=True)
class Together(Generic[P, C]):
    """A group-commit job that may run in one go with the jobs of the same ``kind`` next to it in
    its transaction: ``kind(conn, parts)`` stores every part and returns each one's result, or
    returns None having kept nothing, and then each runs on its own as ``alone(conn, part)``.

    Publishes arriving together are such jobs: a few statements store all of their events,
    copies and deliveries (``create_fresh_in``) where a few per publish stored each. Each backend's
    group commit runs the jobs (calling the job is running it alone); SQLite's functions are
    plain, PostgreSQL's are coroutines."""

    kind: Callable[[C, Sequence[P]], Any]
    alone: Callable[[C, P], Any]
    part: P

    def __call__(self, conn: C) -> Any:
        return self.alone(conn, self.part)


def runs(jobs: Sequence[J], job_of: Callable[[J], object] = lambda item: item) -> Iterator[Sequence[J]]:
    """``jobs`` (or items holding them, ``job_of`` telling which) cut, in order, into runs: each
    run of ``Together`` jobs of one kind next to each other, and every other job alone."""
    start = 0
    while start < len(jobs):
        first = job_of(jobs[start])
        end = start + 1
        if isinstance(first, Together):
            while end < len(jobs):
                job = job_of(jobs[end])
                if not isinstance(job, Together) or job.kind is not first.kind:
                    break
                end += 1
        yield jobs[start:end]
        start = end


class NotFresh(Exception):
    """A backend's ``create_fresh_in`` does not apply to these writes (one is not a new document, a
    container is missing, a path is taken); it may have changed things already, which the caller
    undoes by rolling back to a savepoint it holds before writing them one by one."""


def fresh_documents(
    items: Sequence[tuple[str, Write]],
) -> tuple[list[tuple[str, str, str, str, bytes]], list[tuple[str, str]]]:
    """What a backend's ``create_fresh_in`` writes for (pod, write) ``items``: each document's row
    (pod, path, container, content type, body) and the containers to touch, (pod, path) in order.
    Raises :class:`NotFresh` for a write that is not a plain new document (a container, an ACL, a
    write conditional on anything but absence, the storage root)."""
    rows: list[tuple[str, str, str, str, bytes]] = []
    containers: set[tuple[str, str]] = set()
    for pod, w in items:
        parent = parent_of(w.path)
        if parent is None or w.expect not in (None, ABSENT) or is_container(w.path) or is_acl(w.path):
            raise NotFresh(w.path)
        rows.append((pod, w.path, parent, w.content_type, w.body))
        containers.add((pod, parent))
    return rows, sorted(containers)


class StorageAccessor(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, pod: str, path: str) -> Record | None: ...

    async def write(self, pod: str, write: Write) -> tuple[Record, bool]:
        """Apply one write atomically; returns the new record and whether it was created."""
        ...

    async def create(self, pod: str, write: Write) -> Record:
        """``write`` (create-only: ``expect`` is ``ABSENT``) at a name just drawn by
        ``ldp.names.new_name``, which no resource or container can have yet: creates arriving
        together may then be stored in one go (``create_fresh_in``)."""
        ...

    async def delete(self, pod: str, path: str, expect: str | None = None) -> None:
        """Delete ``path`` and its auxiliary resources; Conflict if it is a non-empty container."""
        ...

    async def children(self, pod: str, container: str, after: str = "", limit: int = 1000) -> list[str]:
        """One page of child paths of ``container`` in path order, strictly after ``after``."""
        ...

    def iter_children(self, pod: str, container: str, page: int = 1000) -> AsyncIterator[str]: ...

    async def create_pod(
        self, pod: str, resources: Sequence[Write], key: tuple[str, bytes] | None = None
    ) -> None:
        """Register ``pod``, its signing key (key id, private PEM) and its initial resources in one
        transaction; Conflict if taken."""
        ...

    async def delete_pod(self, pod: str) -> PodDeletion:
        """Remove ``pod`` and all of it in one transaction: its resources, API keys, signing key,
        duplicate guards and deliveries (made or still to make: they hold its events), and retire
        its name, which ``create_pod`` then refuses; NotFound if there is no such pod."""
        ...

    async def pod_key(self, pod: str) -> tuple[str, bytes] | None: ...

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query now (readiness checks)."""
        ...

    async def acl_epoch(self) -> int:
        """A number that changes whenever any ACL resource is written or deleted."""
        ...

    async def arrivals(
        self, pod: str, container: str, after: int, since: float, limit: int
    ) -> list[tuple[int, Record, float]]:
        """Members of ``container`` in arrival order as (sequence, record, created), sequence >
        ``after``, created >= ``since``; sequences are never reused, so paging by them is stable."""
        ...

    async def pods(self) -> list[str]: ...

    async def end_channel(self, key: str, end_at: float) -> None:
        """Record that the notification channel ``key`` ended before ``end_at``, when its signed
        token stops being valid anyway (``pod.notifications``); expired records are dropped."""
        ...

    async def ended_channels(self) -> dict[str, float]:
        """The channels ended early whose tokens are still within their time: key → endAt."""
        ...

    async def track_usage(self, on: bool) -> None:
        """Keep each pod's byte count exact from now on (recounted now), or stop keeping it: its
        cost on every write is paid only where a quota needs it (``ldp.quota``)."""
        ...

    async def usage(self, pod: str) -> int:
        """The bytes of ``pod``'s resource bodies (what ``pod_quota`` limits), kept exact by the
        database in the transactions that change them while ``track_usage`` is on."""
        ...

    async def pod_exists(self, pod: str) -> bool: ...
