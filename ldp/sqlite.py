"""SQLite storage accessor: the embedded default.

Durability: WAL journal with ``synchronous=FULL``, so a commit has reached the disk (fsync) before
the request that caused it is answered. Writes go through one writer thread that commits in groups:
every write queued while the previous commit is being flushed joins the next transaction, so one
fsync covers many requests, and one failing write does not undo the others: a job that may fail
half-way runs in its own savepoint, and a resource write or delete, which makes every check before
its first change, needs none. Because writes are applied one after another in that thread, a
write's precondition check and the write itself are atomic: concurrent writers never lose an update.

That thread's work is most of a write's cost, so a write asks little of it: one statement finds
the resource, its twin and its container, one inserts or updates, one touches the container.

Several processes may write one file (``pod serve --workers N``, the CLI beside a server). SQLite
makes a writer that finds the file locked sleep and retry, its sleeps growing to 100 ms; under a
steady load from two processes one of them then loses the race again and again, and its requests
wait for hundreds of milliseconds. So each group commit first takes an exclusive ``flock`` on a
file beside the database (``<database>-writer``): a process waiting for it is woken by the kernel
the moment the other one commits, and its queue, grown meanwhile, goes in one transaction.

Reads run directly on the event loop's thread on a separate read-only connection. They are
primary-key or index-range lookups of a few microseconds, cheaper than a hop to a thread; in WAL
mode they never wait for writers. Anything long (container listings) is read in bounded pages.

aiosqlite is not used: it runs one statement per thread hop and offers no public way to run a
group of statements as one unit in its thread, which group commit needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from acl.apikeys import ApiKey
from ldp.accessor import (
    RETIRED_NAME,
    Migration,
    NotFresh,
    PodDeletion,
    Record,
    Together,
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
from ldp.errors import Conflict, NotFound
from ldp.identifiers import ancestors, is_acl, is_container, parent_of
from ldp.readcache import MISS, ReadCache

# The schema, as numbered steps (``ldp.accessor.Migration``). Step 1 is written with IF NOT EXISTS:
# databases made before steps were numbered (they recorded ``schema_version`` 1 in ``meta``) already
# have these tables and adopt it unchanged. The delivery queue's tables (``pod.queue_sqlite``) live
# here too: the queue commits in the same transactions as the resources.
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pods (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: arrival order for inbox paging
    pod TEXT NOT NULL,
    path TEXT NOT NULL,
    parent TEXT,            -- NULL for storage roots and auxiliary (.acl) resources
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    version TEXT NOT NULL,
    modified REAL NOT NULL,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS resources_path ON resources(pod, path);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    pod TEXT NOT NULL,
    agent TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_keys_pod ON api_keys(pod);
CREATE TABLE IF NOT EXISTS pod_keys (pod TEXT PRIMARY KEY, key_id TEXT NOT NULL, private_pem BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS resources_children ON resources(pod, parent, path) WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS resources_arrivals ON resources(pod, parent, id) WHERE parent IS NOT NULL;
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,          -- the event's shared id (its URL at the publishing pod)
    sender TEXT NOT NULL,            -- pod whose key signs the delivery
    kind TEXT NOT NULL,              -- 'inbox' or 'webhook'
    recipient TEXT NOT NULL,         -- WebID of the receiving agent
    target TEXT NOT NULL DEFAULT '', -- inbox URL ('' = discover from the WebID) or webhook URL
    secret TEXT NOT NULL DEFAULT '', -- webhook HMAC secret
    payload BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered or failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE TABLE IF NOT EXISTS received (
    pod TEXT NOT NULL,
    sender TEXT NOT NULL,
    event_id TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (pod, sender, event_id)
)
"""
# The bytes of each pod's resource bodies, for pod quotas (``ldp.quota``). Kept only while a quota
# is configured: ``track_usage`` then recounts it and adds triggers that keep it exact in the very
# transactions that change resources, whatever path a write takes. The triggers cost a quarter more
# instructions per published event, which a server without quotas does not pay.
_SCHEMA_3 = "CREATE TABLE pod_usage (pod TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID"
_USAGE_OFF = """
DROP TRIGGER IF EXISTS pod_usage_pod;
DROP TRIGGER IF EXISTS pod_usage_insert;
DROP TRIGGER IF EXISTS pod_usage_update;
DROP TRIGGER IF EXISTS pod_usage_delete;
DELETE FROM pod_usage
"""
_USAGE_ON = (
    _USAGE_OFF
    + """;
INSERT INTO pod_usage(pod, bytes)
    SELECT name, (SELECT coalesce(sum(length(body)), 0) FROM resources WHERE pod = name) FROM pods;
CREATE TRIGGER pod_usage_pod AFTER INSERT ON pods BEGIN
    INSERT OR IGNORE INTO pod_usage(pod, bytes) VALUES (NEW.name, 0);
END;
CREATE TRIGGER pod_usage_insert AFTER INSERT ON resources BEGIN
    UPDATE pod_usage SET bytes = bytes + length(NEW.body) WHERE pod = NEW.pod;
END;
CREATE TRIGGER pod_usage_update AFTER UPDATE OF body ON resources
WHEN length(NEW.body) != length(OLD.body) BEGIN
    UPDATE pod_usage SET bytes = bytes + length(NEW.body) - length(OLD.body) WHERE pod = NEW.pod;
END;
CREATE TRIGGER pod_usage_delete AFTER DELETE ON resources BEGIN
    UPDATE pod_usage SET bytes = bytes - length(OLD.body) WHERE pod = OLD.pod;
END
"""
)
MIGRATIONS = (
    Migration(1, "resources, pods, keys and the delivery queue", _SCHEMA_1),
    Migration(
        2,
        "names of deleted pods, never given out again",
        "CREATE TABLE retired_pods (name TEXT PRIMARY KEY, deleted REAL NOT NULL)",
    ),
    Migration(3, "bytes stored per pod, for quotas", _SCHEMA_3),
    Migration(
        4,
        "notification channels ended before their time",
        "CREATE TABLE ended_channels (key TEXT PRIMARY KEY, end_at REAL NOT NULL)",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
_MAX_BATCH = 512

Job = Callable[[sqlite3.Connection], Any]

try:
    import fcntl
except ImportError:  # no flock (Windows): processes queue on SQLite's own busy handler
    fcntl = None  # type: ignore[assignment]


class WriterLock:
    """The exclusive lock every process takes around its write transactions on one database file
    (see the module's docstring): blocking, woken by the kernel, released by the process's death."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-writer")
        self._fd: int | None = None

    def open(self) -> None:
        if fcntl is not None and self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._fd is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout=30000")
    # Switching a new file to WAL needs a moment of exclusive access, and SQLite answers "locked"
    # at once rather than waiting when several processes (workers, the CLI) open it together.
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                conn.close()
                raise
            time.sleep(0.05)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _found(conn: sqlite3.Connection, pod: str, paths: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Which of ``paths`` exist: path → (version, rowid), in one statement of index probes."""
    rows = conn.execute(_find_sql(len(paths)), (pod, *paths)).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


@lru_cache(maxsize=64)
def _find_sql(count: int) -> str:
    """One text per count of paths, so that each is prepared once and then found in the
    connection's statement cache. A few paths are asked as point lookups joined by UNION ALL:
    ``path IN (...)`` first builds a temporary index of its values, which costs more than the
    lookups themselves (the ancestors of a deep path, asked rarely, use it all the same, since a
    compound SELECT has at most 500 terms)."""
    if count <= 4:
        return " UNION ALL ".join(
            f"SELECT path, version, id FROM resources WHERE pod=?1 AND path=?{k}" for k in range(2, count + 2)
        )
    marks = ",".join("?" * count)
    return f"SELECT path, version, id FROM resources WHERE pod=? AND path IN ({marks})"


_INSERT = (
    "INSERT INTO resources(pod, path, parent, content_type, body, version, modified, created)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_TOUCH = "UPDATE resources SET version=?, modified=? WHERE id=?"


def _touch(conn: sqlite3.Connection, rowid: int, now: float) -> None:
    """A container's version and modification time change when its membership changes."""
    conn.execute(_TOUCH, (new_version(), now, rowid))


def _bump_acl_epoch(conn: sqlite3.Connection) -> None:
    """Record that some ACL changed, so every process drops its parsed-ACL cache."""
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('acl_epoch', '1')"
        " ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


def write_in(conn: sqlite3.Connection, pod: str, w: Write) -> tuple[Record, bool]:
    """Apply a write inside a job's transaction (see ``SqliteAccessor.run_job``).

    Every check (precondition, name clash, missing pod) is made before the first change, so a
    write that fails has changed nothing.
    """
    return _write(conn, pod, w)


def _write(conn: sqlite3.Connection, pod: str, w: Write) -> tuple[Record, bool]:
    now = time.time()
    path = w.path
    parent = parent_of(path)
    twin = twin_of(path)
    # One statement answers the three questions of nearly every write: does the resource exist
    # (and at which version), does its twin, does its container. A container that exists has all
    # its ancestors (a container is only created with its ancestors, and only deleted empty), so
    # the ancestors are looked up only when the container is missing.
    found = _found(conn, pod, (path,) if parent is None else (path, twin, parent))
    current = found.get(path)
    check_expect(None if current is None else current[0], w.expect, path)
    if current is not None:
        version = new_version()
        conn.execute(
            "UPDATE resources SET content_type=?, body=?, version=?, modified=? WHERE id=?",
            (w.content_type, w.body, version, now, current[1]),
        )
        if is_acl(path):
            _bump_acl_epoch(conn)
        return Record(path, w.content_type, w.body, version, now), False
    if path != "/" and twin in found:
        raise Conflict(f"{twin} already exists; a container and a document cannot share a name")
    missing: list[str] = []
    if parent is not None and parent not in found:
        chain = ancestors(path)
        found = _found(conn, pod, [*chain, *(c[:-1] for c in chain if c != "/")])
        missing = missing_containers(chain, found)
    # Checks done: from here on only changes. New intermediate containers get fresh versions of
    # their own, so of the containers whose membership changes only the nearest existing one is
    # touched.
    version = new_version()
    acl = is_acl(path)
    rows = [(pod, c, parent_of(c), "text/turtle", b"", new_version(), now, now) for c in missing]
    rows.append((pod, path, None if acl else parent, w.content_type, w.body, version, now, now))
    if len(rows) == 1:
        conn.execute(_INSERT, rows[0])
    else:
        conn.executemany(_INSERT, rows)
    touched = parent_of(missing[0]) if missing else None if acl else parent
    if touched is not None:
        _touch(conn, found[touched][1], now)
    if acl:
        _bump_acl_epoch(conn)
    return Record(path, w.content_type, w.body, version, now), True


# A new resource's version, and a container's when its membership changes, drawn by SQLite itself
# (``new_version``'s format: 16 hex digits) for the statements below, which write many rows at once.
_SQL_VERSION = "lower(hex(randomblob(8)))"
_INSERT_FRESH = (
    "INSERT INTO resources(pod, path, parent, content_type, body, version, modified, created)"
    f" VALUES (?, ?, ?, ?, ?, {_SQL_VERSION}, ?, ?)"
)
_TOUCH_PATH = f"UPDATE resources SET version={_SQL_VERSION}, modified=? WHERE pod=? AND path=?"


def create_fresh_in(
    conn: sqlite3.Connection,
    items: Sequence[tuple[str, Write]],
    now: float,
    versions: Sequence[str] | None = None,
) -> None:
    """Create documents at fresh names in containers that exist — what ``write_in`` does for each
    (pod, write) of ``items`` — in two statements however many there are.

    A fan-out wave stores two documents (a copy, a topic link) in each of hundreds of pods, and
    ``write_in`` spends three statements on each: finding the path, its twin and its container,
    inserting, touching the container. Most of that time is the statements' own cost, not the
    database's. Here nothing is looked up: the names were just drawn by ``ldp.names.new_name`` (no
    resource, and no container of the same name, can have it yet), so only the containers need
    to exist, and touching them says whether they do.

    Raises :class:`NotFresh`, possibly after changing things, when a write is not of that kind, a
    container is missing or a path is taken: the caller rolls back to a savepoint it holds and
    writes them with ``write_in``, which creates missing containers and reports conflicts.
    The documents' versions are drawn by SQLite, or are ``versions`` (one per item) when the
    caller must answer with them.
    """
    rows, containers = fresh_documents(items)
    before = conn.total_changes
    conn.executemany(_TOUCH_PATH, [(now, pod, path) for pod, path in containers])
    if conn.total_changes - before != len(containers):
        raise NotFresh("a container does not exist")
    try:
        if versions is None:
            conn.executemany(_INSERT_FRESH, [(*row, now, now) for row in rows])
        else:
            conn.executemany(_INSERT, [(*row, v, now, now) for row, v in zip(rows, versions, strict=True)])
    except sqlite3.IntegrityError:
        raise NotFresh("a path is taken") from None


def _create_alone(conn: sqlite3.Connection, part: tuple[str, Write]) -> Record:
    return _write(conn, *part)[0]


def _creates_together(conn: sqlite3.Connection, parts: Sequence[tuple[str, Write]]) -> list[Record] | None:
    """Creates at fresh names of one group commit in two statements (``SqliteAccessor.create``),
    or None with nothing kept."""
    now = time.time()
    versions = [new_version() for _ in parts]
    if not fresh(conn, lambda: create_fresh_in(conn, parts, now, versions)):
        return None
    return [Record(w.path, w.content_type, w.body, v, now) for (_, w), v in zip(parts, versions, strict=True)]


def fresh(conn: sqlite3.Connection, store: Callable[[], object]) -> bool:
    """Run ``store``, which raises :class:`NotFresh` (possibly after changes) when the short way
    does not apply, under a savepoint of its own: True when it was stored, False with nothing
    kept. Any other failure is undone too and raised."""
    conn.execute("SAVEPOINT fresh")
    try:
        store()
    except BaseException as exc:
        conn.execute("ROLLBACK TO fresh")
        conn.execute("RELEASE fresh")
        if isinstance(exc, NotFresh):
            return False
        raise
    conn.execute("RELEASE fresh")
    return True


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (``execute`` takes one): split at each ';' that ends
    a complete statement, so a trigger's body, whose statements end in ';' too, stays whole."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        yield pending


def _migrate(conn: sqlite3.Connection) -> list[Migration]:
    """Apply the pending steps in one transaction. BEGIN IMMEDIATE takes the database's write lock
    first, so two processes opening a new file at once apply each step once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
        )
        applied = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
        steps = pending(MIGRATIONS, applied)
        for step in steps:
            for statement in _statements(step.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(version, name, applied) VALUES (?, ?, ?)",
                (step.version, step.name, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return steps


def _delete(conn: sqlite3.Connection, pod: str, path: str, expect: str | None) -> None:
    acl = is_acl(path)
    parent = None if acl else parent_of(path)
    found = _found(conn, pod, (path,) if parent is None else (path, parent))
    current = found.get(path)
    if current is None:
        raise NotFound(f"{path} does not exist")
    check_expect(current[0], expect, path)
    if (
        is_container(path)
        and conn.execute("SELECT 1 FROM resources WHERE pod=? AND parent=? LIMIT 1", (pod, path)).fetchone()
    ):
        raise Conflict("Container is not empty")
    deleted = conn.execute("DELETE FROM resources WHERE pod=? AND path IN (?, ?)", (pod, path, path + ".acl"))
    if acl or deleted.rowcount > 1:
        _bump_acl_epoch(conn)
    if parent is not None and parent in found:
        _touch(conn, found[parent][1], time.time())


def _alone(conn: sqlite3.Connection, job: Job, savepoint: bool) -> tuple[bool, Any]:
    """Run one job of a group commit: (True, its result) or (False, its exception)."""
    if savepoint:
        conn.execute("SAVEPOINT job")
        try:
            return True, job(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO job")
            return False, exc
        finally:
            conn.execute("RELEASE job")
    changes = conn.total_changes
    try:
        return True, job(conn)
    except Exception as exc:
        if conn.total_changes != changes or not conn.in_transaction:
            raise
        return False, exc


def _together(conn: sqlite3.Connection, jobs: Sequence[Job]) -> list[Any] | None:
    """A run of ``Together`` jobs of one kind in one go: their results, or None with nothing kept
    (the kind's promise, also when it raises), and they then run alone."""
    first = cast(Together[Any, sqlite3.Connection], jobs[0])
    try:
        done = first.kind(conn, [cast(Together[Any, sqlite3.Connection], job).part for job in jobs])
    except Exception:
        return None
    return None if done is None else list(done)


class SqliteAccessor:
    """StorageAccessor on one SQLite file; safe to share with other processes (CLI, other servers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._lock = WriterLock(path)
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[tuple[Job, bool, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.applied: list[Migration] = []  # the schema steps this open applied
        self.cache = ReadCache(self._data_version)

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        loop = asyncio.get_running_loop()
        self._writer = await loop.run_in_executor(self._executor, self._open_writer)
        self._reader = _connect(self.path)
        self._reader.execute("PRAGMA query_only=1")
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name="sqlite-group-commit")

    def _open_writer(self) -> sqlite3.Connection:
        self._lock.open()
        conn = _connect(self.path)
        # Each job runs in a savepoint, whose undo pages SQLite keeps in a temporary file by
        # default: a file created, written page by page and deleted for every group commit. Held
        # in memory they cost no system calls (they live only until the commit).
        conn.execute("PRAGMA temp_store=MEMORY")
        try:
            with self._lock.held():
                self.applied = _migrate(conn)
        except BaseException:
            conn.close()
            self._lock.close()
            raise
        return conn

    async def close(self) -> None:
        if self._task is not None:
            assert self._queue is not None
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._close_writer)
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error), self._lock.held():  # others may be reading
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
            self._writer = None
        self._lock.close()

    # -- group commit ----------------------------------------------------------------------------
    async def _run(self, job: Job, savepoint: bool = True) -> Any:
        """Run ``job`` in the writer thread's next group commit. ``savepoint=False`` is for a job
        that changes nothing unless it succeeds (it makes every check before its first change, or
        is one statement): it runs without the savepoint that would undo a failure half-way."""
        assert self._queue is not None, "accessor is not open"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, savepoint, future))
        return await future

    async def _write_loop(self) -> None:
        assert self._queue is not None and self._executor is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < _MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                jobs = [(job, savepoint) for job, savepoint, _ in batch]
                results = await loop.run_in_executor(self._executor, self._commit, jobs)
            except BaseException as exc:  # the commit itself failed: nothing in the batch is durable
                results = [(False, exc)] * len(batch)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                for _ in batch:
                    queue.task_done()
            for (_, _, future), (ok, value) in zip(batch, results, strict=True):
                if not future.done():
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)

    def _commit(self, jobs: list[tuple[Job, bool]]) -> list[tuple[bool, Any]]:
        """Run ``jobs`` in one transaction and commit it; each job's outcome is (ok, result or exception).

        A job that may fail half-way runs in a savepoint, rolled back when it fails. The others
        (see ``_run``) skip the savepoint's two statements and its copies of the pages they change;
        that such a job failed without changing anything is checked, not assumed: if it did change
        something (an I/O error between two statements, say), the batch cannot be kept without
        that partial job, so the whole transaction is rolled back and every job in it fails, as
        when the commit itself fails.
        """
        conn = self._writer
        assert conn is not None
        with self._lock.held():
            return self._transaction(conn, jobs)

    @staticmethod
    def _transaction(conn: sqlite3.Connection, jobs: list[tuple[Job, bool]]) -> list[tuple[bool, Any]]:
        """The jobs one after another, a run of ``Together`` jobs of one kind in one go when it
        can (``ldp.accessor.Together``), then the commit."""
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for run in runs(jobs, lambda item: item[0]):
                if len(run) > 1 and (done := _together(conn, [job for job, _ in run])) is not None:
                    results.extend((True, result) for result in done)
                else:
                    results.extend(_alone(conn, job, savepoint) for job, savepoint in run)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    # -- reads -----------------------------------------------------------------------------------
    def _read(self) -> sqlite3.Connection:
        assert self._reader is not None, "accessor is not open"
        return self._reader

    def _data_version(self) -> int:
        # Changes whenever another connection (the writer thread, another process) commits.
        return int(self._read().execute("PRAGMA data_version").fetchone()[0])

    async def get(self, pod: str, path: str) -> Record | None:
        key = ("get", pod, path)
        cached = self.cache.get(key)
        if cached is not MISS:
            return cast(Record | None, cached)
        row = (
            self._read()
            .execute(
                "SELECT content_type, body, version, modified FROM resources WHERE pod=? AND path=?",
                (pod, path),
            )
            .fetchone()
        )
        record = None if row is None else Record(path, row[0], bytes(row[1]), row[2], row[3])
        self.cache.put(key, record, 0 if record is None else len(record.body))
        return record

    async def children(self, pod: str, container: str, after: str = "", limit: int = 1000) -> list[str]:
        key = ("children", pod, container, after, limit)
        cached = self.cache.get(key)
        if cached is not MISS:
            return list(cached)
        rows = (
            self._read()
            .execute(
                "SELECT path FROM resources WHERE pod=? AND parent=? AND path>? ORDER BY path LIMIT ?",
                (pod, container, after, limit),
            )
            .fetchall()
        )
        paths = [r[0] for r in rows]
        self.cache.put(key, tuple(paths), sum(len(p) + 56 for p in paths))
        return paths

    def iter_children(self, pod: str, container: str, page: int = 1000) -> AsyncIterator[str]:
        return iterate_children(self, pod, container, page)

    async def ping(self) -> None:
        self._read().execute("SELECT 1").fetchone()

    async def acl_epoch(self) -> int:
        cached = self.cache.get("acl_epoch")
        if cached is not MISS:
            return cast(int, cached)
        row = self._read().execute("SELECT value FROM meta WHERE key='acl_epoch'").fetchone()
        epoch = 0 if row is None else int(row[0])
        self.cache.put("acl_epoch", epoch)
        return epoch

    async def arrivals(
        self, pod: str, container: str, after: int, since: float, limit: int
    ) -> list[tuple[int, Record, float]]:
        """Members of ``container`` in arrival order: (sequence, record, created), with sequence >
        ``after`` and created >= ``since``. Sequence numbers are never reused, so paging by them is
        stable while new members arrive."""
        key = ("arrivals", pod, container, after, since, limit)
        cached = self.cache.get(key)
        if cached is not MISS:
            return list(cached)
        rows = (
            self._read()
            .execute(
                "SELECT id, path, content_type, body, version, modified, created FROM resources"
                " WHERE pod=? AND parent=? AND id>? AND created>=? ORDER BY id LIMIT ?",
                (pod, container, after, since, limit),
            )
            .fetchall()
        )
        found = [(r[0], Record(r[1], r[2], bytes(r[3]), r[4], r[5]), r[6]) for r in rows]
        self.cache.put(key, tuple(found), sum(len(r.body) + 200 for _, r, _ in found))
        return found

    async def pods(self) -> list[str]:
        return [r[0] for r in self._read().execute("SELECT name FROM pods ORDER BY name").fetchall()]

    async def end_channel(self, key: str, end_at: float) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM ended_channels WHERE end_at <= ?", (time.time(),))
            conn.execute("INSERT OR REPLACE INTO ended_channels(key, end_at) VALUES (?, ?)", (key, end_at))

        await self._run(job)

    async def ended_channels(self) -> dict[str, float]:
        rows = (
            self._read()
            .execute("SELECT key, end_at FROM ended_channels WHERE end_at > ?", (time.time(),))
            .fetchall()
        )
        return {str(key): float(end_at) for key, end_at in rows}

    async def track_usage(self, on: bool) -> None:
        def job(conn: sqlite3.Connection) -> None:
            tracking = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='trigger' AND name='pod_usage_insert'"
            ).fetchone()
            if bool(tracking) == on:
                return  # as it should be: a restart recounts nothing
            for statement in _statements(_USAGE_ON if on else _USAGE_OFF):
                conn.execute(statement)

        await self._run(job)

    async def usage(self, pod: str) -> int:
        key = ("usage", pod)
        cached = self.cache.get(key)
        if cached is not MISS:
            return cast(int, cached)
        row = self._read().execute("SELECT bytes FROM pod_usage WHERE pod=?", (pod,)).fetchone()
        used = 0 if row is None else int(row[0])
        self.cache.put(key, used)
        return used

    async def pod_exists(self, pod: str) -> bool:
        key = ("pod_exists", pod)
        cached = self.cache.get(key)
        if cached is not MISS:
            return cast(bool, cached)
        exists = self._read().execute("SELECT 1 FROM pods WHERE name=?", (pod,)).fetchone() is not None
        self.cache.put(key, exists)
        return exists

    # -- API keys and pod keys ---------------------------------------------------------------------
    async def insert_key(self, key: ApiKey, secret_hash: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO api_keys(id, pod, agent, secret_hash, label, created, revoked)"
                " VALUES (?, ?, ?, ?, ?, ?, 0)",
                (key.id, key.pod, key.agent, secret_hash, key.label, key.created),
            ),
            savepoint=False,
        )

    async def key_record(self, key_id: str) -> tuple[ApiKey, str] | None:
        # Cached like every read here: a revocation is a commit, which empties the cache.
        key = ("key_record", key_id)
        cached = self.cache.get(key)
        if cached is not MISS:
            return cast(tuple[ApiKey, str] | None, cached)
        row = (
            self._read()
            .execute(
                "SELECT id, pod, agent, created, revoked, label, secret_hash FROM api_keys WHERE id=?",
                (key_id,),
            )
            .fetchone()
        )
        found = (
            None if row is None else (ApiKey(row[0], row[1], row[2], row[3], bool(row[4]), row[5]), row[6])
        )
        self.cache.put(key, found, 256)
        return found

    async def list_keys(self, pod: str) -> list[ApiKey]:
        rows = (
            self._read()
            .execute(
                "SELECT id, pod, agent, created, revoked, label FROM api_keys WHERE pod=? ORDER BY created",
                (pod,),
            )
            .fetchall()
        )
        return [ApiKey(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    async def revoke_key(self, pod: str, key_id: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("UPDATE api_keys SET revoked=1 WHERE pod=? AND id=?", (pod, key_id))
            return cur.rowcount > 0

        result: bool = await self._run(job, savepoint=False)
        return result

    async def schema_version(self) -> int:
        row = self._read().execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    async def pod_key(self, pod: str) -> tuple[str, bytes] | None:
        row = self._read().execute("SELECT key_id, private_pem FROM pod_keys WHERE pod=?", (pod,)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    # -- jobs for other SQLite-backed modules (delivery queue) ---------------------------------------
    async def run_job(self, job: Job, savepoint: bool = True) -> Any:
        """Run ``job(conn)`` in the writer thread, inside a group-commit transaction and savepoint:
        everything it does commits together (and durably) or not at all. A job that raises only
        before its first change (``write_in`` is such a step) may pass ``savepoint=False`` to skip
        the savepoint; if it does fail after a change, its whole batch fails (see ``_commit``)."""
        return await self._run(job, savepoint)

    def read_connection(self) -> sqlite3.Connection:
        """The loop-thread read-only connection, for short indexed reads."""
        return self._read()

    # -- writes ----------------------------------------------------------------------------------
    async def write(self, pod: str, write: Write) -> tuple[Record, bool]:
        result: tuple[Record, bool] = await self._run(lambda conn: _write(conn, pod, write), savepoint=False)
        return result

    async def create(self, pod: str, write: Write) -> Record:
        record: Record = await self._run(
            Together(_creates_together, _create_alone, (pod, write)), savepoint=False
        )
        return record

    async def delete(self, pod: str, path: str, expect: str | None = None) -> None:
        await self._run(lambda conn: _delete(conn, pod, path, expect), savepoint=False)

    async def create_pod(
        self, pod: str, resources: Sequence[Write], key: tuple[str, bytes] | None = None
    ) -> None:
        def job(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM pods WHERE name=?", (pod,)).fetchone():
                raise Conflict(f"Pod {pod} already exists")
            if conn.execute("SELECT 1 FROM retired_pods WHERE name=?", (pod,)).fetchone():
                raise Conflict(RETIRED_NAME.format(pod=pod))
            now = time.time()
            conn.execute("INSERT INTO pods(name, created) VALUES (?, ?)", (pod, now))
            conn.execute("DELETE FROM pod_keys WHERE pod=?", (pod,))
            if key is not None:
                conn.execute("INSERT INTO pod_keys(pod, key_id, private_pem) VALUES (?, ?, ?)", (pod, *key))
            conn.execute("DELETE FROM resources WHERE pod=?", (pod,))
            conn.execute(_INSERT, (pod, "/", None, "text/turtle", b"", new_version(), now, now))
            for w in resources:
                _write(conn, pod, w)

        await self._run(job)

    async def delete_pod(self, pod: str) -> PodDeletion:
        def job(conn: sqlite3.Connection) -> PodDeletion:
            if conn.execute("DELETE FROM pods WHERE name=?", (pod,)).rowcount == 0:
                raise NotFound(f"No pod named {pod}")
            conn.execute("INSERT INTO retired_pods(name, deleted) VALUES (?, ?)", (pod, time.time()))
            deleted = PodDeletion(
                resources=conn.execute("DELETE FROM resources WHERE pod=?", (pod,)).rowcount,
                api_keys=conn.execute("DELETE FROM api_keys WHERE pod=?", (pod,)).rowcount,
                deliveries=conn.execute("DELETE FROM deliveries WHERE sender=?", (pod,)).rowcount,
            )
            conn.execute("DELETE FROM pod_keys WHERE pod=?", (pod,))
            conn.execute("DELETE FROM received WHERE pod=?", (pod,))
            conn.execute("DELETE FROM pod_usage WHERE pod=?", (pod,))
            _bump_acl_epoch(conn)  # its ACLs are gone: every process drops what it parsed
            return deleted

        return cast(PodDeletion, await self._run(job))
