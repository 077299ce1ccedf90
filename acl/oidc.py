"""Solid-OIDC: which WebID (and which app) a DPoP-bound access token speaks for.

A request carries ``Authorization: DPoP <access token>`` and a ``DPoP: <proof>`` header. The proof
(``acl.dpop``) shows the sender holds the key the token is bound to; the token, signed by an OpenID
Provider, names the WebID; the WebID's profile must list that provider as a ``solid:oidcIssuer``, or
any provider could speak for any WebID. ``DpopVerifier.verify`` runs all three and returns an
``OidcIdentity``, or raises ``Unauthorized`` with a message that names the failed check.

Network access is injected: ``fetch_json`` GETs the issuer's discovery document and JWKS (in the server
it is the outbound client that refuses private addresses and caps size and time), and ``issuers_of``
reads a WebID profile. Discovery, JWKS and verified token signatures are cached, so with a warm
profile cache a request that reuses its access token costs one signature check and no I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeGuard
from urllib.parse import urlsplit

import jwt

from acl.dpop import (
    ASYMMETRIC_ALGS,
    DECODE_OPTIONS,
    PRIVATE_MEMBERS,
    ProofKeys,
    ReplayCache,
    challenge,
    check_proof,
    load_public_jwk,
    shown,
)
from ldp.errors import Unauthorized

log = logging.getLogger(__name__)

FetchJson = Callable[[str], Awaitable[Any]]
"""GET a URL and return its parsed JSON; raise on a non-2xx status, bad JSON or a network error."""

IssuersOf = Callable[[str], Awaitable[set[str]]]
"""The ``solid:oidcIssuer`` values of a WebID's profile; may raise, which becomes a 401."""

# Tolerance for the issuer's clock on exp, nbf and iat of access tokens.
TOKEN_LEEWAY = 5.0
# An unknown kid triggers at most one JWKS refetch per issuer in this interval, so a stream of tokens
# with made-up kids cannot turn into a stream of requests to the issuer.
JWKS_REFETCH_INTERVAL = 30.0
MAX_TOKEN_CHARS = 16384
MAX_ISSUERS_CACHED = 1000
MAX_JWKS_KEYS = 50
_COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class OidcIdentity:
    """Who a verified request speaks for: the WebID, the app (``client_id`` or ``azp``) and the
    provider that vouched for both."""

    webid: str
    client_id: str | None
    issuer: str


def issuer_key(url: str) -> str:
    """The comparable form of an issuer URL: scheme and host lower-cased, default port dropped, and no
    trailing slash, so ``https://idp.example/`` in a token matches ``<https://idp.example>`` in a
    profile. Non-URLs compare as themselves."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            return url
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = parts.port
    except ValueError:
        return url
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _is_http_url(value: object) -> TypeGuard[str]:
    if not isinstance(value, str) or _SPACE.search(value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in _DEFAULT_PORTS and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:
        return False


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _replayed() -> Unauthorized:
    message = "DPoP proof: jti has already been used for this URL (replayed proof)"
    return Unauthorized(message, headers=challenge("invalid_dpop_proof", message))


def _token_error(reason: str) -> Unauthorized:
    message = f"Access token: {reason}"
    return Unauthorized(message, headers=challenge("invalid_token", message))


class _IssuerKeys:
    """One issuer's JWKS as fetched: the usable public signing keys, parsed lazily per alg."""

    def __init__(self, jwks: Any, fetched_at: float) -> None:
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("is not a JWK Set")
        self.fetched_at = fetched_at
        self._jwks: list[dict[str, Any]] = [
            key
            for key in jwks["keys"][:MAX_JWKS_KEYS]
            if isinstance(key, dict)
            and key.get("use", "sig") == "sig"
            # A JWKS that publishes private keys is broken; skip those keys rather than trust them.
            and not PRIVATE_MEMBERS.intersection(key)
        ]
        self._parsed: dict[tuple[int, str], jwt.PyJWK | None] = {}

    def candidates(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        """The keys that may have signed a token with this ``kid`` (any, if the token has none) and
        ``alg``: a JWK's own ``alg``, when it has one, must agree."""
        found = []
        for index, jwk in enumerate(self._jwks):
            if kid is not None and jwk.get("kid") != kid:
                continue
            if jwk.get("alg", alg) != alg:
                continue
            if (index, alg) not in self._parsed:
                try:
                    self._parsed[(index, alg)] = load_public_jwk(jwk, alg)
                except ValueError:
                    self._parsed[(index, alg)] = None
            key = self._parsed[(index, alg)]
            if key is not None:
                found.append(key)
        return found


class _VerifiedTokens:
    """Access tokens whose signature already verified, by SHA-256 of the token, each until a deadline.

    A client sends the same access token with every request for its lifetime, so verifying its
    signature once is enough; the claims are still checked on every request against the clock and
    the proof. Bounded, least recently used first out.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[float, tuple[dict[str, Any], dict[str, Any]]]] = OrderedDict()

    def get(self, key: bytes, now: float) -> tuple[dict[str, Any], dict[str, Any]] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, value: tuple[dict[str, Any], dict[str, Any]], until: float) -> None:
        self._entries[key] = (until, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class SharedClaims(Protocol):
    """A replay guard shared by several server processes (``pod.replay``)."""

    async def claim_once(self, key: bytes, expires: float, now: float) -> bool: ...


class DpopVerifier:
    """Verifies Solid-OIDC requests: DPoP proof, access token, issuer trust.

    ``fetch_json`` reads discovery documents and JWKS; ``issuers_of`` reads a WebID's trusted issuers.
    ``clock`` is injectable so tests can move time. JWKS are cached per issuer for ``jwks_ttl``
    seconds; accepted proofs are remembered for ``replay_ttl`` seconds (at least as long as their
    ``iat`` keeps them acceptable). ``require_ath`` refuses proofs without an ``ath`` claim.
    """

    def __init__(
        self,
        *,
        fetch_json: FetchJson,
        issuers_of: IssuersOf,
        clock: Callable[[], float] = time.time,
        iat_window: float = 60.0,
        jwks_ttl: float = 600.0,
        replay_ttl: float = 300.0,
        require_ath: bool = False,
        replay_max_entries: int = 100_000,
        shared_replay: SharedClaims | None = None,
    ) -> None:
        self._fetch_json = fetch_json
        self._issuers_of = issuers_of
        self._clock = clock
        self._iat_window = iat_window
        self._jwks_ttl = jwks_ttl
        self._replay_ttl = replay_ttl
        self._require_ath = require_ath
        self._proof_keys = ProofKeys()
        self._replay = ReplayCache(replay_max_entries)
        self._shared_replay = shared_replay
        self._verified = _VerifiedTokens()
        self._issuers: OrderedDict[str, _IssuerKeys] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_IssuerKeys]] = {}

    async def verify(self, *, method: str, url: str, authorization: str, dpop: str | None) -> OidcIdentity:
        """Verify one request. ``url`` is its absolute URL as built from the server's configured base
        URL (query and fragment are ignored); ``dpop`` is the DPoP header value (repeated headers joined
        with ", ", which is refused). Raises ``Unauthorized`` naming the failed check.

        Solid-OIDC, DPoP Validation (#dpop-validation): "A DPoP Proof that is valid according to
        [RFC 9449 §4.3], MUST be present when a DPoP-bound OIDC ID Token is used."
        """
        token = self._access_token(authorization)
        now = self._clock()
        proof = check_proof(
            dpop,
            method=method,
            url=url,
            now=now,
            iat_window=self._iat_window,
            access_token=token,
            require_ath=self._require_ath,
            keys=self._proof_keys,
        )
        replay_key = ReplayCache.key(proof.jti, proof.htu)
        if self._replay.seen(replay_key, now):
            raise _replayed()

        token_key = hashlib.sha256(token.encode("ascii")).digest()
        verified = self._verified.get(token_key, now)
        header, claims = verified if verified is not None else self._unverified(token)
        alg, kid, issuer, webid = self._check_claims(header, claims, proof.jkt, now)
        if verified is None:
            keys = await self._keys_for(issuer, kid, alg)
            self._check_signature(token, keys, alg, issuer)
            # Remembered no longer than the issuer's keys are, so a withdrawn key stops working as
            # soon as a refetched JWKS would notice.
            self._verified.put(token_key, (header, claims), min(claims["exp"], now + self._jwks_ttl))
        await self._check_issuer_trust(issuer, webid)

        # Recorded last, so only fully verified requests occupy the cache, and checked again here with
        # no await between check and insert, so two concurrent requests with one proof cannot both pass.
        expires = max(now + self._replay_ttl, proof.iat + self._iat_window)
        if not self._replay.add(replay_key, expires, self._clock()):
            raise _replayed()
        # Other server processes on the same database must refuse this proof too (RFC 9449 §11.1).
        if self._shared_replay is not None and not await self._shared_replay.claim_once(
            b"dpop:" + replay_key, expires, self._clock()
        ):
            raise _replayed()
        client_id = claims.get("client_id") if isinstance(claims.get("client_id"), str) else None
        if client_id is None and isinstance(claims.get("azp"), str):
            client_id = claims["azp"]
        return OidcIdentity(webid=webid, client_id=client_id, issuer=issuer)

    # -- the Authorization header ---------------------------------------------------------------------

    @staticmethod
    def _access_token(authorization: str) -> str:
        """RFC 9449 §7.1: "A DPoP-bound access token is sent using the Authorization request header
        field ... with an authentication scheme of DPoP." Scheme names are case-insensitive (RFC 9110
        §11.1). Bearer is refused: Solid-OIDC tokens are DPoP-bound, and §7.2 says a resource server
        "MUST reject a DPoP-bound access token received as a bearer token"."""
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            raise Unauthorized(
                "Authorization: DPoP is required; Bearer tokens are not accepted",
                headers=challenge(None),
            )
        if scheme.lower() != "dpop":
            raise Unauthorized(
                f"Authorization: scheme {shown(scheme, 20)} is not DPoP", headers=challenge(None)
            )
        token = value.strip()
        if not token:
            raise _token_error("missing after the DPoP scheme")
        if len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWT.fullmatch(token):
            raise _token_error("not a compact JWT")
        return token

    # -- the access token's claims --------------------------------------------------------------------

    @staticmethod
    def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims before the signature is checked: enough to find the key, and to refuse
        an expired or unbound token without any network request."""
        try:
            decoded = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _token_error("not a well-formed JWT") from exc
        return decoded["header"], decoded["payload"]

    def _check_claims(
        self, header: dict[str, Any], claims: dict[str, Any], jkt: str, now: float
    ) -> tuple[str, str | None, str, str]:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGS:
            raise _token_error(f"alg {shown(alg)} is not an accepted asymmetric algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _token_error("kid is not a string")
        # Solid-OIDC, DPoP-bound OIDC ID Token (#tokens-id): "iss — The issuer claim MUST be a valid URL
        # of the OP instantiating this token." OpenID Connect issuers carry no query or fragment.
        issuer = claims.get("iss")
        if not _is_http_url(issuer) or "?" in issuer or "#" in issuer:
            raise _token_error(f"iss {shown(issuer)} is not an http(s) issuer URL")
        for name in ("exp", "iat"):
            if name not in claims:
                raise _token_error(f"the {name} claim is missing")
            if not _is_number(claims[name]):
                raise _token_error(f"the {name} claim is not a number")
        if now > claims["exp"] + TOKEN_LEEWAY:
            raise _token_error("expired")
        if claims["iat"] > now + TOKEN_LEEWAY:
            raise _token_error("iat is in the future")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or nbf > now + TOKEN_LEEWAY):
            raise _token_error("not valid yet (nbf)")
        # Solid-OIDC #tokens-id: the audience "MUST include ... the string solid"; an OP may send it as the
        # string alone (RFC 7519 §4.1.3 allows a single value).
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if "solid" not in audiences:
            raise _token_error('aud does not include "solid"')
        # Solid-OIDC #tokens-id: "webid — The WebID claim MUST be the user's WebID", and a WebID "is a URI
        # with an HTTP or HTTPS scheme" (#terms).
        webid = claims.get("webid")
        if webid is None:
            raise _token_error("the webid claim is missing")
        if not _is_http_url(webid):
            raise _token_error(f"webid {shown(webid)} is not an http(s) URL")
        # RFC 9449 §6: "Resource servers supporting DPoP MUST ensure that the public key from the DPoP
        # proof matches the one bound to the access token"; §6.1: cnf.jkt is the RFC 7638 thumbprint.
        cnf = claims.get("cnf")
        bound = cnf.get("jkt") if isinstance(cnf, dict) else None
        if not isinstance(bound, str):
            raise _token_error("not DPoP-bound (no cnf.jkt)")
        if bound != jkt:
            raise _token_error("cnf.jkt does not match the thumbprint of the DPoP proof key")
        return alg, kid, issuer, webid

    @staticmethod
    def _check_signature(token: str, keys: list[jwt.PyJWK], alg: str, issuer: str) -> None:
        for key in keys:
            try:
                jwt.decode(token, key=key, algorithms=[alg], options=DECODE_OPTIONS)
                return
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _token_error(f"cannot be verified ({type(exc).__name__})") from exc
        raise _token_error(f"signature does not verify with the keys of issuer {shown(issuer)}")

    async def _check_issuer_trust(self, issuer: str, webid: str) -> None:
        """Solid-OIDC, ID Token Validation (#id-token-validation): "The Verifying party MUST perform
        [OIDC Issuer Discovery] using the value of the webid claim to dereference the WebID Profile
        Document". OIDC Issuer Discovery (#oidc-issuer-discovery): the profile "lists the OpenID
        Providers who are trusted to issue tokens on behalf of the agent who controls the WebID. This
        prevents a malicious OpenID Provider from issuing otherwise valid ID Tokens for arbitrary
        WebIDs." Issuers compare trailing-slash insensitive."""
        try:
            trusted = await self._issuers_of(webid)
        except Unauthorized:
            raise
        except Exception as exc:
            log.info("issuers of %s: %r", webid, exc)
            raise Unauthorized(
                f"WebID profile: cannot read the solid:oidcIssuer of <{shown(webid)}> ({type(exc).__name__})",
                headers=challenge("invalid_token"),
            ) from exc
        if issuer_key(issuer) not in {issuer_key(value) for value in trusted}:
            raise _token_error(f"issuer {shown(issuer)} is not a solid:oidcIssuer of <{shown(webid)}>")

    # -- issuer keys ----------------------------------------------------------------------------------

    async def _keys_for(self, issuer: str, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        """The issuer's keys that may have signed the token. Solid-OIDC #id-token-validation: "the
        verifying party MUST follow OpenID Connect Discovery 1.0 [OIDC-DISCOVERY] to find an OP's
        signing keys (JWK)." An unknown kid usually means the issuer rotated its keys: refetch once,
        rate-limited."""
        entry = await self._issuer_keys(issuer)
        keys = entry.candidates(kid, alg)
        if not keys and self._clock() - entry.fetched_at >= JWKS_REFETCH_INTERVAL:
            entry = await self._issuer_keys(issuer, refresh=True)
            keys = entry.candidates(kid, alg)
        if not keys:
            which = f"with kid {shown(kid)}" if kid is not None else "without kid"
            raise _token_error(f"no key {which} for {alg} in the JWKS of issuer {shown(issuer)}")
        return keys

    async def _issuer_keys(self, issuer: str, *, refresh: bool = False) -> _IssuerKeys:
        """Cached per issuer for ``jwks_ttl``; concurrent misses for one issuer share one fetch."""
        name = issuer_key(issuer)
        entry = self._issuers.get(name)
        if entry is not None and not refresh and self._clock() < entry.fetched_at + self._jwks_ttl:
            self._issuers.move_to_end(name)
            return entry
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_issuer_keys(issuer, name))
            self._inflight[name] = task
            task.add_done_callback(partial(self._fetch_done, name))
        # Shielded: one cancelled request must not cancel the fetch other requests are waiting for.
        return await asyncio.shield(task)

    def _fetch_done(self, name: str, task: asyncio.Task[_IssuerKeys]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not logged as lost

    async def _fetch_issuer_keys(self, issuer: str, name: str) -> _IssuerKeys:
        # OpenID Connect Discovery 1.0 §4: "If the Issuer value contains a path component, any
        # terminating / MUST be removed before appending /.well-known/openid-configuration."
        config = await self._fetch(
            issuer, "OpenID configuration", issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        if not isinstance(config, dict):
            raise _token_error(f"the OpenID configuration of issuer {shown(issuer)} is not a JSON object")
        # Discovery §4.3: "The issuer value returned MUST be identical to the Issuer URL that was used
        # as the prefix to /.well-known/openid-configuration". Otherwise one provider's document could
        # lend its keys to another issuer name.
        declared = config.get("issuer")
        if not isinstance(declared, str) or issuer_key(declared) != name:
            raise _token_error(f"the OpenID configuration of issuer {shown(issuer)} names another issuer")
        jwks_uri = config.get("jwks_uri")
        if not _is_http_url(jwks_uri):
            raise _token_error(f"issuer {shown(issuer)} has no http(s) jwks_uri")
        jwks = await self._fetch(issuer, "JWKS", jwks_uri)
        try:
            entry = _IssuerKeys(jwks, fetched_at=self._clock())
        except ValueError as exc:
            raise _token_error(f"the JWKS of issuer {shown(issuer)} {exc}") from exc
        self._issuers[name] = entry
        self._issuers.move_to_end(name)
        while len(self._issuers) > MAX_ISSUERS_CACHED:
            self._issuers.popitem(last=False)
        return entry

    async def _fetch(self, issuer: str, what: str, url: str) -> Any:
        try:
            return await self._fetch_json(url)
        except Unauthorized:
            raise
        except Exception as exc:
            # The exception text may name internal addresses; it goes to the log, not the client.
            log.info("fetching %s %s: %r", what, url, exc)
            raise _token_error(
                f"cannot fetch the {what} of issuer {shown(issuer)} ({type(exc).__name__})"
            ) from exc
