"""Proofs and signatures are single-use across every process serving the same data."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pod.replay import SqliteClaims
from tests.conftest import ClientFactory
from tests.oidc_issuer import ClientKey, OidcIssuer, make_proof

WEBID = "http://pod.test/alice/profile/card#me"
URL = "http://pod.test/alice/"


async def test_sqlite_claims(tmp_path: Path) -> None:
    first, second = SqliteClaims(tmp_path / "r.sqlite3"), SqliteClaims(tmp_path / "r.sqlite3")
    try:
        assert await first.claim_once(b"k1", expires=100.0, now=10.0)
        assert not await second.claim_once(b"k1", expires=100.0, now=20.0)  # another process: replay
        assert await second.claim_once(b"k2", expires=100.0, now=20.0)
        assert await second.claim_once(b"k1", expires=300.0, now=200.0)  # expired: usable again
    finally:
        first.close()
        second.close()


def test_sqlite_claims_take_turns_on_the_writer_lock(tmp_path: Path) -> None:
    """A claim waits while another process holds the file's writer lock (here: another open file
    description) and goes the moment it is released, instead of SQLite's sleeps on the loop."""
    fcntl = pytest.importorskip("fcntl")
    claims = SqliteClaims(tmp_path / "r.sqlite3")
    done = threading.Event()
    try:
        with (tmp_path / "r.sqlite3-writer").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)

            def claim() -> None:
                asyncio.run(claims.claim_once(b"k", 100.0, 10.0))
                done.set()

            claiming = threading.Thread(target=claim)
            claiming.start()
            assert not done.wait(0.3), "the claim did not wait for the lock"
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        assert done.wait(5)
        claiming.join()
        assert not asyncio.run(claims.claim_once(b"k", 100.0, 20.0))  # it was claimed
    finally:
        claims.close()


@pytest.fixture
async def issuer() -> AsyncIterator[OidcIssuer]:
    async with OidcIssuer() as running:
        yield running


async def test_dpop_proof_replayed_to_another_process_is_refused(
    make_client: ClientFactory, issuer: OidcIssuer
) -> None:
    """Two servers on one data directory, as ``--workers 2`` runs them (or two machines on one
    PostgreSQL database): a proof used on one is refused on the other."""
    settings = {"as_agent": None, "oidc_issuer": issuer.url, "unsafe_webid_header": False, "workers": 2}
    one = await make_client(**settings)
    other = await make_client(**settings, demo_pod="")
    key = ClientKey.generate("ES256")
    token = issuer.mint_token(WEBID, key.jkt)
    headers = {"Authorization": f"DPoP {token}", "DPoP": make_proof(key, "GET", URL, access_token=token)}
    assert (await one.get("/alice/", headers=headers)).status == 200
    replayed = await other.get("/alice/", headers=headers)
    assert replayed.status == 401
    assert "replay" in (await replayed.json())["error"].lower()
    fresh = {"Authorization": f"DPoP {token}", "DPoP": make_proof(key, "GET", URL, access_token=token)}
    assert (await other.get("/alice/", headers=fresh)).status == 200
