"""The resource store: every Solid Protocol rule that does not depend on the storage backend.

Handlers call the store; the store validates, applies the LDP and Solid rules, and asks the
accessor for atomic, precondition-guarded writes. A write that loses a race with another writer
(VersionMismatch) is re-evaluated from a fresh read, so no update is lost and client
preconditions (If-Match) are judged against the state actually replaced.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rdflib import Graph, URIRef

from ldp.accessor import ABSENT, Record, StorageAccessor, VersionMismatch, Write
from ldp.errors import BadRequest, Conflict, MethodNotAllowed, NotFound, UnsupportedMediaType
from ldp.identifiers import PodLocator, check_segment, is_acl, is_container, parent_of
from ldp.names import new_name
from ldp.patch import Patch, parse_patch
from ldp.preconditions import NO_CONDITIONS, Conditions, check_write, etag
from ldp.quota import NO_QUOTA
from ldp.rdf import is_rdf_type, parse_rdf, serialize_rdf, validate_rdf
from ldp.vocab import LDP, PIM, RDF, SOLID

T = TypeVar("T")
_RETRIES = 50
_SLUG_RE = re.compile(r"^[\w.~-]{1,200}$", re.UNICODE)
RESERVED_PREFIX = "/.well-known/"
CONTAINER_TYPE = "text/turtle"

# Told of each committed write: (pod, path, "Create" | "Update" | "Delete", new ETag or None).
ChangeHook = Callable[[str, str, str, str | None], None]


def _refuse_reserved(path: str) -> None:
    if path.startswith(RESERVED_PREFIX):
        raise MethodNotAllowed(f"{RESERVED_PREFIX} is reserved for the server")


def _refuse_containment(graph: Graph, url: str) -> None:
    """Solid Protocol §5.3: "Servers MUST NOT allow HTTP PUT or PATCH on a container to update its
    containment triples; if the server receives such a request, it MUST respond with a 409 status
    code." Also applied to POST, for the same reason."""
    if (URIRef(url), LDP.contains, None) in graph:
        raise Conflict("Containment triples (ldp:contains) are managed by the server and cannot be written")


class ResourceStore:
    def __init__(self, accessor: StorageAccessor, locator: PodLocator, cache_size: int = 2048) -> None:
        self.accessor = accessor
        self.locator = locator
        self._graphs: OrderedDict[tuple[str, str, str], Graph] = OrderedDict()
        self._representations: OrderedDict[tuple[str, str, str, str], bytes] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[tuple[str, str], list[Any]] = {}
        self.on_change: ChangeHook | None = None
        self.quota = NO_QUOTA  # pod_quota (ldp.quota), set by the application
        # Each adds its triples to a pod's storage description (e.g. the notification service).
        self.describers: list[Callable[[str, Graph], None]] = []

    def _changed(self, pod: str, path: str, kind: str, record: Record | None = None) -> None:
        if self.on_change is not None:
            state = None if record is None else etag(record.version, record.content_type)
            self.on_change(pod, path, kind, state)

    # -- reading ---------------------------------------------------------------------------------
    async def read(self, pod: str, path: str) -> Record:
        record = await self.accessor.get(pod, path)
        if record is None:
            raise NotFound(f"{self.locator.url(pod, path)} not found")
        return record

    def graph_of(self, pod: str, record: Record) -> Graph:
        """Parsed triples of an RDF record, cached by version (callers must not mutate the result)."""
        key = (pod, record.path, record.version)
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            return graph
        graph = parse_rdf(record.body, record.content_type, self.locator.url(pod, record.path))
        self._graphs[key] = graph
        if len(self._graphs) > self._cache_size:
            self._graphs.popitem(last=False)
        return graph

    def representation(self, pod: str, record: Record, media_type: str) -> bytes:
        """An RDF document in another RDF syntax than it was stored in, cached by version."""
        key = (pod, record.path, record.version, media_type)
        body = self._representations.get(key)
        if body is None:
            url = self.locator.url(pod, record.path)
            body = serialize_rdf(self.graph_of(pod, record), media_type, url)
            self._representations[key] = body
            if len(self._representations) > self._cache_size:
                self._representations.popitem(last=False)
        else:
            self._representations.move_to_end(key)
        return body

    def storage_description(self, pod: str, root: str, media_type: str) -> bytes:
        """Solid Protocol §4.1.1 storage description: names the storage and its owner. The
        description itself comes first in every syntax (see ``serialize_rdf``)."""
        graph = Graph()
        desc = URIRef(self.locator.url(pod, "/.well-known/solid"))
        graph.add((desc, RDF.type, SOLID.StorageDescription))
        graph.add((URIRef(root), RDF.type, PIM.Storage))
        graph.add((URIRef(root), SOLID.owner, URIRef(self.locator.webid(pod))))
        for describe in self.describers:
            describe(pod, graph)
        return serialize_rdf(graph, media_type, str(desc), first=desc)

    def container_head(self, pod: str, record: Record) -> Graph:
        """A container's own triples plus the server-managed ones, without ``ldp:contains``."""
        url = URIRef(self.locator.url(pod, record.path))
        graph = Graph()
        for triple in self.graph_of(pod, record):
            graph.add(triple)
        graph.add((url, RDF.type, LDP.Container))
        graph.add((url, RDF.type, LDP.BasicContainer))
        graph.add((url, RDF.type, LDP.Resource))
        if record.path == "/":
            graph.add((url, RDF.type, PIM.Storage))
        return graph

    # -- writing ---------------------------------------------------------------------------------
    async def _retry(self, pod: str, path: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run a read-check-write ``attempt`` until its write is not overtaken by another writer.

        Writers of one resource in this process queue on a lock, so they never waste attempts on
        each other; the version check still catches writers in other processes.
        """
        key = (pod, path)
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1  # users of this lock, so it is dropped only when nobody holds or awaits it
        try:
            async with entry[0]:
                for _ in range(_RETRIES):
                    try:
                        return await attempt()
                    except VersionMismatch:
                        continue
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]
        raise Conflict("The resource is being modified concurrently; try again")

    def _validated_body(self, pod: str, path: str, content_type: str, body: bytes) -> tuple[str, bytes]:
        """Check a representation before it is stored; returns what to store."""
        url = self.locator.url(pod, path)
        if is_container(path):
            if body.strip() == b"":
                return CONTAINER_TYPE, b""
            if not is_rdf_type(content_type):
                raise UnsupportedMediaType(f"A container's representation must be RDF, not {content_type}")
            graph = parse_rdf(body, content_type, url)
            _refuse_containment(graph, url)
            return CONTAINER_TYPE, serialize_rdf(graph, CONTAINER_TYPE, url)
        if is_acl(path) and not is_rdf_type(content_type):
            raise UnsupportedMediaType("An ACL resource must be RDF (text/turtle)")
        if is_rdf_type(content_type):
            validate_rdf(body, content_type, url)  # refuse what we could not serve back as RDF
        return content_type, body

    async def put(
        self, pod: str, path: str, content_type: str, body: bytes, cond: Conditions = NO_CONDITIONS
    ) -> tuple[Record, bool]:
        _refuse_reserved(path)
        ctype, stored = self._validated_body(pod, path, content_type, body)

        new_containers: list[str] = []

        async def attempt() -> tuple[Record, bool]:
            nonlocal new_containers
            current = await self.accessor.get(pod, path)
            check_write(current, cond)
            if current is None:
                new_containers = await self._new_containers(pod, path)
            await self.quota.check_replace(pod, current, stored)
            expect = ABSENT if current is None else current.version
            return await self.accessor.write(pod, Write(path, ctype, stored, expect))

        record, created = await self._retry(pod, path, attempt)
        self._created_containers(pod, new_containers if created else [])
        self._changed(pod, path, "Create" if created else "Update", record)
        return record, created

    async def post(
        self, pod: str, container: str, slug: str | None, as_container: bool, content_type: str, body: bytes
    ) -> Record:
        parent = await self.read(pod, container)
        if not is_container(parent.path):
            raise MethodNotAllowed("POST is only allowed on containers")
        _refuse_reserved(container)
        name = self._name_from_slug(slug)
        for _ in range(_RETRIES):
            candidate = name or new_name()
            path = container + candidate + ("/" if as_container else "")
            ctype, stored = self._validated_body(pod, path, content_type, body)
            await self.quota.check(pod, len(stored))
            try:
                if name and await self._taken(pod, path):
                    raise VersionMismatch("slug taken")
                write = Write(path, ctype, stored, ABSENT)
                if name:
                    record, _ = await self.accessor.write(pod, write)
                else:  # a name just drawn: creates arriving together can be stored in one go
                    record = await self.accessor.create(pod, write)
                self._changed(pod, path, "Create", record)
                return record
            except (VersionMismatch, Conflict):
                name = None  # Solid Protocol §5.3: the server chooses a name when the Slug is taken
        raise Conflict("Could not allocate a name for the new resource")

    async def _taken(self, pod: str, path: str) -> bool:
        twin = path[:-1] if is_container(path) else path + "/"
        return (
            await self.accessor.get(pod, path) is not None or await self.accessor.get(pod, twin) is not None
        )

    @staticmethod
    def _name_from_slug(slug: str | None) -> str | None:
        """A Slug is a hint (RFC 5023 §9.7): used when it is a single safe segment, ignored otherwise."""
        if not slug:
            return None
        from urllib.parse import unquote

        name = unquote(slug).strip().strip("/")
        if not name or not _SLUG_RE.match(name) or name.startswith(".") or name.endswith(".acl"):
            return None
        try:
            check_segment(name)
        except BadRequest:
            return None
        return name

    async def patch(
        self,
        pod: str,
        path: str,
        content_type: str,
        body: bytes,
        cond: Conditions = NO_CONDITIONS,
        parsed: Patch | None = None,
    ) -> tuple[Record, bool]:
        """Apply an N3 Patch or SPARQL Update; ``parsed`` saves re-parsing one already checked."""
        _refuse_reserved(path)
        url = self.locator.url(pod, path)
        patch = parsed or parse_patch(body, content_type, url)

        new_containers: list[str] = []

        async def attempt() -> tuple[Record, bool]:
            nonlocal new_containers
            current = await self.accessor.get(pod, path)
            check_write(current, cond)
            if current is None:
                new_containers = await self._new_containers(pod, path)
                graph, ctype = Graph(), "text/turtle"
            elif not is_rdf_type(current.content_type):
                raise UnsupportedMediaType(f"Cannot PATCH a non-RDF resource ({current.content_type})")
            else:
                graph, ctype = self.graph_of(pod, current), current.content_type
            result = patch.apply(graph)
            if is_container(path):
                _refuse_containment(result, url)
            stored = serialize_rdf(result, ctype, url)
            await self.quota.check_replace(pod, current, stored)
            expect = ABSENT if current is None else current.version
            return await self.accessor.write(pod, Write(path, ctype, stored, expect))

        record, created = await self._retry(pod, path, attempt)
        self._created_containers(pod, new_containers if created else [])
        self._changed(pod, path, "Create" if created else "Update", record)
        return record, created

    async def _new_containers(self, pod: str, path: str) -> list[str]:
        """The containers a create of ``path`` makes on its way (its missing ancestors, root
        first), for the change hook; read only when someone listens."""
        if self.on_change is None or is_acl(path):
            return []
        missing: list[str] = []
        parent = parent_of(path)
        while parent is not None and parent != "/" and await self.accessor.get(pod, parent) is None:
            missing.append(parent)
            parent = parent_of(parent)
        return missing[::-1]

    def _created_containers(self, pod: str, containers: list[str]) -> None:
        # Solid Protocol §5.3: "Servers MUST create intermediate containers and include
        # corresponding containment triples in container representations derived from the URI path
        # component of PUT and PATCH requests." Those are creations too, and reported as such.
        for container in containers:
            self._changed(pod, container, "Create")

    async def delete(self, pod: str, path: str, cond: Conditions = NO_CONDITIONS) -> None:
        if path == "/":
            raise MethodNotAllowed("The storage root cannot be deleted")
        _refuse_reserved(path)

        async def attempt() -> None:
            current = await self.read(pod, path)
            check_write(current, cond)
            await self.accessor.delete(pod, path, current.version)

        await self._retry(pod, path, attempt)
        self._changed(pod, path, "Delete")

    async def parent_exists(self, pod: str, path: str) -> bool:
        parent = parent_of(path)
        return parent is not None and await self.accessor.get(pod, parent) is not None
