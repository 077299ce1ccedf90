"""Notification channel tokens (``pod.channel_tokens``): any process of the deployment reads what
another signed, nobody can alter one, and a token of one pod is nothing on another."""

from __future__ import annotations

import base64
import json

import pytest

from pod.channel_tokens import ChannelClaims, ChannelTokens

pytestmark = pytest.mark.backends("sqlite")  # no database involved

SECRETS = {"alice": b"alice's private key", "bob": b"bob's private key"}
CLAIMS = ChannelClaims(
    "0f" * 16, "/notes/a b.ttl", "https://a.example/card#me", "https://app.example", 1.8e9, '"etag"', True
)


async def secret(pod: str) -> bytes | None:
    return SECRETS.get(pod)


async def test_another_process_reads_what_one_signed() -> None:
    token = await ChannelTokens(secret).issue("alice", CLAIMS)
    assert await ChannelTokens(secret).read("alice", token) == CLAIMS
    assert all(c.isalnum() or c in "-_." for c in token)  # a URL path segment as it is


async def test_altered_or_misplaced_tokens_are_nothing() -> None:
    tokens = ChannelTokens(secret)
    token = await tokens.issue("alice", CLAIMS)
    body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload[2] = "https://mallory.example/card#me"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    for bad in (
        f"{forged}.{mac}",  # another agent, same signature
        f"{body}.{mac[:-2]}AA",  # another signature
        body,  # none
        "",
        "a.b",
        "%%%.@@@",
    ):
        assert await tokens.read("alice", bad) is None, bad
    assert await tokens.read("bob", token) is None  # signed for alice
    assert await tokens.read("carol", token) is None  # a pod without a key


async def test_a_pod_without_a_key_has_tokens_of_one_process() -> None:
    first, second = ChannelTokens(secret), ChannelTokens(secret)
    token = await first.issue("carol", CLAIMS)
    assert await first.read("carol", token) == CLAIMS
    assert await second.read("carol", token) is None
