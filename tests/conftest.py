"""Shared fixtures: a real app on a real database, driven through aiohttp's test client over HTTP.

Every test that runs a server runs once per database backend (``backend``: SQLite, PostgreSQL):
the tests that ask for ``backend`` or for a fixture that starts servers (``client``, ``make_client``,
``aiohttp_client``, ``procs``) are parametrized by ``pytest_generate_tests`` below. ``make_config``,
the process helpers (``tests.procs``) and ``tests.test_cli.run`` take the database of the running
test from ``tests.databases.current()``, so the tests themselves do not change. The PostgreSQL runs
skip with the reason when the database cannot be reached.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pod.app import create_app
from pod.backend import open_backend
from pod.config import Config
from tests.databases import BACKENDS, Databases, close_admin, current, postgres_unavailable, use
from tests.procs import Procs

BASE = "http://pod.test/"
ALICE = "http://pod.test/alice/profile/card#me"
AS_ALICE = {"Authorization": f"WebID {ALICE}"}

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
SERVER_FIXTURES = frozenset({"backend", "client", "make_client", "aiohttp_client", "procs"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run the test on these backends only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if SERVER_FIXTURES.isdisjoint(metafunc.fixturenames):
        return
    # First in line: set up before, and so torn down after, everything that may run a server on it.
    if "backend" in metafunc.fixturenames:
        metafunc.fixturenames.remove("backend")
    metafunc.fixturenames.insert(0, "backend")
    only = metafunc.definition.get_closest_marker("backends")
    metafunc.parametrize("backend", only.args if only else BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Databases]:
    """The backend this run of the test uses; its databases are dropped afterwards."""
    if request.param == "postgresql":
        reason = postgres_unavailable()
        if reason is not None:
            pytest.skip(reason)
    with use(Databases(request.param)) as databases:
        yield databases


def pytest_sessionfinish(session: pytest.Session) -> None:
    close_admin()


def spy(
    monkeypatch: pytest.MonkeyPatch, modules: Iterable[object], name: str, note: Callable[..., object]
) -> None:
    """Wrap the function ``name`` of each of ``modules`` so that ``note`` sees the arguments of
    every call before it runs (how a test tells which way a backend went)."""
    for module in modules:
        original = getattr(module, name)

        def wrapped(*args: Any, original: Any = original, **kwargs: Any) -> Any:
            note(*args, **kwargs)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)


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
    values.setdefault("database", current().for_dir(values["data_dir"]))
    return Config(**values)


@pytest.fixture
def procs(backend: Databases, tmp_path: Path) -> Iterator[Procs]:
    """Real ``pod serve`` processes (``tests.procs``), stopped when the test ends."""
    with Procs(tmp_path) as manager:
        yield manager


@pytest.fixture
async def client(backend: Databases, tmp_path: Path, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    """A client acting as alice, the owner of the one pod at ``http://pod.test/alice/``."""
    return await aiohttp_client(create_app(make_config(tmp_path)), headers=AS_ALICE)


@pytest.fixture
def make_client(backend: Databases, tmp_path: Path, aiohttp_client: ClientFactory) -> ClientFactory:
    """Build a server with config overrides; the client acts as alice unless ``as_agent`` says otherwise."""

    async def factory(as_agent: str | None = ALICE, **overrides: Any) -> TestClient[Any, Any]:
        headers = {"Authorization": f"WebID {as_agent}"} if as_agent else {}
        return await aiohttp_client(create_app(make_config(tmp_path, **overrides)), headers=headers)

    return factory


@pytest.fixture
async def store(backend: Databases, tmp_path: Path) -> Any:
    """The configured backend's accessor, with one empty pod ``p``."""
    opened = await open_backend(make_config(tmp_path, demo_pod=""))
    await opened.accessor.create_pod("p", [])
    yield opened.accessor
    await opened.close()
