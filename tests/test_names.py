"""Server-chosen names (``ldp.names``): time-ordered, unguessable, never repeated."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from aiohttp.test_utils import TestClient

from ldp.names import new_name, random_hex

NAME = re.compile(r"^[0-9a-f]{32}$")


def test_names_are_32_hex_digits_in_the_order_they_were_made() -> None:
    made = [new_name() for _ in range(50_000)]
    assert all(NAME.match(name) for name in made)
    assert len(set(made)) == len(made)
    assert made == sorted(made, key=lambda name: name[:12])  # the millisecond prefix never goes back
    assert len({name[12:] for name in made}) == len(made)  # 80 random bits each


def test_a_forked_child_draws_other_bytes() -> None:
    new_name()  # the parent has a buffer of random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next draw
        os.write(write, random_hex(10).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child) == 20 and child != random_hex(10)


async def test_posted_resources_get_time_ordered_names(client: TestClient[Any, Any]) -> None:
    created = []
    for _ in range(3):
        response = await client.post(
            "/alice/", data="<#it> <http://example.org/p> 1 .", headers={"Content-Type": "text/turtle"}
        )
        assert response.status == 201, await response.text()
        created.append(response.headers["Location"].rsplit("/", 1)[1])
        await asyncio.sleep(0.002)
    assert all(NAME.match(name) for name in created)
    assert created == sorted(created)
