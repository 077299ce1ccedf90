"""Authentication of one request: the credential extractors applied with the request's URL as sent."""

from __future__ import annotations

from aiohttp import web

from acl.credentials import Credentials
from ldp.errors import Forbidden, Unauthorized
from ldp.identifiers import Target
from pod.state import AUTHENTICATOR, CREDENTIALS, LOCATOR


async def authenticate(request: web.Request, target: Target) -> Credentials:
    """The agent a request speaks for; the body is read first only for a signed request, whose
    digest covers it."""
    full_url = request.app[LOCATOR].request_url(target.pod, request.raw_path)
    headers = request.headers
    body = await request.read() if "Signature-Input" in headers else None
    creds = await request.app[AUTHENTICATOR].authenticate(
        method=request.method, url=full_url, pod=target.pod, headers=headers, body=body
    )
    request[CREDENTIALS] = creds
    return creds


async def require_owner(request: web.Request, target: Target, action: str) -> Credentials:
    """Authenticate and insist on the pod's owner, not acting through an API key: an app's key must
    not let it manage keys or deliveries of the pod it was given to."""
    creds = await authenticate(request, target)
    if creds.webid is None:
        raise Unauthorized(f"Authentication required to {action}")
    if creds.webid != request.app[LOCATOR].webid(target.pod) or creds.scheme == "api-key":
        raise Forbidden(f"Only the pod owner can {action}, and not with an API key")
    return creds
