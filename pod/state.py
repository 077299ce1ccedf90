"""Typed application state keys (``web.AppKey``), shared by the app factory and the handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from acl.apikeys import ApiKeys
from acl.authorizer import Authorizer
from acl.credentials import Authenticator, Credentials
from acl.documents import Documents
from acl.wac import Permissions
from ldp.identifiers import PodLocator
from ldp.patch import Patch
from ldp.store import ResourceStore
from pod.collector import QuietCollector
from pod.config import Config
from pod.delivery import DeliveryWorker
from pod.inbox import Inbox
from pod.outbound import OutboundClient
from pod.publish import Publisher
from pod.queue import DeliveryQueue

if TYPE_CHECKING:  # pod.notifications uses pod.auth, which reads these keys
    from pod.legacy_updates import LegacyUpdates
    from pod.notifications import Notifications

CONFIG = web.AppKey("config", Config)
LOCATOR = web.AppKey("locator", PodLocator)
STORE = web.AppKey("store", ResourceStore)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
API_KEYS = web.AppKey("api_keys", ApiKeys)
DOCUMENTS = web.AppKey("documents", Documents)
OUTBOUND = web.AppKey("outbound", OutboundClient)
QUEUE = web.AppKey("queue", DeliveryQueue)
WORKER = web.AppKey("worker", DeliveryWorker)
PUBLISHER = web.AppKey("publisher", Publisher)
INBOX_RECEIVER = web.AppKey("inbox", Inbox)
NOTIFICATIONS: web.AppKey[Notifications] = web.AppKey("notifications")
LEGACY_UPDATES: web.AppKey[LegacyUpdates] = web.AppKey("legacy_updates")
COLLECTOR = web.AppKey("collector", QuietCollector)

# Per-request state, set before the handler runs.
CREDENTIALS = web.RequestKey("credentials", Credentials)
PERMISSIONS = web.RequestKey("permissions", Permissions)
PARSED_PATCH = web.RequestKey("parsed_patch", Patch)
