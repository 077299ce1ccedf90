"""Authentication of one request: the credential extractors applied with the request's URL as sent."""

from __future__ import annotations

from aiohttp import web

from acl.credentials import Credentials
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
