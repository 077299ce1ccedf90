"""``pod delete``: a pod and all of its data go, with a real server running; its name is retired."""

from __future__ import annotations

from tests.procs import Procs, request

TURTLE = {"Content-Type": "text/turtle"}


def test_delete_a_pod_with_its_data_while_the_server_runs(procs: Procs) -> None:
    server = procs.server("s", demo_pod="alice", unsafe_webid_header=True)
    server.cli("create", "bob").check()
    bob = server.webid("bob")
    key = server.cli("key", "create", "bob", "--agent", "https://app.example/#me", "--json").check().json()
    server.cli("grant", "alice", "--agent", bob, "--publish", "news/daily").check()
    as_bob = {"Authorization": f"WebID {bob}"}
    assert (
        request(
            "PUT", server.url("bob", "notes/a.ttl"), headers={**as_bob, **TURTLE}, body=b"<#a> <#b> 1 ."
        ).status
        == 201
    )
    published = request(
        "POST",
        server.url("bob", "publish/"),
        headers={"x-api-key": key["key"]},
        json_body={"recipient": server.webid("alice"), "topic": "news/daily#add", "data": {"n": 1}},
    )
    assert published.status == 201, published.body
    alice_inbox = request(
        "GET",
        server.url("alice", "inbox/"),
        headers={"Authorization": f"WebID {server.webid('alice')}", "Accept": "application/json"},
    )
    assert len(alice_inbox.json()["contains"]) == 1

    unconfirmed = server.cli("delete", "bob")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert request("GET", server.url("bob", "profile/card")).status == 200  # nothing happened

    done = server.cli("delete", "bob", "--yes", "--json").check().json()
    assert done["name"] == "bob" and done["api_keys"] == 1 and done["deliveries"] >= 1
    assert done["resources"] >= 5  # root, profile, inbox, publish, settings, notes, ...

    # Gone over HTTP, at once, from the running server (no stale cache answers for it): bob's URLs
    # answer as those of a pod that never existed.
    def answers(pod: str) -> list[int]:
        return [
            request("GET", server.url(pod, "profile/card")).status,
            request("GET", server.url(pod, "notes/a.ttl"), headers=as_bob).status,
            request("GET", server.url(pod, ""), headers=as_bob).status,
        ]

    assert answers("bob") == answers("zed")
    assert 200 not in answers("bob")
    again = request(
        "POST",
        server.url("bob", "publish/"),
        headers={"x-api-key": key["key"]},
        json_body={"recipient": server.webid("alice"), "topic": "news/daily#add", "data": {"n": 2}},
    )
    assert again.status in (401, 404), again.body
    assert "bob" not in server.cli("list").check().stdout.split()
    # What other pods hold is theirs: alice keeps the event bob sent her.
    alice_inbox = request(
        "GET",
        server.url("alice", "inbox/"),
        headers={"Authorization": f"WebID {server.webid('alice')}", "Accept": "application/json"},
    )
    assert len(alice_inbox.json()["contains"]) == 1
    with server.db() as conn:
        for table, column in (
            ("resources", "pod"),
            ("api_keys", "pod"),
            ("pod_keys", "pod"),
            ("received", "pod"),
            ("deliveries", "sender"),
        ):
            assert (
                conn.execute(f"SELECT count(*) FROM {table} WHERE {column}=?", ("bob",)).fetchone()[0] == 0
            ), table
        assert conn.execute("SELECT count(*) FROM resources WHERE pod=?", ("alice",)).fetchone()[0] > 0

    # The name is not given out again: alice's ACL still names bob's WebID and grants it.
    reuse = server.cli("create", "bob")
    assert reuse.returncode == 1 and "not given out again" in reuse.stderr
    missing = server.cli("delete", "carol", "--yes")
    assert missing.returncode == 1 and "No pod named carol" in missing.stderr
    # The server goes on serving, and survives a restart with the pod gone.
    server.restart()
    assert answers("bob") == answers("zed")
    assert request("GET", server.url("alice", "profile/card")).status == 200
