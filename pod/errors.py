"""The one place where errors become HTTP responses.

Domain errors (``ldp.errors.PodError``) carry their status; aiohttp's own HTTP exceptions (for
example 413 from the body size limit) are mapped the same way; anything else is a 500 whose details
go to the log, not to the client. The body names the problem: JSON ``{"error": ...}`` by default, or
Turtle when the client asked for Turtle rather than JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler

from ldp.conneg import parse_accept
from ldp.errors import PodError
from pod.state import CONFIG

log = logging.getLogger("pod.errors")
_HTTP = "http://www.w3.org/2011/http#"
_RDFS = "http://www.w3.org/2000/01/rdf-schema#"


def _wants_turtle(accept: str | None) -> bool:
    for media, q in parse_accept(accept):
        if q <= 0:
            continue
        if media in ("application/json", "application/ld+json", "*/*", "application/*"):
            return False
        if media in ("text/turtle", "text/n3", "text/*"):
            return True
    return False


def error_response(
    request: web.Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    if _wants_turtle(request.headers.get("Accept")):
        literal = json.dumps(message)  # a JSON string is a valid Turtle string literal
        body = f"[] <{_HTTP}statusCodeValue> {status} ;\n   <{_RDFS}comment> {literal} .\n"
        response = web.Response(status=status, text=body, content_type="text/turtle")
    else:
        response = web.json_response({"error": message}, status=status)
    response.headers.update(headers or {})
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PodError as exc:
        return error_response(request, exc.status, exc.message, exc.headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].max_body_size
        return error_response(request, 413, f"Request body is larger than the limit of {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(
            request,
            exc.status,
            exc.reason,
            {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")},
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(request, 500, "Internal server error")
