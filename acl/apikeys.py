"""API keys for apps: random, stored only as hashes, each bound to one pod and one agent WebID.

A key reads ``spk_<id>_<secret>``. The id finds the record; the secret is compared by its SHA-256
hash in constant time. The secret is 256 random bits, so a fast hash is enough: there is no
password-sized space to brute-force, and a slow hash would cost every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from ldp.errors import BadRequest, NotFound, Unauthorized

PREFIX = "spk_"
NO_KEY = "No API key provided"
INVALID_KEY = "Invalid API Key"


@dataclass(frozen=True)
class ApiKey:
    id: str
    pod: str
    agent: str
    created: float
    revoked: bool = False
    label: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "pod": self.pod,
            "agent": self.agent,
            "created": self.created,
            "revoked": self.revoked,
            "label": self.label,
        }


class KeyStorage(Protocol):
    async def insert_key(self, key: ApiKey, secret_hash: str) -> None: ...

    async def key_record(self, key_id: str) -> tuple[ApiKey, str] | None: ...

    async def list_keys(self, pod: str) -> list[ApiKey]: ...

    async def revoke_key(self, pod: str, key_id: str) -> bool: ...


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_agent(agent: str) -> None:
    if not agent.startswith(("https://", "http://")) or any(c.isspace() for c in agent):
        raise BadRequest(f"Invalid agent WebID: {agent!r}")


class ApiKeys:
    def __init__(self, storage: KeyStorage) -> None:
        self.storage = storage

    async def create(self, pod: str, agent: str, label: str = "") -> tuple[ApiKey, str]:
        """Mint a key; the returned secret is shown once and never stored."""
        _check_agent(agent)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(key_id, pod, agent, time.time(), False, label)
        await self.storage.insert_key(key, _hash(secret))
        return key, f"{PREFIX}{key_id}_{secret}"

    async def verify(self, presented: str, pod: str) -> ApiKey:
        """The key's record; Unauthorized for an empty, unknown, revoked or other-pod key."""
        presented = presented.strip()
        if not presented:
            raise Unauthorized(NO_KEY)
        if not presented.startswith(PREFIX):
            raise Unauthorized(INVALID_KEY)
        key_id, sep, secret = presented[len(PREFIX) :].partition("_")
        if not sep:
            raise Unauthorized(INVALID_KEY)
        found = await self.storage.key_record(key_id)
        if found is None:
            raise Unauthorized(INVALID_KEY)
        key, secret_hash = found
        if not hmac.compare_digest(secret_hash, _hash(secret)) or key.revoked or key.pod != pod:
            raise Unauthorized(INVALID_KEY)
        return key

    async def list(self, pod: str) -> list[ApiKey]:
        return await self.storage.list_keys(pod)

    async def revoke(self, pod: str, key_id: str) -> None:
        if not await self.storage.revoke_key(pod, key_id):
            raise NotFound(f"No API key {key_id} in pod {pod}")
