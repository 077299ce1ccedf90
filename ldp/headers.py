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
OWNER_REL = "http://www.w3.org/ns/solid/terms#owner"
# What @inrupt/solid-client's getPodOwner / isPodOwner read (Inrupt's own relation, beside the
# Protocol's), so that apps written with it find the owner too.
POD_OWNER_REL = "http://www.w3.org/ns/solid/terms#podOwner"
# The storage a resource belongs to, the relation @inrupt/solid-client's getWellKnownSolid follows
# to find the storage description when the server's origin has none (every pod of a server in path
# mode shares one origin); the Protocol's own links name the description, not the storage.
STORAGE_REL = str(PIM.storage)
UPDATES_PATH = "/.updates"  # the server's solid-0.1 WebSocket endpoint (pod.legacy_updates)
EXPOSED = (
    "Accept-Patch, Accept-Post, Accept-Put, Allow, Content-Range, ETag, Last-Modified, Link, Location, "
    "Updates-Via, WAC-Allow, WWW-Authenticate, X-Request-Id"
)


_LINKS_INBOX = ("/", "/profile/card")  # resources whose headers name the pod's inbox


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
    before, after, headers = _parts(locator, pod, path, exists)
    headers["Link"] = f'{before}<{locator.url(pod, acl_path(path))}>; rel="acl"{after}'
    return headers


def _parts(locator: PodLocator, pod: str, path: str, exists: bool) -> tuple[str, str, dict[str, str]]:
    """The Link header's text before the ACL's URL and after it, and the other headers."""
    types = [f'<{LDP.Resource}>; rel="type"'] if exists else []
    if exists and is_container(path):
        types.append(f'<{LDP.Container}>; rel="type"')
        types.append(f'<{LDP.BasicContainer}>; rel="type"')
        if path == "/":
            types.append(f'<{PIM.Storage}>; rel="type"')
    after = [storage_links(locator, pod)]
    if path in _LINKS_INBOX:
        after.append(f'<{locator.url(pod, "/inbox/")}>; rel="{LDP.inbox}"')
    if exists and path == "/":
        # Solid Protocol §4.1: "When a server wants to advertise the owner of a storage, the server
        # MUST include the Link header with rel="http://www.w3.org/ns/solid/terms#owner" targeting
        # the URI of the owner in the response of HTTP HEAD or GET requests targeting the root
        # container." The storage description says the same (solid:owner).
        owner = locator.webid(pod)
        after += [f'<{owner}>; rel="{OWNER_REL}"', f'<{owner}>; rel="{POD_OWNER_REL}"']
    headers = {
        "Allow": allow(path, exists),
        "Accept-Patch": ACCEPT_PATCH,
        "Accept-Put": ACCEPT_PUT,
        "Vary": "Accept, Authorization, Origin",
        "Updates-Via": updates_via(locator),
    }
    if exists and is_container(path) and not path.startswith("/.well-known/"):
        headers["Accept-Post"] = ACCEPT_POST
    return "".join(f"{link}, " for link in types), "".join(f", {link}" for link in after), headers


def updates_via(locator: PodLocator) -> str:
    """Where the solid-0.1 live updates of every resource of this server are (``Updates-Via``)."""
    return ("wss" if locator.scheme == "https" else "ws") + f"://{locator.netloc}{UPDATES_PATH}"


def storage_links(locator: PodLocator, pod: str) -> str:
    """The Link header values naming the storage a resource of ``pod`` is in and its description.

    Solid Protocol §4.1: "Servers MUST include the Link header with
    rel="http://www.w3.org/ns/solid/terms#storageDescription" targeting the URI of the storage
    description resource in the response of HTTP GET, HEAD and OPTIONS requests targeting a
    resource in a storage." That holds for a refused request too (401, 403): a client discovers the
    storage's services, notifications among them, before it knows whether it may read.
    """
    return (
        f'<{locator.url(pod, STORAGE_DESCRIPTION_PATH)}>; rel="{STORAGE_DESCRIPTION_REL}", '
        f'<{locator.pod_root(pod)}>; rel="{STORAGE_REL}"'
    )


def created_headers(locator: PodLocator, pod: str, container: str, path: str) -> dict[str, str]:
    """``resource_headers(locator, pod, path, True)`` for ``path``, just created in ``container``
    by POST. The members of one container differ only by their ACL's link, so they are made from
    the container's template: one cache entry per new path (every POST makes one) would push out
    the resources that are read again and again."""
    if path in _LINKS_INBOX or path.startswith("/.well-known/"):
        return resource_headers(locator, pod, path, True)
    before, after, fixed = _member_parts(locator, pod, container, is_container(path))
    acl = locator.member_url(pod, container, acl_path(path[len(container) :]))
    return {"Link": f'{before}<{acl}>; rel="acl"{after}', **fixed}


@lru_cache(maxsize=1024)
def _member_parts(
    locator: PodLocator, pod: str, container: str, as_container: bool
) -> tuple[str, str, dict[str, str]]:
    """``_parts`` of every existing member of ``container`` (documents, or containers): they
    depend on the member's kind alone."""
    return _parts(locator, pod, container + ("x/" if as_container else "x"), True)


@lru_cache(maxsize=4096)
def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)
