"""The Merkle tree's endpoints under ``/chronicle/tlog/`` (issue 11; docs/tlog.md).

C2SP formats for the tiles' clients (``checkpoint``: a signed note, ``text/plain``;
``tile/…``: hash tiles and entry bundles, ``application/octet-stream``; full tiles
cacheable forever), and Sapient-signed JSON in the API's envelope for clients that want
proofs (``proof/inclusion/{index-or-currhash}``, ``proof/consistency/{old}/{new}``).
Every answer carries ``Body-Signature-Ed25519`` like any other: the Responder signs any
bytes. The answers themselves come from :class:`chronicle.treelog.TreeLog`.
"""

from __future__ import annotations

from aiohttp import web

from chronicle.server.keys import CTX, RESP, TLOG
from chronicle.server.routing import instance_of, query_param

NOTE_TYPE = "text/plain; charset=utf-8"
TILE_TYPE = "application/octet-stream"
IMMUTABLE = "public, max-age=31536000, immutable"
PARTIAL = "public, max-age=60"
"""A partial tile's bytes never change either, but a fuller one soon supersedes it."""


async def checkpoint(request: web.Request) -> web.StreamResponse:
    """The checkpoint note; with witnesses configured, with their cosignatures."""
    quorum = request.app[CTX].settings.witness_quorum
    note = await request.app[TLOG].served_note(instance_of(request), quorum=quorum)
    return request.app[RESP].raw(200, note.encode("utf-8"), content_type=NOTE_TYPE,
                                 headers={"Cache-Control": "no-cache"})


async def tile(request: web.Request) -> web.StreamResponse:
    found, data = await request.app[TLOG].tile(instance_of(request),
                                               "tile/" + request.match_info["tail"])
    return request.app[RESP].raw(200, data, content_type=TILE_TYPE, headers={
        "Cache-Control": IMMUTABLE if found.is_full else PARTIAL})


async def inclusion(request: web.Request) -> web.StreamResponse:
    results = await request.app[TLOG].inclusion(instance_of(request),
                                                request.match_info["entry"],
                                                query_param(request, "size"))
    return request.app[RESP].ok(results)


async def consistency(request: web.Request) -> web.StreamResponse:
    results = await request.app[TLOG].consistency(instance_of(request),
                                                  request.match_info["old"],
                                                  request.match_info["new"])
    return request.app[RESP].ok(results)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/chronicle/tlog/checkpoint", checkpoint)
    router.add_get("/chronicle/tlog/tile/{tail:.+}", tile)
    router.add_get("/chronicle/tlog/proof/inclusion/{entry}", inclusion)
    router.add_get("/chronicle/tlog/proof/consistency/{old}/{new}", consistency)
