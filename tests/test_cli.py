"""The ``pod`` command, run as a real process, and configuration precedence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pod.config import ConfigError, load_config
from tests.databases import Databases, current


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m pod ARGS`` on the running test's backend (the database of its data directory)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("POD_")}
    full_env.update(current().env_for(args, env))
    return subprocess.run(
        [sys.executable, "-m", "pod", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_create_and_list(backend: Databases, tmp_path: Path) -> None:
    common = ["--data-dir", str(tmp_path), "--base-url", "https://pods.example/"]
    created = run("create", "carol", "--json", *common)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout) == {
        "name": "carol",
        "url": "https://pods.example/carol/",
        "webid": "https://pods.example/carol/profile/card#me",
    }
    text = run("create", "dave", *common)
    assert "https://pods.example/dave/profile/card#me" in text.stdout
    again = run("create", "carol", *common)
    assert again.returncode == 1 and "already exists" in again.stderr
    listed = run("list", "--json", *common)
    assert [p["name"] for p in json.loads(listed.stdout)] == ["carol", "dave"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["list", "--port", "notaport"], "invalid value for port"),
        (["list", "--url-mode", "weird"], "invalid choice"),
        (["list", "--base-url", "ftp://x/"], "invalid base_url"),
        (["list", "--config", "/nonexistent.toml"], "config file not found"),
        (["create", "Bad_Name"], "Invalid pod name"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(*args, "--data-dir", str(tmp_path)) if args[0] in ("list", "create") else run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_config_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "pod.toml"
    toml.write_text('port = 9001\nbase_url = "https://from-file.example/"\nlog_level = "debug"\n')
    cfg = load_config({}, config_file=str(toml), environ={"POD_PORT": "9002"})
    assert (cfg.port, cfg.base_url, cfg.log_level) == (9002, "https://from-file.example/", "debug")
    cfg = load_config({"port": "9003"}, config_file=str(toml), environ={"POD_PORT": "9002"})
    assert cfg.port == 9003
    with pytest.raises(ConfigError, match="unknown option"):
        bad = tmp_path / "bad.toml"
        bad.write_text("colour = 'blue'\n")
        load_config({}, config_file=str(bad), environ={})
    with pytest.raises(ConfigError, match="invalid value for port"):
        load_config({}, environ={"POD_PORT": "x"})
    # an empty variable is unset, except where empty means something: no demo pod
    assert load_config({}, environ={"POD_PORT": ""}).port == 8080
    assert load_config({}, environ={"POD_DEMO_POD": ""}).demo_pod == ""


def test_serve_creates_demo_pod_and_cli_works_alongside(backend: Databases, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POD_")}
    env.update(backend.env_for([], {"POD_DATA_DIR": str(tmp_path), "POD_PORT": str(port)}))
    server = subprocess.Popen(
        [sys.executable, "-m", "pod", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            lines.append(line)
            if line.startswith("  pod demo:"):  # printed once the server accepts connections
                break
        assert any(f"http://127.0.0.1:{port}/demo/profile/card#me" in line for line in lines), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/demo/profile/card") as response:
            assert response.status == 200
        # a pod created by the CLI while the server runs is served at once
        created = run("create", "erin", "--json", env={"POD_DATA_DIR": str(tmp_path), "POD_PORT": str(port)})
        assert created.returncode == 0, created.stderr
        with urllib.request.urlopen(json.loads(created.stdout)["webid"]) as response:
            assert response.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
