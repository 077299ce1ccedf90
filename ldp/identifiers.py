"""Resource identifiers: request URL ↔ (pod name, resource path), and the safety rules for paths.

A resource path is the decoded, normalised path inside a pod, always starting with ``/``; ``/`` is the
storage root. A trailing slash means container (Solid Protocol §3.1: "the slash character ... indicates
a container"). Every URL the server emits is built here from configuration, never from a client's
``Host`` header alone.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from ldp.errors import BadRequest, NotFound

UrlMode = Literal["path", "subdomain"]

POD_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Characters that may stay literal in an emitted path (RFC 3986 pchar minus '%', plus '/').
_SAFE = "/:@!$&'()*+,;=-._~"
# Unicode general categories refused in paths: controls, format characters (zero-width, bidi
# overrides), surrogates, private use and unassigned code points. They make paths that look alike
# but differ, or that render misleadingly.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
ACL_SUFFIX = ".acl"
_MEMO_LIMIT = 8192


def is_container(path: str) -> bool:
    return path.endswith("/")


def parent_of(path: str) -> str | None:
    """The container holding ``path``; None for the storage root."""
    if path == "/":
        return None
    trimmed = path[:-1] if path.endswith("/") else path
    return trimmed[: trimmed.rindex("/") + 1]


def ancestors(path: str) -> list[str]:
    """Containers from the root down to the parent of ``path``."""
    chain: list[str] = []
    parent = parent_of(path)
    while parent is not None:
        chain.append(parent)
        parent = parent_of(parent)
    chain.reverse()
    return chain


def name_of(path: str) -> str:
    """Last segment, without a container's trailing slash."""
    trimmed = path.rstrip("/")
    return trimmed[trimmed.rfind("/") + 1 :]


def is_acl(path: str) -> bool:
    return path.endswith(ACL_SUFFIX) and not path.endswith("/")


def acl_path(path: str) -> str:
    """Path of the ACL resource governing ``path`` (advertised with ``Link: rel="acl"``)."""
    return path if is_acl(path) else path + ACL_SUFFIX


def subject_of_acl(path: str) -> str:
    """Path of the resource an ACL resource belongs to."""
    return path[: -len(ACL_SUFFIX)]


def check_segment(segment: str) -> None:
    """Refuse a decoded path segment that could escape its pod or confuse a reader."""
    if segment in (".", ".."):
        raise BadRequest("Path segments '.' and '..' are not allowed")
    if "\\" in segment:
        raise BadRequest("Backslashes are not allowed in paths")
    if unicodedata.normalize("NFC", segment) != segment:
        raise BadRequest("Path is not in Unicode normalisation form C")
    for ch in segment:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            raise BadRequest(f"Path contains a disallowed character U+{ord(ch):04X}")


def decode_path(raw_path: str) -> str:
    """Decode a raw (percent-encoded) request path, refusing anything that could escape a pod.

    Encoded slashes and backslashes are refused rather than decoded, so that one resource has
    exactly one path; empty segments (``//``) likewise.
    """
    raw = raw_path.split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith("/"):
        raise BadRequest("Request path must be absolute")
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise BadRequest("Encoded slashes are not allowed in paths")
    try:
        path = unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("Path is not valid UTF-8") from None
    segments = path.split("/")
    for i, segment in enumerate(segments[1:], start=1):
        if segment == "":
            if i != len(segments) - 1:
                raise BadRequest("Empty path segments are not allowed")
            continue
        check_segment(segment)
    return path


def encode_path(path: str) -> str:
    return quote(path, safe=_SAFE)


@dataclass(frozen=True)
class Target:
    """What a request addresses: a pod and a resource path inside it."""

    pod: str
    path: str


class PodLocator:
    """Maps between URLs and (pod, path) for one URL mode.

    ``path`` mode: ``{base}{name}/...`` (``http://127.0.0.1:8080/alice/``), for local use.
    ``subdomain`` mode: ``{scheme}://{name}.{base host}/...``, for production.
    """

    def __init__(self, base_url: str, mode: UrlMode = "path") -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base URL must be an absolute http(s) URL: {base_url}")
        self.base_url = base_url
        self.mode: UrlMode = mode
        self.scheme = parts.scheme
        self.netloc = parts.netloc.lower()
        self.base_path = parts.path
        # url() and locate() run several times per request on the same few addresses; both are
        # pure, so their answers are kept (bounded: emptied when full).
        self._urls: dict[tuple[str, str], str] = {}
        self._targets: dict[tuple[str | None, str], Target] = {}

    def pod_root(self, pod: str) -> str:
        if self.mode == "subdomain":
            return f"{self.scheme}://{pod}.{self.netloc}{self.base_path}"
        return f"{self.base_url}{pod}/"

    def url(self, pod: str, path: str) -> str:
        key = (pod, path)
        found = self._urls.get(key)
        if found is None:
            if len(self._urls) >= _MEMO_LIMIT:
                self._urls.clear()
            found = self._urls[key] = self.pod_root(pod) + encode_path(path[1:])
        return found

    def member_url(self, pod: str, container: str, name: str) -> str:
        """``url(pod, container + name)`` for a resource just created, without keeping it: each
        new path would take a place among the addresses that are asked for again and again.
        Quoting works character by character, so the container's URL and the name's quoting join."""
        return self.url(pod, container) + encode_path(name)

    def request_url(self, pod: str, raw_path: str) -> str:
        """The absolute URL of a request as sent (raw path and query), on the origin configuration
        gives the pod — what signatures and DPoP proofs must name."""
        if self.mode == "subdomain":
            return f"{self.scheme}://{pod}.{self.netloc}{raw_path}"
        return f"{self.scheme}://{self.netloc}{raw_path}"

    def webid(self, pod: str) -> str:
        return self.url(pod, "/profile/card") + "#me"

    def locate(self, host: str | None, raw_path: str) -> Target:
        """Find the pod and resource path a request addresses; NotFound outside any pod."""
        key = (host if self.mode == "subdomain" else None, raw_path)
        found = self._targets.get(key)
        if found is None:
            if len(self._targets) >= _MEMO_LIMIT:
                self._targets.clear()
            found = self._targets[key] = self._locate(host, raw_path)
        return found

    def _locate(self, host: str | None, raw_path: str) -> Target:
        path = decode_path(raw_path)
        if self.mode == "subdomain":
            host_name = (host or "").lower()
            suffix = "." + self.netloc
            if not host_name.endswith(suffix):
                raise NotFound("No pod at this host")
            pod = host_name[: -len(suffix)]
            if not POD_NAME_RE.match(pod) or not path.startswith(self.base_path):
                raise NotFound("No pod at this host")
            return Target(pod, "/" + path[len(self.base_path) :])
        if not path.startswith(self.base_path):
            raise NotFound("Not under this server's base path")
        rest = path[len(self.base_path) :]
        pod, slash, inner = rest.partition("/")
        if not slash or not POD_NAME_RE.match(pod):
            raise NotFound("No pod at this path")
        return Target(pod, "/" + inner)

    def target_of_url(self, url: str) -> Target | None:
        """Inverse of :meth:`url` for absolute URLs this server emits; None for foreign URLs."""
        parts = urlsplit(url)
        if parts.scheme != self.scheme:
            return None
        try:
            return (
                self.locate(parts.netloc, parts.path or "/")
                if self.mode == "subdomain"
                else (self.locate(None, parts.path) if parts.netloc.lower() == self.netloc else None)
            )
        except (BadRequest, NotFound):
            return None
