"""Solid-OIDC end to end: a real issuer on loopback, a pod whose WebID trusts it, DPoP-bound requests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import ClientFactory
from tests.oidc_issuer import ClientKey, OidcIssuer, make_proof

WEBID = "http://pod.test/alice/profile/card#me"
URL = "http://pod.test/alice/"


@pytest.fixture
async def issuer() -> AsyncIterator[OidcIssuer]:
    async with OidcIssuer() as running:
        yield running


async def test_dpop_request_acts_as_the_webid(make_client: ClientFactory, issuer: OidcIssuer) -> None:
    client = await make_client(as_agent=None, oidc_issuer=issuer.url, unsafe_webid_header=False)
    key = ClientKey.generate("ES256")
    token = issuer.mint_token(WEBID, key.jkt)
    headers = {"Authorization": f"DPoP {token}", "DPoP": make_proof(key, "GET", URL, access_token=token)}
    response = await client.get("/alice/", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["WAC-Allow"] == 'user="read write append control",public=""'
    # the same proof again is a replay
    replay = await client.get("/alice/", headers=headers)
    assert replay.status == 401
    assert "replay" in (await replay.json())["error"].lower()
    # a proof for another URL does not fit this request
    wrong = {
        "Authorization": f"DPoP {token}",
        "DPoP": make_proof(key, "GET", URL + "inbox/", access_token=token),
    }
    refused = await client.get("/alice/", headers=wrong)
    assert refused.status == 401 and "htu" in (await refused.json())["error"]


async def test_issuer_not_in_profile_is_refused(make_client: ClientFactory, issuer: OidcIssuer) -> None:
    client = await make_client(as_agent=None, unsafe_webid_header=False)  # profile names no issuer
    key = ClientKey.generate("ES256")
    token = issuer.mint_token(WEBID, key.jkt)
    response = await client.get(
        "/alice/",
        headers={"Authorization": f"DPoP {token}", "DPoP": make_proof(key, "GET", URL, access_token=token)},
    )
    assert response.status == 401
    assert "oidcIssuer" in (await response.json())["error"]


async def test_webid_header_is_refused_unless_enabled(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None, unsafe_webid_header=False)
    response = await client.get("/alice/", headers={"Authorization": f"WebID {WEBID}"})
    assert response.status == 401
    assert "disabled" in (await response.json())["error"]
