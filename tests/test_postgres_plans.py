"""PostgreSQL plans every statement for its own values, not once for a table that was empty."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ldp.accessor import Write
from ldp.postgres import PostgresAccessor
from pod.backend import Backend, open_backend
from tests.conftest import make_config
from tests.databases import Databases
from tests.test_receipts import receipt

pytestmark = pytest.mark.backends("postgresql")


@pytest.fixture
async def opened(backend: Databases, tmp_path: Path) -> AsyncIterator[Backend]:
    result = await open_backend(make_config(tmp_path, demo_pod=""))
    await result.accessor.create_pod("p", [])
    try:
        yield result
    finally:
        await result.close()


async def test_no_statement_keeps_a_generic_plan(opened: Backend) -> None:
    """A generic plan is costed once, on the table as it was (here: almost empty); for the
    statements with arrays it scans the pod, and it would stay while the pod grows. Every
    statement is planned for its own values instead."""
    accessor = opened.accessor
    assert isinstance(accessor, PostgresAccessor)
    for i in range(12):  # PostgreSQL considers a generic plan after five runs
        await accessor.write("p", Write(f"/g/{i}", "text/plain", b""))
        await accessor.get("p", f"/g/{i}")
    await accessor.write("p", Write("/inbox/", "text/turtle", b""))
    await opened.queue.receive_many([receipt("p", f"https://a.example/e{i}", i) for i in range(2)])
    async with accessor.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE NOT from_sql AND cardinality(parameter_types) > 0"  # one without has one plan
        )
    assert any(row["custom_plans"] >= 5 for row in rows), rows  # the statements did run here
    assert [row["statement"] for row in rows if row["generic_plans"]] == []
