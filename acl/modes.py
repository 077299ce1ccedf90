"""Which access modes an operation needs, on which resource (WAC §"Reading and Writing Resources").

The rules, quoted from the WAC specification (Editor's Draft, §4.3):

- "When an operation requests to read a resource, the server MUST match an Authorization allowing
  the acl:Read access privilege on the resource."
- "When an operation requests to create a resource as a member of a container resource, the server
  MUST match an Authorization allowing the acl:Append or acl:Write access privilege on the
  container for new members." — and nothing on the new resource itself. The Community Solid Server
  and the WAC test suite also demand Write on the new resource; we follow the specification's text
  (pinned by a test).
- "When an operation requests to update a resource, the server MUST match an Authorization
  allowing the acl:Append or acl:Write access privilege on the resource." PUT replaces, so it needs
  Write; a PATCH that only inserts needs Append; one that deletes needs Read and Write (it reveals
  whether triples exist).
- "When an operation requests to delete a resource, the server MUST match Authorizations allowing
  the acl:Write access privilege on the resource and the containing container."
- "When an operation requests to read and write an ACL resource, the server MUST match an
  Authorization allowing the acl:Control access privilege on the resource."
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    READ = "read"
    WRITE = "write"
    APPEND = "append"
    CONTROL = "control"


@dataclass(frozen=True)
class Requirement:
    """``modes`` needed on the resource at ``path``; any one of ``any_of`` also satisfies it."""

    path: str
    modes: frozenset[Mode]
    any_of: bool = False  # True: one of the modes suffices (Append or Write to create)


def read(path: str) -> Requirement:
    return Requirement(path, frozenset({Mode.READ}))


def create_in(container: str) -> Requirement:
    return Requirement(container, frozenset({Mode.APPEND, Mode.WRITE}), any_of=True)


def write(path: str) -> Requirement:
    return Requirement(path, frozenset({Mode.WRITE}))


def patch(path: str, inserts_only: bool) -> Requirement:
    if inserts_only:
        return Requirement(path, frozenset({Mode.APPEND, Mode.WRITE}), any_of=True)
    return Requirement(path, frozenset({Mode.READ, Mode.WRITE}))


def control(path: str) -> Requirement:
    return Requirement(path, frozenset({Mode.CONTROL}))
