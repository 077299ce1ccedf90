"""A real OpenID Provider for tests, on loopback: discovery document, JWKS, and token minting.

Verification code is only as good as the tokens it is tested with, so these are real: EC (ES256) and
RSA (RS256) signing keys, served as a JWKS over HTTP from 127.0.0.1 on a free port, and DPoP proofs
signed with real client keys. Tests can rotate keys, count requests (to see caching), and forge the
variations a verifier must refuse.

    async with OidcIssuer() as issuer:
        client = ClientKey.generate("ES256")
        token = issuer.mint_token(webid, client.jkt)
        proof = make_proof(client, "GET", url, access_token=token)

It also runs the client credentials grant (``register_client``, then ``POST /token`` with HTTP Basic
client authentication and a DPoP proof), which is how a real client library logs a script in; and
``ThreadedIssuer`` serves it from a thread of its own, for synchronous tests whose server processes
call it back while the test blocks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from acl.dpop import access_token_hash, jose_header, jwk_thumbprint, load_public_jwk

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@functools.cache
def _rsa_key(slot: int) -> rsa.RSAPrivateKey:
    """RSA key generation is slow (tens of ms); tests share a few keys by slot."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def generate_key(alg: str, *, fresh: bool = False) -> PrivateKey:
    """A private key for ``alg``. RSA keys come from a small shared pool unless ``fresh``."""
    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        return ec.generate_private_key(curve)
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048) if fresh else _rsa_key(0)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no key type for {alg}")


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public JWK of a private key (required members only)."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    elif isinstance(public, rsa.RSAPublicKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
    return {name: value for name, value in jwk.items() if name in ("kty", "crv", "x", "y", "n", "e")}


def private_jwk(key: PrivateKey) -> dict[str, Any]:
    """The full JWK including the private members: what a careless client might put in a proof."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        result: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    elif isinstance(key, rsa.RSAPrivateKey):
        result = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    else:
        result = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key))
    return result


@dataclass
class ClientKey:
    """An app's DPoP key pair; ``jkt`` is what the issuer binds tokens to (``cnf.jkt``)."""

    alg: str
    private_key: PrivateKey
    jwk: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.jwk = public_jwk(self.private_key)

    @classmethod
    def generate(cls, alg: str = "ES256") -> ClientKey:
        return cls(alg, generate_key(alg))

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.jwk)


def make_proof(
    client: ClientKey,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    ath: str | None = None,
    iat: float | None = None,
    jti: str | None = None,
    typ: str = "dpop+jwt",
    jwk: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
    omit: Iterable[str] = (),
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A DPoP proof signed by ``client``. ``access_token`` sets ``ath`` to its hash (``ath`` sets it
    verbatim); ``claims`` adds or overrides claims, ``omit`` drops them; ``jwk`` and ``headers``
    override the JOSE header, for forging bad proofs."""
    payload: dict[str, Any] = {
        "jti": jti if jti is not None else str(uuid.uuid4()),
        "htm": method,
        "htu": url,
        "iat": int(time.time()) if iat is None else iat,
    }
    if access_token is not None:
        payload["ath"] = access_token_hash(access_token)
    if ath is not None:
        payload["ath"] = ath
    payload.update(claims or {})
    for name in omit:
        payload.pop(name, None)
    header: dict[str, Any] = {"typ": typ, "jwk": dict(jwk if jwk is not None else client.jwk)}
    header.update(headers or {})
    return jwt.encode(payload, client.private_key, algorithm=client.alg, headers=header)


def unsigned_jwt(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    """A JWT assembled by hand, for algs pyjwt will not sign with (``none``) or tampered signatures."""

    def segment(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        (
            segment(json.dumps(dict(header)).encode()),
            segment(json.dumps(dict(payload)).encode()),
            segment(signature),
        )
    )


class OidcIssuer:
    """An OpenID Provider on ``127.0.0.1``: ``/.well-known/openid-configuration`` and ``/jwks``.

    It starts with an ES256 key (kid ``ec-1``) and an RS256 key (kid ``rsa-1``). ``requests`` lists
    the paths served, so tests can assert what a verifier fetched. ``url`` is the issuer identifier,
    with a trailing slash when ``trailing_slash`` (as some providers publish it).
    """

    def __init__(self, *, trailing_slash: bool = False) -> None:
        self.trailing_slash = trailing_slash
        self.keys: dict[str, tuple[str, PrivateKey]] = {}
        self.requests: list[str] = []
        # client_id -> (client secret, the WebID its tokens name), for the client credentials grant
        self.clients: dict[str, tuple[str, str]] = {}
        self.issued: list[dict[str, Any]] = []  # claims of every token /token handed out
        self.add_key("ec-1", "ES256")
        self.add_key("rsa-1", "RS256")
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> OidcIssuer:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._configuration)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self._origin = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OidcIssuer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def origin(self) -> str:
        if self._origin is None:
            raise RuntimeError("the issuer is not started")
        return self._origin

    @property
    def url(self) -> str:
        """The issuer identifier, as it appears in ``iss`` and in ``solid:oidcIssuer``."""
        return self.origin + "/" if self.trailing_slash else self.origin

    # -- keys ---------------------------------------------------------------------------------------

    def add_key(self, kid: str, alg: str, key: PrivateKey | None = None) -> PrivateKey:
        """Publish a signing key; returns its private half."""
        private = key if key is not None else generate_key(alg)
        self.keys[kid] = (alg, private)
        return private

    def remove_key(self, kid: str) -> None:
        del self.keys[kid]

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**public_jwk(private), "kid": kid, "alg": alg, "use": "sig"}
                for kid, (alg, private) in self.keys.items()
            ]
        }

    # -- tokens -------------------------------------------------------------------------------------

    def mint_token(
        self,
        webid: str | None,
        jkt: str | None,
        *,
        aud: str | list[str] | None = None,
        exp: float | None = None,
        iat: float | None = None,
        lifetime: float = 300,
        kid: str = "ec-1",
        alg: str | None = None,
        signing_key: PrivateKey | None = None,
        iss: str | None = None,
        client_id: str | None = "https://app.example/id",
        claims: Mapping[str, Any] | None = None,
        omit: Iterable[str] = (),
    ) -> str:
        """A Solid-OIDC access token for ``webid`` bound to ``jkt``, signed with the key ``kid``.

        ``aud`` defaults to ``["solid", client_id]``; ``webid=None`` or ``jkt=None`` leave that claim
        out. ``signing_key`` signs with a key the issuer does not publish (the header still says
        ``kid``); ``claims`` adds or overrides claims and ``omit`` drops them.
        """
        now = time.time()
        key_alg, private = self.keys.get(kid, ("ES256", None))
        alg = alg or key_alg
        key = signing_key if signing_key is not None else private
        if key is None:
            raise KeyError(f"no key {kid!r}: pass signing_key")
        issued = now if iat is None else iat
        payload: dict[str, Any] = {
            "iss": iss if iss is not None else self.url,
            "sub": "alice",
            "aud": aud if aud is not None else ["solid", *([client_id] if client_id else [])],
            "iat": int(issued),
            "exp": int(issued + lifetime) if exp is None else exp,
            "jti": str(uuid.uuid4()),
        }
        if webid is not None:
            payload["webid"] = webid
        if jkt is not None:
            payload["cnf"] = {"jkt": jkt}
        if client_id is not None:
            payload["client_id"] = client_id
            payload["azp"] = client_id
        payload.update(claims or {})
        for name in omit:
            payload.pop(name, None)
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})

    def register_client(self, client_id: str, secret: str, webid: str) -> None:
        """A static client that may use the client credentials grant; its tokens name ``webid``."""
        self.clients[client_id] = (secret, webid)

    # -- HTTP ---------------------------------------------------------------------------------------

    async def _configuration(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": self.origin + "/jwks",
                "authorization_endpoint": self.origin + "/authorize",
                "token_endpoint": self.origin + "/token",
                "scopes_supported": ["openid", "offline_access", "webid"],
                "dpop_signing_alg_values_supported": ["ES256", "RS256"],
                "id_token_signing_alg_values_supported": ["ES256", "RS256"],
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "webid", "azp", "client_id"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response(self.jwks())

    async def _token(self, request: web.Request) -> web.Response:
        """The client credentials grant (RFC 6749 §4.4) with a DPoP-bound token (RFC 9449 §5).

        Checked as a real provider would, so a client that gets a token here has done its part right:
        HTTP Basic client authentication, ``grant_type``, and a DPoP proof for this very request
        (signature by the key in its header, ``htm``, ``htu``, fresh ``iat``). Errors are RFC 6749
        §5.2 JSON. The token carries ``webid``, ``aud: ["solid", client_id]`` and ``cnf.jkt``.
        """
        self.requests.append(request.path)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"grant_type {form.get('grant_type')!r}")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        try:
            client_id, _, secret = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            client_id, secret = "", ""
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined by ":".
        client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        known = self.clients.get(client_id)
        if scheme.lower() != "basic" or known is None or not hmac.compare_digest(known[0], secret):
            return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
        proof = request.headers.get("DPoP")
        if proof is None:
            return _oauth_error(400, "invalid_dpop_proof", "no DPoP header")
        try:
            header = jose_header(proof)
            alg = str(header.get("alg"))
            key = load_public_jwk(header.get("jwk"), alg)
            claims = jwt.decode(proof, key, algorithms=[alg])
        except (ValueError, KeyError, jwt.PyJWTError) as exc:
            return _oauth_error(400, "invalid_dpop_proof", f"bad proof: {exc}")
        endpoint = self.origin + "/token"
        if header.get("typ") != "dpop+jwt" or claims.get("htm") != "POST" or claims.get("htu") != endpoint:
            return _oauth_error(400, "invalid_dpop_proof", f"proof does not fit POST {endpoint}: {claims}")
        if abs(time.time() - float(claims.get("iat", 0))) > 60:
            return _oauth_error(400, "invalid_dpop_proof", "stale iat")
        lifetime = 300
        token = self.mint_token(
            known[1], jwk_thumbprint(header["jwk"]), client_id=client_id, lifetime=lifetime
        )
        self.issued.append(jwt.decode(token, options={"verify_signature": False}))
        return web.json_response(
            {
                "access_token": token,
                "token_type": "DPoP",
                "expires_in": lifetime,
                "scope": form.get("scope", ""),
            },
            headers={"Cache-Control": "no-store"},
        )


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


class ThreadedIssuer:
    """An :class:`OidcIssuer` on an event loop in a thread of its own.

    A synchronous test blocks while a server process verifies a token, and the server then fetches
    this issuer's JWKS: the issuer must keep answering, which the test's own thread cannot do.

        with ThreadedIssuer() as issuer:
            issuer.register_client("app", "secret", webid)
    """

    def __init__(self, issuer: OidcIssuer | None = None) -> None:
        self.issuer = issuer or OidcIssuer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="oidc-issuer", daemon=True)

    def __enter__(self) -> OidcIssuer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.issuer.start(), self._loop).result(10)
        return self.issuer

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.issuer.close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
