"""Web Access Control evaluation with a parsed-ACL cache.

The effective ACL of a resource is its own ACL resource if it exists, otherwise the nearest
ancestor container's, whose ``acl:default`` authorizations then apply (WAC §5 "Effective ACL
Resource"). ACL documents are parsed once and kept in memory; the cache is emptied whenever any ACL
changes, which the storage layer records as an ever-increasing ACL epoch. Checking that epoch is
one indexed read, so a change made by another process (``pod grant`` on the command line, another
server on the same database) takes effect on the next request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from rdflib import Graph, URIRef
from rdflib.namespace import FOAF, RDF

from acl.modes import Mode, Requirement
from ldp.accessor import Record
from ldp.identifiers import PodLocator, acl_path, ancestors, is_acl, subject_of_acl
from ldp.rdf import parse_rdf
from ldp.vocab import ACL

_MODE_OF = {ACL.Read: Mode.READ, ACL.Write: Mode.WRITE, ACL.Append: Mode.APPEND, ACL.Control: Mode.CONTROL}
ALL_MODES = frozenset(Mode)
PUBLIC = str(FOAF.Agent)
AUTHENTICATED = str(ACL.AuthenticatedAgent)


@dataclass(frozen=True, slots=True)
class Authorization:
    modes: frozenset[Mode]
    agents: frozenset[str] = frozenset()
    agent_classes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    origins: frozenset[str] = frozenset()
    access_to: frozenset[str] = frozenset()
    defaults: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ParsedAcl:
    path: str
    authorizations: tuple[Authorization, ...]
    # Authorizations naming each agent, and those any agent may match (classes, groups), so a check
    # looks only at what can concern the requester: a topic ACL with a thousand subscribers'
    # grants costs the same per check as one with a single grant.
    by_agent: Mapping[str, tuple[Authorization, ...]] = field(default_factory=dict)
    open_to_many: tuple[Authorization, ...] = ()

    def candidates(self, webid: str | None) -> tuple[Authorization, ...]:
        named = self.by_agent.get(webid, ()) if webid is not None else ()
        return named + self.open_to_many if named else self.open_to_many


def parse_acl(graph: Graph, path: str) -> ParsedAcl:
    """Authorizations of one ACL document. ``acl:Write`` implies ``acl:Append`` (WAC §4.2)."""
    auths: list[Authorization] = []
    subjects = set(graph.subjects(RDF.type, ACL.Authorization))
    for node in subjects:
        modes = {
            _MODE_OF[m] for m in graph.objects(node, ACL.mode) if isinstance(m, URIRef) and m in _MODE_OF
        }
        if Mode.WRITE in modes:
            modes.add(Mode.APPEND)

        def values(pred: URIRef, node: object = node) -> frozenset[str]:
            return frozenset(str(o) for o in graph.objects(node, pred))  # type: ignore[arg-type]

        auths.append(
            Authorization(
                modes=frozenset(modes),
                agents=values(ACL.agent),
                agent_classes=values(ACL.agentClass),
                groups=values(ACL.agentGroup),
                origins=frozenset(o.rstrip("/") for o in values(ACL.origin)),
                access_to=values(ACL.accessTo),
                defaults=values(ACL.default) | values(ACL.defaultForNew),
            )
        )
    by_agent: dict[str, list[Authorization]] = {}
    for auth in auths:
        for agent in auth.agents:
            by_agent.setdefault(agent, []).append(auth)
    return ParsedAcl(
        path,
        tuple(auths),
        {agent: tuple(found) for agent, found in by_agent.items()},
        tuple(a for a in auths if a.agent_classes or a.groups),
    )


class AclSource(Protocol):
    """What WAC needs from storage: ACL documents and the epoch that changes with any of them."""

    async def acl_epoch(self) -> int: ...

    async def get(self, pod: str, path: str) -> Record | None: ...


GroupMembers = Callable[[str], Awaitable[frozenset[str]]]


@dataclass(frozen=True)
class Permissions:
    """Modes held on one resource by the requesting agent and by the public (for ``WAC-Allow``)."""

    user: frozenset[Mode]
    public: frozenset[Mode]

    def header(self) -> str:
        return _wac_allow(self.user, self.public)


@lru_cache(maxsize=256)  # a handful of distinct mode pairs exist
def _wac_allow(user: frozenset[Mode], public: frozenset[Mode]) -> str:
    def fmt(modes: frozenset[Mode]) -> str:
        return " ".join(m.value for m in Mode if m in modes)

    return f'user="{fmt(user)}",public="{fmt(public)}"'


_MODES_LIMIT = 65536


@dataclass
class _Cache:
    """What was worked out under one ACL epoch: parsed ACL documents and, for decisions that
    depended on nothing else (no group lists, which change on their own), the modes themselves."""

    epoch: int = -1
    acls: dict[tuple[str, str], ParsedAcl | None] = field(default_factory=dict)
    modes: dict[tuple[str, str, str | None, str | None], frozenset[Mode]] = field(default_factory=dict)


class Wac:
    """Computes permissions; ``owner_of(pod)`` always keeps Control of their pod (issue rule)."""

    def __init__(self, source: AclSource, locator: PodLocator, groups: GroupMembers | None = None) -> None:
        self.source = source
        self.locator = locator
        self.groups = groups
        self._cache = _Cache()

    async def _acl(self, pod: str, path: str) -> ParsedAcl | None:
        key = (pod, path)
        if key in self._cache.acls:
            return self._cache.acls[key]
        found = await self.source.get(pod, path)
        parsed = None
        if found is not None:
            graph = parse_rdf(found.body, found.content_type, self.locator.url(pod, path))
            parsed = parse_acl(graph, path)
        self._cache.acls[key] = parsed
        return parsed

    @property
    def epoch(self) -> int:
        """The ACL epoch the cache was filled at (see ``refresh``)."""
        return self._cache.epoch

    async def refresh(self) -> None:
        """Drop cached ACLs if any ACL changed since they were read (one cheap read per request)."""
        epoch = await self.source.acl_epoch()
        if epoch != self._cache.epoch:
            self._cache = _Cache(epoch)

    async def effective(self, pod: str, path: str) -> tuple[ParsedAcl | None, str, bool]:
        """(ACL, URL its authorizations must name, inherited?) for the resource at ``path``."""
        own = await self._acl(pod, acl_path(path))
        if own is not None:
            return own, self.locator.url(pod, path), False
        for container in reversed(ancestors(path)):
            acl = await self._acl(pod, acl_path(container))
            if acl is not None:
                return acl, self.locator.url(pod, container), True
        return None, "", True

    async def modes(self, pod: str, path: str, webid: str | None, origin: str | None) -> frozenset[Mode]:
        """Modes ``webid`` (None: unauthenticated) holds on ``path``, for a request from ``origin``."""
        cache = self._cache
        key = (pod, path, webid, origin)
        found = cache.modes.get(key)
        if found is None:
            found, pure = await self._modes(pod, path, webid, origin)
            if pure and cache is self._cache:
                if len(cache.modes) >= _MODES_LIMIT:
                    cache.modes.clear()
                cache.modes[key] = found
        return found

    async def _modes(
        self, pod: str, path: str, webid: str | None, origin: str | None
    ) -> tuple[frozenset[Mode], bool]:
        """The modes, and whether they follow from the ACL documents alone (no group list was read),
        so that they hold until the ACL epoch changes."""
        if is_acl(path):
            # WAC §4.3: reading or writing an ACL resource needs Control on the resource it governs.
            subject, pure = await self._modes(pod, subject_of_acl(path), webid, origin)
            return (ALL_MODES if Mode.CONTROL in subject else frozenset()), pure
        acl, url, inherited = await self.effective(pod, path)
        granted: set[Mode] = set()
        pure = True
        if acl is not None:
            for auth in acl.candidates(webid):
                if not (url in auth.defaults if inherited else url in auth.access_to):
                    continue
                if auth.modes <= granted:
                    continue
                # WAC §"Web Application Authorization" applies "when an HTTP request includes the
                # Origin header": an authorization naming origins then grants only to those. A
                # request without Origin does not come from a browser app and is not restricted.
                # Authorizations naming no origin grant to any origin: requiring acl:origin on
                # every grant would lock every browser app out of pods with the default ACLs.
                if auth.origins and origin is not None and origin.rstrip("/") not in auth.origins:
                    continue
                if self._matches_directly(auth, webid):
                    granted |= auth.modes
                elif auth.groups and webid is not None and self.groups is not None:
                    pure = False  # group lists change without any ACL write
                    if await self._in_group(auth, webid):
                        granted |= auth.modes
        if webid is not None and webid == self.locator.webid(pod):
            granted.add(Mode.CONTROL)  # the owner can always repair their ACLs
        return frozenset(granted), pure

    @staticmethod
    def _matches_directly(auth: Authorization, webid: str | None) -> bool:
        if PUBLIC in auth.agent_classes:
            return True
        if webid is None:
            return False
        return webid in auth.agents or AUTHENTICATED in auth.agent_classes

    async def _in_group(self, auth: Authorization, webid: str) -> bool:
        assert self.groups is not None
        for group in auth.groups:
            if webid in await self.groups(group):
                return True
        return False

    async def permissions(self, pod: str, path: str, webid: str | None, origin: str | None) -> Permissions:
        user = await self.modes(pod, path, webid, origin)
        public = user if webid is None else await self.modes(pod, path, None, origin)
        return Permissions(user, public)

    async def allows(
        self, pod: str, requirements: Iterable[Requirement], webid: str | None, origin: str | None
    ) -> bool:
        for req in requirements:
            held = await self.modes(pod, req.path, webid, origin)
            if not (held & req.modes if req.any_of else req.modes <= held):
                return False
        return True
