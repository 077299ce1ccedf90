"""Web Access Control through real HTTP.

The permission table: method x target (exists or not) x modes held on the parent container and on
the target x expected status. Bob's modes come from the container's own ACL: ``acl:accessTo`` for
the container, ``acl:default`` for its members.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ldp.accessor import Write
from pod.backend import open_backend
from pod.state import API_KEYS
from tests.conftest import AS_ALICE, ClientFactory, make_config

POD = "http://pod.test/alice/"
BOB = "http://pod.test/bob/profile/card#me"
AS_BOB = {"Authorization": f"WebID {BOB}"}
TTL = {"Content-Type": "text/turtle"}
PREFIXES = "@prefix acl: <http://www.w3.org/ns/auth/acl#>. @prefix foaf: <http://xmlns.com/foaf/0.1/>.\n"
MODES = {"R": "acl:Read", "W": "acl:Write", "A": "acl:Append", "C": "acl:Control"}
INSERT = "INSERT DATA { <#a> <#b> <#c> . }"
DELETE_INSERT = "DELETE DATA { <#x> <#y> <#z> . }; INSERT DATA { <#a> <#b> <#c> . }"
SPARQL = {"Content-Type": "application/sparql-update"}


def authorization(
    name: str,
    modes: str,
    *,
    access_to: str = "",
    default: str = "",
    who: str = f"acl:agent <{BOB}>",
    extra: str = "",
) -> str:
    if not modes:
        return ""
    mode_list = ", ".join(MODES[m] for m in modes)
    target = f"acl:accessTo <{access_to}>" if access_to else f"acl:default <{default}>"
    return f"<#{name}> a acl:Authorization; {who}; {target}; acl:mode {mode_list}{extra}.\n"


def container_acl(parent_modes: str, member_modes: str) -> str:
    container = POD + "c/"
    return (
        PREFIXES
        + authorization("parent", parent_modes, access_to=container)
        + authorization("members", member_modes, default=container)
    )


async def setup(client: TestClient[Any, Any], parent: str, member: str, exists: bool) -> None:
    owner = {**TTL, **AS_ALICE}
    assert (await client.put("/alice/c/", headers=owner, data="")).status == 201
    if exists:
        assert (await client.put("/alice/c/r", headers=owner, data="<#x> <#y> <#z> .")).status == 201
    acl = await client.put("/alice/c/.acl", headers=owner, data=container_acl(parent, member))
    assert acl.status == 201, await acl.text()


# (id, method, exists, modes on parent, modes on member, extra headers, body, expected status)
TABLE: list[tuple[str, str, bool, str, str, dict[str, str], str | None, int]] = [
    ("read with Read", "GET", True, "", "R", {}, None, 200),
    ("read without Read", "GET", True, "RWAC", "WA", {}, None, 403),
    ("read missing with Read is 404", "GET", False, "", "R", {}, None, 404),
    ("read missing without Read hides existence", "GET", False, "R", "", {}, None, 403),
    ("head with Read", "HEAD", True, "", "R", {}, None, 200),
    # creation: Append or Write on the container, per WAC's text; nothing on the new resource
    ("create by PUT with container Append only", "PUT", False, "A", "", TTL, "", 201),
    ("create by PUT with container Write", "PUT", False, "W", "", TTL, "", 201),
    ("create by PUT without container access", "PUT", False, "R", "RWA", TTL, "", 403),
    ("create by PATCH with container Append", "PATCH", False, "A", "", SPARQL, INSERT, 201),
    ("create by PATCH without container access", "PATCH", False, "", "RWA", SPARQL, INSERT, 403),
    ("create by POST with Append", "POST", True, "A", "", TTL, "", 201),
    ("create by POST with Write", "POST", True, "W", "", TTL, "", 201),
    ("create by POST with Read only", "POST", True, "R", "RWA", TTL, "", 403),
    # replacing needs Write on the resource
    ("replace with Write", "PUT", True, "", "W", TTL, "", 204),
    ("replace with Append only", "PUT", True, "RWA", "A", TTL, "", 403),
    ("replace with container Write only", "PUT", True, "W", "R", TTL, "", 403),
    # PATCH: inserts need Append; deletes need Read and Write
    ("insert-only patch with Append", "PATCH", True, "", "A", SPARQL, INSERT, 204),
    ("insert-only patch with Write", "PATCH", True, "", "W", SPARQL, INSERT, 204),
    ("insert-only patch with Read", "PATCH", True, "RWA", "R", SPARQL, INSERT, 403),
    ("deleting patch with Read+Write", "PATCH", True, "", "RW", SPARQL, DELETE_INSERT, 204),
    ("deleting patch with Write only", "PATCH", True, "", "W", SPARQL, DELETE_INSERT, 403),
    ("deleting patch with Append+Read", "PATCH", True, "", "RA", SPARQL, DELETE_INSERT, 403),
    ("malformed patch without access is 403", "PATCH", True, "", "R", SPARQL, "NOT SPARQL", 403),
    ("malformed patch with access is 400", "PATCH", True, "", "RW", SPARQL, "NOT SPARQL", 400),
    # DELETE: Write on the resource and on its container
    ("delete with Write on both", "DELETE", True, "W", "W", {}, None, 204),
    ("delete with Write on resource only", "DELETE", True, "R", "W", {}, None, 403),
    ("delete with Write on container only", "DELETE", True, "W", "R", {}, None, 403),
    ("options needs nothing", "OPTIONS", True, "", "", {}, None, 204),
]


@pytest.mark.parametrize(
    "method,exists,parent,member,headers,body,status",
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
async def test_permission_table(
    make_client: ClientFactory,
    method: str,
    exists: bool,
    parent: str,
    member: str,
    headers: dict[str, str],
    body: str | None,
    status: int,
) -> None:
    client = await make_client(as_agent=None)
    await setup(client, parent, member, exists)
    path = "/alice/c/" if method == "POST" else "/alice/c/r"
    response = await client.request(method, path, headers={**headers, **AS_BOB}, data=body)
    assert response.status == status, await response.text()
    if status == 403:
        assert BOB in (await response.json())["error"]


async def test_anonymous_gets_401_with_challenge(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    await setup(client, "", "R", True)
    response = await client.get("/alice/c/r")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("DPoP")
    assert "Authentication required" in (await response.json())["error"]
    # and learns nothing about existence
    missing = await client.get("/alice/c/nothing")
    assert missing.status == 401


async def test_refused_reads_name_the_storage(make_client: ClientFactory) -> None:
    """Solid Protocol §4.1: the storageDescription link is on every GET/HEAD of a resource in a
    storage, a refused one too, so that a client finds the storage's services (notifications) for
    a resource it may not read; the storage link is the one @inrupt/solid-client follows."""
    client = await make_client(as_agent=None)
    await setup(client, "", "", True)
    links = (
        f'<{POD}.well-known/solid>; rel="http://www.w3.org/ns/solid/terms#storageDescription"',
        f'<{POD}>; rel="http://www.w3.org/ns/pim/space#storage"',
    )
    for method in ("GET", "HEAD"):
        for headers, status in (({}, 401), (AS_BOB, 403)):
            response = await client.request(method, "/alice/c/r", headers=headers)
            assert response.status == status
            for link in links:
                assert link in response.headers.get("Link", ""), (method, status, response.headers)
    # A refused write says nothing more than before.
    refused = await client.put("/alice/c/r", data="", headers={**TTL, **AS_BOB})
    assert refused.status == 403 and "Link" not in refused.headers


async def test_wac_allow_header(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    await setup(client, "", "RW", True)
    response = await client.get("/alice/c/r", headers=AS_BOB)
    assert response.headers["WAC-Allow"] == 'user="read write append",public=""'
    owner = await client.head("/alice/c/r", headers=AS_ALICE)
    assert owner.status == 403  # the owner's own ACL left her out of c/: she keeps Control only
    acl = await client.get("/alice/c/.acl", headers=AS_ALICE)
    assert acl.status == 200
    assert acl.headers["WAC-Allow"] == 'user="read write append control",public=""'


@pytest.mark.parametrize(
    "who,agent,status",
    [
        ("acl:agentClass foaf:Agent", None, 200),
        ("acl:agentClass acl:AuthenticatedAgent", BOB, 200),
        ("acl:agentClass acl:AuthenticatedAgent", None, 401),
        (f"acl:agent <{BOB}>", BOB, 200),
        ("acl:agent <http://pod.test/carol/profile/card#me>", BOB, 403),
        (f"acl:agentGroup <{POD}groups/friends#group>", BOB, 200),
        (f"acl:agentGroup <{POD}groups/friends#other>", BOB, 403),
        ("acl:agentGroup <http://127.0.0.1:9/unreachable#group>", BOB, 403),
    ],
)
async def test_agent_kinds(make_client: ClientFactory, who: str, agent: str | None, status: int) -> None:
    client = await make_client(as_agent=None)
    owner = {**TTL, **AS_ALICE}
    await client.put(
        "/alice/groups/friends",
        headers=owner,
        data=f"<#group> a <http://www.w3.org/2006/vcard#Group>; "
        f"<http://www.w3.org/2006/vcard/ns#hasMember> <{BOB}> .",
    )
    await client.put(
        "/alice/groups/.acl",
        headers=owner,
        data=PREFIXES + f"<#o> a acl:Authorization; acl:agent <{POD}profile/card#me>; "
        f"acl:accessTo <{POD}groups/>; acl:default <{POD}groups/>; acl:mode acl:Read, acl:Write.",
    )
    await client.put("/alice/c/r", headers=owner, data="")
    await client.put(
        "/alice/c/.acl", headers=owner, data=PREFIXES + authorization("x", "R", default=POD + "c/", who=who)
    )
    headers = {"Authorization": f"WebID {agent}"} if agent else {}
    response = await client.get("/alice/c/r", headers=headers)
    assert response.status == status


@pytest.mark.parametrize(
    "origin,status", [(None, 200), ("https://app.example", 200), ("https://evil.example", 403)]
)
async def test_origin_restricted_authorization(
    make_client: ClientFactory, origin: str | None, status: int
) -> None:
    client = await make_client(as_agent=None)
    owner = {**TTL, **AS_ALICE}
    await client.put("/alice/c/r", headers=owner, data="")
    await client.put(
        "/alice/c/.acl",
        headers=owner,
        data=PREFIXES
        + authorization("x", "R", default=POD + "c/", extra="; acl:origin <https://app.example>"),
    )
    headers = {**AS_BOB, **({"Origin": origin} if origin else {})}
    response = await client.get("/alice/c/r", headers=headers)
    # An authorization naming origins applies only to requests from them; without an Origin
    # header the request is not from a browser app, and the agent's own grant applies.
    assert response.status == (200 if origin in (None, "https://app.example") else 403) == status


async def test_inherited_from_grandparent_default(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    owner = {**TTL, **AS_ALICE}
    await client.put("/alice/a/b/c/doc", headers=owner, data="")
    await client.put(
        "/alice/a/.acl", headers=owner, data=PREFIXES + authorization("r", "R", default=POD + "a/")
    )
    assert (await client.get("/alice/a/b/c/doc", headers=AS_BOB)).status == 200
    # accessTo on a/ alone is not inherited
    await client.put(
        "/alice/a/.acl", headers=owner, data=PREFIXES + authorization("r", "R", access_to=POD + "a/")
    )
    assert (await client.get("/alice/a/b/c/doc", headers=AS_BOB)).status == 403
    assert (await client.get("/alice/a/", headers=AS_BOB)).status == 200


async def test_acl_needs_control_and_must_parse(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    await setup(client, "RW", "RW", True)
    assert (await client.get("/alice/c/.acl", headers=AS_BOB)).status == 403
    assert (await client.put("/alice/c/.acl", headers={**TTL, **AS_BOB}, data=PREFIXES)).status == 403
    bad = await client.put("/alice/c/.acl", headers={**TTL, **AS_ALICE}, data="<#a> acl:mode .")
    assert bad.status == 400
    # not stored: Bob's access is unchanged
    assert (await client.get("/alice/c/r", headers=AS_BOB)).status == 200
    await setup_control(client)
    assert (await client.get("/alice/c/.acl", headers=AS_BOB)).status == 200


async def setup_control(client: TestClient[Any, Any]) -> None:
    response = await client.put(
        "/alice/c/.acl",
        headers={**TTL, **AS_ALICE},
        data=PREFIXES + authorization("p", "C", access_to=POD + "c/"),
    )
    assert response.status == 204


async def test_new_pod_defaults(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    assert (await client.get("/alice/profile/card")).status == 200
    assert (await client.get("/alice/")).status == 401
    assert (await client.get("/alice/publish/")).status == 401
    assert (await client.get("/alice/inbox/")).status == 401
    assert (await client.get("/alice/", headers=AS_BOB)).status == 403
    posted = await client.post(
        "/alice/inbox/",
        headers={"Content-Type": "application/ld+json"},
        data='{"@id": "", "http://schema.org/name": "hi"}',
    )
    assert posted.status == 201
    assert (await client.get(posted.headers["Location"].removeprefix("http://pod.test"))).status == 401
    assert (await client.put("/alice/profile/card", headers={**TTL, **AS_BOB}, data="")).status == 403
    for path in ("/alice/", "/alice/publish/", "/alice/inbox/", "/alice/profile/card"):
        assert (await client.get(path, headers=AS_ALICE)).status == 200, path


async def test_acl_change_by_another_process_takes_effect(make_client: ClientFactory, tmp_path: Any) -> None:
    client = await make_client(as_agent=None)
    await setup(client, "", "", True)
    assert (await client.get("/alice/c/r", headers=AS_BOB)).status == 403
    other = await open_backend(make_config(tmp_path))  # as `pod grant` would, from another process
    try:
        await other.accessor.write(
            "alice", Write("/alice/c/.acl"[6:], "text/turtle", container_acl("", "R").encode())
        )
    finally:
        await other.close()
    assert (await client.get("/alice/c/r", headers=AS_BOB)).status == 200


async def test_api_key_authenticates_its_agent(make_client: ClientFactory) -> None:
    client = await make_client(as_agent=None)
    await setup(client, "", "R", True)
    keys = client.server.app[API_KEYS]
    _, secret = await keys.create("alice", BOB)
    assert (await client.get("/alice/c/r", headers={"x-api-key": secret})).status == 200
    wrong = await client.get("/alice/c/r", headers={"x-api-key": secret + "x"})
    assert (wrong.status, (await wrong.json())["error"]) == (401, "Invalid API Key")
    empty = await client.get("/alice/c/r", headers={"x-api-key": ""})
    assert (empty.status, (await empty.json())["error"]) == (401, "No API key provided")
