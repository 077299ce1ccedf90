"""Bulk event publisher for scripts/bench (``rss`` and the ``inbox`` fixture): POSTs ``events`` events
to a pod's ``/publish/`` as JSON arrays of ``batch`` events over ``connections`` keep-alive
connections (asyncio + aiohttp, in its own process so the bench can pin it to the load CPU).

One JSON argument: origin, path, headers, recipient, topic, events, batch, connections,
report_every, timeout (seconds, whole run). Prints ``PROGRESS <events stored> <seconds>`` each time
another ``report_every`` events were acknowledged (201: stored durably, deliveries queued), then one
``BENCHJSON {"events", "seconds", "requests", "errors", "first_error"}`` line. Stops at the first
refused batch (a 4xx will not get better) or when the time bound runs out.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


def batch_body(recipient: str, topic: str, start: int, count: int) -> bytes:
    return json.dumps(
        [
            {
                "recipient": recipient,
                "topic": topic,
                "data": {
                    "n": start + i,
                    "name": f"Contact {start + i}",
                    "email": f"c{start + i}@example.org",
                },
            }
            for i in range(count)
        ]
    ).encode()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    total, batch = int(spec["events"]), int(spec["batch"])
    every = int(spec.get("report_every") or total)
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    deadline = time.monotonic() + float(spec.get("timeout", 3600))
    sent = stored = requests = errors = 0
    next_report = every
    first_error = ""
    start = time.monotonic()
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=int(spec["connections"]))
    async with aiohttp.ClientSession(
        spec["origin"], connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def worker() -> None:
            nonlocal sent, stored, requests, errors, next_report, first_error
            while not stop.is_set() and sent < total:
                if time.monotonic() > deadline:
                    first_error = first_error or "time bound reached"
                    stop.set()
                    return
                count = min(batch, total - sent)
                first = sent
                sent += count
                body = batch_body(spec["recipient"], spec["topic"], first, count)
                try:
                    async with session.post(spec["path"], data=body, headers=headers) as resp:
                        data = await resp.read()
                        requests += 1
                        if resp.status != 201:
                            errors += 1
                            first_error = (
                                first_error or f"{resp.status} {data[:300].decode(errors='replace')}"
                            )
                            stop.set()
                            return
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                    stop.set()
                    return
                stored += count
                while stored >= next_report:
                    print(f"PROGRESS {stored} {time.monotonic() - start:.3f}", flush=True)
                    next_report += every

        await asyncio.gather(*(worker() for _ in range(int(spec["connections"]))))
    return {
        "events": stored,
        "seconds": round(time.monotonic() - start, 3),
        "requests": requests,
        "errors": errors,
        "first_error": first_error,
    }


if __name__ == "__main__":
    result = asyncio.run(run(json.loads(sys.argv[1])))
    print("BENCHJSON " + json.dumps(result), flush=True)
