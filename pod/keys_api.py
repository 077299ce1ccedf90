"""Owner-only HTTP management of a pod's API keys, at ``<pod>/.well-known/api-keys``.

- ``GET`` lists the keys (never their secrets: only hashes are stored);
- ``POST {"agent": WebID, "label"?: str}`` mints a key and returns it once;
- ``DELETE <pod>/.well-known/api-keys/<id>`` revokes one.

Only the pod owner, authenticated by Solid-OIDC, a pod signature or (in tests) the WebID header,
may do this; an API key cannot mint or revoke keys, so a leaked key cannot entrench itself.
"""

from __future__ import annotations

import json

from aiohttp import web

from ldp.errors import BadRequest, MethodNotAllowed
from ldp.identifiers import Target
from pod.auth import require_owner
from pod.state import API_KEYS, LOCATOR

KEYS_PATH = "/.well-known/api-keys"


def is_keys_path(path: str) -> bool:
    return path == KEYS_PATH or path.startswith(KEYS_PATH + "/")


async def handle_keys(request: web.Request, target: Target) -> web.StreamResponse:
    locator = request.app[LOCATOR]
    url = locator.url(target.pod, target.path)
    await require_owner(request, target, "manage API keys")
    keys = request.app[API_KEYS]
    if target.path == KEYS_PATH and request.method == "GET":
        return web.json_response([k.as_json() for k in await keys.list(target.pod)])
    if target.path == KEYS_PATH and request.method == "POST":
        try:
            doc = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON object") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("agent"), str):
            raise BadRequest('Expected {"agent": "<WebID of the app>", "label": "<optional>"}')
        label = doc.get("label", "")
        if not isinstance(label, str):
            raise BadRequest("label must be a string")
        key, secret = await keys.create(target.pod, doc["agent"], label)
        location = f"{url}/{key.id}"
        return web.json_response({**key.as_json(), "key": secret}, status=201, headers={"Location": location})
    if target.path != KEYS_PATH and request.method == "DELETE":
        await keys.revoke(target.pod, target.path[len(KEYS_PATH) + 1 :])
        return web.Response(status=204)
    raise MethodNotAllowed(f"{request.method} is not supported on {url}")
