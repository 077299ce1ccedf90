"""The database behind each test server: the SQLite file in its data directory, or on PostgreSQL a
fresh schema per data directory.

SQLite ties a database to a data directory; the PostgreSQL run keeps that mapping, so tests that
start several servers (each its own data directory) or run the CLI on a server's data directory
work unchanged on both: ``Databases.for_dir(data_dir)`` names the schema (``?search_path=`` in the
DSN) that a server or CLI run on that directory uses. Schemas are created on first use and
dropped when the test ends; schemas left by a test run that was killed are dropped by the next.

PostgreSQL is found at ``POD_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
when it cannot be reached, the tests' PostgreSQL runs are skipped, saying why. Setting the
variable to ``skip`` skips them on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import sqlite3
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

BACKENDS = ("sqlite", "postgresql")
POSTGRES_URL = os.environ.get("POD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "pod_test_"
T = TypeVar("T")
_counter = itertools.count(1)


class _Admin:
    """One connection for creating, inspecting and dropping test schemas, on an event loop of its own
    thread, so that synchronous tests and fixtures can use it as well as asynchronous ones."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pg-test-admin", daemon=True)
        self.thread.start()
        self.conn: asyncpg.Connection[asyncpg.Record] | None = None
        self.error: str | None = None
        try:
            self.conn = self.run(asyncpg.connect(POSTGRES_URL, timeout=5.0))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self._drop_stale()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def execute(self, sql: str) -> None:
        assert self.conn is not None
        self.run(self.conn.execute(sql))

    def fetch(self, schema: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """``sql`` with SQLite's ``?`` placeholders, run in ``schema``."""
        conn = self.conn
        assert conn is not None
        numbered = iter(itertools.count(1))
        query = re.sub(r"\?", lambda _: f"${next(numbered)}", sql)

        async def go() -> list[tuple[Any, ...]]:
            async with conn.transaction():
                await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                return [tuple(r) for r in await conn.fetch(query, *params)]

        return self.run(go())

    def drop(self, schema: str) -> None:
        with contextlib.suppress(asyncpg.PostgresError):
            self.execute(f'SET lock_timeout = 10000; DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def _drop_stale(self) -> None:
        """Schemas of test runs whose process is gone (``pod_test_<pid>_<n>``)."""
        assert self.conn is not None
        rows = self.run(
            self.conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", PREFIX + "%")
        )
        for (name,) in rows:
            pid = name[len(PREFIX) :].split("_")[0]
            if pid.isdigit() and not _alive(int(pid)):
                self.drop(name)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.run(self.conn.close(), timeout=5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_admin: _Admin | None = None


def admin() -> _Admin:
    global _admin
    if _admin is None:
        _admin = _Admin()
    return _admin


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL runs cannot happen, or None when they can."""
    if POSTGRES_URL == "skip":
        return "POD_TEST_POSTGRES=skip"
    error = admin().error
    return None if error is None else f"PostgreSQL is not reachable at {POSTGRES_URL} ({error})"


def close_admin() -> None:
    global _admin
    if _admin is not None:
        _admin.close()
        _admin = None


def dsn_for(schema: str) -> str:
    return f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}search_path={schema}"


class Databases:
    """The databases one test's servers use, by data directory (see the module docstring)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._schemas: dict[str, str] = {}  # data directory or name → schema

    @property
    def postgres(self) -> bool:
        return self.kind == "postgresql"

    def shared(self, name: str) -> str:
        """A database several servers share (different data directories, one database): "" on
        SQLite, where sharing means sharing a data directory."""
        return self._schema_dsn(f"shared:{name}") if self.postgres else ""

    def for_dir(self, data_dir: Path | str) -> str:
        """The ``database`` setting for a server or CLI run on ``data_dir``."""
        if not self.postgres:
            return ""
        return self._schema_dsn(str(Path(data_dir).resolve()))

    def _schema_dsn(self, key: str) -> str:
        schema = self._schemas.get(key)
        if schema is None:
            schema = f"{PREFIX}{os.getpid()}_{next(_counter)}"
            admin().execute(f'CREATE SCHEMA "{schema}"')
            self._schemas[key] = schema
        return dsn_for(schema)

    def schema_of(self, database: str) -> str:
        match = re.search(r"search_path=([A-Za-z0-9_]+)", database)
        assert match, database
        return match.group(1)

    def env_for(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
        """``POD_DATABASE`` for a ``pod`` command line: the database of its ``--data-dir`` (or of
        ``POD_DATA_DIR``, or ``./var``), unless it names a database itself."""
        env = dict(env or {})
        if not self.postgres or "--database" in args or "POD_DATABASE" in env:
            return env
        data_dir = env.get("POD_DATA_DIR", "var")
        for flag, value in itertools.pairwise(args):
            if flag == "--data-dir":
                data_dir = value
        env["POD_DATABASE"] = self.for_dir(data_dir)
        return env

    def close(self) -> None:
        for schema in self._schemas.values():
            admin().drop(schema)
        self._schemas.clear()


SQLITE = Databases("sqlite")
_current = SQLITE


def current() -> Databases:
    """The databases of the running test (SQLite for tests that do not run per backend)."""
    return _current


@contextlib.contextmanager
def use(databases: Databases) -> Iterator[Databases]:
    global _current
    previous, _current = _current, databases
    try:
        yield databases
    finally:
        _current = previous
        databases.close()


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows


class _PgReader:
    """The part of ``sqlite3.Connection`` tests use to look into a server's database."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        return _Rows(admin().fetch(self.schema, sql, params))


@contextlib.contextmanager
def db(data_dir: Path, database: str | None = None) -> Iterator[Any]:
    """A read-only look at the database of a server on ``data_dir`` (or at ``database``): a
    ``sqlite3.Connection``, or on PostgreSQL an object with the same ``execute`` (``?`` placeholders)
    and ``fetchone``/``fetchall``."""
    database = current().for_dir(data_dir) if database is None else database
    if database:
        yield _PgReader(current().schema_of(database))
        return
    conn = sqlite3.connect(f"file:{data_dir / 'pod.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()
