"""The release ledger's read endpoints under ``/chronicle/release/`` (issue 12;
docs/release.md): Sapient-signed JSON in the API's envelope, each row with the chain
position (index, currhash) of the entry that proves it. Lists are paged (``?after=``, the
answer's ``next``). The answers come from :class:`chronicle.releaselog.ReleaseReads`.
"""

from __future__ import annotations

from aiohttp import web

from chronicle.server.keys import RELEASE, RESP
from chronicle.server.routing import instance_of, query_param


async def ledger(request: web.Request) -> web.StreamResponse:
    results = await request.app[RELEASE].ledger(instance_of(request))
    return request.app[RESP].ok(results)


async def vendors(request: web.Request) -> web.StreamResponse:
    results = await request.app[RELEASE].vendors(instance_of(request),
                                                 query_param(request, "after"))
    return request.app[RESP].ok(results)


async def keys(request: web.Request) -> web.StreamResponse:
    results = await request.app[RELEASE].keys(instance_of(request),
                                              request.match_info["vendor"])
    return request.app[RESP].ok(results)


async def updates(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    results = await request.app[RELEASE].updates(instance_of(request), m["vendor"],
                                                 m["name"], query_param(request, "after"))
    return request.app[RESP].ok(results)


async def update(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    results = await request.app[RELEASE].update(instance_of(request), m["vendor"], m["name"],
                                                m["version"], query_param(request, "after"))
    return request.app[RESP].ok(results)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/chronicle/release", ledger)
    router.add_get("/chronicle/release/vendors", vendors)
    router.add_get("/chronicle/release/vendors/{vendor}/keys", keys)
    router.add_get("/chronicle/release/packages/{vendor}/{name}", updates)
    router.add_get("/chronicle/release/packages/{vendor}/{name}/{version}", update)
