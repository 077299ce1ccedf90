"""Instructions per published event, counted by valgrind's callgrind: a figure that does not move
with the machine's load or speed, for changes too small for wrk to tell apart from noise.

    .venv/bin/python scripts/bench.d/instructions.py [--small 2] [--large 12] [--batch 100] [--pod-quota B]

It runs the same program twice under callgrind, publishing ``small`` and then ``large`` batches of
``batch`` events (pod alice to pod bob on one SQLite server, in-process: the HTTP layer is left out,
the event loop's and the writer thread's work are in), and divides the difference of the totals by
the difference in events, so start-up and set-up cancel out. It also splits the figure by shared
object (the interpreter, SQLite, libc, json, ...). Each run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENT = {
    "recipient": "http://pod.test/bob/profile/card#me",
    "topic": "bench/topic#add",
    "data": {"n": 1, "name": "Ada", "email": "ada@example.org"},
}


async def publish(batches: int, batch: int, quota: int = 0) -> None:
    """The measured program: set up two pods and a grant, then publish."""
    sys.path.insert(0, str(ROOT))
    from aiohttp.test_utils import TestServer

    from pod.app import create_app
    from pod.config import Config
    from pod.grants import grant
    from pod.pods import create_pod
    from pod.publish import parse_body
    from pod.state import INBOX_RECEIVER, PUBLISHER, STORE

    data = Path(tempfile.mkdtemp(prefix="instructions-"))
    app = create_app(Config(data_dir=data, base_url="http://pod.test/", demo_pod="alice", pod_quota=quota))
    server = TestServer(app)
    await server.start_server()
    try:
        store = app[STORE]
        await create_pod(store.accessor, store.locator, "bob")
        await grant(store, "bob", "http://pod.test/alice/profile/card#me", "bench", "publish")
        body = json.dumps([EVENT] * batch).encode()
        for _ in range(batches):
            events = parse_body("application/json", body)
            await app[PUBLISHER].publish("alice", "https://app.example/#me", events, app[INBOX_RECEIVER])
    finally:
        await server.close()
        shutil.rmtree(data, ignore_errors=True)


def count(batches: int, batch: int, out: Path, quota: int) -> tuple[int, Counter[str]]:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--run",
        str(batches),
        "--batch",
        str(batch),
        "--pod-quota",
        str(quota),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"callgrind run failed:\n{done.stderr[-2000:]}")
    annotated = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(out)], capture_output=True, text=True
    ).stdout
    totals = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", annotated)
    if totals is None:
        raise SystemExit(f"callgrind_annotate printed no total for {out}")
    total = int(totals.group(1).replace(",", ""))
    by_object: Counter[str] = Counter()
    for line in annotated.splitlines():
        found = re.match(r"\s*([\d,]+) .*\[(.+)\]$", line)
        if found:
            by_object[Path(found.group(2)).name] += int(found.group(1).replace(",", ""))
    return total, by_object


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=2, help="batches in the first run")
    parser.add_argument("--large", type=int, default=12, help="batches in the second run")
    parser.add_argument("--batch", type=int, default=100, help="events per batch")
    parser.add_argument(
        "--pod-quota", type=int, default=0, help="run with this pod_quota (bytes; 0: none, the default)"
    )
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # the measured program itself
    args = parser.parse_args()
    if args.run is not None:
        asyncio.run(publish(args.run, args.batch, args.pod_quota))
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        small, small_objects = count(args.small, args.batch, Path(tmp) / "small", args.pod_quota)
        large, large_objects = count(args.large, args.batch, Path(tmp) / "large", args.pod_quota)
    events = (args.large - args.small) * args.batch
    print(f"instructions per published event: {(large - small) / events:,.0f}")
    split = Counter({k: (large_objects[k] - small_objects[k]) / events for k in large_objects})
    for name, per_event in split.most_common(8):
        print(f"  {per_event:>10,.0f}  {name}")
    print(json.dumps({"instructions_per_event": round((large - small) / events)}))


if __name__ == "__main__":
    main()
