"""Credential extractors: each turns a request into the agent it speaks for, or nothing.

- ``x-api-key``: an app's key, bound to one pod; yields the key's agent WebID.
- ``Authorization: DPoP <token>`` + ``DPoP`` proof: Solid-OIDC.
- ``Signature-Input`` / ``Signature``: another pod, by HTTP Message Signatures (RFC 9421).
- ``Authorization: WebID <uri>``: test-only, refused unless the server runs with
  ``--unsafe-webid-header``.

Credentials that are present but invalid are a 401 naming what failed, never a silent downgrade to
anonymous: a client that meant to authenticate must learn why it did not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDictProxy

from acl.apikeys import ApiKeys
from ldp.errors import Unauthorized


@dataclass(frozen=True, slots=True)
class Credentials:
    webid: str | None = None
    client: str | None = None  # the app: an API key's agent, or a Solid-OIDC client_id
    issuer: str | None = None
    scheme: str = "anonymous"  # api-key | dpop | signature | webid-header | anonymous
    key_id: str | None = None  # the API key used, if any


ANONYMOUS = Credentials()


class DpopVerifying(Protocol):
    async def verify(self, *, method: str, url: str, authorization: str, dpop: str | None) -> object: ...


class SignatureVerifying(Protocol):
    async def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> str: ...


class Authenticator:
    def __init__(
        self,
        api_keys: ApiKeys,
        dpop: DpopVerifying | None = None,
        signatures: SignatureVerifying | None = None,
        unsafe_webid_header: bool = False,
    ) -> None:
        self.api_keys = api_keys
        self.dpop = dpop
        self.signatures = signatures
        self.unsafe_webid_header = unsafe_webid_header

    async def authenticate(
        self, *, method: str, url: str, pod: str, headers: Mapping[str, str], body: bytes | None
    ) -> Credentials:
        """``url`` is the request URL built from configuration; ``body`` is needed for signatures."""
        api_key = headers.get("x-api-key")
        if api_key is not None:
            key = await self.api_keys.verify(api_key, pod)
            return Credentials(webid=key.agent, client=key.agent, scheme="api-key", key_id=key.id)
        authorization = headers.get("Authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            scheme = scheme.lower()
            if scheme == "dpop" and self.dpop is not None:
                # Several DPoP headers are joined so the verifier refuses them (RFC 9449 §4.3: "there is
                # not more than one DPoP HTTP request header field").
                proofs = headers.getall("DPoP", []) if isinstance(headers, CIMultiDictProxy) else []
                proof = ", ".join(proofs) if len(proofs) > 1 else headers.get("DPoP")
                identity = await self.dpop.verify(
                    method=method, url=url, authorization=authorization, dpop=proof
                )
                return Credentials(
                    webid=getattr(identity, "webid", None),
                    client=getattr(identity, "client_id", None),
                    issuer=getattr(identity, "issuer", None),
                    scheme="dpop",
                )
            if scheme == "webid":
                if not self.unsafe_webid_header:
                    raise Unauthorized("The WebID authorization scheme is disabled on this server")
                webid = value.strip()
                if not webid.startswith(("http://", "https://")):
                    raise Unauthorized("WebID authorization: not an http(s) URI")
                return Credentials(webid=webid, scheme="webid-header")
            if scheme == "bearer":
                raise Unauthorized("Bearer tokens are not accepted: use Solid-OIDC with DPoP")
            raise Unauthorized(f"Unsupported authorization scheme: {scheme}")
        if "Signature-Input" in headers or "Signature" in headers:
            if self.signatures is None:
                raise Unauthorized("Signed requests are not accepted by this server")
            webid = await self.signatures.verify(method, url, headers, body or b"")
            return Credentials(webid=webid, scheme="signature")
        return ANONYMOUS
