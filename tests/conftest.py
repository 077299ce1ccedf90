"""Shared fixtures: a real app on a real SQLite file, driven through aiohttp's test client over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pod.app import create_app
from pod.config import Config

BASE = "http://pod.test/"
ALICE = "http://pod.test/alice/profile/card#me"
AS_ALICE = {"Authorization": f"WebID {ALICE}"}

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """Test servers trust ``Authorization: WebID`` so tests can act as any agent without a real
    identity provider; the Solid-OIDC and signature tests exercise the real mechanisms."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "base_url": BASE,
        "demo_pod": "alice",
        "unsafe_webid_header": True,
        "allow_loopback": True,
    }
    values.update(overrides)
    return Config(**values)


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    """A client acting as alice, the owner of the one pod at ``http://pod.test/alice/``."""
    return await aiohttp_client(create_app(make_config(tmp_path)), headers=AS_ALICE)


@pytest.fixture
def make_client(tmp_path: Path, aiohttp_client: ClientFactory) -> ClientFactory:
    """Build a server with config overrides; the client acts as alice unless ``as_agent`` says otherwise."""

    async def factory(as_agent: str | None = ALICE, **overrides: Any) -> TestClient[Any, Any]:
        headers = {"Authorization": f"WebID {as_agent}"} if as_agent else {}
        return await aiohttp_client(create_app(make_config(tmp_path, **overrides)), headers=headers)

    return factory
