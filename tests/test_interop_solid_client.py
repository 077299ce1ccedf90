"""Interoperability with ``@inrupt/solid-client``, the library most Solid apps are written with.

``tests/interop/scenario.mjs`` logs in as bob with ``@inrupt/solid-client-authn-node`` by the client
credentials grant, so every request it makes carries a DPoP-bound access token and proof, and then
runs one library call sequence per command this test sends (the set-up: ``tests.interop_support``).
Between commands the test reads the server over plain HTTP - as bob, as alice and anonymously - so
that what the library reports is checked against what the server actually stored and enforces. RDF
is compared as graphs.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.compare import isomorphic

from ldp.vocab import ACL, LDP, RDF
from tests.interop_support import (
    INTEROP,
    World,
    acl_url_of,
    anonymous,
    issuer,  # noqa: F401 - a fixture
    node_packages,  # noqa: F401 - a fixture
    requests_of,
    running_world,
    turtle,
)
from tests.oidc_issuer import OidcIssuer
from tests.procs import Procs, Response, request
from tests.rdf_exact import exact_literal

SCRIPT = INTEROP / "scenario.mjs"
SCHEMA = Namespace("http://schema.org/")
XSD = Namespace("http://www.w3.org/2001/XMLSchema#")
FOAF_AGENT = "http://xmlns.com/foaf/0.1/Agent"
TOPIC = "realestate/contact#add"
EVENT = {"type": "AddAction", "object": {"type": "Contact", "name": "Bruce Wayne"}}

# The HTTP surface is the same on every backend, which the rest of the suite covers; one run keeps
# this test within its time budget.
pytestmark = pytest.mark.backends("sqlite")


# -- reading the server -------------------------------------------------------------------------------


def wac_allow(response: Response) -> dict[str, set[str]]:
    """``WAC-Allow: user="read write",public="read"`` as {"user": {...}, "public": {...}}."""
    result: dict[str, set[str]] = {}
    for part in response.headers["wac-allow"].split(","):
        group, _, modes = part.strip().partition("=")
        result[group.strip()] = set(modes.strip('"').split())
    return result


Rule = tuple[str, str, str, str]  # (agent IRI or "class:" + class IRI, target, accessTo | default, mode)


def rules(acl: Graph) -> set[Rule]:
    """What an ACL grants, independent of how its authorizations are named or grouped."""
    found: set[Rule] = set()
    for auth in set(acl.subjects(RDF.type, ACL.Authorization)):
        who = [str(a) for a in acl.objects(auth, ACL.agent)]
        who += [f"class:{c}" for c in acl.objects(auth, ACL.agentClass)]
        for how in ("accessTo", "default"):
            for target in acl.objects(auth, ACL[how]):
                for mode in acl.objects(auth, ACL.mode):
                    found.update((w, str(target), how, str(mode).rpartition("#")[2]) for w in who)
    return found


def grants(who: str, target: str, how: str, *modes: str) -> set[Rule]:
    return {(who, target, how, mode) for mode in modes}


@pytest.fixture
def world(node_packages: Path, issuer: OidcIssuer, procs: Procs, tmp_path: Path) -> Iterator[World]:  # noqa: F811
    with running_world(SCRIPT, issuer, procs, tmp_path) as running:
        yield running


def all_answered_2xx(answer: Mapping[str, Any]) -> None:
    """Every request of a successful step but the library's own probes (a HEAD/GET that may 404)."""
    for sent in answer["requests"]:
        if sent["method"] in ("PUT", "POST", "PATCH", "DELETE"):
            assert 200 <= sent["status"] < 300, sent


def test_the_pod_root_names_its_owner(world: World) -> None:
    """solid-client finds a pod's owner in the root container's Link header."""
    root = world.scenario.run("podOwner", url=world.url(""))
    assert root["result"] == {"owner": world.server.webid("bob"), "isOwner": True}
    below = world.scenario.run("podOwner", url=world.url("profile/card"))
    assert below["result"] == {"owner": None, "isOwner": None}  # only the root says


# -- 1. resources -------------------------------------------------------------------------------------


def expected_note(doc: str, *, renamed: bool) -> Graph:
    """The note as solid-client writes it: literals in the lexical forms it sends (an integer as a
    bare ``3``, a dateTime with milliseconds and ``Z``, a date with ``Z``)."""
    note, author = URIRef(doc + "#note"), URIRef(doc + "#author")
    graph = Graph()
    graph.add((note, RDF.type, SCHEMA.NoteDigitalDocument))
    graph.add((note, SCHEMA.name, Literal("Renamed note" if renamed else "First note")))
    graph.add((note, SCHEMA.text, Literal("Bonjour", lang="fr")))
    graph.add((note, SCHEMA.position, exact_literal("4" if renamed else "3", XSD.integer)))
    graph.add((note, SCHEMA.dateCreated, exact_literal("2024-05-01T12:00:00.000Z", XSD.dateTime)))
    modified = "2024-06-01T08:30:00.000Z" if renamed else "2024-05-01T12:00:00.000Z"
    graph.add((note, SCHEMA.dateModified, exact_literal(modified, XSD.dateTime)))
    graph.add((note, SCHEMA.startDate, exact_literal("2024-01-03Z" if renamed else "2024-01-02Z", XSD.date)))
    graph.add((note, SCHEMA.author, author))
    graph.add((author, SCHEMA.name, Literal("Bob")))
    if renamed:
        graph.add((note, SCHEMA.text, Literal("Hello", lang="en")))
    else:
        graph.add((note, SCHEMA.url, URIRef("https://example.org/page")))
    return graph


def test_resources_through_solid_client(world: World) -> None:
    """Create, read, PATCH, POST with a slug, list, files, delete - each checked on the server."""
    run, bob = world.scenario.run, world.bob
    container, doc = world.url("notes/"), world.url("notes/first.ttl")

    created = run("createNote", container=container, doc=doc)
    assert created["result"] == {"containerUrl": container, "containerIsContainer": True, "savedUrl": doc}
    all_answered_2xx(created)
    listing = turtle(bob("GET", container, headers={"Accept": "text/turtle"}), container)
    assert (URIRef(container), RDF.type, LDP.BasicContainer) in listing
    assert set(listing.objects(URIRef(container), LDP.contains)) == {URIRef(doc)}
    stored = turtle(bob("GET", doc, headers={"Accept": "text/turtle"}), doc)
    assert isomorphic(stored, expected_note(doc, renamed=False)), stored.serialize(format="turtle")

    read = run("readNote", doc=doc)["result"]
    assert read["sourceUrl"] == doc
    assert read["note"] == {
        "types": [str(SCHEMA.NoteDigitalDocument)],
        "name": "First note",
        "textFr": "Bonjour",
        "textEn": None,
        "texts": {"fr": ["Bonjour"]},
        "position": 3,
        "created": "2024-05-01T12:00:00.000Z",
        "modified": ["2024-05-01T12:00:00.000Z"],
        "startDates": ["2024-01-02"],
        "url": "https://example.org/page",
        "author": doc + "#author",
    }

    modified = run("modifyNote", doc=doc)
    patches = requests_of(modified, "PATCH")
    assert len(patches) == 2, modified["requests"]
    for patch in patches:
        assert patch["url"] == doc
        assert patch["contentType"] in ("application/sparql-update", "text/n3"), patch
        assert 200 <= patch["status"] < 300, patch
    assert modified["result"]["note"] == {
        "types": [str(SCHEMA.NoteDigitalDocument)],
        "name": "Renamed note",
        "textFr": "Bonjour",
        "textEn": "Hello",
        "texts": {"en": ["Hello"], "fr": ["Bonjour"]},
        "position": 4,
        "created": "2024-05-01T12:00:00.000Z",
        "modified": ["2024-06-01T08:30:00.000Z"],  # one value: the old one was deleted
        "startDates": ["2024-01-03"],
        "url": None,
        "author": doc + "#author",
    }
    stored = turtle(bob("GET", doc, headers={"Accept": "text/turtle"}), doc)
    assert isomorphic(stored, expected_note(doc, renamed=True)), stored.serialize(format="turtle")

    posted = run("saveInContainer", container=container, slug="second")
    post, post_box = requests_of(posted, "POST")
    new_url, box = posted["result"]["url"], posted["result"]["childContainer"]
    assert post["slug"] == "second" and post["status"] == 201 and post["location"] == new_url
    assert new_url.startswith(container) and "second" in new_url.removeprefix(container)
    assert post_box["status"] == 201 and post_box["location"] == box
    assert box.startswith(container) and box.endswith("/") and "second-box" in box
    assert posted["result"]["contained"] == sorted([doc, new_url, box])
    listing = turtle(bob("GET", container, headers={"Accept": "text/turtle"}), container)
    assert set(listing.objects(URIRef(container), LDP.contains)) == {URIRef(u) for u in (doc, new_url, box)}
    assert (URIRef(box), RDF.type, LDP.BasicContainer) in turtle(
        bob("GET", box, headers={"Accept": "text/turtle"}), box
    )
    # What the library reads from WAC-Allow, and the storage it finds from bob's WebID profile.
    assert posted["result"]["effectiveAccess"] == {
        "user": {"read": True, "append": True, "write": True},
        "public": {"read": False, "append": False, "write": False},
    }
    assert posted["result"]["podUrls"] == [world.url("")]
    expected = Graph()
    expected.add((URIRef(new_url + "#it"), SCHEMA.name, Literal("Posted with a slug")))
    assert isomorphic(turtle(bob("GET", new_url, headers={"Accept": "text/turtle"}), new_url), expected)

    first, second = bytes(range(256)) + b"\x00\xff", b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(300)
    files = run(
        "fileRoundTrip",
        container=container,
        slug="blob.bin",
        first=base64.b64encode(first).decode(),
        second=base64.b64encode(second).decode(),
        contentType="application/octet-stream",
    )
    file_url = files["result"]["url"]
    assert base64.b64decode(files["result"]["firstBack"]) == first
    assert base64.b64decode(files["result"]["secondBack"]) == second
    assert files["result"]["isRawData"] is True
    assert files["result"]["contentType"].startswith("application/octet-stream")
    all_answered_2xx(files)
    raw = bob("GET", file_url)
    assert raw.status == 200 and raw.body == second
    assert raw.headers["content-type"].startswith("application/octet-stream")

    deleted = run(
        "deleteAll", container=container, resources=[doc, new_url], files=[file_url], containers=[box]
    )
    assert [r["url"] for r in requests_of(deleted, "DELETE")] == [file_url, doc, new_url, box, container]
    all_answered_2xx(deleted)
    for url in (file_url, doc, new_url, box, container):
        assert bob("GET", url).status == 404, url
    assert URIRef(container) not in set(
        turtle(bob("GET", world.url(""), headers={"Accept": "text/turtle"}), world.url("")).objects(
            URIRef(world.url("")), LDP.contains
        )
    )


# -- 2. access control --------------------------------------------------------------------------------


def test_acls_managed_through_solid_client(world: World) -> None:
    """The WAC functions people use to share: the ACLs they write are the ones the server enforces."""
    run, bob, alice, server = world.scenario.run, world.bob, world.alice, world.server
    bob_id, alice_id = server.webid("bob"), server.webid("alice")
    container, member = world.url("shared/"), world.url("shared/member.ttl")
    owner = grants(bob_id, container, "accessTo", "Read", "Write", "Control") | grants(
        bob_id, container, "default", "Read", "Write", "Control"
    )

    # Before sharing, alice and the public see nothing of bob's pod.
    assert alice("GET", world.url("")).status == 403
    assert anonymous("GET", world.url("")).status == 401

    shared = run("shareContainer", container=container, member=member, agent=alice_id)["result"]
    # The root's ACL was the fallback; bob (Control) could read it; the container had none of its own.
    assert shared["before"] == {"hasResourceAcl": False, "hasFallbackAcl": True, "hasAccessibleAcl": True}
    assert shared["after"] == {"hasResourceAcl": True, "hasAccessibleAcl": True}
    assert shared["agentResource"] == {"read": True, "append": False, "write": False, "control": False}
    assert shared["agentDefault"] == {"read": True, "append": True, "write": True, "control": False}
    assert shared["publicResource"] == {"read": True, "append": False, "write": False, "control": False}
    head = bob("HEAD", container)
    acl_url = acl_url_of(head, container)
    assert shared["aclUrl"] == acl_url
    acl = turtle(bob("GET", acl_url, headers={"Accept": "text/turtle"}), acl_url)
    # acl:Write implies acl:Append, so the library writes Read and Write and reads Append back.
    assert rules(acl) == owner | grants(alice_id, container, "accessTo", "Read") | grants(
        alice_id, container, "default", "Read", "Write"
    ) | grants(f"class:{FOAF_AGENT}", container, "accessTo", "Read"), acl.serialize(format="turtle")

    # What the ACL says, the server enforces: alice reads the container, reads and writes its members,
    # but may not add to the container itself (no Append on it) nor read the ACL (no Control).
    seen = alice("GET", container, headers={"Accept": "text/turtle"})
    assert seen.status == 200 and wac_allow(seen) == {"user": {"read"}, "public": {"read"}}
    assert alice("GET", member, headers={"Accept": "text/turtle"}).status == 200
    replaced = alice("PUT", member, headers={"Content-Type": "text/turtle"}, body=b"<#x> <#by> <#alice> .")
    assert replaced.status in (200, 204, 205), replaced
    assert alice("POST", container, headers={"Content-Type": "text/turtle"}, body=b"").status == 403
    assert alice("GET", acl_url).status == 403
    assert alice("DELETE", container).status == 403
    # The public reads the container (acl:accessTo) but not its members (no public acl:default).
    public_view = anonymous("GET", container, headers={"Accept": "text/turtle"})
    assert public_view.status == 200 and wac_allow(public_view)["public"] == {"read"}
    assert anonymous("GET", member).status == 401
    assert anonymous("PUT", member, headers={"Content-Type": "text/turtle"}, body=b"").status == 401

    # A member with an ACL of its own, made from the container's (now the fallback): alice may only read.
    restricted = run("restrictFile", container=container, slug="private.txt", agent=alice_id)["result"]
    file_url = restricted["url"]
    assert restricted["before"] == {"hasResourceAcl": False, "hasFallbackAcl": True}
    assert restricted["hasResourceAcl"] is True
    assert restricted["agentResource"] == {"read": True, "append": False, "write": False, "control": False}
    file_acl_url = acl_url_of(bob("HEAD", file_url), file_url)
    file_acl = turtle(bob("GET", file_acl_url, headers={"Accept": "text/turtle"}), file_acl_url)
    # The library copies the fallback's default rules as acl:default too, which on a non-container
    # grants nothing: what counts is acl:accessTo.
    assert rules(file_acl) == grants(bob_id, file_url, "accessTo", "Read", "Write", "Control") | grants(
        bob_id, file_url, "default", "Read", "Write", "Control"
    ) | grants(alice_id, file_url, "accessTo", "Read") | grants(
        alice_id, file_url, "default", "Read", "Write"
    ), file_acl.serialize(format="turtle")
    read = alice("GET", file_url)
    assert read.status == 200 and read.body == b"plain text"
    assert wac_allow(read) == {"user": {"read"}, "public": set()}
    assert alice("PUT", file_url, headers={"Content-Type": "text/plain"}, body=b"changed").status == 403
    assert anonymous("GET", file_url).status == 401
    run("publicRead", url=file_url, read=True)
    public_read = anonymous("GET", file_url)
    assert public_read.status == 200 and public_read.body == b"plain text"
    assert anonymous("PUT", file_url, headers={"Content-Type": "text/plain"}, body=b"x").status == 401
    assert bob("GET", file_url).body == b"plain text"

    # universalAccess: it finds the server does WAC and writes the ACL itself.
    loose = world.url("loose/thing.ttl")
    created = bob("PUT", loose, headers={"Content-Type": "text/turtle"}, body=b"<#a> <#b> <#c> .")
    assert created.status == 201
    assert alice("GET", loose).status == 403
    both = {"read": True, "append": True, "write": True, "controlRead": False, "controlWrite": False}
    granted = run(
        "universal", url=loose, agent=alice_id, agentAccess={"read": True, "write": True, "append": True}
    )
    assert granted["result"]["setAgent"] == both, granted
    assert granted["result"]["agent"] == both
    nobody = {"read": False, "append": False, "write": False, "controlRead": False, "controlWrite": False}
    assert granted["result"]["public"] == nobody
    assert alice("GET", loose).status == 200
    put = alice("PUT", loose, headers={"Content-Type": "text/turtle"}, body=b"<#a> <#b> <#d> .")
    assert put.status in (200, 204, 205), put
    assert anonymous("GET", loose).status == 401

    opened = run("universal", url=loose, agent=alice_id, publicAccess={"read": True})["result"]
    assert opened["public"] == {**nobody, "read": True}
    assert anonymous("GET", loose).status == 200
    assert anonymous("PUT", loose, headers={"Content-Type": "text/turtle"}, body=b"").status == 401

    narrowed = run("universal", url=loose, agent=alice_id, agentAccess={"write": False, "append": False})
    assert narrowed["result"]["agent"] == {**nobody, "read": True}
    assert alice("GET", loose).status == 200
    assert alice("PUT", loose, headers={"Content-Type": "text/turtle"}, body=b"").status == 403
    loose_acl_url = acl_url_of(bob("HEAD", loose), loose)
    loose_acl = turtle(bob("GET", loose_acl_url, headers={"Accept": "text/turtle"}), loose_acl_url)
    assert rules(loose_acl) == grants(bob_id, loose, "accessTo", "Read", "Write", "Control") | grants(
        bob_id, loose, "default", "Read", "Write", "Control"
    ) | grants(alice_id, loose, "accessTo", "Read") | grants(
        f"class:{FOAF_AGENT}", loose, "accessTo", "Read"
    ), loose_acl.serialize(format="turtle")


# -- 3. events ----------------------------------------------------------------------------------------


def test_publish_grant_made_with_solid_client(world: World) -> None:
    """bob accepts alice as a publisher on a topic with solid-client's WAC functions (acl:Append on his
    topic container); alice's app can publish to him exactly from then on."""
    run, bob, alice, server = world.scenario.run, world.bob, world.alice, world.server
    bob_id, alice_id = server.webid("bob"), server.webid("alice")
    topic_container = world.url("event/topic/realestate/contact/")
    key = server.cli("key", "create", "alice", "--agent", alice_id, "--json").check().json()["key"]
    event = {"recipient": bob_id, "topic": TOPIC, "data": EVENT}

    def publish() -> Response:
        return request("POST", server.url("alice", "publish/"), headers={"x-api-key": key}, json_body=event)

    refused = publish()
    assert refused.status == 403, refused
    assert refused.json() == {"error": f"Not authorized to publish to {bob_id} on topic {TOPIC}"}

    granted = run("grantPublish", topicContainer=topic_container, agent=alice_id)
    assert granted["result"] == {"existed": False}
    all_answered_2xx(granted)
    acl_url = acl_url_of(bob("HEAD", topic_container), topic_container)
    acl = turtle(bob("GET", acl_url, headers={"Accept": "text/turtle"}), acl_url)
    owner = grants(bob_id, topic_container, "accessTo", "Read", "Write", "Control") | grants(
        bob_id, topic_container, "default", "Read", "Write", "Control"
    )
    assert rules(acl) == owner | grants(alice_id, topic_container, "accessTo", "Append") | grants(
        alice_id, topic_container, "default", "Append"
    ), acl.serialize(format="turtle")
    # Append is all alice got: she cannot read bob's topic container.
    assert alice("GET", topic_container).status == 403

    accepted = publish()
    assert accepted.status == 201, accepted
    event_url = accepted.headers["location"]
    assert accepted.json()["id"]
    # bob is on the same server: his inbox has the event from the same transaction on.
    inbox = bob("GET", server.url("bob", "inbox/"), headers={"Accept": "application/json"})
    assert inbox.status == 200, inbox
    events = [c for c in inbox.json()["contains"] if isinstance(c, dict) and c.get("topic") == TOPIC]
    assert len(events) == 1 and events[0]["data"] == EVENT, inbox.json()
    assert event_url.startswith(server.url("alice", "publish/"))

    # Another topic of the same domain is not covered by the grant.
    other = request(
        "POST",
        server.url("alice", "publish/"),
        headers={"x-api-key": key},
        json_body={**event, "topic": "realestate/listing#add"},
    )
    assert other.status == 403, other
