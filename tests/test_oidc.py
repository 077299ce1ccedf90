"""Solid-OIDC verification against a real OpenID Provider on loopback.

Every refusal is a 401 whose message names the check that failed; the table below pairs each forged
request with that name. Keys, signatures and HTTP fetches are all real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest

from acl.dpop import ReplayCache, access_token_hash, jwk_thumbprint, normalize_htu
from acl.oidc import DpopVerifier, FetchJson, OidcIdentity
from ldp.errors import Unauthorized
from tests.oidc_issuer import ClientKey, OidcIssuer, generate_key, make_proof, private_jwk, unsigned_jwt

WEBID = "https://alice.example/profile/card#me"
URL = "http://pod.test/alice/notes/1"


class Clock:
    """A clock tests can move; starts at the real time so the issuer's tokens are current."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def issuer() -> AsyncIterator[OidcIssuer]:
    async with OidcIssuer() as running:
        yield running


@pytest.fixture
async def fetch_json() -> AsyncIterator[FetchJson]:
    """GET JSON with a plain aiohttp session: the test stands in for the server's outbound client."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def fetch(url: str) -> Any:
            async with session.get(url, allow_redirects=False) as response:
                response.raise_for_status()
                return await response.json()

        yield fetch


@dataclass
class Profiles:
    """``issuers_of`` for the tests: WebID → solid:oidcIssuer values, with a call count."""

    trusted: dict[str, set[str]] = field(default_factory=dict)
    calls: int = 0

    async def __call__(self, webid: str) -> set[str]:
        self.calls += 1
        if webid not in self.trusted:
            raise LookupError(f"no profile at {webid}")
        return self.trusted[webid]


@dataclass
class Request:
    method: str
    url: str
    authorization: str
    dpop: str | None


@dataclass
class Scene:
    """One issuer, one client key, one WebID that trusts the issuer; builds requests to vary."""

    issuer: OidcIssuer
    client: ClientKey
    profiles: Profiles
    clock: Clock

    def token(self, **kwargs: Any) -> str:
        kwargs.setdefault("iat", self.clock.now)
        return self.issuer.mint_token(
            kwargs.pop("webid", WEBID), kwargs.pop("jkt", self.client.jkt), **kwargs
        )

    def proof(self, method: str = "GET", url: str = URL, **kwargs: Any) -> str:
        kwargs.setdefault("iat", int(self.clock.now))
        return make_proof(kwargs.pop("client", self.client), method, url, **kwargs)

    def request(
        self, *, token: str | None = None, proof: str | None = None, method: str = "GET", url: str = URL
    ) -> Request:
        token = token if token is not None else self.token()
        proof = proof if proof is not None else self.proof(method, url, access_token=token)
        return Request(method, url, f"DPoP {token}", proof)


def make_scene(issuer: OidcIssuer, alg: str = "ES256") -> Scene:
    return Scene(issuer, ClientKey.generate(alg), Profiles({WEBID: {issuer.url}}), Clock())


def make_verifier(scene: Scene, fetch_json: FetchJson, **options: Any) -> DpopVerifier:
    return DpopVerifier(fetch_json=fetch_json, issuers_of=scene.profiles, clock=scene.clock, **options)


async def verify(verifier: DpopVerifier, request: Request) -> OidcIdentity:
    return await verifier.verify(
        method=request.method, url=request.url, authorization=request.authorization, dpop=request.dpop
    )


async def refused(verifier: DpopVerifier, request: Request) -> str:
    with pytest.raises(Unauthorized) as caught:
        await verify(verifier, request)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("DPoP ")
    return caught.value.message


# -- accepted ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_alg", "issuer_kid"),
    [("ES256", "ec-1"), ("ES256", "rsa-1"), ("ES384", "ec-1"), ("PS256", "ec-1"), ("EdDSA", "rsa-1")],
)
async def test_a_valid_request_yields_webid_client_and_issuer(
    issuer: OidcIssuer, fetch_json: FetchJson, client_alg: str, issuer_kid: str
) -> None:
    scene = make_scene(issuer, client_alg)
    verifier = make_verifier(scene, fetch_json)
    identity = await verify(verifier, scene.request(token=scene.token(kid=issuer_kid)))
    assert identity == OidcIdentity(webid=WEBID, client_id="https://app.example/id", issuer=issuer.url)


async def test_issuer_comparison_ignores_a_trailing_slash(fetch_json: FetchJson) -> None:
    async with OidcIssuer(trailing_slash=True) as issuer:
        scene = make_scene(issuer)
        scene.profiles.trusted[WEBID] = {issuer.origin}  # profile says <http://127.0.0.1:port>
        identity = await verify(make_verifier(scene, fetch_json), scene.request())
        assert identity.issuer == issuer.origin + "/"
        assert issuer.requests[0] == "/.well-known/openid-configuration"  # no "//.well-known"


async def test_client_id_falls_back_to_azp_and_may_be_absent(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    azp_only = scene.token(client_id="https://other.app/id", omit=["client_id"])
    assert (await verify(verifier, scene.request(token=azp_only))).client_id == "https://other.app/id"
    neither = scene.token(client_id=None)
    assert (await verify(verifier, scene.request(token=neither))).client_id is None


async def test_htu_is_compared_after_normalisation_and_without_query(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    token = scene.token()
    proof = scene.proof(url="HTTP://Pod.Test:80/alice/./notes/%31?page=2#top", access_token=token)
    await verify(verifier, Request("GET", URL + "?x=1", f"DPoP {token}", proof))


async def test_a_proof_without_ath_is_accepted_unless_required(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    token = scene.token()
    await verify(make_verifier(scene, fetch_json), scene.request(token=token, proof=scene.proof()))
    strict = make_verifier(scene, fetch_json, require_ath=True)
    message = await refused(strict, scene.request(token=token, proof=scene.proof()))
    assert message == "DPoP proof: the ath claim is missing"
    await verify(strict, scene.request(token=token))


# -- refused: one forged request per check -----------------------------------------------------------


def _hs256_proof(scene: Scene) -> Request:
    token = scene.token()
    secret = b"s" * 32
    proof = jwt.encode(
        {"jti": "1", "htm": "GET", "htu": URL, "iat": int(scene.clock.now)},
        secret,
        algorithm="HS256",
        headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "c3Nzcw"}},
    )
    return scene.request(token=token, proof=proof)


def _none_proof(scene: Scene) -> Request:
    token = scene.token()
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": scene.client.jwk}
    payload = {
        "jti": "1",
        "htm": "GET",
        "htu": URL,
        "iat": int(scene.clock.now),
        "ath": access_token_hash(token),
    }
    return scene.request(token=token, proof=unsigned_jwt(header, payload, b"x"))


def _alg_none_token(scene: Scene) -> Request:
    claims = jwt.decode(scene.token(), options={"verify_signature": False})
    return scene.request(token=unsigned_jwt({"alg": "none", "kid": "ec-1"}, claims, b"x"))


def _replace(request: Request, **changes: Any) -> Request:
    return Request(**{**request.__dict__, **changes})


REFUSALS: list[tuple[str, Callable[[Scene], Request], str]] = [
    # The Authorization and DPoP headers.
    (
        "bearer scheme",
        lambda s: _replace(s.request(), authorization="Bearer abc.def.ghi"),
        "DPoP is required",
    ),
    (
        "unknown scheme",
        lambda s: _replace(s.request(), authorization="Basic YTpi"),
        "scheme Basic is not DPoP",
    ),
    ("token not a JWT", lambda s: _replace(s.request(), authorization="DPoP opaque"), "not a compact JWT"),
    (
        "missing DPoP header",
        lambda s: _replace(s.request(), dpop=None),
        "DPoP proof: the DPoP header is missing",
    ),
    (
        "two DPoP headers",
        lambda s: _replace(s.request(), dpop=s.proof() + ", " + s.proof()),
        "DPoP proof: the DPoP header is not a single compact JWT",
    ),
    # The proof (RFC 9449 §4.3).
    ("typ", lambda s: s.request(proof=s.proof(typ="JWT")), "DPoP proof: typ JWT is not dpop+jwt"),
    ("alg none", _none_proof, "DPoP proof: alg none is not an accepted asymmetric algorithm"),
    ("alg HS256", _hs256_proof, "DPoP proof: alg HS256 is not an accepted asymmetric algorithm"),
    (
        "jwk with private part",
        lambda s: s.request(proof=s.proof(jwk=private_jwk(s.client.private_key))),
        "DPoP proof: jwk contains private key material",
    ),
    (
        "no jwk",
        lambda s: s.request(proof=s.proof(headers={"jwk": None})),
        "DPoP proof: the jwk header is missing",
    ),
    (
        "jwk of another key",
        lambda s: s.request(proof=s.proof(jwk=ClientKey.generate().jwk)),
        "DPoP proof: signature does not verify with its jwk",
    ),
    (
        "jwk that does not fit alg",
        lambda s: s.request(proof=s.proof(jwk=ClientKey.generate("RS256").jwk)),
        "DPoP proof: jwk kty RSA does not fit alg ES256",
    ),
    ("missing jti", lambda s: s.request(proof=s.proof(omit=["jti"])), "DPoP proof: the jti claim is missing"),
    (
        "wrong htm",
        lambda s: s.request(proof=s.proof("POST")),
        "DPoP proof: htm POST does not match the request method GET",
    ),
    (
        "wrong htu",
        lambda s: s.request(proof=s.proof(url="http://pod.test/alice/other")),
        "DPoP proof: htu does not match the request URL",
    ),
    (
        "htu on another port",
        lambda s: s.request(proof=s.proof(url="http://pod.test:8080/alice/notes/1")),
        "DPoP proof: htu does not match the request URL",
    ),
    (
        "iat too old",
        lambda s: s.request(proof=s.proof(iat=int(s.clock.now) - 120)),
        "DPoP proof: iat is too old (more than 60s ago)",
    ),
    (
        "iat in the future",
        lambda s: s.request(proof=s.proof(iat=int(s.clock.now) + 120)),
        "DPoP proof: iat is in the future",
    ),
    (
        "ath mismatch",
        lambda s: s.request(proof=s.proof(ath="A" * 43)),
        "DPoP proof: ath does not match the access token",
    ),
    (
        "ath of another token",
        lambda s: s.request(proof=s.proof(access_token=s.token())),
        "DPoP proof: ath does not match the access token",
    ),
    # The access token.
    ("expired", lambda s: s.request(token=s.token(exp=s.clock.now - 60)), "Access token: expired"),
    (
        "iat in the future",
        lambda s: s.request(token=s.token(iat=s.clock.now + 600)),
        "Access token: iat is in the future",
    ),
    ("no exp", lambda s: s.request(token=s.token(omit=["exp"])), "Access token: the exp claim is missing"),
    ("alg none", _alg_none_token, "Access token: alg none is not an accepted asymmetric algorithm"),
    (
        "aud without solid",
        lambda s: s.request(token=s.token(aud=["https://app.example/id"])),
        'Access token: aud does not include "solid"',
    ),
    (
        "aud a string other than solid",
        lambda s: s.request(token=s.token(aud="other")),
        'aud does not include "solid"',
    ),
    (
        "missing webid",
        lambda s: s.request(token=s.token(webid=None)),
        "Access token: the webid claim is missing",
    ),
    (
        "webid not a URL",
        lambda s: s.request(token=s.token(webid="alice")),
        "Access token: webid alice is not",
    ),
    (
        "not DPoP-bound",
        lambda s: s.request(token=s.token(jkt=None)),
        "Access token: not DPoP-bound (no cnf.jkt)",
    ),
    (
        "thumbprint of another key",
        lambda s: s.request(token=s.token(jkt=ClientKey.generate().jkt)),
        "Access token: cnf.jkt does not match the thumbprint of the DPoP proof key",
    ),
    (
        "iss not a URL",
        lambda s: s.request(token=s.token(iss="idp")),
        "Access token: iss idp is not an http(s) issuer URL",
    ),
    (
        "signed by an unknown key",
        lambda s: s.request(token=s.token(kid="stranger", signing_key=generate_key("ES256"))),
        "Access token: no key with kid stranger for ES256 in the JWKS of issuer",
    ),
    (
        "signed by another key under a known kid",
        lambda s: s.request(token=s.token(kid="ec-1", signing_key=generate_key("ES256"))),
        "Access token: signature does not verify with the keys of issuer",
    ),
    (
        "alg that does not fit the kid's key",
        lambda s: s.request(token=s.token(kid="rsa-1", alg="ES256", signing_key=generate_key("ES256"))),
        "Access token: no key with kid rsa-1 for ES256",
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"), [pytest.param(build, expected, id=name) for name, build, expected in REFUSALS]
)
async def test_refusals_name_the_failed_check(
    issuer: OidcIssuer, fetch_json: FetchJson, build: Callable[[Scene], Request], expected: str
) -> None:
    scene = make_scene(issuer)
    message = await refused(make_verifier(scene, fetch_json), build(scene))
    assert expected in message


async def test_an_issuer_the_webid_does_not_trust_is_refused(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    scene.profiles.trusted[WEBID] = {"https://other-idp.example/"}
    message = await refused(make_verifier(scene, fetch_json), scene.request())
    assert message == f"Access token: issuer {issuer.url} is not a solid:oidcIssuer of <{WEBID}>"


async def test_an_unreadable_profile_is_a_401(issuer: OidcIssuer, fetch_json: FetchJson) -> None:
    scene = make_scene(issuer)
    scene.profiles.trusted.clear()
    message = await refused(make_verifier(scene, fetch_json), scene.request())
    assert message == f"WebID profile: cannot read the solid:oidcIssuer of <{WEBID}> (LookupError)"


async def test_an_unreachable_issuer_is_a_401(fetch_json: FetchJson) -> None:
    issuer = await OidcIssuer().start()
    scene = make_scene(issuer)
    request = scene.request()
    await issuer.close()  # the port now refuses connections
    message = await refused(make_verifier(scene, fetch_json), request)
    assert message.startswith(f"Access token: cannot fetch the OpenID configuration of issuer {issuer.url}")


# -- replay ------------------------------------------------------------------------------------------


async def test_a_replayed_proof_is_refused(issuer: OidcIssuer, fetch_json: FetchJson) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    request = scene.request()
    await verify(verifier, request)
    message = await refused(verifier, request)
    assert message == "DPoP proof: jti has already been used for this URL (replayed proof)"


async def test_concurrent_uses_of_one_proof_let_only_one_through(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    request = scene.request()
    results = await asyncio.gather(*(verify(verifier, request) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(result, OidcIdentity) for result in results) == 1
    assert all(isinstance(result, Unauthorized) for result in results if not isinstance(result, OidcIdentity))


async def test_a_jti_is_tracked_per_url(issuer: OidcIssuer, fetch_json: FetchJson) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    token = scene.token()
    other = "http://pod.test/alice/notes/2"
    await verify(verifier, scene.request(token=token, proof=scene.proof(jti="same", access_token=token)))
    await verify(
        verifier,
        scene.request(token=token, proof=scene.proof(url=other, jti="same", access_token=token), url=other),
    )


async def test_a_refused_request_does_not_burn_its_jti(issuer: OidcIssuer, fetch_json: FetchJson) -> None:
    """Only verified requests are recorded, so junk cannot fill the replay cache."""
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    scene.profiles.trusted[WEBID] = set()
    request = scene.request()
    await refused(verifier, request)
    scene.profiles.trusted[WEBID] = {issuer.url}
    await verify(verifier, request)


def test_replay_cache_is_bounded_and_forgets_expired_entries() -> None:
    cache = ReplayCache(max_entries=3)
    keys = [ReplayCache.key(str(n), URL) for n in range(5)]
    for key in keys:
        assert cache.add(key, expires=100.0, now=0.0)
    assert len(cache) == 3  # the two oldest were evicted
    assert not cache.add(keys[4], expires=100.0, now=1.0)  # still remembered
    assert cache.add(ReplayCache.key("late", URL), expires=200.0, now=150.0)
    assert len(cache) == 1  # the expired ones went on the way
    assert cache.add(keys[4], expires=300.0, now=150.0)  # expired, so accepted again


# -- issuer keys: discovery, caching, rotation -------------------------------------------------------


async def test_discovery_and_jwks_are_fetched_once_and_cached(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json, jwks_ttl=600)
    for _ in range(3):
        await verify(verifier, scene.request())
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks"]
    scene.clock.now += 601
    await verify(verifier, scene.request())
    assert issuer.requests.count("/jwks") == 2


async def test_concurrent_cold_requests_share_one_fetch(issuer: OidcIssuer, fetch_json: FetchJson) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    await asyncio.gather(*(verify(verifier, scene.request()) for _ in range(5)))
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks"]


async def test_an_unknown_kid_refetches_the_jwks_at_most_once_per_interval(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    await verify(verifier, scene.request())
    issuer.add_key("ec-2", "ES256")  # the issuer rotates
    message = await refused(verifier, scene.request(token=scene.token(kid="ec-2")))
    assert "no key with kid ec-2" in message
    assert issuer.requests.count("/jwks") == 1  # fetched moments ago: not again

    scene.clock.now += 31
    await verify(verifier, scene.request(token=scene.token(kid="ec-2")))
    assert issuer.requests.count("/jwks") == 2
    await refused(
        verifier, scene.request(token=scene.token(kid="made-up", signing_key=generate_key("ES256")))
    )
    assert issuer.requests.count("/jwks") == 2  # rate-limited


async def test_an_issuer_whose_configuration_names_another_issuer_is_refused(fetch_json: FetchJson) -> None:
    async with OidcIssuer() as issuer:
        scene = make_scene(issuer)
        # The token claims the same host under another path; discovery at that path would be a 404,
        # so serve the check through a fetch that returns the real document for any URL.
        real = issuer.url

        async def fetch_any(url: str) -> Any:
            return await fetch_json(
                real + "/.well-known/openid-configuration" if "well-known" in url else url
            )

        scene.profiles.trusted[WEBID] = {real + "/other"}
        verifier = DpopVerifier(fetch_json=fetch_any, issuers_of=scene.profiles, clock=scene.clock)
        message = await refused(verifier, scene.request(token=scene.token(iss=real + "/other")))
        assert (
            message == f"Access token: the OpenID configuration of issuer {real}/other names another issuer"
        )


# -- RFC vectors and helpers -------------------------------------------------------------------------


def test_thumbprint_matches_rfc_7638_section_3_1() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicA"
        "taSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHa"
        "Q-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_and_ath_match_rfc_9449_examples() -> None:
    jwk = {
        "kty": "EC",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        "crv": "P-256",
    }
    assert jwk_thumbprint(jwk) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"  # §6.1, Figure 9
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"  # §7.1, Figure 14


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://Pod.Example/a", "https://pod.example/a"),
        ("HTTPS://pod.example:443/a", "https://pod.example/a"),
        ("http://pod.example:8080/a", "http://pod.example:8080/a"),
        ("http://pod.example", "http://pod.example/"),
        ("http://pod.example/a/../b/./c", "http://pod.example/b/c"),
        ("http://pod.example/%7euser/%2f", "http://pod.example/~user/%2F"),
        ("http://pod.example/a?q=1#f", "http://pod.example/a"),
        ("http://[::1]:80/a", "http://[::1]/a"),
    ],
)
def test_htu_normalisation(url: str, normal: str) -> None:
    assert normalize_htu(url) == normal


@pytest.mark.parametrize(
    "url", ["/relative", "ftp://pod.example/a", "http://user@pod.example/a", "http://:80/"]
)
def test_htu_normalisation_refuses_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


# -- verified-token cache ---------------------------------------------------------------------------


async def test_a_cached_token_is_still_checked_against_clock_and_proof_key(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json)
    token = scene.token(lifetime=120)
    await verify(verifier, scene.request(token=token))
    thief = ClientKey.generate()
    stolen = scene.request(token=token, proof=scene.proof(client=thief, access_token=token))
    assert "cnf.jkt does not match" in await refused(verifier, stolen)
    scene.clock.now += 130
    assert await refused(verifier, scene.request(token=token)) == "Access token: expired"


async def test_a_cached_signature_lasts_no_longer_than_the_jwks(
    issuer: OidcIssuer, fetch_json: FetchJson
) -> None:
    scene = make_scene(issuer)
    verifier = make_verifier(scene, fetch_json, jwks_ttl=60)
    token = scene.token(lifetime=3600)
    await verify(verifier, scene.request(token=token))
    issuer.remove_key("ec-1")  # the issuer withdraws the key
    await verify(verifier, scene.request(token=token))  # cached: no new fetch yet
    scene.clock.now += 61
    assert "no key with kid ec-1" in await refused(verifier, scene.request(token=token))


# -- warm caches ---------------------------------------------------------------------------------------
# (What a warm verify costs is measured by scripts/bench, not here.)


@pytest.mark.parametrize(
    ("issuer_kid", "same_token"), [("ec-1", True), ("ec-1", False), ("rsa-1", True), ("rsa-1", False)]
)
async def test_warm_verify_fetches_nothing_more(
    issuer: OidcIssuer, fetch_json: FetchJson, issuer_kid: str, same_token: bool
) -> None:
    """Once discovery and JWKS are cached, verifying fetches nothing, with the same token on every
    request (the usual case) or a new one each time."""
    scene = make_scene(issuer, "ES256")
    verifier = make_verifier(scene, fetch_json)
    token = scene.token(kid=issuer_kid)
    await verify(verifier, scene.request(token=token))  # warm the caches
    for _ in range(50):
        each = token if same_token else scene.token(kid=issuer_kid)
        await verify(verifier, scene.request(token=each))
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks"]
