"""The application's shared objects, by key (one module, so handler modules need no cycle)."""

from __future__ import annotations

from aiohttp import web

from chronicle.releaselog import ReleaseReads
from chronicle.server.context import ServerContext
from chronicle.server.export import DocumentBuilder
from chronicle.server.responses import Responder
from chronicle.treelog import TreeLog

CTX = web.AppKey("ctx", ServerContext)
RESP = web.AppKey("responder", Responder)
DOCS = web.AppKey("documents", DocumentBuilder)
LASTHASH = web.AppKey("lasthash_cache", dict)
TLOG = web.AppKey("tlog", TreeLog)
RELEASE = web.AppKey("release", ReleaseReads)
