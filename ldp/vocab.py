"""RDF vocabularies used by the server, one namespace object each."""

from __future__ import annotations

from rdflib import Namespace
from rdflib.namespace import DCTERMS, FOAF, RDF, XSD

LDP = Namespace("http://www.w3.org/ns/ldp#")
PIM = Namespace("http://www.w3.org/ns/pim/space#")
SOLID = Namespace("http://www.w3.org/ns/solid/terms#")
ACL = Namespace("http://www.w3.org/ns/auth/acl#")
AS = Namespace("https://www.w3.org/ns/activitystreams#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
POSIX = Namespace("http://www.w3.org/ns/posix/stat#")
CERT = Namespace("http://www.w3.org/ns/auth/cert#")

__all__ = ["ACL", "AS", "CERT", "DCTERMS", "FOAF", "LDP", "PIM", "POSIX", "RDF", "SOLID", "VCARD", "XSD"]
