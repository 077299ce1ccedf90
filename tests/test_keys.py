"""API keys: minted by the owner (CLI and HTTP), stored as hashes, bound to one pod, revocable."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import AS_ALICE, ClientFactory
from tests.databases import Databases, db
from tests.test_cli import run

APP = "https://app.example/profile#app"
BOB = "http://pod.test/bob/profile/card#me"


async def test_owner_manages_keys_over_http(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client(as_agent=None)
    created = await client.post(
        "/alice/.well-known/api-keys", headers=AS_ALICE, json={"agent": APP, "label": "crm"}
    )
    assert created.status == 201
    doc = await created.json()
    assert doc["agent"] == APP and doc["key"].startswith("spk_")
    assert created.headers["Location"] == f"http://pod.test/alice/.well-known/api-keys/{doc['id']}"
    # the secret is not stored, only its hash
    with db(tmp_path) as conn:
        stored = conn.execute("SELECT secret_hash FROM api_keys").fetchall()
    assert len(stored) == 1 and doc["key"].split("_")[-1] not in stored[0][0]
    listed = await (await client.get("/alice/.well-known/api-keys", headers=AS_ALICE)).json()
    assert [k["id"] for k in listed] == [doc["id"]] and "key" not in listed[0]
    # the key authenticates as its agent (here: the app may read nothing yet, so 403 not 401)
    assert (await client.get("/alice/", headers={"x-api-key": doc["key"]})).status == 403
    revoked = await client.delete(f"/alice/.well-known/api-keys/{doc['id']}", headers=AS_ALICE)
    assert revoked.status == 204
    after = await client.get("/alice/", headers={"x-api-key": doc["key"]})
    assert (after.status, (await after.json())["error"]) == (401, "Invalid API Key")


async def test_only_the_owner_manages_keys(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    assert (await client.get("/alice/.well-known/api-keys")).status == 401
    bob = {"Authorization": f"WebID {BOB}"}
    assert (await client.get("/alice/.well-known/api-keys", headers=bob)).status == 403
    assert (await client.post("/alice/.well-known/api-keys", headers=bob, json={"agent": BOB})).status == 403
    bad = await client.post("/alice/.well-known/api-keys", headers=AS_ALICE, json={"agent": "not a url"})
    assert bad.status == 400
    # a key cannot mint keys, even the owner's own
    created = await (
        await client.post(
            "/alice/.well-known/api-keys",
            headers=AS_ALICE,
            json={"agent": "http://pod.test/alice/profile/card#me"},
        )
    ).json()
    via_key = await client.get("/alice/.well-known/api-keys", headers={"x-api-key": created["key"]})
    assert via_key.status == 403


async def test_key_is_bound_to_its_pod(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client(as_agent=None)
    assert (
        run("create", "other", "--data-dir", str(tmp_path), "--base-url", "http://pod.test/").returncode == 0
    )
    result = run(
        "key",
        "create",
        "other",
        "--agent",
        APP,
        "--json",
        "--data-dir",
        str(tmp_path),
        "--base-url",
        "http://pod.test/",
    )
    assert result.returncode == 0, result.stderr
    secret = json.loads(result.stdout)["key"]
    on_alice = await client.get("/alice/profile/card", headers={"x-api-key": secret})
    assert (on_alice.status, (await on_alice.json())["error"]) == (401, "Invalid API Key")
    on_other = await client.get("/other/profile/card", headers={"x-api-key": secret})
    assert on_other.status == 200


def test_cli_key_commands(backend: Databases, tmp_path: Path) -> None:
    common = ["--data-dir", str(tmp_path)]
    assert run("create", "carol", *common).returncode == 0
    created = run("key", "create", "carol", "--agent", APP, "--label", "crm", *common)
    assert created.returncode == 0 and "spk_" in created.stdout
    key_id = created.stdout.split("(id ")[1].split(")")[0]
    listed = run("key", "list", "carol", *common)
    assert f"{key_id}\t{APP}\tactive\tcrm" in listed.stdout
    assert run("key", "revoke", "carol", key_id, *common).returncode == 0
    assert "revoked" in run("key", "list", "carol", *common).stdout
    missing = run("key", "revoke", "carol", "nope", *common)
    assert missing.returncode == 1 and "No API key nope" in missing.stderr
    no_pod = run("key", "create", "zed", "--agent", APP, *common)
    assert no_pod.returncode == 1 and "No pod named zed" in no_pod.stderr
    bad_agent = run("key", "create", "carol", "--agent", "nonsense", *common)
    assert bad_agent.returncode == 1 and "Invalid agent WebID" in bad_agent.stderr
