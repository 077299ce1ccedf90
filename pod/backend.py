"""Choosing the database: the embedded SQLite file (default) or PostgreSQL (``--database postgresql://…``).

Both provide the same things — resources (StorageAccessor), API keys (KeyStorage), the delivery
queue (DeliveryQueue) and, where several processes share the data, a shared replay guard — so the
rest of the server does not know which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from acl.apikeys import KeyStorage
from ldp.accessor import StorageAccessor
from ldp.sqlite import SqliteAccessor
from pod.config import Config
from pod.queue import DeliveryQueue
from pod.queue_sqlite import SqliteQueue
from pod.replay import SharedClaims, SqliteClaims


@dataclass(frozen=True)
class Backend:
    accessor: StorageAccessor
    keys: KeyStorage
    queue: DeliveryQueue
    name: str
    # Set when several processes serve the same data (PostgreSQL, or --workers above 1): proofs and
    # signatures accepted by one process must be refused by the others.
    claims: SharedClaims | None = None

    async def close(self) -> None:
        if isinstance(self.claims, SqliteClaims):
            self.claims.close()
        await self.accessor.close()


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


async def open_backend(config: Config) -> Backend:
    """Open (creating or migrating the schema as needed) the configured database."""
    if is_postgres(config.database):
        from ldp.postgres import PostgresAccessor
        from pod.queue_postgres import PostgresQueue

        pg = PostgresAccessor(config.database, config.database_pool)
        await pg.open()
        pg_queue = PostgresQueue(pg, lease=config.delivery_lease)
        await pg_queue.open()
        return Backend(pg, pg, pg_queue, "postgresql", pg)
    sqlite = SqliteAccessor(config.database_path)
    await sqlite.open()
    queue = SqliteQueue(sqlite, lease=config.delivery_lease)
    await queue.open()
    claims = SqliteClaims(config.data_dir / "replay.sqlite3") if config.workers > 1 else None
    return Backend(sqlite, sqlite, queue, "sqlite", claims)
