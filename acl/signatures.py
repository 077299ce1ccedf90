"""HTTP Message Signatures between pods (RFC 9421), bound to the body by Content-Digest (RFC 9530).

Every pod owns an Ed25519 key pair. The public half is published in the owner's WebID profile as a
``sec:JsonWebKey`` node that the WebID lists with ``sec:verificationMethod``; the private half signs
every request the pod makes to another pod (event deliveries, LDN POSTs, signed HEADs). The receiver
resolves ``keyid`` to that profile, checks the body digest, the signature, a freshness window and a
replay cache, and then treats the request as made by the key's controller WebID.

What :func:`sign_request` adds and :class:`SignatureVerifier` requires::

    Content-Digest: sha-256=:<base64 of SHA-256(body)>:
    Signature-Input: sig1=("@method" "@target-uri" "content-digest");created=1700000000;
        expires=1700000300;keyid="https://alice.example/profile/card#pod-key";alg="ed25519";
        nonce="<random>";tag="solid-pod"
    Signature: sig1=:<base64 of the 64-byte Ed25519 signature>:

Only the part of RFC 8941 (Structured Field Values) these three fields use is implemented:
dictionaries of items and inner lists, parameters, and the bare item types. Malformed input from
the network is always an :class:`~ldp.errors.Unauthorized` naming the failed check, never a 500.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import hmac
import json
import re
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Protocol, TypeGuard
from urllib.parse import SplitResult, urldefrag, urlsplit

import rdflib
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from yarl import URL

from ldp.errors import Unauthorized

SEC = "https://w3id.org/security#"
RDF_JSON = "http://www.w3.org/1999/02/22-rdf-syntax-ns#JSON"

LABEL = "sig1"
TAG = "solid-pod"
# How long a signature stays valid after ``created``: the ``expires`` the signer sets.
SIGNATURE_LIFETIME = 300

ResolveKey = Callable[[str], Awaitable[tuple[str, dict[str, str]]]]
"""``keyid`` -> (controller WebID, public JWK), e.g. by fetching the WebID profile and calling
:func:`webid_key_from_graph`. It should raise :class:`Unauthorized` when the key cannot be found."""


# --- Keys --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodKey:
    """A pod's signing key. ``key_id`` is the URL of the key node in the WebID profile
    (``<profile document>#pod-key``), which is what receivers dereference to find ``public_jwk``."""

    key_id: str
    private_pem: bytes = field(repr=False)  # PKCS#8 PEM, Ed25519; kept out of logs and tracebacks
    public_jwk: dict[str, str]


def generate_pod_key(key_id: str) -> PodKey:
    """A fresh Ed25519 key. Ed25519 because signatures are small, signing is deterministic (no
    nonce to get wrong) and it is the algorithm RFC 9421 §3.3.6 registers as ``ed25519``."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return load_pod_key(key_id, pem)


def load_pod_key(key_id: str, private_pem: bytes) -> PodKey:
    """Rebuild a :class:`PodKey` from stored PEM; raises ``ValueError`` if it is not an Ed25519 key."""
    _check_sf_string(key_id, "key_id")
    private = _load_private(private_pem)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PodKey(key_id, private_pem, {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)})


@functools.lru_cache(maxsize=64)
def _load_private(private_pem: bytes) -> Ed25519PrivateKey:
    # Cached: parsing the PEM costs as much as the signature itself.
    private = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("pod keys must be Ed25519")
    return private


def profile_key_triples(webid: str, key: PodKey) -> str:
    """Turtle to add to the WebID profile so that other pods can verify this pod's signatures.

    The WebID names the key with ``sec:verificationMethod`` and the key names the WebID with
    ``sec:controller``: :func:`webid_key_from_graph` insists on both directions, so a document cannot
    claim a key for a WebID that does not list it.
    """
    for iri in (webid, key.key_id):
        if not _IRIREF.fullmatch(iri):
            raise ValueError(f"not usable as a Turtle IRI: {iri!r}")
    jwk = json.dumps(key.public_jwk, sort_keys=True, separators=(",", ":"))
    literal = jwk.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f"<{webid}> <{SEC}verificationMethod> <{key.key_id}> .\n"
        f"<{key.key_id}> a <{SEC}JsonWebKey> ;\n"
        f"    <{SEC}controller> <{webid}> ;\n"
        f'    <{SEC}publicKeyJwk> "{literal}"^^<{RDF_JSON}> .\n'
    )


# Turtle IRIREF minus the characters it forbids (and no relative IRIs: the snippet is standalone).
_IRIREF = re.compile(r"https?://[^\x00-\x20<>\"{}|^`\\]+")


# Keys already found in profile graphs, by (graph identity, key id). Callers treat the graphs they
# are given as immutable (the document caches hand the same object to every reader until the
# document changes), so an answer holds for as long as that very graph object is alive; a weak
# reference tells a live graph from a new one that happens to reuse the id of a collected one.
_FOUND_KEYS: OrderedDict[tuple[int, str], tuple[weakref.ref[rdflib.Graph], str, dict[str, str]]] = (
    OrderedDict()
)
_FOUND_KEYS_LIMIT = 1024


def webid_key_from_graph(graph: rdflib.Graph, key_id: str) -> tuple[str, dict[str, str]]:
    """Find ``key_id`` in a fetched profile and return (controller WebID, public JWK).

    The key is accepted only if its controller lists it with ``sec:verificationMethod`` and the key
    lives in the controller's own document (same URL without fragment): otherwise anyone able to
    publish a document could name any WebID as the controller of their key.

    Every signed request asks this of the (cached) profile of its sender, and the graph queries,
    JSON parsing and checks cost more than verifying the signature's digest: an answer is kept for
    as long as the same graph object is in use, and a refusal is never kept.
    """
    slot = (id(graph), key_id)
    found = _FOUND_KEYS.get(slot)
    if found is not None and found[0]() is graph:
        return found[1], dict(found[2])
    webid, jwk = _webid_key_from_graph(graph, key_id)
    _FOUND_KEYS[slot] = (weakref.ref(graph), webid, dict(jwk))
    if len(_FOUND_KEYS) > _FOUND_KEYS_LIMIT:
        _FOUND_KEYS.popitem(last=False)
    return webid, jwk


def _webid_key_from_graph(graph: rdflib.Graph, key_id: str) -> tuple[str, dict[str, str]]:
    sec = rdflib.Namespace(SEC)
    key = rdflib.URIRef(key_id)
    jwks = list(graph.objects(key, sec.publicKeyJwk))
    if not jwks:
        raise Unauthorized(f"Signature: no public key {key_id} in its document")
    if len(jwks) > 1:
        raise Unauthorized(f"Signature: key {key_id} has more than one publicKeyJwk")
    controllers = list(graph.objects(key, sec.controller))
    if len(controllers) != 1 or not isinstance(controllers[0], rdflib.URIRef):
        raise Unauthorized(f"Signature: key {key_id} must have exactly one controller")
    webid = str(controllers[0])
    if (controllers[0], sec.verificationMethod, key) not in graph:
        raise Unauthorized(f"Signature: {webid} does not list {key_id} as a verificationMethod")
    if urldefrag(key_id).url != urldefrag(webid).url:
        raise Unauthorized(f"Signature: key {key_id} is not in the document of its controller {webid}")
    if not isinstance(jwks[0], rdflib.Literal):
        raise Unauthorized(f"Signature: publicKeyJwk of {key_id} is not a literal")
    try:
        parsed = json.loads(str(jwks[0]))
    except ValueError:
        raise Unauthorized(f"Signature: publicKeyJwk of {key_id} is not JSON") from None
    if not isinstance(parsed, dict):
        raise Unauthorized(f"Signature: publicKeyJwk of {key_id} is not a JSON object")
    if "d" in parsed:
        # A published private key is compromised: signatures made with it prove nothing.
        raise Unauthorized(f"Signature: publicKeyJwk of {key_id} contains private key material")
    jwk = {name: value for name, value in parsed.items() if isinstance(value, str)}
    _public_key(jwk)  # refuse unusable keys here, before the caller caches them
    return webid, jwk


# --- Content-Digest (RFC 9530) ---------------------------------------------------------------------

_DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "sha-256": lambda body: hashlib.sha256(body).digest(),
    "sha-512": lambda body: hashlib.sha512(body).digest(),
}


def content_digest(body: bytes) -> str:
    """The Content-Digest field value for ``body``: RFC 9530 §2, a Dictionary whose key is the
    hashing algorithm and whose value is a Byte Sequence, e.g. ``sha-256=:<base64>:``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def _check_content_digest(headers: Mapping[str, str], body: bytes, *, covered: bool) -> None:
    raw = _field_value(headers, "content-digest")
    if raw is None:
        if covered:
            raise Unauthorized(
                "Signature: content-digest is covered but the Content-Digest header is missing"
            )
        return
    try:
        digests = _parse_dictionary(raw)
    except _Malformed as exc:
        raise Unauthorized(f"Signature: malformed Content-Digest ({exc})") from None
    checked = False
    for algorithm, digest in _DIGESTS.items():
        member = digests.get(algorithm)
        if member is None:
            continue  # RFC 9530 §2: "A recipient MAY ignore any or all digests."
        if not isinstance(member, _Item) or not isinstance(member.value, bytes):
            raise Unauthorized(f"Signature: malformed Content-Digest ({algorithm} is not a byte sequence)")
        if not hmac.compare_digest(member.value, digest(body)):
            raise Unauthorized("Signature: content-digest does not match the body")
        checked = True
    if not checked:
        raise Unauthorized("Signature: Content-Digest has no sha-256 or sha-512 value")


# --- Signing -----------------------------------------------------------------------------------------


def sign_request(
    key: PodKey,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    created: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Sign an outgoing request; returns the headers to add (Content-Digest when ``body`` is not
    None, even if empty, then Signature-Input and Signature).

    Covered: ``@method``, ``@target-uri``, ``content-digest`` (with a body), and ``date`` and
    ``content-type`` when the caller sends them. ``url`` is normalised the way aiohttp will send it
    (lower-case host, default port dropped, percent-encoding requoted, no fragment) because the
    receiver rebuilds ``@target-uri`` from what arrives. ``nonce`` defaults to a random value: two
    identical requests in the same second would otherwise have identical signatures, and the
    receiver's replay cache would refuse the second.
    """
    now = int(time.time()) if created is None else created
    all_headers = {name.lower(): value for name, value in headers.items()}
    added: dict[str, str] = {}
    components = ["@method", "@target-uri"]
    if body is not None:
        added["Content-Digest"] = all_headers["content-digest"] = content_digest(body)
        components.append("content-digest")
    components.extend(name for name in ("date", "content-type") if name in all_headers)
    params: dict[str, _BareItem] = {
        "created": now,
        "expires": now + SIGNATURE_LIFETIME,
        "keyid": key.key_id,
        "alg": "ed25519",
        "nonce": secrets.token_urlsafe(16) if nonce is None else nonce,
        "tag": TAG,
    }
    covered = _InnerList([_Item(name, {}) for name in components], params)
    # aiohttp sends the method upper-cased, and the @method value is case-sensitive (RFC 9421 §2.2.1).
    base = _signature_base(covered, method.upper(), _target_uri(url), all_headers)
    signature = _load_private(key.private_pem).sign(base.encode("ascii"))
    added["Signature-Input"] = f"{LABEL}={_serialize_inner_list(covered)}"
    added["Signature"] = f"{LABEL}={_serialize_bare(signature)}"
    return added


def _target_uri(url: str) -> str:
    """The target URI as the receiver will see it: origin + the request target aiohttp sends."""
    parsed = URL(url)
    if not parsed.absolute:
        raise ValueError(f"signed requests need an absolute URL, got {url!r}")
    return str(parsed.origin()) + parsed.raw_path_qs


# --- Verifying ---------------------------------------------------------------------------------------


class ReplayCache(Protocol):
    """Remembers verified signatures until they go stale, so each is accepted once.

    ``claim`` returns False when ``key`` was claimed before (a replay). It is async so that a shared
    implementation (a database table) can serve several server processes.
    """

    async def claim(self, key: bytes, expires_at: float, now: float) -> bool: ...


class MemoryReplayCache:
    """A per-process :class:`ReplayCache` with bounded memory.

    Entries leave when they expire (their signature would be refused as stale by then). When the
    cache is full the entry closest to expiry is evicted and its expiry becomes a floor: a claim
    that expires no later than the floor is refused, since it could be a replay of an evicted entry.
    A flood therefore costs senders a retry with a fresh signature, never an accepted replay.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._keys: set[bytes] = set()
        self._heap: list[tuple[float, bytes]] = []
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._keys)

    async def claim(self, key: bytes, expires_at: float, now: float) -> bool:
        # No await inside: check and record are atomic within the event loop.
        heap = self._heap
        while heap and heap[0][0] < now:
            self._keys.discard(heapq.heappop(heap)[1])
        if key in self._keys or expires_at <= self._floor:
            return False
        if len(self._keys) >= self._max_entries:
            if expires_at <= heap[0][0]:
                return False  # it would be the first to go: refusing it keeps the floor where it is
            evicted_at, evicted = heapq.heappop(heap)
            self._keys.discard(evicted)
            self._floor = max(self._floor, evicted_at)
        self._keys.add(key)
        heapq.heappush(heap, (expires_at, key))
        return True


class SignatureVerifier:
    """Verifies pod-signed requests; :meth:`verify` returns the signer's WebID or raises
    :class:`Unauthorized` naming the check that failed.

    ``max_age`` bounds how long after ``created`` a signature is accepted, ``clock_skew`` how far
    ``created`` may lie in the future. ``required_tag`` selects our application's signature among
    others a request may carry (RFC 9421 §2.3: ``tag`` is "used by applications to help identify
    signatures relevant for specific applications or protocols"), so a signature made for another
    protocol is never taken for ours; ``None`` accepts the first signature whatever its tag.
    """

    def __init__(
        self,
        resolve_key: ResolveKey,
        *,
        max_age: float = 300.0,
        clock_skew: float = 30.0,
        clock: Callable[[], float] = time.time,
        required_tag: str | None = TAG,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self._resolve_key = resolve_key
        self._max_age = max_age
        self._clock_skew = clock_skew
        self._clock = clock
        self._required_tag = required_tag
        self._replay_cache: ReplayCache = replay_cache if replay_cache is not None else MemoryReplayCache()

    async def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> str:
        """Verify the request and return the WebID that signed it.

        ``url`` is the absolute URL the receiver derives from its configured base URL and the raw
        (still percent-encoded) request path and query; it must equal what the sender requested.
        The steps follow RFC 9421 §3.2, cheapest first, so that the key is only resolved (possibly
        a network fetch) for a request that is well-formed, fresh and matches its digest.
        """
        now = self._clock()
        raw_input = _field_value(headers, "signature-input")
        if raw_input is None:
            raise Unauthorized("Signature: missing Signature-Input")
        raw_signature = _field_value(headers, "signature")
        if raw_signature is None:
            raise Unauthorized("Signature: missing Signature")
        # §3.2 step 1: "Parse the Signature and Signature-Input fields as described in Sections 4.1
        # and 4.2, and extract the signatures to be verified."
        try:
            inputs = _parse_dictionary(raw_input)
        except _Malformed as exc:
            raise Unauthorized(f"Signature: malformed Signature-Input ({exc})") from None
        try:
            signatures = _parse_dictionary(raw_signature)
        except _Malformed as exc:
            raise Unauthorized(f"Signature: malformed Signature ({exc})") from None
        label, covered = self._select(inputs)
        member = signatures.get(label)
        if not isinstance(member, _Item) or not isinstance(member.value, bytes):
            raise Unauthorized(f"Signature: no signature value for label {label}")
        signature = member.value

        # §3.2: "Examine the signature parameters to confirm that the signature meets the requirements
        # ... defined by the application such as which message components are required to be covered"
        # (§3.2.1 lists a maximum age from `created`, `expires`, and a required `tag` among them).
        names = [item.value for item in covered.items]
        for required in ("@method", "@target-uri"):
            if required not in names:
                raise Unauthorized(f"Signature: {required} not covered")
        digest_covered = "content-digest" in names
        if body and not digest_covered:
            raise Unauthorized("Signature: content-digest not covered although the request has a body")
        created = self._check_freshness(covered.params, now)
        keyid = covered.params.get("keyid")
        if not _is_string(keyid) or not keyid:
            raise Unauthorized("Signature: keyid parameter missing")
        alg = covered.params.get("alg")
        if alg is not None and not _is_string(alg):
            raise Unauthorized("Signature: alg parameter is not a string")
        _check_content_digest(headers, body, covered=digest_covered)

        # §3.2: "re-create the signature base" from the received message and the parsed parameters.
        try:
            base = _signature_base(covered, method, url, headers).encode("ascii")
        except _Malformed as exc:
            raise Unauthorized(f"Signature: {exc}") from None

        # §3.2: key material from `keyid`; the algorithm from the key and from `alg` "MUST be the same".
        try:
            webid, jwk = await self._resolve_key(keyid)
        except Unauthorized:
            raise
        except Exception as exc:
            raise Unauthorized(f"Signature: key {keyid} could not be resolved") from exc
        key_alg, public_key = _public_key(jwk)
        if alg is not None and alg != key_alg:
            raise Unauthorized(f"Signature: alg {alg} does not match the {key_alg} key")
        if not _verify_signature(public_key, signature, base):
            raise Unauthorized("Signature: invalid signature")

        # §3.2.1 "Enforcing uniqueness of the nonce parameter", done for the whole signature base: it
        # includes nonce and created, and unlike the signature bytes it cannot be varied (ECDSA
        # signatures are malleable). Only a verified signature is remembered, so a forged copy sent
        # first cannot lock the genuine request out.
        if not await self._replay_cache.claim(hashlib.sha256(base).digest(), created + self._max_age, now):
            raise Unauthorized("Signature: replayed (this signature was already used)")
        return webid

    def _select(self, inputs: dict[str, _Item | _InnerList]) -> tuple[str, _InnerList]:
        for label, member in inputs.items():
            if not isinstance(member, _InnerList):
                continue
            if self._required_tag is None or member.params.get("tag") == self._required_tag:
                return label, member
        if self._required_tag is None:
            raise Unauthorized("Signature: Signature-Input has no signature")
        raise Unauthorized(f"Signature: no signature tagged {self._required_tag!r}")

    def _check_freshness(self, params: dict[str, _BareItem], now: float) -> int:
        created = params.get("created")
        if not _is_int(created):
            raise Unauthorized("Signature: created parameter missing")
        if created > now + self._clock_skew:
            raise Unauthorized("Signature: created in the future")
        if created < now - self._max_age:
            raise Unauthorized(f"Signature: expired (created more than {self._max_age:g} s ago)")
        expires = params.get("expires")
        if expires is not None:
            if not _is_int(expires):
                raise Unauthorized("Signature: expires parameter is not an integer")
            if expires < created:
                raise Unauthorized("Signature: expires before created")
            if expires + self._clock_skew < now:
                raise Unauthorized("Signature: expired")
        return created


def signature_base(
    method: str, url: str, headers: Mapping[str, str], signature_input: str, label: str
) -> str:
    """The RFC 9421 §2.5 signature base for the signature ``label`` of a request; raises
    :class:`Unauthorized` if it cannot be built. Exposed for diagnostics and test vectors."""
    try:
        member = _parse_dictionary(signature_input).get(label)
        if not isinstance(member, _InnerList):
            raise _Malformed(f"no inner list labelled {label}")
        return _signature_base(member, method, url, headers)
    except _Malformed as exc:
        raise Unauthorized(f"Signature: {exc}") from None


# --- Signature base (RFC 9421 §2) ------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _signature_base(covered: _InnerList, method: str, url: str, headers: Mapping[str, str]) -> str:
    """RFC 9421 §2.5: "All errors produced as described MUST fail the algorithm immediately"; every
    failure here raises :class:`_Malformed`, which the verifier turns into a 401."""
    lines: list[str] = []
    seen: set[str] = set()
    target = urlsplit(url)
    for item in covered.items:
        name = item.value
        if not _is_string(name):
            raise _Malformed("covered components must be strings")
        # §2.5 step 2.1: "If the component identifier (including its parameters) has already been
        # added to the signature base, produce an error."
        if name in seen:
            raise _Malformed(f"component {name} covered twice")
        seen.add(name)
        # §2.5: a component parameter that is not understood is an error. None are understood here
        # (sf, key, bs, req, tr, name): our signer never uses them.
        if item.params:
            raise _Malformed(f"component parameters are not supported ({name})")
        if name.startswith("@"):
            value = _derived_value(name, method, url, target)
        else:
            # §2.1: "The component name for an HTTP field is the lowercased form of its field name".
            if name != name.lower():
                raise _Malformed(f"component {name} is not lower case")
            found = _field_value(headers, name)
            if found is None:
                raise _Malformed(f"covered header {name} is missing")
            value = found
        # §2.2: derived values "MUST NOT contain any newline characters"; field values cannot either.
        if "\n" in value or "\r" in value:
            raise _Malformed(f"component {name} contains a line break")
        lines.append(f"{_serialize_bare(name)}: {value}\n")
    # §2.5 step 3: the "@signature-params" line ends the base, with no trailing newline.
    lines.append(f'"@signature-params": {_serialize_inner_list(covered)}')
    base = "".join(lines)
    # §2.5: the signature base is an ASCII string; anything else is an error.
    if not base.isascii():
        raise _Malformed("signature base is not ASCII")
    return base


def _derived_value(name: str, method: str, url: str, target: SplitResult) -> str:
    """Derived components of a request (RFC 9421 §2.2)."""
    if name == "@method":
        # §2.2.1: the method name is case-sensitive, so it is taken as received.
        return method
    if name == "@target-uri":
        return url
    if name == "@authority":
        # §2.2.3: normalised per RFC 9110 §4.2.3, i.e. lower-case host and no default port.
        host = (target.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        try:
            port = target.port
        except ValueError:
            raise _Malformed("request URL has an invalid port") from None
        return host if port is None or port == _DEFAULT_PORTS.get(target.scheme.lower()) else f"{host}:{port}"
    if name == "@scheme":
        return target.scheme.lower()
    if name == "@path":
        # §2.2.6: an empty path is normalised to "/"; percent-encoding is kept as sent.
        return target.path or "/"
    if name == "@query":
        # §2.2.7: the query with its leading "?"; a request without a query gives "?" alone.
        return "?" + target.query
    if name == "@request-target":
        return (target.path or "/") + ("?" + target.query if target.query else "")
    if name == "@signature-params":
        # §2.3: it "MUST NOT be enumerated within the set of covered components".
        raise _Malformed("@signature-params must not be covered")
    raise _Malformed(f"unsupported derived component {name}")


def _field_value(headers: Mapping[str, str], name: str) -> str | None:
    """An HTTP field's component value (RFC 9421 §2.1): each field line's value stripped, then
    joined with ", " in order. ``name`` is lower case; lookup is case-insensitive."""
    getall = getattr(headers, "getall", None)  # aiohttp's CIMultiDictProxy keeps repeated lines
    if getall is not None:
        values: list[str] = list(getall(name, []))
    else:
        values = [value for key, value in headers.items() if key.lower() == name]
    if not values:
        return None
    return ", ".join(value.strip(" \t") for value in values)


# --- Algorithms (RFC 9421 §3.3) ---------------------------------------------------------------------

_PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def _public_key(jwk: Mapping[str, str]) -> tuple[str, _PublicKey]:
    """The RFC 9421 algorithm name and key object for a public JWK; Unauthorized if unusable."""
    try:
        return _load_public(jwk.get("kty"), jwk.get("crv"), jwk.get("x"), jwk.get("y"))
    except (ValueError, TypeError):
        raise Unauthorized("Signature: unsupported or malformed public key") from None


@functools.lru_cache(maxsize=1024)
def _load_public(kty: str | None, crv: str | None, x: str | None, y: str | None) -> tuple[str, _PublicKey]:
    if kty == "OKP" and crv == "Ed25519" and x is not None:
        raw = _b64url_decode(x)
        if len(raw) != 32:
            raise ValueError("Ed25519 public keys are 32 bytes")
        return "ed25519", Ed25519PublicKey.from_public_bytes(raw)
    if kty == "EC" and crv == "P-256" and x is not None and y is not None:
        xb, yb = _b64url_decode(x), _b64url_decode(y)
        if len(xb) != 32 or len(yb) != 32:
            raise ValueError("P-256 coordinates are 32 bytes")
        # from_encoded_point checks that the point is on the curve.
        point = b"\x04" + xb + yb
        return "ecdsa-p256-sha256", ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    raise ValueError("unsupported key type")


def _verify_signature(key: _PublicKey, signature: bytes, base: bytes) -> bool:
    try:
        if isinstance(key, Ed25519PublicKey):
            # §3.3.6: Ed25519 over the signature base "with no prehash function"; 64-octet R || S.
            key.verify(signature, base)
        else:
            # §3.3.4: ECDSA P-256 SHA-256; the signature is r || s, each 32 big-endian octets.
            if len(signature) != 64:
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), base, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- Structured Field Values (RFC 8941), the subset used here ---------------------------------------


class Token(str):
    """An RFC 8941 Token (unquoted), kept distinct from a String so re-serialization is exact."""


_BareItem = int | Decimal | str | bytes | bool


@dataclass(slots=True)
class _Item:
    value: _BareItem
    params: dict[str, _BareItem]


@dataclass(slots=True)
class _InnerList:
    items: list[_Item]
    params: dict[str, _BareItem]


class _Malformed(ValueError):
    """Input that does not parse, or a signature base that cannot be built."""


_DIGIT = frozenset("0123456789")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_BASE64_CHARS = _ALPHA | _DIGIT | frozenset("+/=")
# RFC 8941 §3.1.2 key, §3.3.4 token, §3.3.3 string (printable ASCII, only '"' and '\' escaped).
_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+.^_`|~:/0-9A-Za-z-]*")
_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_ESCAPE = re.compile(r'\\(["\\])')
_NUMBER = re.compile(r"-?(?P<integer>[0-9]+)(?:\.(?P<fraction>[0-9]*))?")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def _parse_dictionary(text: str) -> dict[str, _Item | _InnerList]:
    """RFC 8941 §4.2 with §4.2.2: a Dictionary field value. Duplicate keys: the last one wins."""
    if not text.isascii():
        raise _Malformed("not ASCII")
    parser = _Parser(text)
    parser.skip_sp()
    result: dict[str, _Item | _InnerList] = {}
    if parser.at_end():
        return result
    while True:
        key = parser.key()
        if parser.peek() == "=":
            parser.pos += 1
            result[key] = parser.inner_list() if parser.peek() == "(" else parser.item()
        else:
            result[key] = _Item(True, parser.params())
        parser.skip_ows()
        if parser.at_end():
            return result
        parser.expect(",")
        parser.skip_ows()
        if parser.at_end():
            raise _Malformed("trailing comma")


class _Parser:
    """A cursor over one field value; each method implements the RFC 8941 §4.2 step of its name."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _Malformed(f"expected {char!r} at offset {self.pos}")
        self.pos += 1

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def key(self) -> str:
        match = _KEY.match(self.text, self.pos)
        if match is None:
            raise _Malformed(f"expected a key at offset {self.pos}")
        self.pos = match.end()
        return match.group()

    def params(self) -> dict[str, _BareItem]:
        params: dict[str, _BareItem] = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip_sp()
            key = self.key()
            value: _BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    def item(self) -> _Item:
        value = self.bare_item()
        return _Item(value, self.params())

    def inner_list(self) -> _InnerList:
        self.expect("(")
        items: list[_Item] = []
        while not self.at_end():
            self.skip_sp()
            if self.peek() == ")":
                self.pos += 1
                return _InnerList(items, self.params())
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise _Malformed(f"expected ' ' or ')' at offset {self.pos}")
        raise _Malformed("unterminated inner list")

    def bare_item(self) -> _BareItem:
        char = self.peek()
        if char == "-" or char in _DIGIT:
            return self.number()
        if char == '"':
            return self.string()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            return self.boolean()
        if char in _ALPHA or char == "*":
            return self.token()
        raise _Malformed(f"expected an item at offset {self.pos}")

    def number(self) -> int | Decimal:
        match = _NUMBER.match(self.text, self.pos)
        if match is None:
            raise _Malformed(f"expected a digit at offset {self.pos}")
        self.pos = match.end()
        integer, fraction = match.group("integer"), match.group("fraction")
        if fraction is None:
            if len(integer) > 15:
                raise _Malformed("integer too long")
            return int(match.group())
        if len(integer) > 12:
            raise _Malformed("decimal integer part too long")
        if not 1 <= len(fraction) <= 3:
            raise _Malformed("decimal must have 1 to 3 fractional digits")
        return Decimal(match.group())

    def string(self) -> str:
        match = _STRING.match(self.text, self.pos)
        if match is None:
            raise _Malformed(f"invalid string at offset {self.pos}")
        self.pos = match.end()
        return _ESCAPE.sub(r"\1", match.group(1))

    def token(self) -> Token:
        match = _TOKEN.match(self.text, self.pos)
        if match is None:
            raise _Malformed(f"invalid token at offset {self.pos}")
        self.pos = match.end()
        return Token(match.group())

    def byte_sequence(self) -> bytes:
        self.pos += 1
        end = self.text.find(":", self.pos)
        if end < 0:
            raise _Malformed("unterminated byte sequence")
        encoded = self.text[self.pos : end]
        self.pos = end + 1
        if not set(encoded) <= _BASE64_CHARS:
            raise _Malformed("invalid base64 in byte sequence")
        # RFC 8941 §4.2.7 asks parsers to tolerate missing "=" padding.
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except ValueError:
            raise _Malformed("invalid base64 in byte sequence") from None

    def boolean(self) -> bool:
        self.pos += 1
        char = self.peek()
        if char not in ("0", "1"):
            raise _Malformed("invalid boolean")
        self.pos += 1
        return char == "1"


def _serialize_bare(value: _BareItem) -> str:
    """RFC 8941 §4.1.3: the canonical form, which the ``@signature-params`` line relies on."""
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if abs(value) > 999_999_999_999_999:
            raise _Malformed("integer out of range")
        return str(value)
    if isinstance(value, Decimal):
        rounded = value.quantize(Decimal("0.001"), rounding=ROUND_HALF_EVEN)
        integer, _, fraction = format(abs(rounded), "f").partition(".")
        return f"{'-' if rounded < 0 else ''}{integer}.{fraction.rstrip('0') or '0'}"
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    if isinstance(value, Token):
        return str(value)
    _check_sf_string(value, "string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_params(params: Mapping[str, _BareItem]) -> str:
    return "".join(
        f";{key}" if value is True else f";{key}={_serialize_bare(value)}" for key, value in params.items()
    )


def _serialize_inner_list(inner: _InnerList) -> str:
    items = " ".join(_serialize_bare(item.value) + _serialize_params(item.params) for item in inner.items)
    return f"({items}){_serialize_params(inner.params)}"


def _check_sf_string(value: str, what: str) -> None:
    if not _PRINTABLE.fullmatch(value):
        raise _Malformed(f"{what} must be printable ASCII: {value!r}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_string(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and not isinstance(value, Token)
