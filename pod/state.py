"""Typed application state keys (``web.AppKey``), shared by the app factory and the handlers."""

from __future__ import annotations

from aiohttp import web

from ldp.identifiers import PodLocator
from ldp.store import ResourceStore
from pod.config import Config

CONFIG = web.AppKey("config", Config)
LOCATOR = web.AppKey("locator", PodLocator)
STORE = web.AppKey("store", ResourceStore)
