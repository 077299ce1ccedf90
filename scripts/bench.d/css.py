"""The peer for ``scripts/bench --compare``: the Community Solid Server, installed from npm.

``install(dest)`` runs ``npm install @solid/community-server@VERSION`` in ``dest`` (a directory of
the bench's temp dir, removed with it); npm's download cache is kept in ``scripts/bench.d/.cache/npm``
so later runs install without fetching. ``command(...)`` starts it with its ``file-root.json``
configuration: resources on disk (like our SQLite file, it persists), Web Access Control on, no
accounts or login, and a root ACL that gives everyone full access — so the bench's fixtures and
requests need no credentials, and every request still goes through CSS's WAC check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

VERSION = "7.2.0"
PACKAGE = f"@solid/community-server@{VERSION}"
CONFIG = "@css:config/file-root.json"
CACHE = Path(__file__).resolve().parent / ".cache" / "npm"
INSTALL_TIMEOUT = 600


class InstallError(Exception):
    pass


def install(dest: Path) -> tuple[Path, str]:
    """Install CSS into ``dest``; returns (path of its bin/server.js, a note on how it was got)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise InstallError("--compare needs node and npm (apt-get install nodejs npm)")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "package.json").write_text('{"name": "pod-bench-css", "private": true}\n')
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = any(CACHE.iterdir())
    cmd = [
        npm,
        "install",
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--prefer-offline",
        "--loglevel=error",
        "--cache",
        str(CACHE),
        PACKAGE,
    ]
    try:
        done = subprocess.run(
            cmd,
            cwd=dest,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
    except subprocess.TimeoutExpired:
        raise InstallError(f"npm install {PACKAGE} took over {INSTALL_TIMEOUT} s") from None
    server = dest / "node_modules" / "@solid" / "community-server" / "bin" / "server.js"
    if done.returncode != 0 or not server.exists():
        raise InstallError(f"npm install {PACKAGE} failed:\n{(done.stderr or done.stdout)[-1500:]}")
    return server, f"npm {PACKAGE}" + (" (from the npm cache)" if cached else "")


def node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def command(server_js: Path, port: int, data_dir: Path) -> list[str]:
    """CSS on ``port`` (it binds every interface; the bench only sends to 127.0.0.1), one process,
    logging warnings only (as our server logs no access lines by default)."""
    return [
        "node",
        str(server_js),
        "--config",
        CONFIG,
        "--rootFilePath",
        str(data_dir),
        "--port",
        str(port),
        "--baseUrl",
        f"http://127.0.0.1:{port}/",
        "--loggingLevel",
        "warn",
        "--workers",
        "1",
    ]
