"""Response headers that Solid clients rely on, built in one place so every status agrees.

Solid Protocol §5.2 ("Servers MUST indicate their support of HTTP methods by responding to HTTP
GET and HEAD requests for the target resource with the Allow header") and the Accept-Patch,
Accept-Post and Accept-Put headers; 404 responses carry the same, describing what may be done to
create the resource (§5.2: "... responding to requests to non-existing resources ...").
"""

from __future__ import annotations

from email.utils import formatdate
from functools import lru_cache

from ldp.identifiers import PodLocator, acl_path, is_container
from ldp.vocab import LDP, PIM

ACCEPT_PATCH = "text/n3, application/sparql-update"
RDF_ACCEPT = "text/turtle, application/ld+json, application/n-triples, text/n3"
ACCEPT_POST = RDF_ACCEPT + ", */*"
ACCEPT_PUT = RDF_ACCEPT + ", */*"
STORAGE_DESCRIPTION_REL = "http://www.w3.org/ns/solid/terms#storageDescription"
STORAGE_DESCRIPTION_PATH = "/.well-known/solid"
EXPOSED = (
    "Accept-Patch, Accept-Post, Accept-Put, Allow, Content-Range, ETag, Last-Modified, Link, Location, "
    "Updates-Via, WAC-Allow, WWW-Authenticate, X-Request-Id"
)


def allow(path: str, exists: bool) -> str:
    methods = ["OPTIONS", "HEAD", "GET"]
    if path.startswith("/.well-known/"):
        return ", ".join(methods)
    if exists and is_container(path):
        methods.append("POST")
    methods += ["PUT", "PATCH"]
    if exists and path != "/":
        methods.append("DELETE")
    return ", ".join(methods)


def resource_headers(locator: PodLocator, pod: str, path: str, exists: bool) -> dict[str, str]:
    """Allow, Accept-* and Link headers for a resource (existing or not): a fresh dict the caller
    may add to. They depend on nothing but the resource's address, and every response carries
    them, so they are built once per resource."""
    return dict(_resource_headers(locator, pod, path, exists))


@lru_cache(maxsize=4096)
def _resource_headers(locator: PodLocator, pod: str, path: str, exists: bool) -> dict[str, str]:
    links = [f'<{LDP.Resource}>; rel="type"']
    if exists and is_container(path):
        links.append(f'<{LDP.Container}>; rel="type"')
        links.append(f'<{LDP.BasicContainer}>; rel="type"')
        if path == "/":
            links.append(f'<{PIM.Storage}>; rel="type"')
    if not exists:
        links = []
    links.append(f'<{locator.url(pod, acl_path(path))}>; rel="acl"')
    links.append(f'<{locator.url(pod, STORAGE_DESCRIPTION_PATH)}>; rel="{STORAGE_DESCRIPTION_REL}"')
    if path in ("/", "/profile/card"):
        links.append(f'<{locator.url(pod, "/inbox/")}>; rel="{LDP.inbox}"')
    headers = {
        "Link": ", ".join(links),
        "Allow": allow(path, exists),
        "Accept-Patch": ACCEPT_PATCH,
        "Accept-Put": ACCEPT_PUT,
        "Vary": "Accept, Authorization, Origin",
    }
    if exists and is_container(path) and not path.startswith("/.well-known/"):
        headers["Accept-Post"] = ACCEPT_POST
    return headers


@lru_cache(maxsize=4096)
def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)
