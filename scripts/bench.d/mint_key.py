"""Mint an API key for a pod's owner on a server's data dir (scripts/bench helper).

Run with the project's venv python: ``mint_key.py DATA_DIR BASE_URL POD``; prints ``KEY WEBID``.
Uses the project's own API (no HTTP endpoint or CLI for keys exists yet); the server may be running
on the same data dir (SQLite WAL), as with ``pod create`` / ``pod list``.
"""

from __future__ import annotations

import asyncio
import sys

from acl.apikeys import ApiKeys
from ldp.sqlite import SqliteAccessor
from pod.config import load_config


async def main(data_dir: str, base_url: str, pod: str) -> None:
    config = load_config({"data_dir": data_dir, "base_url": base_url})
    accessor = SqliteAccessor(config.database_path)
    await accessor.open()
    try:
        webid = config.locator().webid(pod)
        _, secret = await ApiKeys(accessor).create(pod, webid, label="scripts/bench")
        print(secret, webid)
    finally:
        await accessor.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
