"""Notification channel tokens that every server process can read.

A channel's ``receiveFrom`` URL carries a token, the credential its socket connects with (browsers
cannot send an Authorization header with a WebSocket). With ``--workers N`` the kernel hands the
socket's connection to any process, and behind a load balancer to any machine, not necessarily the
one that answered the subscription; so the token carries the channel itself (its id, topic, agent,
origin, end and ``state``), signed with a key only the deployment has, and any process that receives
it can open the channel. The key is derived from the pod's own signing key, which every process
reads from the database: a token of one pod is worthless on another.

What a signature cannot express, that a channel was ended early (``DELETE`` of its id, or a
single-use channel whose socket closed), the processes tell each other (``pod.change_relay``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

_CONTEXT = b"solid notification channel token v1"
_SIGNATURE_BYTES = 18  # 144 bits: forging one is out of reach


@dataclass(frozen=True)
class ChannelClaims:
    """What a token says about its channel."""

    id: str  # hex; the channel's URL is built from it
    path: str  # the topic resource in the pod
    webid: str
    origin: str | None
    end_at: float  # epoch seconds
    state: str | None
    single_use: bool


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ChannelTokens:
    """Signs and reads the tokens of every pod of this server.

    ``pod_secret(pod)`` gives the pod's private signing key (PEM) or None; a pod without one (none
    is created without one) gets a key of this process alone, so its channels work on this process.
    """

    def __init__(self, pod_secret: Callable[[str], Awaitable[bytes | None]]) -> None:
        self._pod_secret = pod_secret
        self._keys: dict[str, bytes] = {}
        self._fallback = secrets.token_bytes(32)

    async def _key(self, pod: str) -> bytes:
        key = self._keys.get(pod)
        if key is None:
            secret = await self._pod_secret(pod)
            key = hmac.new(secret or self._fallback, _CONTEXT + pod.encode(), hashlib.sha256).digest()
            if len(self._keys) >= 4096:
                self._keys.clear()
            self._keys[pod] = key
        return key

    async def issue(self, pod: str, claims: ChannelClaims) -> str:
        payload = [
            claims.id,
            claims.path,
            claims.webid,
            claims.origin,
            claims.end_at,
            claims.state,
            claims.single_use,
        ]
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(await self._key(pod), body.encode(), hashlib.sha256).digest()[:_SIGNATURE_BYTES]
        return f"{body}.{_b64(mac)}"

    async def read(self, pod: str, token: str) -> ChannelClaims | None:
        """The channel ``token`` names, or None when it is not one this deployment signed for ``pod``
        (its expiry is the caller's to check)."""
        body, dot, mac = token.partition(".")
        if not dot or not body or not mac or len(token) > 8192:
            return None
        try:
            given = _unb64(mac)
            expected = hmac.new(await self._key(pod), body.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(given, expected[:_SIGNATURE_BYTES]):
                return None
            fields = json.loads(_unb64(body))
            ident, path, webid, origin, end_at, state, single_use = fields
        except (ValueError, TypeError, UnicodeDecodeError):
            return None
        return ChannelClaims(ident, path, webid, origin, float(end_at), state, bool(single_use))
