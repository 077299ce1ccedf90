"""PostgreSQL storage accessor: several server processes, on one machine or many, on one database.

The rules are those of ``ldp.sqlite``, statement for statement; what differs is how they stay atomic
when writers run at once in different processes:

- A write first locks its resource's row (``SELECT ... FOR UPDATE``), so its precondition check and
  the write itself see the same version: concurrent writers never lose an update.
- Anything that changes a pod's tree (creating or deleting a resource, intermediate containers,
  a pod itself) also takes the pod's transaction-scoped advisory lock and then looks again. Creates
  and deletes in one pod therefore apply one after another, as in SQLite's single writer: no
  document and container of one name, no member of a deleted container, and arrival numbers
  (``resources.id``) that follow commit order within a pod, so inbox paging by them stays stable.
- Deadlocks and serialization failures are retried (the whole transaction, a few times); a unique
  constraint that still fails after the retries is a concurrent change (VersionMismatch).

Commits are durable (``synchronous_commit=on``, whatever the server's default). That makes a commit
the dearest statement of a write, and the pod's lock is held through it: a stream of creates into
one pod went one commit at a time (about 1,000/s here, the database as busy as the server). So
resource writes and deletes arriving together go in one transaction, as SQLite's group commit does
(``PostgresAccessor.batched``): their pods locked at once in name order, one after another, one
commit for all.

ACL changes reach every process at once: the transaction that writes or deletes an ACL resource
bumps a stored epoch and sends ``NOTIFY pod_acl`` (delivered on commit). Each process LISTENs on a
dedicated connection and counts notifications in memory, so ``acl_epoch()`` costs no query. When
that connection is lost the process falls back to reading the stored epoch on every call until it
listens again, and bumps its own epoch on reconnecting (a change may have slipped by meanwhile).

The schema is created and migrated when the accessor opens (``MIGRATIONS``, recorded in
``schema_migrations``), under an advisory lock so that processes starting at once apply each step
once. Tables live in the connection's current schema: ``?search_path=NAME`` in the DSN picks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from acl.apikeys import ApiKey
from ldp.accessor import (
    ABSENT,
    RETIRED_NAME,
    DatabaseError,
    Migration,
    NotFresh,
    PodDeletion,
    Record,
    Together,
    VersionMismatch,
    Write,
    check_expect,
    fresh_documents,
    iterate_children,
    missing_containers,
    new_version,
    pending,
    runs,
    twin_of,
)
from ldp.errors import Conflict, NotFound, PodError
from ldp.fair_pool import FairPool
from ldp.identifiers import ancestors, is_acl, is_container, parent_of

log = logging.getLogger("pod.postgres")
T = TypeVar("T")
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

CHANNEL = "pod_acl"  # NOTIFY channel; the payload is the schema whose ACLs changed
POOL_SIZE = 10
_POD_LOCK = 0x504F44  # advisory lock class of the per-pod structure locks ("POD")
_ATTEMPTS = 6  # tries of a transaction that hit a deadlock, serialization failure or unique race
_MAX_BATCH = 256  # jobs in one group commit
_RETRY = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)
# asyncpg prepares every statement and keeps it for the connection's life. After five runs
# PostgreSQL may switch such a statement to a generic plan, costed on the statistics of that
# moment: on a new database, an almost empty ``resources`` table. For statements with arrays
# (``path = ANY($2)``, ``unnest``) that plan scans the whole pod, or the whole table, and it stays
# while the table grows: each write cost more than the one before (2,300 creates/s into one pod
# at the start, 510/s ten thousand creates later, the database's CPU per write up from 180 to
# 1,580 us). Planning each run costs a few microseconds and keeps the index lookups.
_SETTINGS = {"synchronous_commit": "on", "plan_cache_mode": "force_custom_plan"}
_PING_EVERY = 10.0  # seconds between health checks of the listening connection
_RECONNECT_MAX = 5.0

# Numbered steps; released steps are never edited, a change is a new step. The delivery queue's
# tables (``pod.queue_postgres``) are here too: the queue commits in the same transactions.
MIGRATIONS = (
    Migration(
        1,
        "resources, pods, keys, ACL epoch and the delivery queue",
        """
CREATE TABLE acl_epoch (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- exactly one row
    value bigint NOT NULL
);
INSERT INTO acl_epoch(value) VALUES (0);
CREATE TABLE pods (name text COLLATE "C" PRIMARY KEY, created double precision NOT NULL);
CREATE TABLE resources (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- arrival order for inbox paging
    pod text COLLATE "C" NOT NULL,
    path text COLLATE "C" NOT NULL,  -- byte order, as SQLite compares text
    parent text COLLATE "C",         -- NULL for storage roots and auxiliary (.acl) resources
    content_type text NOT NULL,
    body bytea NOT NULL,
    version text NOT NULL,
    modified double precision NOT NULL,
    created double precision NOT NULL,
    CONSTRAINT resources_path UNIQUE (pod, path)
);
CREATE INDEX resources_children ON resources(pod, parent, path) WHERE parent IS NOT NULL;
CREATE INDEX resources_arrivals ON resources(pod, parent, id) WHERE parent IS NOT NULL;
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    pod text NOT NULL,
    agent text NOT NULL,
    secret_hash text NOT NULL,
    label text NOT NULL DEFAULT '',
    created double precision NOT NULL,
    revoked boolean NOT NULL DEFAULT false
);
CREATE INDEX api_keys_pod ON api_keys(pod, created);
CREATE TABLE pod_keys (pod text PRIMARY KEY, key_id text NOT NULL, private_pem bytea NOT NULL);
CREATE TABLE deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text NOT NULL,
    sender text NOT NULL,
    kind text NOT NULL,
    recipient text NOT NULL,
    target text NOT NULL DEFAULT '',
    secret text NOT NULL DEFAULT '',
    payload bytea NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt double precision NOT NULL,
    lease_until double precision NOT NULL DEFAULT 0,
    last_error text NOT NULL DEFAULT '',
    created double precision NOT NULL,
    finished double precision
);
CREATE INDEX deliveries_due ON deliveries(next_attempt) WHERE state = 'pending';
CREATE INDEX deliveries_event ON deliveries(event_id);
CREATE TABLE received (
    pod text NOT NULL,
    sender text NOT NULL,
    event_id text NOT NULL,
    path text NOT NULL,
    PRIMARY KEY (pod, sender, event_id)
);
""",
    ),
    Migration(
        2,
        "replay guard shared by all server processes",
        """
-- UNLOGGED: entries only need to outlive a proof's short validity window, not a crash.
CREATE UNLOGGED TABLE replay_keys (key bytea PRIMARY KEY, expires double precision NOT NULL);
CREATE INDEX replay_keys_expires ON replay_keys(expires);
""",
    ),
    Migration(
        3,
        "names of deleted pods, never given out again",
        'CREATE TABLE retired_pods (name text COLLATE "C" PRIMARY KEY, deleted double precision NOT NULL);',
    ),
    Migration(
        4,
        "bytes stored per pod, for quotas",
        'CREATE TABLE pod_usage (pod text COLLATE "C" PRIMARY KEY, bytes bigint NOT NULL);',
    ),
    Migration(
        5,
        "notification channels ended before their time",
        "CREATE TABLE ended_channels (key text PRIMARY KEY, end_at double precision NOT NULL);",
    ),
)
# Kept only while a quota is configured (see ldp.sqlite): ``track_usage`` recounts pod_usage and
# adds statement triggers with transition tables, one update per statement and pod however many
# rows a batched insert carries. The updates take the pod's row lock, which writes to one pod
# already serialise on (Tx.lock_pod).
_USAGE_OFF = """
DROP TRIGGER IF EXISTS pod_usage_pod ON pods;
DROP TRIGGER IF EXISTS pod_usage_insert ON resources;
DROP TRIGGER IF EXISTS pod_usage_delete ON resources;
DROP TRIGGER IF EXISTS pod_usage_update ON resources;
DELETE FROM pod_usage;
"""
_USAGE_ON = (
    _USAGE_OFF
    + """
INSERT INTO pod_usage(pod, bytes)
    SELECT name, (SELECT coalesce(sum(octet_length(body)), 0) FROM resources WHERE pod = name) FROM pods;
CREATE OR REPLACE FUNCTION pod_usage_pod() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pod_usage(pod, bytes) VALUES (NEW.name, 0) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
-- Inserted rows count for (argument 1), deleted ones against (-1): both name them "changed".
CREATE OR REPLACE FUNCTION pod_usage_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pod_usage u SET bytes = u.bytes + TG_ARGV[0]::bigint * r.bytes
        FROM (SELECT pod, sum(octet_length(body)) AS bytes FROM changed GROUP BY pod) r
        WHERE u.pod = r.pod;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION pod_usage_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pod_usage u SET bytes = u.bytes + d.bytes
        FROM (SELECT n.pod, sum(octet_length(n.body) - octet_length(o.body)) AS bytes
              FROM added n JOIN removed o ON o.id = n.id GROUP BY n.pod) d
        WHERE u.pod = d.pod AND d.bytes <> 0;
    RETURN NULL;
END $$;
CREATE TRIGGER pod_usage_pod AFTER INSERT ON pods FOR EACH ROW EXECUTE FUNCTION pod_usage_pod();
CREATE TRIGGER pod_usage_insert AFTER INSERT ON resources
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pod_usage_apply('1');
CREATE TRIGGER pod_usage_delete AFTER DELETE ON resources
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pod_usage_apply('-1');
CREATE TRIGGER pod_usage_update AFTER UPDATE ON resources
    REFERENCING NEW TABLE AS added OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION pod_usage_change();
"""
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_VERSION_FOR_UPDATE = "SELECT version FROM resources WHERE pod=$1 AND path=$2 FOR UPDATE"
_INSERT = (
    "INSERT INTO resources(pod, path, parent, content_type, body, version, modified, created)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"
)
_TOUCH = "UPDATE resources SET version=$3, modified=$4 WHERE pod=$1 AND path=$2"
_LOCK_POD = "SELECT pg_advisory_xact_lock($1, hashtext(current_schema() || ' ' || $2))"
# Many rows in one statement, a column per array (``create_fresh_in``).
_TOUCH_MANY = (
    "UPDATE resources SET version=c.version, modified=$4"
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS c(pod, path, version)"
    ' WHERE resources.pod = c.pod COLLATE "C" AND resources.path = c.path COLLATE "C"'
)
_INSERT_MANY = (
    "INSERT INTO resources(pod, path, parent, content_type, body, version, modified, created)"
    " SELECT pod, path, parent, content_type, body, version, $7, $7"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])"
    " AS f(pod, path, parent, content_type, body, version)"
)
_INSERT_AND_TOUCH = (
    f"WITH inserted AS ({_INSERT} RETURNING 1)"
    " UPDATE resources SET version=$9, modified=$7 WHERE pod=$1 AND path=$8"
)
# Runs last in a transaction that changed an ACL: the epoch row is the one lock every ACL writer
# shares, held from here to the commit only. The notification is delivered when the commit is.
_BUMP_EPOCH = (
    "WITH bumped AS (UPDATE acl_epoch SET value = value + 1 RETURNING value)"
    f" SELECT pg_notify('{CHANNEL}', current_schema()) FROM bumped"
)


def _count(status: str) -> int:
    """Rows a statement affected, from asyncpg's command tag (``DELETE 12``)."""
    return int(status.rpartition(" ")[2])


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@dataclass
class Tx:
    """One transaction: its connection, the pods whose tree it has locked, whether it changed an ACL."""

    conn: Connection
    locked: set[str] = field(default_factory=set)
    acl_changed: bool = False

    async def lock_pod(self, pod: str) -> None:
        """Serialize changes to ``pod``'s tree with every other transaction's, until commit."""
        if pod not in self.locked:
            await self.conn.execute(_LOCK_POD, _POD_LOCK, pod)
            self.locked.add(pod)

    async def lock_pods(self, pods: Iterable[str]) -> None:
        """``lock_pod`` for each of ``pods``, in one order (by name) so that two transactions
        locking some of the same pods cannot deadlock, and in one round trip."""
        todo = sorted(set(pods) - self.locked)
        if todo:
            await self.conn.executemany(_LOCK_POD, [(_POD_LOCK, pod) for pod in todo])
            self.locked.update(todo)


async def create_fresh_in(
    tx: Tx, items: Sequence[tuple[str, Write]], now: float, versions: Sequence[str] | None = None
) -> None:
    """What ``write_in`` does for each (pod, write) of ``items``, for new documents at fresh names
    (``ldp.names.new_name``) in containers that exist, in two statements however many there are:
    the rules of ``ldp.sqlite.create_fresh_in``, which says why. Each write costs ``write_in``
    several round trips; a fan-out wave of a hundred receipts made a thousand. The caller holds
    the pods' locks (``Tx.lock_pods``) and a savepoint: :class:`NotFresh` may come after changes
    (or leave the transaction failed), which rolling back to it undoes."""
    rows, containers = fresh_documents(items)
    if not rows:
        return
    conn = tx.conn
    status = await conn.execute(
        _TOUCH_MANY,
        [pod for pod, _ in containers],
        [path for _, path in containers],
        [new_version() for _ in containers],
        now,
    )
    if status != f"UPDATE {len(containers)}":
        raise NotFresh("a container does not exist")
    try:
        await conn.execute(
            _INSERT_MANY,
            *(list(column) for column in zip(*rows, strict=True)),
            [new_version() for _ in rows] if versions is None else list(versions),
            now,
        )
    except asyncpg.UniqueViolationError:
        raise NotFresh("a path is taken") from None


async def _create_alone(tx: Tx, part: tuple[str, Write]) -> Record:
    return (await write_in(tx, *part))[0]


async def _creates_together(tx: Tx, parts: Sequence[tuple[str, Write]]) -> list[Record] | None:
    """Creates at fresh names of one group commit in two statements (``PostgresAccessor.create``),
    or None with nothing kept."""
    now = time.time()
    versions = [new_version() for _ in parts]
    try:
        async with tx.conn.transaction():
            await create_fresh_in(tx, parts, now, versions)
    except NotFresh:
        return None
    return [Record(w.path, w.content_type, w.body, v, now) for (_, w), v in zip(parts, versions, strict=True)]


async def write_in(tx: Tx, pod: str, w: Write) -> tuple[Record, bool]:
    """Apply a write inside ``tx`` (see ``PostgresAccessor.transaction``); the rules of
    ``ldp.sqlite._write``."""
    conn = tx.conn
    now = time.time()
    # A create-only write need not look before it takes the pod's lock: it changes the tree.
    current: str | None = None
    if w.expect != ABSENT:
        current = await conn.fetchval(_VERSION_FOR_UPDATE, pod, w.path)
    existing: set[str] = set()
    chain = ancestors(w.path)
    if current is None:
        # A create changes the tree: take the pod's lock, then look again, since a creator that
        # held it may just have committed this very path. Under the lock the tree holds still,
        # so one read answers every question about it; the statements from here to the commit
        # are few, since creates in the pod wait for them.
        await tx.lock_pod(pod)
        probe = [w.path, twin_of(w.path), *chain, *(c[:-1] for c in chain if c != "/")]
        rows = await conn.fetch(
            "SELECT path FROM resources WHERE pod=$1 AND path = ANY($2::text[])", pod, probe
        )
        existing = {str(r[0]) for r in rows}
        if w.path in existing:
            current = await conn.fetchval(_VERSION_FOR_UPDATE, pod, w.path)
    check_expect(current, w.expect, w.path)
    if current is not None:
        version = new_version()
        await conn.execute(
            "UPDATE resources SET content_type=$3, body=$4, version=$5, modified=$6 WHERE pod=$1 AND path=$2",
            pod,
            w.path,
            w.content_type,
            w.body,
            version,
            now,
        )
        if is_acl(w.path):
            tx.acl_changed = True
        return Record(w.path, w.content_type, w.body, version, now), False
    if w.path != "/" and twin_of(w.path) in existing:
        raise Conflict(f"{twin_of(w.path)} already exists; a container and a document cannot share a name")
    missing = missing_containers(chain, existing)
    if missing:
        await conn.executemany(
            _INSERT, [(pod, c, parent_of(c), "text/turtle", b"", new_version(), now) for c in missing]
        )
    version = new_version()
    parent = None if is_acl(w.path) else parent_of(w.path)
    # Each container whose membership changed gets a new version: the new ones have theirs, so
    # only the nearest existing ancestor is touched (in the insert's statement).
    touched = parent_of(missing[0]) if missing else parent
    if touched is None:
        await conn.execute(_INSERT, pod, w.path, parent, w.content_type, w.body, version, now)
    else:
        await conn.execute(
            _INSERT_AND_TOUCH,
            pod,
            w.path,
            parent,
            w.content_type,
            w.body,
            version,
            now,
            touched,
            new_version(),
        )
    if parent is None and w.path != "/":
        tx.acl_changed = True
    return Record(w.path, w.content_type, w.body, version, now), True


async def delete_in(tx: Tx, pod: str, path: str, expect: str | None) -> None:
    """Delete ``path`` and its ACL inside ``tx``; the rules of ``ldp.sqlite._delete``."""
    conn = tx.conn
    await tx.lock_pod(pod)
    current: str | None = await conn.fetchval(_VERSION_FOR_UPDATE, pod, path)
    if current is None:
        raise NotFound(f"{path} does not exist")
    check_expect(current, expect, path)
    if is_container(path) and await conn.fetchval(
        "SELECT 1 FROM resources WHERE pod=$1 AND parent=$2 LIMIT 1", pod, path
    ):
        raise Conflict("Container is not empty")
    status = await conn.execute(
        "DELETE FROM resources WHERE pod=$1 AND path = ANY($2::text[])", pod, [path, path + ".acl"]
    )
    if is_acl(path) or int(status.split()[-1]) > 1:
        tx.acl_changed = True
    parent = None if is_acl(path) else parent_of(path)
    if parent is not None:
        await conn.execute(_TOUCH, pod, parent, new_version(), time.time())


async def _keep_session(_conn: object) -> None:
    """Connections go back to the pool as they are: this module leaves no session state (no
    LISTEN, SET or session locks on them), so asyncpg's reset query would be a wasted round trip.
    A transaction left open is still rolled back by the pool."""


class _CommitFailed(Exception):
    """The COMMIT of a group commit failed: whether it took effect is not known, so its jobs fail
    with the database's error rather than run again."""


@dataclass(frozen=True, slots=True)
class _Batched(Generic[T]):
    """A job waiting for a group commit (``PostgresAccessor.batched``) and the future it answers."""

    pods: frozenset[str]
    job: Callable[[Tx], Awaitable[T]]
    future: asyncio.Future[T]

    def resolve(self, result: object) -> None:
        if self.future.done():  # its caller went away; the job ran all the same
            return
        if isinstance(result, _CommitFailed) and result.__cause__ is not None:
            self.future.set_exception(result.__cause__)
        elif isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)  # type: ignore[arg-type]

    async def settle(self, run: Awaitable[T]) -> None:
        """Answer with the outcome of ``run`` (the job in a transaction of its own)."""
        try:
            self.resolve(await run)
        except Exception as exc:
            self.resolve(exc)


async def _together(tx: Tx, jobs: Sequence[Callable[[Tx], Awaitable[object]]]) -> list[object] | None:
    """A run of ``Together`` jobs of one kind in one go (``ldp.accessor.Together``): their
    results, or None with nothing kept, and they then run one by one. A database error leaves the
    transaction failed and goes up: the group commit's jobs then run in transactions of their own."""
    first = cast(Together[Any, Tx], jobs[0])
    done = await first.kind(tx, [cast(Together[Any, Tx], job).part for job in jobs])
    return None if done is None else list(done)


def _record(path: str, row: asyncpg.Record) -> Record:
    return Record(path, row["content_type"], bytes(row["body"]), row["version"], row["modified"])


class PostgresAccessor:
    """StorageAccessor and KeyStorage on PostgreSQL, safe to share with any number of processes."""

    def __init__(self, dsn: str, pool_size: int = POOL_SIZE) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.applied: list[Migration] = []  # the schema steps this open applied
        self._pool: FairPool | None = None
        self._schema = ""
        self._epoch = 0  # this process's ACL epoch, moved by notifications and local commits
        self._listening = False  # True while notifications are known to arrive
        self._stored_epoch: int | None = None  # last stored epoch read while not listening
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        # Other channels heard on the same connection (``listen``): channel -> callbacks
        self._channels: dict[str, list[Callable[[str], None]]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._batch: list[_Batched[object]] = []  # jobs waiting for the next group commit
        self._committer: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings=dict(_SETTINGS),
                reset=_keep_session,
            )
            self._pool = FairPool(pool, self.pool_size)
            schema = await self._pool.fetchval("SELECT current_schema()")
            if not schema:
                raise DatabaseError(f"{redact(self.dsn)}: the search_path names no existing schema")
            self._schema = str(schema)
            self.applied = await self._migrate()
            listener, lost = await self._listen()
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise DatabaseError(f"cannot use PostgreSQL at {redact(self.dsn)}: {exc}") from exc
        except BaseException:
            await self.close()
            raise
        self._watch = asyncio.create_task(self._keep_listening(listener, lost), name="pod-acl-listener")

    async def close(self) -> None:
        if self._committer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self._drop_listener()
        if self._pool is not None:
            pool, self._pool = self._pool.pool, None
            try:
                await asyncio.wait_for(pool.close(), 10.0)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    def _require_pool(self) -> FairPool:
        assert self._pool is not None, "accessor is not open"
        return self._pool

    @property
    def pool(self) -> FairPool:
        """The connection pool, for short reads by other modules on this database (delivery queue)."""
        return self._require_pool()

    # -- schema ----------------------------------------------------------------------------------
    async def _migrate(self) -> list[Migration]:
        """Apply the pending steps in one transaction, holding an advisory lock on this schema so
        that processes starting at once do not race (the second finds nothing left to do)."""
        async with self._require_pool().acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('pod migrations ' || current_schema(), 0))"
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())"
            )
            applied = {int(r[0]) for r in await conn.fetch("SELECT version FROM schema_migrations")}
            steps = pending(MIGRATIONS, applied)
            for step in steps:
                await conn.execute(step.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations(version, name) VALUES ($1, $2)", step.version, step.name
                )
                log.info("applied schema migration %d (%s)", step.version, step.name)
        return steps

    async def schema_version(self) -> int:
        version = await self._require_pool().fetchval("SELECT MAX(version) FROM schema_migrations")
        return 0 if version is None else int(version)

    # -- ACL change notifications ----------------------------------------------------------------
    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self._schema:  # other schemas of the same database have their own ACLs
            self._epoch += 1

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Hear ``notify(channel, ...)`` from every process on this schema (this one included), on
        the connection that listens for ACL changes; heard again after it reconnects, and nothing
        is heard while it is away."""
        first = channel not in self._channels
        self._channels.setdefault(channel, []).append(callback)
        if first and self._listener is not None and not self._listener.is_closed():
            await self._add_channel(self._listener, channel)

    async def notify(self, channel: str, payload: str) -> None:
        """``NOTIFY channel`` for the processes on this schema (``listen``); the payload must
        stay under 8,000 bytes with the schema's name."""
        await self._require_pool().execute("SELECT pg_notify($1, $2)", channel, f"{self._schema} {payload}")

    async def _add_channel(self, conn: asyncpg.Connection[asyncpg.Record], channel: str) -> None:
        def heard(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            schema, _, rest = str(payload).partition(" ")
            if schema == self._schema:  # other schemas of the database are other deployments
                for callback in list(self._channels.get(channel, ())):
                    callback(rest)

        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await conn.add_listener(channel, heard)

    async def _listen(self) -> tuple[asyncpg.Connection[asyncpg.Record], asyncio.Event]:
        conn = await asyncpg.connect(self.dsn, timeout=10.0)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            for channel in self._channels:
                await self._add_channel(conn, channel)
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn
        self._listening = True
        self._epoch += 1  # conservatively: an ACL may have changed while nobody listened
        return conn, lost

    async def _keep_listening(self, conn: asyncpg.Connection[asyncpg.Record], lost: asyncio.Event) -> None:
        """Watch the listening connection (closed, or not answering a ping) and reconnect."""
        delay = 0.1
        while True:
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _PING_EVERY)
                    break
                try:
                    await asyncio.wait_for(conn.execute("SELECT 1"), _PING_EVERY)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    break
            self._listening = False  # until listening again, acl_epoch() reads the stored epoch
            log.warning("lost the connection that listens for ACL changes; reconnecting")
            await self._drop_listener()
            while True:
                try:
                    conn, lost = await self._listen()
                    log.info("listening for ACL changes again")
                    delay = 0.1
                    break
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("cannot listen for ACL changes yet: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(_RECONNECT_MAX, delay * 2)

    async def _drop_listener(self) -> None:
        self._listening = False
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def ping(self) -> None:
        await self._require_pool().fetchval("SELECT 1")

    async def claim_once(self, key: bytes, expires: float, now: float) -> bool:
        """True the first time any process claims ``key`` before ``expires`` (replay guard)."""
        pool = self._require_pool()
        claimed = await pool.fetchval(
            "INSERT INTO replay_keys(key, expires) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET expires = EXCLUDED.expires WHERE replay_keys.expires <= $3"
            " RETURNING true",
            key,
            expires,
            now,
        )
        if claimed and key[-1] == 0:  # now and then (1 claim in 256) drop what has expired
            await pool.execute("DELETE FROM replay_keys WHERE expires <= $1", now)
        return bool(claimed)

    async def acl_epoch(self) -> int:
        """Answered from memory while notifications arrive; read from the database otherwise."""
        if not self._listening:
            stored = int(await self._require_pool().fetchval("SELECT value FROM acl_epoch"))
            if stored != self._stored_epoch:
                self._stored_epoch = stored
                self._epoch += 1
        return self._epoch

    # -- transactions ----------------------------------------------------------------------------
    async def transaction(self, job: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``job(tx)`` in one durable transaction, again from the start after a deadlock, a
        serialization failure or a lost unique race, so ``job`` must only touch the database."""
        pool = self._require_pool()
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    tx = Tx(conn)
                    result = await job(tx)
                    if tx.acl_changed:
                        await conn.execute(_BUMP_EPOCH)
            except _RETRY as exc:
                if attempt == _ATTEMPTS:
                    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
                        raise VersionMismatch("The resource was changed concurrently") from None
                    raise
                await asyncio.sleep(random.uniform(0.0, 0.005 * 2**attempt))
                continue
            if tx.acl_changed:
                self._epoch += 1  # this process drops its ACL cache now, not when NOTIFY arrives
            return result
        raise AssertionError("unreachable")

    async def batched(self, pods: Iterable[str], job: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``job(tx)`` in this process's next group commit, with ``pods`` (every pod whose tree
        it may change) locked beforehand.

        ``job`` must refuse (raise a :class:`PodError`) only before its first change, as
        ``write_in`` and ``delete_in`` do: a refused job leaves the others in the transaction. A
        database error leaves it failed for all of them; nothing is committed then, and each job
        runs again in a transaction of its own (``transaction``, with its retries), so one job's
        lost race or deadlock costs the others only time. Jobs arriving while a group commit is
        under way wait for the next, which takes them all.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._batch.append(_Batched(frozenset(pods), job, future))  # type: ignore[arg-type]
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._group_commits(), name="pod-postgres-group-commit")
        return await future

    async def _group_commits(self) -> None:
        while self._batch:
            batch, self._batch = self._batch[:_MAX_BATCH], self._batch[_MAX_BATCH:]
            if len(batch) == 1:
                await batch[0].settle(self.transaction(batch[0].job))
                continue
            try:
                results: list[object] = await self._group_commit(batch)
            except _CommitFailed as exc:  # whether it took effect is not known: no second run
                results = [exc] * len(batch)
            except Exception as exc:  # nothing was committed
                log.debug("group commit of %d jobs failed (%r); each goes alone", len(batch), exc)
                await asyncio.gather(*(item.settle(self.transaction(item.job)) for item in batch))
                continue
            for item, result in zip(batch, results, strict=True):
                item.resolve(result)

    async def _group_commit(self, batch: list[_Batched[object]]) -> list[object]:
        """One transaction for every job of ``batch``: each one's result, or its refusal."""
        pool = self._require_pool()
        results: list[object] = []
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                tx = Tx(conn)
                await tx.lock_pods(pod for item in batch for pod in item.pods)
                for run in runs([item.job for item in batch]):
                    if len(run) > 1 and (done := await _together(tx, run)) is not None:
                        results.extend(done)
                        continue
                    for job in run:
                        try:
                            results.append(await job(tx))
                        except PodError as exc:
                            results.append(exc)
                if tx.acl_changed:
                    await conn.execute(_BUMP_EPOCH)
            except BaseException:
                await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except Exception as exc:
                raise _CommitFailed() from exc
        if tx.acl_changed:
            self._epoch += 1
        return results

    # -- reads -----------------------------------------------------------------------------------
    async def get(self, pod: str, path: str) -> Record | None:
        row = await self._require_pool().fetchrow(
            "SELECT content_type, body, version, modified FROM resources WHERE pod=$1 AND path=$2", pod, path
        )
        return None if row is None else _record(path, row)

    async def children(self, pod: str, container: str, after: str = "", limit: int = 1000) -> list[str]:
        rows = await self._require_pool().fetch(
            "SELECT path FROM resources WHERE pod=$1 AND parent=$2 AND path>$3 ORDER BY path LIMIT $4",
            pod,
            container,
            after,
            limit,
        )
        return [str(r[0]) for r in rows]

    def iter_children(self, pod: str, container: str, page: int = 1000) -> AsyncIterator[str]:
        return iterate_children(self, pod, container, page)

    async def arrivals(
        self, pod: str, container: str, after: int, since: float, limit: int
    ) -> list[tuple[int, Record, float]]:
        rows = await self._require_pool().fetch(
            "SELECT id, path, content_type, body, version, modified, created FROM resources"
            " WHERE pod=$1 AND parent=$2 AND id>$3 AND created>=$4 ORDER BY id LIMIT $5",
            pod,
            container,
            after,
            since,
            limit,
        )
        return [(int(r["id"]), _record(r["path"], r), float(r["created"])) for r in rows]

    async def pods(self) -> list[str]:
        return [str(r[0]) for r in await self._require_pool().fetch("SELECT name FROM pods ORDER BY name")]

    async def end_channel(self, key: str, end_at: float) -> None:
        async with self._require_pool().acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM ended_channels WHERE end_at <= $1", time.time())
            await conn.execute(
                "INSERT INTO ended_channels(key, end_at) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET end_at = excluded.end_at",
                key,
                end_at,
            )

    async def ended_channels(self) -> dict[str, float]:
        rows = await self._require_pool().fetch(
            "SELECT key, end_at FROM ended_channels WHERE end_at > $1", time.time()
        )
        return {str(r["key"]): float(r["end_at"]) for r in rows}

    async def track_usage(self, on: bool) -> None:
        async with self._require_pool().acquire() as conn, conn.transaction():
            # One process at a time (they start together with the same configuration).
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('pod usage ' || current_schema(), 0))"
            )
            tracking = await conn.fetchval(
                "SELECT 1 FROM pg_trigger WHERE tgname = 'pod_usage_insert'"
                " AND tgrelid = 'resources'::regclass"
            )
            if bool(tracking) == on:
                return  # as it should be: a restart recounts nothing, and locks nothing
            # Writes wait (reads go on) until the commit, so none slips between the recount and
            # the triggers: this happens once, when the quota is switched on or off.
            await conn.execute("LOCK TABLE resources IN SHARE ROW EXCLUSIVE MODE")
            await conn.execute(_USAGE_ON if on else _USAGE_OFF)

    async def usage(self, pod: str) -> int:
        used = await self._require_pool().fetchval("SELECT bytes FROM pod_usage WHERE pod=$1", pod)
        return 0 if used is None else int(used)

    async def pod_exists(self, pod: str) -> bool:
        return await self._require_pool().fetchval("SELECT 1 FROM pods WHERE name=$1", pod) is not None

    # -- API keys and pod keys -------------------------------------------------------------------
    async def insert_key(self, key: ApiKey, secret_hash: str) -> None:
        async def job(tx: Tx) -> None:
            await tx.conn.execute(
                "INSERT INTO api_keys(id, pod, agent, secret_hash, label, created, revoked)"
                " VALUES ($1, $2, $3, $4, $5, $6, false)",
                key.id,
                key.pod,
                key.agent,
                secret_hash,
                key.label,
                key.created,
            )

        await self.transaction(job)

    async def key_record(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = await self._require_pool().fetchrow(
            "SELECT id, pod, agent, created, revoked, label, secret_hash FROM api_keys WHERE id=$1", key_id
        )
        if row is None:
            return None
        return ApiKey(row[0], row[1], row[2], row[3], bool(row[4]), row[5]), str(row[6])

    async def list_keys(self, pod: str) -> list[ApiKey]:
        rows = await self._require_pool().fetch(
            "SELECT id, pod, agent, created, revoked, label FROM api_keys WHERE pod=$1 ORDER BY created", pod
        )
        return [ApiKey(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    async def revoke_key(self, pod: str, key_id: str) -> bool:
        async def job(tx: Tx) -> bool:
            status = await tx.conn.execute(
                "UPDATE api_keys SET revoked=true WHERE pod=$1 AND id=$2", pod, key_id
            )
            return int(status.split()[-1]) > 0

        return await self.transaction(job)

    async def pod_key(self, pod: str) -> tuple[str, bytes] | None:
        row = await self._require_pool().fetchrow(
            "SELECT key_id, private_pem FROM pod_keys WHERE pod=$1", pod
        )
        return None if row is None else (str(row[0]), bytes(row[1]))

    # -- writes ----------------------------------------------------------------------------------
    async def write(self, pod: str, write: Write) -> tuple[Record, bool]:
        return await self.batched((pod,), lambda tx: write_in(tx, pod, write))

    async def create(self, pod: str, write: Write) -> Record:
        return await self.batched((pod,), Together(_creates_together, _create_alone, (pod, write)))

    async def delete(self, pod: str, path: str, expect: str | None = None) -> None:
        await self.batched((pod,), lambda tx: delete_in(tx, pod, path, expect))

    async def create_pod(
        self, pod: str, resources: Sequence[Write], key: tuple[str, bytes] | None = None
    ) -> None:
        async def job(tx: Tx) -> None:
            conn = tx.conn
            await tx.lock_pod(pod)
            now = time.time()
            if await conn.fetchval("SELECT 1 FROM retired_pods WHERE name=$1", pod):
                raise Conflict(RETIRED_NAME.format(pod=pod))
            if not await conn.fetchval(
                "INSERT INTO pods(name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1", pod, now
            ):
                raise Conflict(f"Pod {pod} already exists")
            await conn.execute("DELETE FROM pod_keys WHERE pod=$1", pod)
            if key is not None:
                await conn.execute(
                    "INSERT INTO pod_keys(pod, key_id, private_pem) VALUES ($1, $2, $3)", pod, *key
                )
            await conn.execute("DELETE FROM resources WHERE pod=$1", pod)
            await conn.execute(_INSERT, pod, "/", None, "text/turtle", b"", new_version(), now)
            for w in resources:
                await write_in(tx, pod, w)

        await self.transaction(job)

    async def delete_pod(self, pod: str) -> PodDeletion:
        async def job(tx: Tx) -> PodDeletion:
            conn = tx.conn
            await tx.lock_pod(pod)
            if not await conn.fetchval("DELETE FROM pods WHERE name=$1 RETURNING 1", pod):
                raise NotFound(f"No pod named {pod}")
            await conn.execute("INSERT INTO retired_pods(name, deleted) VALUES ($1, $2)", pod, time.time())
            deleted = PodDeletion(
                resources=_count(await conn.execute("DELETE FROM resources WHERE pod=$1", pod)),
                api_keys=_count(await conn.execute("DELETE FROM api_keys WHERE pod=$1", pod)),
                deliveries=_count(await conn.execute("DELETE FROM deliveries WHERE sender=$1", pod)),
            )
            await conn.execute("DELETE FROM pod_keys WHERE pod=$1", pod)
            await conn.execute("DELETE FROM received WHERE pod=$1", pod)
            await conn.execute("DELETE FROM pod_usage WHERE pod=$1", pod)
            await conn.execute(_BUMP_EPOCH)  # its ACLs are gone: every process drops what it parsed
            return deleted

        return await self.transaction(job)
