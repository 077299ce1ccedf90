"""The framework's floor: a bare aiohttp application on uvloop, as the pod server runs, with no
middleware, routing of its own, authentication or storage.

``GET /`` answers a short text; ``POST /`` reads the body and answers 201 with a Location and a
small JSON body, the shape of a publish's answer. What the bench measures against it is what any
request costs the server's CPU before the server does anything of its own, so each workload's
figure can be read against it.

    python floor_app.py PORT
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def get(request: web.Request) -> web.Response:
    return web.Response(text="floor\n", content_type="text/plain")


async def post(request: web.Request) -> web.Response:
    await request.read()
    url = "http://127.0.0.1/floor/0123456789abcdef0123456789abcdef"
    return web.json_response({"id": url}, status=201, headers={"Location": url})


def main() -> None:
    app = web.Application()
    app.router.add_get("/", get)
    app.router.add_post("/", post)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
