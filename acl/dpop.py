"""DPoP proofs (RFC 9449) and JWK thumbprints (RFC 7638): the request-bound half of Solid-OIDC.

A DPoP proof is a small JWT the client signs, per request, with a key it keeps; the access token names
that key by its thumbprint (``cnf.jkt``). A stolen access token is useless without the key, and a stolen
proof is useless for another method, URL or, thanks to the replay cache, a second time.

This module knows nothing about issuers, WebIDs or the network: ``acl.oidc`` composes it with the
access token checks. Every failure is an ``Unauthorized`` whose message starts with ``DPoP proof:`` and
names the check, because a client developer debugging a 401 needs to know which one failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.types import Options

from ldp.errors import Unauthorized

# RFC 9449 §4.2: alg "MUST NOT be none or an identifier for a symmetric algorithm (Message
# Authentication Code (MAC))". §11.6: "Implementers MUST ensure that only asymmetric digital signature
# algorithms (such as ES256) that are deemed secure can be used". The same list serves access tokens.
ASYMMETRIC_ALGS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
# What a JWK must look like to be used with an alg: key type, and the curve where the alg fixes one.
_KEY_SHAPE: dict[str, tuple[str, frozenset[str] | None]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
# JWK members that carry private (or symmetric) key material: RFC 7518 §6.2.2 (EC "d"), §6.3.2 (RSA
# "d", "p", "q", "dp", "dq", "qi", "oth"), §6.4 ("k" of a symmetric key), RFC 8037 §2 (OKP "d").
PRIVATE_MEMBERS: frozenset[str] = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
# RFC 7638 §3.2 (EC, RSA, oct) and RFC 8037 §2 (OKP): the required members, the only ones hashed.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
    "oct": ("k", "kty"),
}
# A compact JWS: three base64url segments. Anything else (two proofs joined by a comma, JSON
# serialisation, whitespace) is refused before parsing.
_COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_PROOF_CHARS = 8192
# RFC 9449 §11.1: "a server that is tracking jti values should reject DPoP proof JWTs with
# unnecessarily large jti values or store only a hash thereof." We do both.
MAX_JTI_CHARS = 256
# Options for jwt.decode: pyjwt checks the signature only; every claim is checked here against the
# injected clock, with messages that name the check.
DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "enforce_minimum_key_length": True,
}


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2), the encoding of thumbprints and ``ath``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK SHA-256 thumbprint, base64url-encoded: what ``cnf.jkt`` carries.

    RFC 7638 §3: "Construct a JSON object [RFC7159] containing only the required members of a JWK
    representing the key and with no whitespace or line breaks before or after any syntactic elements
    and with the required members ordered lexicographically by the Unicode [UNICODE] code points of
    the member names." Then hash its UTF-8 octets with SHA-256. Raises ``ValueError`` for an unknown
    key type or a missing or non-string required member.
    """
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"unsupported kty {shown(kty)}")
    canonical: dict[str, str] = {}
    for name in members:  # already in lexicographic order
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"required member {name!r} is missing")
        canonical[name] = value
    encoded = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b64url(hashlib.sha256(encoded).digest())


def access_token_hash(token: str) -> str:
    """The ``ath`` of a token. RFC 9449 §4.2: "The value MUST be the result of a base64url encoding
    ... the SHA-256 [SHS] hash of the ASCII encoding of the associated access token's value."
    """
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def normalize_htu(url: str) -> str:
    """The comparable form of an ``htu`` or request URL.

    RFC 9449 §4.3: the htu claim must match "the HTTP URI value for the HTTP request in which the JWT
    was received, ignoring any query and fragment parts", and "servers SHOULD employ syntax-based
    normalization (Section 6.2.2 of [RFC3986]) and scheme-based normalization (Section 6.2.3 of
    [RFC3986]) before comparing the htu claim." So: lower-case scheme and host, drop the default port,
    upper-case percent-escapes and decode those of unreserved characters, remove dot segments, an empty
    path is ``/``. Raises ``ValueError`` for anything that is not an absolute http(s) URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    host = parts.hostname  # already lower-cased
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # raises ValueError for a malformed port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        raise ValueError("userinfo is not allowed")
    path = _remove_dot_segments(_normalize_escapes(parts.path)) or "/"
    return urlunsplit((scheme, netloc, path, "", ""))


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _normalize_escapes(path: str) -> str:
    """RFC 3986 §6.2.2.1-2: upper-case hex in escapes, decode escapes of unreserved characters."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(fix, path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §6.2.2.3 / §5.2.4, for the absolute paths of http(s) URLs."""
    if "." not in path:
        return path
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    result = "/".join(output)
    return result if result.startswith("/") else "/" + result


def jose_header(compact: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, unverified: what names the key to verify it with.

    Parsed here rather than with ``jwt.get_unverified_header`` because the verifying ``jwt.decode``
    that follows parses the whole token again; the signature covers this header, so nothing read
    from it is trusted before that. Raises ``ValueError``.
    """
    segment = compact.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("the JOSE header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("the JOSE header is not a JSON object")
    return header


def load_public_jwk(jwk: Any, alg: str) -> jwt.PyJWK:
    """A verification key for ``alg`` from a JWK, refusing private keys and mismatched key types.

    RFC 9449 §4.3 item 7: "The jwk JOSE Header Parameter does not contain a private key." The key type
    (and curve) must fit ``alg`` so that, say, an RSA key cannot be presented under ``ES256``. Raises
    ``ValueError`` naming the problem.
    """
    if not isinstance(jwk, dict):
        raise ValueError("is not a JSON object")
    private = PRIVATE_MEMBERS.intersection(jwk)
    if private:
        raise ValueError(f"contains private key material ({', '.join(sorted(private))})")
    kty, curves = _KEY_SHAPE[alg]
    if jwk.get("kty") != kty:
        raise ValueError(f"kty {shown(jwk.get('kty'))} does not fit alg {alg}")
    if curves is not None and jwk.get("crv") not in curves:
        raise ValueError(f"crv {shown(jwk.get('crv'))} does not fit alg {alg}")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except jwt.PyJWTError as exc:
        raise ValueError(f"is not a usable {kty} key") from exc
    if not isinstance(key.key, _PUBLIC_KEY_TYPES):
        raise ValueError("is not a public key")
    return key


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A proof that passed every stateless check; replay is the caller's, once the token is known."""

    jkt: str  # RFC 7638 thumbprint of the proof's jwk, to compare with the token's cnf.jkt
    jti: str
    htu: str  # normalised
    iat: float


class ProofKeys:
    """A bounded cache of parsed proof keys, keyed by thumbprint and alg.

    A client signs every proof with the same key, so rebuilding the key object per request is wasted
    work. The thumbprint covers exactly the members that define a public key, so two JWKs with the same
    thumbprint are the same key.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._max = max_entries
        self._keys: OrderedDict[tuple[str, str], jwt.PyJWK] = OrderedDict()

    def get(self, jwk: Any, jkt: str, alg: str) -> jwt.PyJWK:
        cached = self._keys.get((jkt, alg))
        if cached is not None:
            self._keys.move_to_end((jkt, alg))
            return cached
        key = load_public_jwk(jwk, alg)
        self._keys[(jkt, alg)] = key
        if len(self._keys) > self._max:
            self._keys.popitem(last=False)
        return key


def check_proof(
    proof: str | None,
    *,
    method: str,
    url: str,
    now: float,
    iat_window: float,
    access_token: str,
    require_ath: bool,
    keys: ProofKeys,
) -> DpopProof:
    """Every RFC 9449 §4.3 check that needs no state: header, signature, htm, htu, iat, ath.

    RFC 9449 §4.3: "To validate a DPoP proof, the receiving server MUST ensure the following" - items 1
    to 9, 11 and the ``ath`` half of 12 are here; the key binding half of 12 is the caller's comparison
    of ``jkt`` with the token's ``cnf.jkt``. Item 10 (server nonces) does not apply: this server issues
    none.
    """
    # Item 1: "There is not more than one DPoP HTTP request header field." Callers pass repeated
    # headers joined with ", ", which item 2 then refuses.
    if proof is None or not proof.strip():
        raise _proof_error("the DPoP header is missing", error="invalid_request")
    proof = proof.strip()
    # Item 2: "The DPoP HTTP request header field value is a single and well-formed JWT."
    if len(proof) > MAX_PROOF_CHARS or not _COMPACT_JWT.fullmatch(proof):
        raise _proof_error("the DPoP header is not a single compact JWT")
    try:
        header = jose_header(proof)
    except ValueError as exc:
        raise _proof_error("the DPoP header is not a well-formed JWT") from exc
    # Item 4 and §11.5: "Servers accepting signed DPoP proof JWTs MUST verify that the typ field is
    # dpop+jwt". RFC 7515 §4.1.9: typ is a media type, compared without case, "application/" optional.
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != "dpop+jwt":
        raise _proof_error(f"typ {shown(typ)} is not dpop+jwt")
    # Item 5: "The alg JOSE Header Parameter indicates a registered asymmetric digital signature
    # algorithm [IANA.JOSE.ALGS], is not none, is supported by the application, and is acceptable per
    # local policy."
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGS:
        raise _proof_error(f"alg {shown(alg)} is not an accepted asymmetric algorithm")
    # Item 7, and the jwk must fit the alg.
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _proof_error("the jwk header is missing")
    if PRIVATE_MEMBERS.intersection(jwk):
        raise _proof_error("jwk contains private key material")
    try:
        jkt = jwk_thumbprint(jwk)
        key = keys.get(jwk, jkt, alg)
    except ValueError as exc:
        raise _proof_error(f"jwk {exc}") from exc
    # Item 6: "The JWT signature verifies with the public key contained in the jwk JOSE Header
    # Parameter."
    try:
        claims = jwt.decode(proof, key=key, algorithms=[alg], options=DECODE_OPTIONS)
    except jwt.InvalidSignatureError as exc:
        raise _proof_error("signature does not verify with its jwk") from exc
    except jwt.PyJWTError as exc:
        raise _proof_error(f"cannot be verified ({type(exc).__name__})") from exc
    # Item 3: "All required claims per Section 4.2 are contained in the JWT."
    for name in ("jti", "htm", "htu", "iat"):
        if name not in claims:
            raise _proof_error(f"the {name} claim is missing")
    jti, htm, htu, iat = claims["jti"], claims["htm"], claims["htu"], claims["iat"]
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise _proof_error(f"jti must be a string of 1 to {MAX_JTI_CHARS} characters")
    # Item 8: "The htm claim matches the HTTP method of the current request." Methods are
    # case-sensitive (RFC 9110 §9.1).
    if htm != method:
        raise _proof_error(f"htm {shown(htm)} does not match the request method {method}")
    # Item 9, with the normalisation §4.3 recommends.
    try:
        request_htu = normalize_htu(url)
    except ValueError as exc:
        raise _proof_error("the request URL is not an absolute http(s) URL") from exc
    try:
        proof_htu = normalize_htu(htu) if isinstance(htu, str) else None
    except ValueError:
        proof_htu = None
    if proof_htu != request_htu:
        raise _proof_error("htu does not match the request URL")
    # Item 11 and §11.1: "servers MUST only accept DPoP proofs for a limited time after their creation
    # (preferably only for a relatively brief period on the order of seconds or minutes)", and "MAY
    # accept DPoP proofs that carry an iat time in the reasonably near future".
    if not _is_number(iat):
        raise _proof_error("iat is not a number")
    if iat < now - iat_window:
        raise _proof_error(f"iat is too old (more than {iat_window:g}s ago)")
    if iat > now + iat_window:
        raise _proof_error(f"iat is in the future (more than {iat_window:g}s ahead)")
    # Item 12, first half: "ensure that the value of the ath claim equals the hash of that access
    # token". §7 makes ath a MUST for resource access, but deployed Solid clients omit it, so its
    # absence is refused only when the server asks for it.
    ath = claims.get("ath")
    if ath is None:
        if require_ath:
            raise _proof_error("the ath claim is missing")
    elif not isinstance(ath, str) or not hmac.compare_digest(ath, access_token_hash(access_token)):
        raise _proof_error("ath does not match the access token")
    return DpopProof(jkt=jkt, jti=jti, htu=request_htu, iat=float(iat))


class ReplayCache:
    """The jti values already accepted, per target URI, for as long as their proofs could be accepted.

    RFC 9449 §11.1: "In the context of the target URI, servers can store the jti value of each DPoP proof
    for the time window in which the respective DPoP proof JWT would be accepted to prevent multiple
    uses of the same DPoP proof." Keys are SHA-256 digests of (jti, htu), so memory per entry is fixed
    whatever the client sends. The cache is bounded: when full, the oldest entries go first. That is a
    deliberate trade: an unbounded cache is a memory-exhaustion target, and the ``iat`` window still
    limits what an evicted entry can be replayed for. Entries live in one process; several processes
    behind a load balancer each keep their own (RFC 9449 §11.1 notes this limit of single-use checks).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    @staticmethod
    def key(jti: str, htu: str) -> bytes:
        return hashlib.sha256(f"{htu}\x00{jti}".encode()).digest()

    def seen(self, key: bytes, now: float) -> bool:
        expires = self._expiry.get(key)
        return expires is not None and expires > now

    def add(self, key: bytes, expires: float, now: float) -> bool:
        """Record ``key`` until ``expires``; False if it is already there. Check and insert are one
        synchronous step, so two concurrent requests with one proof cannot both pass."""
        self._evict(now)
        if self.seen(key, now):
            return False
        self._expiry[key] = expires
        self._expiry.move_to_end(key)
        while len(self._expiry) > self._max:
            self._expiry.popitem(last=False)
        return True

    def _evict(self, now: float) -> None:
        # Insertion order is close to expiry order (one ttl for all, widened only by iat), so expired
        # entries collect at the front.
        while self._expiry:
            oldest = next(iter(self._expiry.values()))
            if oldest > now:
                break
            self._expiry.popitem(last=False)


def challenge(error: str | None, description: str | None = None) -> dict[str, str]:
    """The ``WWW-Authenticate`` header of a 401, RFC 9449 §7.1: scheme DPoP, an error code when the
    request carried credentials, and "An algs parameter SHOULD be included"."""
    params = []
    if error:
        params.append(f'error="{error}"')
    if description:
        params.append('error_description="{}"'.format(description.replace("\\", "\\\\").replace('"', '\\"')))
    params.append('algs="{}"'.format(" ".join(sorted(ASYMMETRIC_ALGS))))
    return {"WWW-Authenticate": "DPoP " + ", ".join(params)}


def _proof_error(reason: str, *, error: str = "invalid_dpop_proof") -> Unauthorized:
    message = f"DPoP proof: {reason}"
    return Unauthorized(message, headers=challenge(error, message))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def shown(value: object, limit: int = 100) -> str:
    """A client-supplied value made safe to echo in a message and a header: printable and short."""
    text = value if isinstance(value, str) else json.dumps(value) if value is not None else "(none)"
    text = "".join(char if char.isprintable() else "?" for char in text[:limit])
    return text + ("..." if len(str(value)) > limit else "")
