"""Pod creation: a storage root, a WebID profile, an inbox, the publish container and ACL templates.

Templates live in ``data/templates`` and are filled with absolute URLs built from configuration,
so a pod's documents never depend on the URL a request happened to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from acl.signatures import PodKey, generate_pod_key, profile_key_triples
from ldp.accessor import StorageAccessor, Write
from ldp.errors import BadRequest
from ldp.identifiers import POD_NAME_RE, PodLocator

TEMPLATES = Path(__file__).resolve().parent.parent / "data" / "templates"
RESERVED_NAMES = frozenset({"well-known", "health", "metrics", "admin", "api", "www", "static"})


@dataclass(frozen=True)
class PodInfo:
    name: str
    url: str
    webid: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "url": self.url, "webid": self.webid}


def pod_info(locator: PodLocator, name: str) -> PodInfo:
    return PodInfo(name, locator.pod_root(name), locator.webid(name))


def check_pod_name(name: str) -> None:
    if not POD_NAME_RE.match(name) or name in RESERVED_NAMES:
        raise BadRequest(
            f"Invalid pod name {name!r}: use 1-63 lower-case letters, digits and inner hyphens"
            + (" (reserved name)" if name in RESERVED_NAMES else "")
        )


def _fill(template: str, values: dict[str, str]) -> bytes:
    return Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values).encode()


def initial_resources(
    locator: PodLocator, name: str, oidc_issuer: str = "", key: PodKey | None = None
) -> list[Write]:
    def url(path: str) -> str:
        return locator.url(name, path)

    values = {
        "root": url("/"),
        "card": url("/profile/card"),
        "webid": locator.webid(name),
        "inbox": url("/inbox/"),
        "name": name,
        "issuer": (
            f"<{locator.webid(name)}> <http://www.w3.org/ns/solid/terms#oidcIssuer> <{oidc_issuer}> .\n"
            if oidc_issuer
            else ""
        )
        + (profile_key_triples(locator.webid(name), key) if key is not None else ""),
    }
    turtle = "text/turtle"
    return [
        Write("/.acl", turtle, _fill("root.acl.ttl", values)),
        Write("/profile/", turtle, b""),
        Write("/profile/card", turtle, _fill("profile-card.ttl", values)),
        Write("/profile/card.acl", turtle, _fill("profile-card.acl.ttl", values)),
        Write("/inbox/", turtle, b""),
        Write("/inbox/.acl", turtle, _fill("inbox.acl.ttl", values)),
        Write("/publish/", turtle, b""),
    ]


def pod_key_id(locator: PodLocator, name: str) -> str:
    """The pod's signing key is a node in its WebID profile document."""
    return locator.url(name, "/profile/card") + "#pod-key"


async def create_pod(
    accessor: StorageAccessor, locator: PodLocator, name: str, oidc_issuer: str = ""
) -> PodInfo:
    """Create pod ``name`` atomically, with a fresh signing key published in its WebID profile;
    Conflict when it exists, BadRequest for a bad name."""
    check_pod_name(name)
    key = generate_pod_key(pod_key_id(locator, name))
    resources = initial_resources(locator, name, oidc_issuer, key)
    await accessor.create_pod(name, resources, (key.key_id, key.private_pem))
    return pod_info(locator, name)
