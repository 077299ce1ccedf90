"""scripts/bench: throughput and latency of the pod server under fixed-concurrency load.

A benchmark, not a test: it starts ONE server process (fresh temp data dir, free loopback port) or
uses ``--url``, then runs each named workload for a warm-up and a measured period with ``wrk``
(Python/aiohttp fallback in a separate process when wrk cannot be had) and prints requests/s,
p50/p99 latency, non-2xx count and target verdicts.

Adding a workload: write a plain (synchronous) ``prepare(ctx) -> Spec`` that creates its fixtures
over HTTP with ``ctx.request`` and returns the request to repeat (fixed path, or ``{i}`` rotating
over ``rotate`` paths), and register it with ``@workload(NAME, TITLE, target_rps=...)``; registry
order is run order, ``--only`` selects. A workload whose load is not one repeated request can point
``Spec.lua`` at its own wrk script, which must print the same ``BENCHJSON`` line as workload.lua.
To compare with another server, start it yourself and use ``--url`` (and ``--server-pid``).

Exit status: 0 clean run (targets missed or not), 1 some workload had non-2xx or socket errors,
2 setup failure (server did not start, fixtures refused, no load generator).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIXTURE = (HERE / "fixtures" / "small.ttl").read_bytes()
TURTLE = "text/turtle"
POD = "alice"  # the demo pod of the server the bench starts
PROFILE_RATE = 250  # py-spy samples per second


# -- workloads -------------------------------------------------------------------------------------
@dataclass
class Spec:
    """The one request a workload repeats. ``path`` may contain ``{i}``, replaced by a counter modulo
    ``rotate`` (0: the path is fixed)."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    rotate: int = 0
    lua: Path = HERE / "workload.lua"
    note: str = ""


@dataclass
class Workload:
    name: str
    title: str
    prepare: Callable[[Context], Spec]
    target_rps: float | None = None


WORKLOADS: dict[str, Workload] = {}


def workload(
    name: str, title: str, target_rps: float | None = None
) -> Callable[[Callable[[Context], Spec]], Any]:
    def register(fn: Callable[[Context], Spec]) -> Callable[[Context], Spec]:
        WORKLOADS[name] = Workload(name, title, fn, target_rps)
        return fn

    return register


@workload("get", "GET small public Turtle (10 triples)", target_rps=5000)
def _get(ctx: Context) -> Spec:
    path = ctx.path("public.ttl")
    _, _, resp = ctx.expect(ctx.request("PUT", path, FIXTURE, ctx.writing(TURTLE)), 201, 204, 205)
    spec = Spec("GET", path, {"Accept": TURTLE}, note=ctx.make_public(path, resp))
    ctx.expect(ctx.request("GET", path, None, spec.headers), 200)
    return spec


PUT_PATHS = 1000


@workload("put", f"PUT small Turtle, replace over {PUT_PATHS} paths")
def _put(ctx: Context) -> Spec:
    # Replace-heavy: every path exists before the warm-up, so each measured PUT replaces a resource.
    template = ctx.path("put/r{i}.ttl")
    headers = ctx.writing(TURTLE)
    for i in range(PUT_PATHS):
        ctx.expect(ctx.request("PUT", template.replace("{i}", str(i)), FIXTURE, headers), 201, 204)
    return Spec("PUT", template, headers, FIXTURE, rotate=PUT_PATHS, note=f"replace-heavy, {ctx.auth_note}")


@workload("post", "POST small Turtle into a container (creates; durable)", target_rps=3000)
def _post(ctx: Context) -> Spec:
    container = ctx.path("post/")
    ctx.expect(ctx.request("PUT", container, b"", ctx.writing(TURTLE)), 201, 204)
    spec = Spec("POST", container, ctx.writing(TURTLE), FIXTURE, note=f"create-heavy, {ctx.auth_note}")
    ctx.expect(ctx.request("POST", container, FIXTURE, spec.headers), 201)
    return spec


# -- setup over HTTP -------------------------------------------------------------------------------
class SetupError(Exception):
    pass


class Context:
    """What a workload's ``prepare`` gets: the bench's own container and a keep-alive HTTP client."""

    def __init__(self, base_url: str, auth: dict[str, str], auth_note: str, owner: str | None) -> None:
        self.auth = auth  # headers that make a request the pod owner's (API key, ...); {} for none
        self.auth_note = auth_note
        self.owner = owner  # the owner's WebID, when known: kept in control of the public ACL
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._conn: http.client.HTTPConnection | None = None
        self.last = ""

    def path(self, rel: str) -> str:
        return self.base_path + rel

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
            try:
                self.last = f"{method} {path}"
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, data, resp
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def writing(self, content_type: str) -> dict[str, str]:
        return {"Content-Type": content_type, **self.auth}

    def expect(
        self, result: tuple[int, bytes, http.client.HTTPResponse], *ok: int
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        status, data, _ = result
        if status not in ok:
            raise SetupError(f"fixture setup: {self.last} → {status} (wanted {ok}): {data[:300]!r}")
        return result

    def make_public(self, path: str, resp: http.client.HTTPResponse) -> str:
        """Give ``path`` its own ACL: public Read (and the owner's full control), when the server
        advertises ACLs (``Link: rel="acl"``). Returns how the resource is read."""
        acl = None
        for link in resp.headers.get_all("Link") or []:
            for part in link.split(","):
                if 'rel="acl"' in part or "rel=acl" in part:
                    acl = part.split(">")[0].strip().lstrip("<")
        if acl is None:
            return "no ACLs advertised; read as is"
        if self.owner is None:
            return "server has ACLs but owner WebID unknown (--webid): read as is"
        acl_path = urlsplit(acl).path or acl
        name = path.rsplit("/", 1)[1]
        doc = (
            "@prefix acl: <http://www.w3.org/ns/auth/acl#> .\n"
            "@prefix foaf: <http://xmlns.com/foaf/0.1/> .\n"
            f"<#owner> a acl:Authorization; acl:agent <{self.owner}>; acl:accessTo <./{name}>;\n"
            "    acl:mode acl:Read, acl:Write, acl:Control .\n"
            f"<#public> a acl:Authorization; acl:agentClass foaf:Agent; acl:accessTo <./{name}>;\n"
            "    acl:mode acl:Read .\n"
        ).encode()
        self.expect(self.request("PUT", acl_path, doc, self.writing(TURTLE)), 201, 204, 205)
        return "anonymous read, public by its own ACL"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


# -- processes -------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp: Path | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log: Path | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self.pin_server: str | None = None
        self.pin_load: str | None = None
        self.data_dir: Path | None = None
        self.base = ""

    # Cleanup runs from finally and from the signal handler (SIGINT/SIGTERM/SIGHUP raise SystemExit).
    def cleanup(self) -> None:
        for proc in [*self.children, *([self.server] if self.server else [])]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.children, *([self.server] if self.server else [])]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.children.clear()
        self.server = None
        if self.tmp is not None and not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def plan_pinning(self) -> str:
        cpus = sorted(os.sched_getaffinity(0))
        if self.args.no_pin:
            return "not pinned (--no-pin)"
        if shutil.which("taskset") is None:
            return "not pinned (taskset not found)"
        if len(cpus) < 2:
            return f"not pinned (only {len(cpus)} CPU available)"
        self.pin_load = str(cpus[-1])
        if self.args.url:
            return f"load generator on CPU {self.pin_load}; server external (not pinned by bench)"
        self.pin_server = ",".join(str(c) for c in cpus[:-1])
        return f"server on CPU {self.pin_server}, load generator on CPU {self.pin_load} (taskset)"

    def pinned(self, cmd: list[str], cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus, *cmd] if cpus else cmd

    def start_server(self) -> str:
        assert self.tmp is not None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}/"
        python = os.environ.get("BENCH_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
        self.data_dir, self.base = self.tmp / "data", base
        cmd = [python, "-m", "pod", "serve", "--data-dir", str(self.data_dir), "--port", str(port)]
        cmd += ["--base-url", base, "--demo-pod", POD]
        if self.args.auth == "webid-header":
            cmd.append("--unsafe-webid-header")
        self.server_log = self.tmp / "server.log"
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                self.pinned(cmd, self.pin_server),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pod_root = base + POD + "/"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise SetupError(f"server exited with status {self.server.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", f"/{POD}/", headers={"Accept": TURTLE})
                conn.getresponse().read()
                conn.close()
                return pod_root  # answering (any status: the pod root may not be public)
            except OSError:
                pass
            time.sleep(0.1)
        raise SetupError(f"server not ready after 30 s:\n{self.log_tail()}")

    def owner_auth(self) -> tuple[dict[str, str], str, str | None]:
        """Credentials for the bench's own server: (headers, description, owner WebID)."""
        python = os.environ.get("BENCH_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
        if self.args.auth == "none":
            return {}, "no credentials", None
        cmd = [
            python,
            "-m",
            "pod",
            "list",
            "--json",
            "--data-dir",
            str(self.data_dir),
            "--base-url",
            self.base,
        ]
        try:
            pods = json.loads(
                subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=30, check=True).stdout
            )
            webid = next(p["webid"] for p in pods if p["name"] == POD)
        except (subprocess.SubprocessError, ValueError, StopIteration, KeyError, TypeError) as exc:
            raise SetupError(
                f"could not learn the WebID of pod {POD} with `pod list --json`: {exc!r}"
            ) from None
        if self.args.auth == "webid-header":
            return {"Authorization": f"WebID {webid}"}, "owner via unsafe WebID header", webid
        cmd = [python, str(HERE / "mint_key.py"), str(self.data_dir), self.base, POD]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
        if done.returncode != 0 or not done.stdout.startswith("spk_"):
            raise SetupError(
                "could not mint an API key with scripts/bench.d/mint_key.py (did the key API change?); "
                f"try --auth webid-header:\n{done.stderr[-1500:]}"
            )
        return {"X-Api-Key": done.stdout.split()[0]}, "owner via API key (X-Api-Key)", webid

    def log_tail(self, lines: int = 30) -> str:
        if self.server_log is None or not self.server_log.exists():
            return ""
        return "\n".join(self.server_log.read_text(errors="replace").splitlines()[-lines:])

    def server_cpu_seconds(self) -> float | None:
        """User+system CPU of the server process (ours or --server-pid), for CPU% per workload."""
        pid = self.server.pid if self.server else self.args.server_pid
        if not pid:
            return None
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def server_pid(self) -> int | None:
        return self.server.pid if self.server else self.args.server_pid

    # -- load generation ---------------------------------------------------------------------------
    def run_load(
        self, origin: str, spec: Spec, seconds: int, profile_to: Path | None = None
    ) -> dict[str, Any]:
        assert self.tmp is not None
        body_file = self.tmp / f"body-{uuid.uuid4().hex[:8]}"
        body_file.write_bytes(spec.body or b"")
        conns = self.args.connections
        if self.args.loadgen == "wrk":
            threads = self.args.threads or (1 if self.pin_load else min(2, os.cpu_count() or 1))
            cmd = [
                "wrk",
                f"-t{threads}",
                f"-c{conns}",
                f"-d{seconds}s",
                "--timeout",
                "5s",
                "--latency",
                "-s",
                str(spec.lua),
                origin + "/",
                "--",
                f"method={spec.method}",
                f"path={spec.path}",
                f"rotate={spec.rotate}",
                f"step={threads}",
            ]
            if spec.body is not None:
                cmd.append(f"body={body_file}")
            cmd += [f"header={k}:{v}" for k, v in spec.headers.items()]
        else:
            cmd = [
                sys.executable,
                str(HERE / "loadgen.py"),
                json.dumps(
                    {
                        "origin": origin,
                        "method": spec.method,
                        "path": spec.path,
                        "rotate": spec.rotate,
                        "headers": spec.headers,
                        "body_file": str(body_file) if spec.body is not None else None,
                        "connections": conns,
                        "duration": seconds,
                    }
                ),
            ]
        profiler = self.start_profiler(profile_to, seconds) if profile_to else None
        proc = subprocess.Popen(
            self.pinned(cmd, self.pin_load),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children.append(proc)
        try:
            out, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            raise SetupError(f"load generator did not finish within {seconds + 60:.0f} s") from None
        finally:
            if proc.poll() is not None:  # still running (signal): left to cleanup()
                self.children.remove(proc)
            body_file.unlink(missing_ok=True)
        if profiler is not None:
            self.finish_profiler(profiler, seconds)
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("BENCHJSON "):
                result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
                result["raw"] = out.decode(errors="replace")
                return result
        raise SetupError(
            f"load generator printed no result (exit {proc.returncode}):\n"
            f"{out.decode(errors='replace')[-2000:]}\n{err.decode(errors='replace')[-2000:]}"
        )

    # -- optional profiling (py-spy, when installed) -----------------------------------------------
    @staticmethod
    def profile_seconds(seconds: int) -> int:
        return max(1, min(seconds - 2, 5)) if seconds > 3 else 1

    def start_profiler(self, out: Path, seconds: int) -> subprocess.Popen[bytes] | None:
        pid = self.server_pid()
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not pid or not Path(spy).exists():
            print("  (profiling skipped: needs py-spy on PATH or in the venv, and a known server pid)")
            return None
        # Sample the middle of the measured period; raw (collapsed) stacks are summarised below.
        length = self.profile_seconds(seconds)
        cmd = [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(length),
            "--rate",
            str(PROFILE_RATE),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ]
        proc = subprocess.Popen(
            self.pinned(["sh", "-c", 'sleep 1; exec "$@"', "sh", *cmd], self.pin_load),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.children.append(proc)
        return proc

    def finish_profiler(self, proc: subprocess.Popen[bytes], seconds: int) -> None:
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=5)
            err = b"timed out"
        finally:
            if proc.poll() is not None:
                self.children.remove(proc)
        if proc.returncode != 0:
            print(f"  (py-spy failed: {err.decode(errors='replace').strip()[-300:]})")


def machine_busy_seconds() -> float:
    """CPU seconds the machine (all CPUs) spent running tasks since boot, from /proc/stat: user, nice,
    system and steal; interrupt/softirq time (loopback networking) is left out, as it is no other
    program's load."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    user, nice, system = fields[0], fields[1], fields[2]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def summarise_profile(path: Path, seconds: float, rate: int, top: int = 12) -> list[str]:
    """Top functions of a py-spy raw (collapsed) profile, line numbers merged: self and inclusive %
    of all samples, plus how busy the event-loop thread and the other (writer) threads were."""
    import re

    if not path.exists():
        return []
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = loop = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, num = line.rpartition(" ")
        if not stack or not num.isdigit():
            continue
        count = int(num)
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        total += count
        if not frames[0].startswith("Thread._bootstrap"):
            loop += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return []
    lines = [
        f"    py-spy: {total} samples in {seconds:g} s at {rate} Hz ({loop} event-loop thread, "
        f"{total - loop} other threads; nonblocking sampling drops some)",
        "    top self time (% of samples):",
    ]
    lines += [f"      {100 * n / total:5.1f}%  {f}" for f, n in self_t.most_common(top)]
    lines.append("    top inclusive time (% of samples; event-loop/startup plumbing left out):")
    skip = (
        "run_forever",
        "_run_once",
        "Handle._run",
        "run_until_complete",
        "<module>",
        "_run_module_as_main",
        "_run_code",
        "main (pod",
        "serve (pod",
        "run_app",
        "Thread._bootstrap",
        "Thread.run",
        "_handle_request",
        "Application._handle",
        "_fix_request_current_app",
        "_middleware",
    )
    shown = 0
    for f, n in incl.most_common():
        if any(s in f for s in skip):
            continue
        lines.append(f"      {100 * n / total:5.1f}%  {f}")
        shown += 1
        if shown >= top:
            break
    return lines


# -- reporting -------------------------------------------------------------------------------------
def figures(
    w: Workload, spec: Spec, res: dict[str, Any], cpu: float | None, load_cpu: float, machine_cpu: float
) -> dict[str, Any]:
    seconds = res["duration_us"] / 1e6
    statuses = {int(k): v for k, v in res["statuses"].items()}
    non2xx = sum(n for s, n in statuses.items() if not 200 <= s <= 299)
    errs = res["errors"]
    socket_errors = errs["connect"] + errs["read"] + errs["write"] + errs["timeout"]
    rps = res["requests"] / seconds if seconds else 0.0
    out: dict[str, Any] = {
        "title": w.title,
        "method": spec.method,
        "note": spec.note,
        "requests": res["requests"],
        "seconds": round(seconds, 3),
        "rps": round(rps, 1),
        "p50_ms": round(res["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(res["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(res["latency_us"]["p99"] / 1000, 2),
        "max_ms": round(res["latency_us"]["max"] / 1000, 2),
        "non2xx": non2xx,
        "socket_errors": socket_errors,
        "errors": errs,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "target_rps": w.target_rps,
        "verdict": None if w.target_rps is None else ("PASS" if rps >= w.target_rps else "MISS"),
        "valid": not (non2xx or socket_errors),
        "server_cpu_pct": None if cpu is None else round(100 * cpu / seconds, 1),
        "loadgen_cpu_pct": round(100 * load_cpu / seconds, 1),
        # Everything else on the machine during the measured period (other users' builds/tests skew figures).
        "other_cpu_pct": None
        if cpu is None
        else round(max(0.0, 100 * (machine_cpu - cpu - load_cpu) / seconds), 1),
    }
    if not out["valid"] and out["verdict"]:
        out["verdict"] = "INVALID"  # errors: the rate counts failures, so it proves nothing
    if res.get("first_error"):
        out["first_error"] = res["first_error"]
    return out


def print_row(name: str, f: dict[str, Any]) -> None:
    target = f"≥{f['target_rps']:.0f}/s" if f["target_rps"] else "—"
    verdict = f["verdict"] or ""
    cpu = f"{f['server_cpu_pct']:.0f}%" if f["server_cpu_pct"] is not None else "?"
    load = f"{f['loadgen_cpu_pct']:.0f}%"
    other = f"{f['other_cpu_pct']:.0f}%" if f["other_cpu_pct"] is not None else "?"
    flag = "  <-- ERRORS" if f["non2xx"] or f["socket_errors"] else ""
    print(
        f"{name:<8} {f['rps']:>10.1f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} {f['non2xx']:>8d} "
        f"{f['socket_errors']:>7d} {cpu:>6} {load:>6} {other:>6} {target:>9} {verdict:<7}{flag}",
        flush=True,
    )


HEADER = (
    f"{'workload':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sockerr':>7} "
    f"{'server':>6} {'loadgn':>6} {'other':>6} {'target':>9} verdict\n"
    f"{'':<45}{'(CPU, % of one core)':^20}"
)


def loud(lines: list[str]) -> None:
    bar = "!" * 78
    print(f"\n{bar}")
    for line in lines:
        print(f"!!! {line}")
    print(bar, flush=True)


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="workloads: " + ", ".join(f"{w.name} ({w.title})" for w in WORKLOADS.values()),
    )
    p.add_argument("--duration", type=int, default=10, metavar="S", help="measured seconds per workload (10)")
    p.add_argument(
        "--warmup", type=int, default=2, metavar="S", help="warm-up seconds per workload (2; 0 for none)"
    )
    p.add_argument("--connections", type=int, default=32, metavar="N", help="concurrent connections (32)")
    p.add_argument(
        "--threads", type=int, default=0, metavar="N", help="wrk threads (default 1 when pinned, else 2)"
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these workloads")
    p.add_argument(
        "--url",
        metavar="URL",
        help="bench a running server: a writable container URL "
        "(e.g. http://127.0.0.1:8080/alice/); fixtures go in a new bench-<id>/ under it and are left there",
    )
    p.add_argument(
        "--server-pid", type=int, metavar="PID", help="with --url: the server's pid, for CPU%% and --profile"
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="with --url: a header that authorizes writes there (e.g. 'X-Api-Key: spk_...'); repeatable",
    )
    p.add_argument(
        "--webid", metavar="URI", help="with --url: the owner's WebID, kept in control of the public ACL"
    )
    p.add_argument(
        "--auth",
        choices=["apikey", "webid-header", "none"],
        default="apikey",
        help="writes to the bench's own server: as the owner by a minted API key (default), by the "
        "test-only WebID header (server started with --unsafe-webid-header), or with no credentials",
    )
    p.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator (auto: wrk, installed with apt-get when missing; else Python/aiohttp)",
    )
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin server and load generator to separate CPUs"
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the server during each workload (figures then skewed); "
        "writes DIR/NAME.txt (collapsed stacks) and prints the top functions",
    )
    p.add_argument("--json", action="store_true", help="print all figures as one JSON object at the end")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server log, database)")
    p.add_argument("-v", "--verbose", action="store_true", help="print wrk's own output")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        p.error("--duration must be > 0, --warmup >= 0, --connections >= 1")
    args.names = names
    return args


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"scripts/bench: --header wants 'Name: value', not {text!r}")
    return name.strip(), value.strip()


def ensure_wrk() -> bool:
    if shutil.which("wrk"):
        return True
    print("wrk not found; installing it (apt-get install -y wrk) ...", flush=True)
    quiet: dict[str, Any] = {
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "timeout": 300,
        "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    }
    try:
        if subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return shutil.which("wrk") is not None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = Bench(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    # Hard bound on the whole run, whatever happens: per workload warm-up + run + generous setup.
    signal.alarm(int(120 + len(args.names) * (args.warmup + args.duration + 90)))

    report: dict[str, Any] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workloads": {},
    }
    ctx: Context | None = None
    try:
        if args.loadgen in ("auto", "wrk") and ensure_wrk():
            args.loadgen = "wrk"
            version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
            report["loadgen"] = version[0].split(" Copyright")[0] if version else "wrk"
        elif args.loadgen == "wrk":
            print("wrk is not available", file=sys.stderr)
            return 2
        else:
            args.loadgen = "python"
            report["loadgen"] = "python aiohttp (separate process)"
        bench.tmp = Path(tempfile.mkdtemp(prefix="pod-bench-"))
        report["pinning"] = bench.plan_pinning()
        if args.url:
            base = args.url if args.url.endswith("/") else args.url + "/"
            report["server"] = f"external {base}"
            auth = dict(_header(h) for h in args.header)
            auth_note = "credentials from --header" if auth else "no credentials"
            owner = args.webid
        else:
            base = bench.start_server()
            auth, auth_note, owner = bench.owner_auth()
            report["server"] = (
                f"pod serve pid {bench.server.pid if bench.server else '?'} at {base} (temp data dir)"
            )
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        ctx = Context(base + f"bench-{run_id}/", auth, auth_note, owner)
        report["auth"] = auth_note
        profile_dir = Path(args.profile) if args.profile else None
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)

        print(f"server:      {report['server']}")
        print(
            f"load:        {report['loadgen']}, {args.connections} connections, "
            f"{args.warmup:g} s warm-up + {args.duration:g} s per workload"
        )
        print(f"pinning:     {report['pinning']}")
        print(f"writes:      {auth_note}")
        print(f"fixtures:    {ctx.origin}{ctx.base_path}")
        if profile_dir:
            print(f"profiling:   py-spy → {profile_dir}/ (figures are skewed by sampling)")
        print(f"\n{HEADER}", flush=True)

        for name in args.names:
            w = WORKLOADS[name]
            spec = w.prepare(ctx)
            if args.warmup > 0:
                bench.run_load(ctx.origin, spec, args.warmup)
            cpu0, load0, mach0 = bench.server_cpu_seconds(), children_cpu_seconds(), machine_busy_seconds()
            prof = profile_dir / f"{name}.txt" if profile_dir else None
            res = bench.run_load(ctx.origin, spec, args.duration, prof)
            cpu1, load1, mach1 = bench.server_cpu_seconds(), children_cpu_seconds(), machine_busy_seconds()
            f = figures(
                w,
                spec,
                res,
                None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                load1 - load0,
                mach1 - mach0,
            )
            report["workloads"][name] = f
            print_row(name, f)
            if args.verbose:
                print(f"         ({spec.note})")
            if args.verbose:
                print(res["raw"])
            if prof:
                for line in summarise_profile(prof, bench.profile_seconds(args.duration), PROFILE_RATE):
                    print(line)
            if bench.server is not None and bench.server.poll() is not None:
                raise SetupError(
                    f"server died during {name} (status {bench.server.returncode}):\n{bench.log_tail()}"
                )
    except SetupError as exc:
        loud([f"BENCH ABORTED: {line}" for line in str(exc).splitlines()] or ["BENCH ABORTED"])
        report["aborted"] = str(exc)
        if args.json:
            print(json.dumps(report))
        return 2
    finally:
        signal.alarm(0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let cleanup (bounded) finish
        if ctx is not None:
            ctx.close()
        bench.cleanup()

    bad = [(n, f) for n, f in report["workloads"].items() if f["non2xx"] or f["socket_errors"]]
    report["ok"] = not bad
    missed = [n for n, f in report["workloads"].items() if f["verdict"] == "MISS"]
    print(
        f"\ntargets: {'all met' if not missed else 'MISSED by ' + ', '.join(missed)}"
        f"{'' if any(f['target_rps'] for f in report['workloads'].values()) else ' (none in this selection)'}"
    )
    busy = [n for n, f in report["workloads"].items() if (f["other_cpu_pct"] or 0) > 15]
    if busy:
        print(
            f"note: other processes used >15% of a core during {', '.join(busy)}: "
            "the machine was shared, figures are pessimistic"
        )
    if bad:
        loud(
            ["THIS RUN HAD ERRORS — its figures are not valid:"]
            + [
                f"{n}: {f['non2xx']} non-2xx, {f['socket_errors']} socket errors; statuses {f['statuses']}; "
                f"errors {f['errors']}"
                + (f"; first: {f['first_error'][:200]!r}" if f.get("first_error") else "")
                for n, f in bad
            ]
        )
    if args.json:
        print(json.dumps(report))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
