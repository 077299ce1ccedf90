"""Fallback load generator for scripts/bench when wrk cannot be had: asyncio + aiohttp, run by the
bench in its own process (pinned to its own CPU when possible). Takes one JSON argument (origin,
method, path with {i}, rotate, headers, body_file, connections, duration) and prints the same
"BENCHJSON {...}" line as workload.lua. Latencies are exact (every request is timed)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp


def pct(sorted_us: list[float], p: float) -> int:
    if not sorted_us:
        return 0
    k = min(len(sorted_us) - 1, max(0, round(p / 100 * len(sorted_us) + 0.5) - 1))
    return int(sorted_us[k])


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    body = Path(spec["body_file"]).read_bytes() if spec.get("body_file") else None
    method, path, rotate = spec["method"], spec["path"], int(spec.get("rotate") or 0)
    headers = spec.get("headers") or {}
    conns, duration = int(spec["connections"]), float(spec["duration"])
    statuses: Counter[int] = Counter()
    errors = Counter({"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0})
    lat: list[float] = []
    nbytes = 0
    first_error = ""
    counter = 0
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    timeout = aiohttp.ClientTimeout(total=5)
    start = time.perf_counter()
    deadline = start + duration

    async with aiohttp.ClientSession(
        spec["origin"], connector=connector, timeout=timeout, skip_auto_headers=["User-Agent"]
    ) as session:

        async def worker() -> None:
            nonlocal counter, nbytes, first_error
            while time.perf_counter() < deadline:
                p = path
                if rotate:
                    p = path.replace("{i}", str(counter % rotate))
                    counter += 1
                t0 = time.perf_counter()
                try:
                    async with session.request(method, p, data=body, headers=headers) as resp:
                        data = await resp.read()
                        lat.append((time.perf_counter() - t0) * 1e6)
                        statuses[resp.status] += 1
                        nbytes += len(data)
                        if not 200 <= resp.status <= 299:
                            if resp.status >= 400:
                                errors["status"] += 1
                            if not first_error:
                                first_error = f"{resp.status} {data[:300].decode(errors='replace')}"
                except TimeoutError:
                    errors["timeout"] += 1
                except aiohttp.ClientConnectorError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.01)
                except (aiohttp.ClientError, OSError):
                    errors["read"] += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
    elapsed = time.perf_counter() - start
    lat.sort()
    return {
        "requests": len(lat),
        "duration_us": int(elapsed * 1e6),
        "bytes": nbytes,
        "errors": dict(errors),
        "latency_us": {
            "mean": sum(lat) / len(lat) if lat else 0,
            "p50": pct(lat, 50),
            "p90": pct(lat, 90),
            "p99": pct(lat, 99),
            "p999": pct(lat, 99.9),
            "max": int(lat[-1]) if lat else 0,
        },
        "statuses": {str(k): v for k, v in statuses.items()},
        "first_error": first_error,
    }


if __name__ == "__main__":
    result = asyncio.run(run(json.loads(sys.argv[1])))
    print("BENCHJSON " + json.dumps(result), flush=True)
