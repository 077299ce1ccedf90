"""Pod-to-pod HTTP Message Signatures: sign → verify, every refusal, the RFC 9421 ed25519 test vector."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import rdflib
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from multidict import CIMultiDict

from acl.signatures import (
    SEC,
    MemoryReplayCache,
    PodKey,
    SignatureVerifier,
    _public_key,
    _verify_signature,
    content_digest,
    generate_pod_key,
    load_pod_key,
    profile_key_triples,
    sign_request,
    signature_base,
    webid_key_from_graph,
)
from ldp.errors import Unauthorized

NOW = 1_700_000_000
DOC = "https://alice.example/profile/card"
WEBID = f"{DOC}#me"
KEY_ID = f"{DOC}#pod-key"
URL = "https://bob.example/inbox/?x=1"
BODY = b'{"type": "Announce"}'

KEY = generate_pod_key(KEY_ID)
OTHER_KEY = generate_pod_key(KEY_ID)

Headers = dict[str, str]


async def resolve(key_id: str) -> tuple[str, dict[str, str]]:
    if key_id != KEY_ID:
        raise KeyError(key_id)
    return WEBID, KEY.public_jwk


def verifier(at: float = NOW, **options: Any) -> SignatureVerifier:
    return SignatureVerifier(options.pop("resolve_key", resolve), clock=lambda: at, **options)


def signed(
    method: str = "POST",
    url: str = URL,
    body: bytes | None = BODY,
    headers: Headers | None = None,
    created: int = NOW,
    key: PodKey = KEY,
) -> Headers:
    sent = dict(headers if headers is not None else {"Content-Type": "application/ld+json"})
    sent.update(sign_request(key, method, url, sent, body, created=created))
    return sent


def custom_signature(signature_input: str, method: str = "POST", headers: Headers | None = None) -> Headers:
    """A correctly signed request whose Signature-Input the test chooses (to test policy, not crypto)."""
    sent = {"Content-Digest": content_digest(BODY), **(headers or {}), "Signature-Input": signature_input}
    base = signature_base(method, URL, sent, signature_input, "sig1")
    private = serialization.load_pem_private_key(KEY.private_pem, password=None)
    signature = private.sign(base.encode("ascii"))  # type: ignore[call-arg,union-attr]
    sent["Signature"] = "sig1=:" + base64.b64encode(signature).decode() + ":"
    return sent


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def refused(
    check: SignatureVerifier, headers: Headers, *, method: str = "POST", url: str = URL, body: bytes = BODY
) -> str:
    with pytest.raises(Unauthorized) as caught:
        await check.verify(method, url, headers, body)
    assert caught.value.status == 401
    return caught.value.message


# --- Round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body", "extra", "covered"),
    [
        (
            "POST",
            BODY,
            {"Content-Type": "application/ld+json"},
            '"@method" "@target-uri" "content-digest" "content-type"',
        ),
        ("POST", b"", {}, '"@method" "@target-uri" "content-digest"'),
        ("HEAD", None, {}, '"@method" "@target-uri"'),
        ("GET", None, {"Date": "Tue, 14 Nov 2023 22:13:20 GMT"}, '"@method" "@target-uri" "date"'),
    ],
)
async def test_round_trip(method: str, body: bytes | None, extra: Headers, covered: str) -> None:
    headers = signed(method, body=body, headers=extra)
    assert headers["Signature-Input"].startswith(f"sig1=({covered});created={NOW};expires={NOW + 300};")
    assert f'keyid="{KEY_ID}";alg="ed25519";nonce="' in headers["Signature-Input"]
    assert headers["Signature-Input"].endswith(';tag="solid-pod"')
    assert ("Content-Digest" in headers) == (body is not None)
    assert await verifier().verify(method, URL, headers, body or b"") == WEBID


async def test_round_trip_with_aiohttp_headers() -> None:
    """Receivers pass aiohttp's case-insensitive multidict, whatever case the sender used."""
    headers = CIMultiDict({name.upper(): value for name, value in signed().items()})
    assert await verifier().verify("POST", URL, headers, BODY) == WEBID


async def test_signed_url_is_what_aiohttp_sends() -> None:
    """Host case, default port and percent-encoding are normalised as the request goes out."""
    headers = signed(url="https://Bob.Example:443/in%7ebox/caf\u00e9?x=1#fragment")
    assert await verifier().verify("POST", "https://bob.example/in~box/caf%C3%A9?x=1", headers, BODY) == WEBID


async def test_over_the_wire(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    """aiohttp sends the signed request; the receiver rebuilds the URL from its base and raw path."""
    received: list[str] = []

    async def inbox(request: web.Request) -> web.Response:
        url = f"http://127.0.0.1:{request.url.port}{request.raw_path}"
        received.append(await verifier().verify(request.method, url, request.headers, await request.read()))
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/{tail:.*}", inbox)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}/in%7ebox/caf\u00e9/?x=1&y=%2F"
    headers = {"Content-Type": "application/ld+json", "Date": "Tue, 14 Nov 2023 22:13:20 GMT"}
    headers.update(sign_request(KEY, "post", url, headers, BODY, created=NOW))
    async with aiohttp.ClientSession() as session, session.post(url, data=BODY, headers=headers) as response:
        assert response.status == 201
    assert received == [WEBID]


async def test_content_digest_is_rfc_9530() -> None:
    # RFC 9530 §2 / RFC 9421 Appendix B.2 example body and its sha-256 digest.
    assert content_digest(b'{"hello": "world"}') == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"


async def test_sha512_content_digest_is_accepted() -> None:
    digest = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    headers = custom_signature(
        f'sig1=("@method" "@target-uri" "content-digest");created={NOW};keyid="{KEY_ID}";tag="solid-pod"',
        headers={"Content-Digest": f"sha-512=:{digest}:"},
    )
    assert await verifier().verify("POST", URL, headers, BODY) == WEBID


async def test_other_signatures_on_the_request_are_ignored() -> None:
    headers = signed()
    headers["Signature-Input"] = 'proxy=("@method");created=1;keyid="x", ' + headers["Signature-Input"]
    headers["Signature"] = "proxy=:AAAA:, " + headers["Signature"]
    assert await verifier().verify("POST", URL, headers, BODY) == WEBID


async def test_ecdsa_p256_keys_are_accepted() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }
    signature_input = (
        f'sig1=("@method" "@target-uri" "content-digest");created={NOW};keyid="{KEY_ID}"'
        ';alg="ecdsa-p256-sha256";tag="solid-pod"'
    )
    headers = {"Content-Digest": content_digest(BODY), "Signature-Input": signature_input}
    base = signature_base("POST", URL, headers, signature_input, "sig1").encode()
    r, s = decode_dss_signature(private.sign(base, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    headers["Signature"] = "sig1=:" + base64.b64encode(raw).decode() + ":"

    async def resolve_ec(key_id: str) -> tuple[str, dict[str, str]]:
        return WEBID, jwk

    assert await verifier(resolve_key=resolve_ec).verify("POST", URL, headers, BODY) == WEBID


# --- Refusals ---------------------------------------------------------------------------------------


def _set(name: str, value: str) -> Callable[[Headers], None]:
    return lambda headers: headers.__setitem__(name, value)


def _drop(name: str) -> Callable[[Headers], None]:
    def drop(headers: Headers) -> None:
        del headers[name]

    return drop


def _edit(name: str, old: str, new: str) -> Callable[[Headers], None]:
    return lambda headers: headers.__setitem__(name, headers[name].replace(old, new))


def _flip_signature(headers: Headers) -> None:
    raw = bytearray(base64.b64decode(headers["Signature"][len("sig1=:") : -1]))
    raw[0] ^= 1
    headers["Signature"] = "sig1=:" + base64.b64encode(bytes(raw)).decode() + ":"


def tampered(case: str, change: Callable[[Headers], None] | None, expected: str, **request: Any) -> Any:
    """One row: how the signed request is changed in transit, and the refusal it must get."""
    return pytest.param(change, {"method": "POST", "url": URL, "body": BODY, **request}, expected, id=case)


KEEP = None  # headers arrive as signed
SI = "Signature-Input"

TAMPERED = [
    tampered("body", KEEP, "content-digest does not match the body", body=b'{"type": "Delete"}'),
    tampered("body and digest", _set("Content-Digest", content_digest(b"x")), "invalid signature", body=b"x"),
    tampered("method", KEEP, "invalid signature", method="PUT"),
    tampered("url", KEEP, "invalid signature", url="https://bob.example/inbox/?x=2"),
    tampered("host", KEEP, "invalid signature", url="https://eve.example/inbox/?x=1"),
    tampered("content-type", _set("Content-Type", "text/turtle"), "invalid signature"),
    tampered("signature bytes", _flip_signature, "invalid signature"),
    tampered("created", _edit(SI, f"created={NOW}", f"created={NOW - 1}"), "invalid signature"),
    tampered("no Signature-Input", _drop(SI), "missing Signature-Input"),
    tampered("no Signature", _drop("Signature"), "missing Signature"),
    tampered("no Content-Digest", _drop("Content-Digest"), "Content-Digest header is missing"),
    tampered("no Content-Type", _drop("Content-Type"), "covered header content-type is missing"),
    tampered("other tag", _edit(SI, '"solid-pod"', '"other"'), "no signature tagged 'solid-pod'"),
    tampered("other label", _edit("Signature", "sig1=", "sig2="), "no signature value for label sig1"),
    tampered("alg", _edit(SI, '"ed25519"', '"ecdsa-p256-sha256"'), "alg ecdsa-p256-sha256 does not match"),
    tampered("unknown keyid", _edit(SI, "#pod-key", "#other"), "could not be resolved"),
    tampered("digest algorithm", _set("Content-Digest", "md5=:AAAA:"), "no sha-256 or sha-512"),
    tampered("digest type", _set("Content-Digest", "sha-256=abc"), "malformed Content-Digest"),
]


@pytest.mark.parametrize(("change", "request_", "expected"), TAMPERED)
async def test_tampered_requests_are_refused(
    change: Callable[[Headers], None] | None, request_: dict[str, Any], expected: str
) -> None:
    headers = signed()
    if change is not None:
        change(headers)
    assert expected in await refused(verifier(), headers, **request_)


@pytest.mark.parametrize(
    ("now", "created", "expected"),
    [
        (NOW + 301, NOW, "expired (created more than 300 s ago)"),
        (NOW - 31, NOW, "created in the future"),
    ],
    ids=["stale", "future"],
)
async def test_freshness_window(now: int, created: int, expected: str) -> None:
    assert expected in await refused(verifier(now), signed(created=created))


@pytest.mark.parametrize(("now", "created"), [(NOW + 300, NOW), (NOW - 30, NOW)], ids=["oldest", "skewed"])
async def test_freshness_window_edges_are_accepted(now: int, created: int) -> None:
    assert await verifier(now).verify("POST", URL, signed(created=created), BODY) == WEBID


async def test_expires_is_enforced() -> None:
    """``expires`` earlier than ``max_age`` allows wins; the signer's lifetime is its own to shorten."""
    headers = custom_signature(
        f'sig1=("@method" "@target-uri" "content-digest");created={NOW};expires={NOW + 10};keyid="{KEY_ID}"'
        ';tag="solid-pod"'
    )
    assert "Signature: expired" in await refused(verifier(NOW + 41), headers)
    assert await verifier(NOW + 40).verify("POST", URL, headers, BODY) == WEBID


def policy(case: str, covered: str, expected: str, params: str = f';keyid="{KEY_ID}";tag="solid-pod"') -> Any:
    """One row: a Signature-Input the key holder really signed, which our rules must still refuse."""
    return pytest.param(f"sig1=({covered});created={NOW}{params}", expected, id=case)


ALL = '"@method" "@target-uri" "content-digest"'

POLICY = [
    policy("no @target-uri", '"@method" "content-digest"', "@target-uri not covered"),
    policy("no @method", '"@target-uri" "content-digest"', "@method not covered"),
    policy("no content-digest", '"@method" "@target-uri"', "content-digest not covered although"),
    policy("no keyid", ALL, "keyid parameter missing", params=';tag="solid-pod"'),
    policy("keyid token", ALL, "keyid parameter missing", params=';keyid=abc;tag="solid-pod"'),
    policy(
        "expires < created",
        ALL,
        "expires before created",
        params=f';expires={NOW - 1};keyid="{KEY_ID}";tag="solid-pod"',
    ),
    policy("twice", f'{ALL} "@method"', "component @method covered twice"),
    policy("component params", f"{ALL};sf", "component parameters are not supported"),
    policy("derived unknown", f'{ALL} "@status"', "unsupported derived component @status"),
    policy("signature-params", f'{ALL} "@signature-params"', "@signature-params must not be covered"),
    policy("upper case field", '"@method" "@target-uri" "Content-Digest"', "content-digest not covered"),
    policy("upper case extra", f'{ALL} "Date"', "component Date is not lower case"),
    policy("missing header", f'{ALL} "x-missing"', "covered header x-missing is missing"),
    policy("token component", f"{ALL} date", "covered components must be strings"),
]


@pytest.mark.parametrize(("signature_input", "expected"), POLICY)
async def test_policy_violations_are_refused_even_when_correctly_signed(
    signature_input: str, expected: str
) -> None:
    if "x-missing" in signature_input:  # the signer had the header; the receiver does not
        headers = custom_signature(signature_input, headers={"X-Missing": "1"})
        del headers["X-Missing"]
    else:
        try:
            headers = custom_signature(signature_input)
        except Unauthorized:  # no base can be built, so nothing to sign: it must still be a 401
            headers = {
                "Content-Digest": content_digest(BODY),
                "Signature-Input": signature_input,
                "Signature": "sig1=:AAAA:",
            }
    assert expected in await refused(verifier(), headers)


async def test_created_is_required() -> None:
    headers = custom_signature(
        f'sig1=("@method" "@target-uri" "content-digest");keyid="{KEY_ID}";tag="solid-pod"'
    )
    assert "created parameter missing" in await refused(verifier(), headers)


async def test_wrong_key_is_refused() -> None:
    """The profile's key is not the one that signed (a stolen keyid, or a rotated key)."""

    async def resolve_other(key_id: str) -> tuple[str, dict[str, str]]:
        return WEBID, OTHER_KEY.public_jwk

    assert "invalid signature" in await refused(verifier(resolve_key=resolve_other), signed())


async def test_resolver_refusal_is_passed_on() -> None:
    async def resolve_refusing(key_id: str) -> tuple[str, dict[str, str]]:
        raise Unauthorized("Signature: profile says no")

    assert await refused(verifier(resolve_key=resolve_refusing), signed()) == "Signature: profile says no"


async def test_unusable_jwk_from_resolver_is_refused() -> None:
    async def resolve_broken(key_id: str) -> tuple[str, dict[str, str]]:
        return WEBID, {"kty": "OKP", "crv": "Ed25519", "x": "not base64!"}

    assert "malformed public key" in await refused(verifier(resolve_key=resolve_broken), signed())


def unsigned(signature_input: str, **headers: str) -> Headers:
    return {
        "Content-Digest": content_digest(BODY),
        "Signature-Input": signature_input,
        "Signature": "sig1=:AAAA:",
        **headers,
    }


def malformed(case: str, expected: str, params: str, covered: str = ALL, **headers: str) -> Any:
    """One row: an unsigned request whose Signature-Input is refused before any key is resolved."""
    return pytest.param(f"sig1=({covered});{params}", headers, expected, id=case)


TAG_K = 'keyid="k";tag="solid-pod"'

MORE = [
    malformed("alg token", "alg parameter is not a string", f"created={NOW};{TAG_K};alg=ed25519"),
    malformed("expires not int", "expires parameter is not an integer", f"created={NOW};expires=?1;{TAG_K}"),
    malformed("created decimal", "created parameter missing", f"created={NOW}.5;{TAG_K}"),
    malformed("decimal too long", "integer part too long", f"created=1234567890123.5;{TAG_K}"),
    malformed("line break", "line break", f"created={NOW};{TAG_K}", f'{ALL} "x-a"', **{"X-A": "a\nb"}),
    malformed("non-ASCII", "not ASCII", f"created={NOW};{TAG_K}", f'{ALL} "x-a"', **{"X-A": "caf\u00e9"}),
]


@pytest.mark.parametrize(("signature_input", "extra", "expected"), MORE)
async def test_more_malformed_parameters(signature_input: str, extra: Headers, expected: str) -> None:
    assert expected in await refused(verifier(), unsigned(signature_input, **extra))


async def test_untagged_verifier_needs_an_inner_list() -> None:
    check = verifier(required_tag=None)
    assert "has no signature" in await refused(check, unsigned("sig1=:AAAA:"))


async def test_ecdsa_signature_of_wrong_length_is_invalid() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    jwk = {"kty": "EC", "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:])}

    async def resolve_ec(key_id: str) -> tuple[str, dict[str, str]]:
        return WEBID, jwk

    headers = unsigned(f'sig1=({ALL});created={NOW};keyid="{KEY_ID}";tag="solid-pod"')
    assert "invalid signature" in await refused(verifier(resolve_key=resolve_ec), headers)


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed448", "x": KEY.public_jwk["x"]},
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43},  # not on the curve
        {"kty": "OKP"},
    ],
)
async def test_unusable_public_keys_are_401(jwk: dict[str, str]) -> None:
    async def resolve_bad(key_id: str) -> tuple[str, dict[str, str]]:
        return WEBID, jwk

    assert "unsupported or malformed public key" in await refused(verifier(resolve_key=resolve_bad), signed())


def test_signing_needs_an_absolute_url() -> None:
    with pytest.raises(ValueError, match="absolute URL"):
        sign_request(KEY, "GET", "/inbox/", {}, None)


# --- Signature base details (RFC 9421 §2) -------------------------------------------------------------

DERIVED = [
    # (URL, component, expected component value)
    ("https://Example.COM:443/a/b?c=d&e", "@authority", "example.com"),
    ("http://example.com:8080/", "@authority", "example.com:8080"),
    ("http://[::1]:8080/", "@authority", "[::1]:8080"),
    ("HTTPS://example.com/", "@scheme", "https"),
    ("https://example.com", "@path", "/"),
    ("https://example.com/a%20b/?q", "@path", "/a%20b/"),
    ("https://example.com/a?c=d&e", "@query", "?c=d&e"),
    ("https://example.com/a", "@query", "?"),
    ("https://example.com/a?c=d", "@request-target", "/a?c=d"),
    ("https://example.com", "@request-target", "/"),
    ("https://example.com/a?b", "@target-uri", "https://example.com/a?b"),
]


def test_invalid_port_is_401() -> None:
    with pytest.raises(Unauthorized, match="invalid port"):
        signature_base("GET", "https://example.com:99999/", {}, 'sig1=("@authority")', "sig1")


@pytest.mark.parametrize(("url", "component", "value"), DERIVED)
def test_derived_components(url: str, component: str, value: str) -> None:
    base = signature_base("GET", url, {}, f'sig1=("{component}")', "sig1")
    assert base.splitlines()[0] == f'"{component}": {value}'


@pytest.mark.parametrize(
    ("signature_input", "signature_params"),
    [
        ('sig1=( "@method"  "@path" );  created=1', '("@method" "@path");created=1'),
        ('sig1=("@method");a=1.50;b=?0;c;d=-5;e=tok/x:y', '("@method");a=1.5;b=?0;c;d=-5;e=tok/x:y'),
        ('sig1=("@method");f=:AAE=:;g="q\\"s\\\\";h=0.001', '("@method");f=:AAE=:;g="q\\"s\\\\";h=0.001'),
        ('sig1=("@method");f=:AAE:;i=-12.0', '("@method");f=:AAE=:;i=-12.0'),
        ('other=(), sig1=("@method")   ,\tthird=?1', '("@method")'),
        ('sig1=("@method");created=1, sig1=("@path")', '("@path")'),
    ],
)
def test_signature_params_line_is_canonical(signature_input: str, signature_params: str) -> None:
    """The last line re-serializes the parsed Signature-Input (RFC 9421 §2.3, RFC 8941 §4.1)."""
    base = signature_base("GET", "https://example.com/p", {}, signature_input, "sig1")
    assert base.splitlines()[-1] == f'"@signature-params": {signature_params}'


def test_repeated_field_lines_are_joined() -> None:
    """RFC 9421 §2.1: values of each field line, stripped, joined with ", "."""
    headers = CIMultiDict([("X-Multi", " a "), ("Other", "z"), ("x-multi", "b,  c")])
    base = signature_base("GET", "https://example.com/", headers, 'sig1=("x-multi")', "sig1")
    assert base.splitlines()[0] == '"x-multi": a, b,  c'


def test_signature_base_for_unknown_label_is_401() -> None:
    with pytest.raises(Unauthorized, match="no inner list labelled sig2"):
        signature_base("GET", "https://example.com/", {}, 'sig1=("@method")', "sig2")


# --- Malformed input: always 401, never 500 ----------------------------------------------------------

GARBAGE_INPUT = [
    "",
    " ",
    ",",
    "sig1",
    "sig1=",
    "sig1=(",
    'sig1=("@method"',
    'sig1=("@method")x',
    'sig1=("@method" "@target-uri");created=abc',
    'sig1=("@method");created=1234567890123456789',
    'sig1=("@method");created=1.2345',
    'sig1=("@method");created=-',
    'sig1=("a\\x")',
    'sig1=("unterminated)',
    "sig1=(:!!!:)",
    "sig1=(:AAA",
    "sig1=?2",
    "sig1=(),",
    "SIG1=()",
    "sig1=()\x00",
    "sig1=(\u00e9)",
    "sig1=();;",
    "sig1=();=1",
    "sig1=%",
    'sig1=("\x7f")',
    "1=()",
]

GARBAGE_SIGNATURE = [
    "",
    "sig1",
    "sig1=abc",
    "sig1=:",
    "sig1=:####:",
    "sig1=:AA=A:",
    "sig1=(:AAAA:)",
    "sig1=?1",
]


@pytest.mark.parametrize("value", GARBAGE_INPUT)
async def test_garbage_signature_input_is_401(value: str) -> None:
    headers = signed()
    headers["Signature-Input"] = value
    await refused(verifier(), headers)


@pytest.mark.parametrize("value", GARBAGE_SIGNATURE)
async def test_garbage_signature_is_401(value: str) -> None:
    headers = signed()
    headers["Signature"] = value
    await refused(verifier(), headers)


@pytest.mark.parametrize("field", ["Signature-Input", "Signature", "Content-Digest"])
async def test_random_corruption_is_401_or_accepted(field: str) -> None:
    """Byte-level mutations of a valid field: the verifier accepts or says 401, nothing else."""
    rng = random.Random(field)
    alphabet = '()";=:,*?- \t\\aZ09/+@\x00\u00e9'
    original = signed()
    for _ in range(400):
        headers = dict(original)
        value = list(headers[field])
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(value))
            operation = rng.choice(("replace", "delete", "insert"))
            if operation == "replace":
                value[position] = rng.choice(alphabet)
            elif operation == "delete":
                del value[position]
            else:
                value.insert(position, rng.choice(alphabet))
        headers[field] = "".join(value)
        with contextlib.suppress(Unauthorized):
            await verifier().verify("POST", URL, headers, BODY)


# --- Replay -----------------------------------------------------------------------------------------


async def test_replayed_signature_is_refused() -> None:
    check = verifier()
    headers = signed()
    assert await check.verify("POST", URL, headers, BODY) == WEBID
    assert "replayed" in await refused(check, headers)


async def test_identical_requests_in_the_same_second_differ_by_nonce() -> None:
    check = verifier()
    assert await check.verify("POST", URL, signed(), BODY) == WEBID
    assert await check.verify("POST", URL, signed(), BODY) == WEBID


async def test_refused_request_does_not_burn_the_signature() -> None:
    """A forged copy (wrong body) arriving first must not lock the genuine request out."""
    check = verifier()
    headers = signed()
    await refused(check, headers, body=b"forged")
    assert await check.verify("POST", URL, headers, BODY) == WEBID


async def test_replay_cache_is_bounded_and_never_forgets_unsafely() -> None:
    cache = MemoryReplayCache(max_entries=2)
    assert await cache.claim(b"a", 100, now=0)
    assert await cache.claim(b"b", 101, now=0)
    assert await cache.claim(b"c", 102, now=0)  # evicts "a": claims expiring at <= 100 are now refused
    assert len(cache) == 2
    assert not await cache.claim(b"a", 100, now=0)  # the evicted entry cannot be replayed
    assert not await cache.claim(b"b", 101, now=0)  # still remembered
    assert not await cache.claim(b"d", 100, now=0)  # cannot prove it is not an evicted one
    assert await cache.claim(b"e", 200, now=150)  # expired entries leave first
    assert len(cache) == 1
    assert await cache.claim(b"f", 300, now=150)
    assert not await cache.claim(b"g", 150, now=150)  # full, and it would expire first: refused, no eviction
    assert not await cache.claim(b"e", 200, now=150)


# --- Keys and WebID profiles -------------------------------------------------------------------------


def test_load_pod_key_round_trip() -> None:
    loaded = load_pod_key(KEY_ID, KEY.private_pem)
    assert loaded == KEY
    assert KEY.public_jwk["kty"] == "OKP" and KEY.public_jwk["crv"] == "Ed25519"
    assert "PRIVATE" not in repr(KEY)


def test_key_id_must_be_printable_ascii() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        generate_pod_key("https://alice.example/caf\u00e9#pod-key")


def test_load_pod_key_refuses_other_key_types() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="Ed25519"):
        load_pod_key(KEY_ID, pem)


def profile(turtle: str) -> rdflib.Graph:
    return rdflib.Graph().parse(data=turtle, format="turtle", publicID=DOC)


def test_profile_key_triples_resolve_back_to_the_key() -> None:
    graph = profile(profile_key_triples(WEBID, KEY))
    assert webid_key_from_graph(graph, KEY_ID) == (WEBID, KEY.public_jwk)


def test_a_key_found_in_a_profile_graph_is_remembered_for_that_graph_only() -> None:
    """Every signed request looks its key up in the sender's cached profile graph; the answer is kept
    per graph object, so a profile fetched again (a rotated key) is read afresh."""
    graph = profile(profile_key_triples(WEBID, KEY))
    _, jwk = webid_key_from_graph(graph, KEY_ID)
    jwk["x"] = "tampered by a caller"
    assert webid_key_from_graph(graph, KEY_ID) == (WEBID, KEY.public_jwk)
    rotated = profile(profile_key_triples(WEBID, OTHER_KEY))
    assert webid_key_from_graph(rotated, KEY_ID) == (WEBID, OTHER_KEY.public_jwk)
    assert webid_key_from_graph(graph, KEY_ID) == (WEBID, KEY.public_jwk)
    del graph
    assert (
        webid_key_from_graph(profile(profile_key_triples(WEBID, OTHER_KEY)), KEY_ID)[1]
        == OTHER_KEY.public_jwk
    )
    # a refusal is never remembered: the same graph asked for another key id is checked again
    with pytest.raises(Unauthorized, match="no public key"):
        webid_key_from_graph(rotated, f"{DOC}#other")


def _jwk_literal(jwk: str) -> str:
    return (
        '"'
        + jwk.replace("\\", "\\\\").replace('"', '\\"')
        + '"^^<http://www.w3.org/1999/02/22-rdf-syntax-ns#JSON>'
    )


GOOD_JWK = _jwk_literal(json.dumps({**KEY.public_jwk}))
LISTS = f"<{WEBID}> <{SEC}verificationMethod> <{KEY_ID}> .\n"

PROFILES = [
    # (case, Turtle, key id looked up, expected message)
    (
        "controller does not list the key",
        f"<{KEY_ID}> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> {GOOD_JWK} .",
        KEY_ID,
        "does not list",
    ),
    (
        "key outside the controller's document",
        f"<https://eve.example/keys#k> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> {GOOD_JWK} .\n"
        f"<{WEBID}> <{SEC}verificationMethod> <https://eve.example/keys#k> .",
        "https://eve.example/keys#k",
        "is not in the document of its controller",
    ),
    (
        "jwk not JSON",
        LISTS + f'<{KEY_ID}> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> "{{not json" .',
        KEY_ID,
        "is not JSON",
    ),
    (
        "jwk not an object",
        LISTS + f'<{KEY_ID}> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> "[1, 2]" .',
        KEY_ID,
        "not a JSON object",
    ),
    (
        "jwk with private part",
        LISTS
        + f"<{KEY_ID}> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> "
        + _jwk_literal(json.dumps({**KEY.public_jwk, "d": "secret"}))
        + " .",
        KEY_ID,
        "private key material",
    ),
    (
        "jwk unsupported",
        LISTS
        + f"<{KEY_ID}> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> "
        + _jwk_literal('{"kty":"RSA","n":"AQAB","e":"AQAB"}')
        + " .",
        KEY_ID,
        "unsupported or malformed",
    ),
    ("no jwk", LISTS + f"<{KEY_ID}> <{SEC}controller> <{WEBID}> .", KEY_ID, "no public key"),
    (
        "two jwks",
        LISTS + f'<{KEY_ID}> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> {GOOD_JWK}, "{{}}" .',
        KEY_ID,
        "more than one publicKeyJwk",
    ),
    (
        "no controller",
        LISTS + f"<{KEY_ID}> <{SEC}publicKeyJwk> {GOOD_JWK} .",
        KEY_ID,
        "exactly one controller",
    ),
    (
        "two controllers",
        LISTS + f"<{KEY_ID}> <{SEC}controller> <{WEBID}>, <{DOC}#you> ; <{SEC}publicKeyJwk> {GOOD_JWK} .",
        KEY_ID,
        "exactly one controller",
    ),
    ("another key id", profile_key_triples(WEBID, KEY), f"{DOC}#other", "no public key"),
]


@pytest.mark.parametrize(
    ("turtle", "key_id", "expected"), [p[1:] for p in PROFILES], ids=[p[0] for p in PROFILES]
)
def test_webid_key_from_graph_refuses(turtle: str, key_id: str, expected: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        webid_key_from_graph(profile(turtle), key_id)
    assert expected in caught.value.message


def test_jwk_must_be_a_literal() -> None:
    graph = profile(LISTS + f"<{KEY_ID}> <{SEC}controller> <{WEBID}> ; <{SEC}publicKeyJwk> <{DOC}#jwk> .")
    with pytest.raises(Unauthorized, match="not a literal"):
        webid_key_from_graph(graph, KEY_ID)


def test_profile_key_triples_refuses_unsafe_iris() -> None:
    with pytest.raises(ValueError):
        profile_key_triples("https://alice.example/> <x", KEY)


# --- RFC 9421 Appendix B.2.6: Signing a Request Using ed25519 -----------------------------------------

# Appendix B.1.4, test-key-ed25519.
RFC_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"}
# Appendix B.2, test-request: POST /foo?param=Value&Pet=dog to example.com.
RFC_URL = "https://example.com/foo?param=Value&Pet=dog"
RFC_BODY = b'{"hello": "world"}'
RFC_HEADERS = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+"
    "AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    "Content-Length": "18",
    "Signature-Input": 'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"',
    "Signature": "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1"
    "u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
}
RFC_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@method": POST\n'
    '"@path": /foo\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"content-length": 18\n'
    '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"'
)
RFC_SIGNATURE = base64.b64decode(RFC_HEADERS["Signature"][len("sig-b26=:") : -1])


def test_rfc9421_b26_signature_base_is_exact() -> None:
    base = signature_base("POST", RFC_URL, RFC_HEADERS, RFC_HEADERS["Signature-Input"], "sig-b26")
    assert base == RFC_BASE


def test_rfc9421_b26_signature_is_reproduced() -> None:
    """Ed25519 is deterministic: the RFC's private key over our base yields the published bytes."""
    key = load_pod_key("test-key-ed25519", RFC_PRIVATE_PEM)
    assert key.public_jwk == RFC_JWK
    private = serialization.load_pem_private_key(RFC_PRIVATE_PEM, password=None)
    assert private.sign(RFC_BASE.encode("ascii")) == RFC_SIGNATURE  # type: ignore[call-arg,union-attr]


def test_rfc9421_b26_published_signature_verifies() -> None:
    """The key loader and verification primitive that :meth:`SignatureVerifier.verify` uses accept the
    published signature over our base, and refuse it over a base one byte off."""
    alg, public = _public_key(RFC_JWK)
    assert alg == "ed25519"
    assert _verify_signature(public, RFC_SIGNATURE, RFC_BASE.encode("ascii"))
    assert not _verify_signature(public, RFC_SIGNATURE, RFC_BASE.replace("/foo", "/fop").encode("ascii"))


async def test_rfc9421_b26_request_is_refused_by_our_policy() -> None:
    """Parsing, digest and freshness pass; the example does not cover @target-uri, which we require."""

    async def resolve_rfc(key_id: str) -> tuple[str, dict[str, str]]:
        return "https://example.com/profile#me", RFC_JWK

    check = verifier(1618884473, resolve_key=resolve_rfc, required_tag=None)
    message = await refused(check, RFC_HEADERS, url=RFC_URL, body=RFC_BODY)
    assert message == "Signature: @target-uri not covered"


async def test_rfc9421_b26_sha512_digest_matches_body() -> None:
    assert base64.b64encode(hashlib.sha512(RFC_BODY).digest()).decode() in RFC_HEADERS["Content-Digest"]
