"""The read endpoints of a chain — ``lookup``, ``since``, ``export`` — written once.

They serve any chain: one of our instances (``/chronicle/…``) or the copy of a replicated
upstream (``/chronicle/replica/{source}/…``). A :class:`ChainRoute` says how the API
presents that chain; PHP's small differences between the two live there and only there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_decode
from chronicle.core.errors import EncodingError, RequestError
from chronicle.server.export import SMALL_DOCUMENT_ROWS, respond
from chronicle.server.keys import CTX, DOCS, RESP
from chronicle.store import Chain

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ChainRoute:
    """One chain as the API serves it.

    ``links``: the prefix of pagination links (relative to ``/chronicle``, as PHP);
    ``cache_key``: the slot of its cached full export; ``first_prev``: how the first
    entry's missing prevhash is written (``None`` → JSON null; a replica: ``""``, as PHP
    stores it); ``not_found``: the status of an unknown or malformed hash (PHP: 400 on
    the main chain, 404 on a replica); ``notice``: the member replica answers add.
    """

    chain: Chain
    links: str
    cache_key: str
    first_prev: str | None = None
    not_found: int = 400
    notice: str | None = None

    def row(self, entry: Entry) -> dict[str, Any]:
        return protocol.row(entry, first_prev=self.first_prev)

    def export_row(self, entry: Entry) -> dict[str, Any]:
        return protocol.export_row(entry, first_prev=self.first_prev)

    def no_record(self) -> RequestError:
        return RequestError(protocol.MSG_NO_HASH, status=self.not_found)

    def hash_param(self, request: web.Request) -> bytes:
        """The ``{hash}`` path segment; anything that is not a hash is 'not found'."""
        try:
            return b64u_decode(request.match_info["hash"], 32)
        except EncodingError:
            raise self.no_record() from None


Resolver = Callable[[web.Request], Awaitable[ChainRoute]]


def _page(request: web.Request) -> protocol.Page | None:
    size = request.app[CTX].settings.paginate_export
    if size <= 0:
        return None
    digits = request.match_info.get("page", "0") or "0"
    # Past 18 digits every page is past the end; don't let int() see 10,000 of them.
    number = int(digits) if len(digits) <= 18 else 10**18
    return protocol.Page(number=number, size=size)


async def _entries(route: ChainRoute, first: int, end: int, size: int) -> list[Entry]:
    return [] if first >= end else await route.chain.range(first, min(first + size, end))


async def lookup(request: web.Request, route: ChainRoute) -> web.StreamResponse:
    entries = await route.chain.lookup(route.hash_param(request))
    if not entries:
        raise route.no_record()
    extra = {"notice": route.notice} if route.notice else {}
    return request.app[RESP].ok([route.row(e) for e in entries], **extra)


async def _document(request: web.Request, route: ChainRoute, total: int, start: int,
                    stop: int, *, export: bool) -> web.StreamResponse:
    docs, resp = request.app[DOCS], request.app[RESP]
    envelope = protocol.ok_envelope(resp.clock(), None, total=total)
    doc = await docs.render(envelope, docs.pages(route.chain, start, stop), export=export,
                            first_prev=route.first_prev)
    return await respond(request, doc)


async def since(request: web.Request, route: ChainRoute) -> web.StreamResponse:
    matches = await route.chain.lookup(route.hash_param(request))
    if not matches:
        raise route.no_record()
    head = await route.chain.head()
    assert head is not None
    start, end = matches[0].index + 1, head.index + 1
    total = end - start
    page = _page(request)
    if page is None:
        return await _document(request, route, total, start, end, export=False)
    entries = await _entries(route, start + page.offset, end, page.size)
    links = page.links(f"{route.links}/since/{request.match_info['hash']}", total)
    return request.app[RESP].ok([route.row(e) for e in entries], paginated=True, **links,
                                total=total)


async def export(request: web.Request, route: ChainRoute) -> web.StreamResponse:
    resp = request.app[RESP]
    head = await route.chain.head()
    count = head.index + 1 if head else 0
    page = _page(request)
    if page is not None:
        entries = await _entries(route, page.offset, count, page.size)
        links = page.links(f"{route.links}/export", count)
        return resp.ok([route.export_row(e) for e in entries], paginated=True, **links)
    if head is None or count <= SMALL_DOCUMENT_ROWS:
        return await _document(request, route, count, 0, count, export=True)
    doc = await request.app[DOCS].export(
        route.cache_key, route.chain, head,
        lambda: protocol.ok_envelope(resp.clock(), None, total=count),
        first_prev=route.first_prev)
    return await respond(request, doc)


def serving(read: Callable[[web.Request, ChainRoute], Awaitable[web.StreamResponse]],
            resolve: Resolver) -> Handler:
    """A handler: find the chain the request names, then serve ``read`` from it."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return await read(request, await resolve(request))

    return handler
