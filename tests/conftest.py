"""Shared fixtures: a real app on a real SQLite file, driven through aiohttp's test client over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pod.app import create_app
from pod.config import Config

BASE = "http://pod.test/"


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {"data_dir": tmp_path, "base_url": BASE, "demo_pod": "alice"}
    values.update(overrides)
    return Config(**values)


@pytest.fixture
async def client(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> TestClient[Any, Any]:
    """A client for a server with one pod, ``alice``, at ``http://pod.test/alice/``."""
    return await aiohttp_client(create_app(make_config(tmp_path)))


@pytest.fixture
def make_client(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def factory(**overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_config(tmp_path, **overrides)))

    return factory


__all__ = ["BASE", "TestServer", "make_config"]
