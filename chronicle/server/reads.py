"""The read endpoints of a chain — ``lookup``, ``since``, ``export`` — written once.

They serve any chain: one of our instances (``/chronicle/…``) or the copy of a replicated
upstream (``/chronicle/replica/{source}/…``). A :class:`ChainRoute` says how the API
presents that chain; PHP's small differences between the two live there and only there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_decode
from chronicle.core.errors import EncodingError, RequestError
from chronicle.server.export import (
    PIECE,
    SMALL_DOCUMENT_ROWS,
    DocumentBuilder,
    Rows,
    respond,
)
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


def _docs(request: web.Request) -> DocumentBuilder:
    docs = request.app[DOCS]
    docs.configure(request.app[CTX].settings)  # the limits of the settings in force
    return docs


async def _document(request: web.Request, route: ChainRoute, query: tuple[Any, ...],
                    envelope: dict[str, Any], rows: Rows, *, export: bool,
                    keep: tuple[int, bytes] | None = None) -> web.StreamResponse:
    """The rows of ``rows`` in ``envelope``, rendered by the document builder (bounded
    memory, shared by identical requests: ``query`` names the document, with the chain
    and its head). ``keep``: the head (index, hash) of a full export to keep cached."""
    docs = _docs(request)
    doc = await docs.document(
        (route.cache_key, *query), lambda: envelope, rows, export=export,
        first_prev=route.first_prev, keep=(route.cache_key, *keep) if keep else None)
    return await respond(request, doc, send_timeout=docs.limits.send_timeout)


def _range(request: web.Request, route: ChainRoute, start: int, stop: int) -> Rows:
    docs = request.app[DOCS]
    return lambda: docs.pages(route.chain, start, stop)


# Handlers keep only indexes and hashes of the entries they look up, never the entries:
# a request waiting for (or streaming) a document must not hold an 8 MiB row meanwhile.

async def _head(route: ChainRoute) -> tuple[int, bytes | None]:
    """The number of entries, and the head's hash."""
    head = await route.chain.head()
    return (head.index + 1, head.currhash) if head else (0, None)


async def _index_of(route: ChainRoute, hash_raw: bytes) -> int:
    matches = await route.chain.lookup(hash_raw)
    if not matches:
        raise route.no_record()
    return matches[0].index


async def _looked_up(route: ChainRoute, hash_raw: bytes) -> AsyncIterator[list[Entry]]:
    yield await route.chain.lookup(hash_raw)


async def lookup(request: web.Request, route: ChainRoute) -> web.StreamResponse:
    hash_raw = route.hash_param(request)
    entries = await route.chain.lookup(hash_raw)
    if not entries:
        raise route.no_record()
    extra = {"notice": route.notice} if route.notice else {}
    if all(len(e.contents) <= PIECE for e in entries):
        return request.app[RESP].ok([route.row(e) for e in entries], **extra)
    # A large row: read again by a build and rendered in pieces, like any document.
    del entries
    envelope = protocol.ok_envelope(request.app[RESP].clock(), None, **extra)
    return await _document(request, route, ("lookup", hash_raw), envelope,
                           lambda: _looked_up(route, hash_raw), export=False)


async def since(request: web.Request, route: ChainRoute) -> web.StreamResponse:
    start = await _index_of(route, route.hash_param(request)) + 1
    end, head_hash = await _head(route)
    total = end - start
    clock = request.app[RESP].clock
    page = _page(request)
    if page is None:
        envelope = protocol.ok_envelope(clock(), None, total=total)
        return await _document(request, route, ("since", start, head_hash), envelope,
                               _range(request, route, start, end), export=False)
    links = page.links(f"{route.links}/since/{request.match_info['hash']}", total)
    envelope = protocol.ok_envelope(clock(), None, paginated=True, **links, total=total)
    first = start + page.offset
    return await _document(request, route,
                           ("since", start, page.offset, page.size, head_hash), envelope,
                           _range(request, route, first, min(first + page.size, end)),
                           export=False)


async def export(request: web.Request, route: ChainRoute) -> web.StreamResponse:
    clock = request.app[RESP].clock
    count, head_hash = await _head(route)
    page = _page(request)
    if page is not None:
        links = page.links(f"{route.links}/export", count)
        envelope = protocol.ok_envelope(clock(), None, paginated=True, **links)
        stop = min(page.offset + page.size, count)
        return await _document(request, route, ("export", page.offset, page.size, head_hash),
                               envelope, _range(request, route, page.offset, stop),
                               export=True)
    envelope = protocol.ok_envelope(clock(), None, total=count)
    keep = (count - 1, head_hash) if head_hash and count > SMALL_DOCUMENT_ROWS else None
    return await _document(request, route, ("export", head_hash), envelope,
                           _range(request, route, 0, count), export=True, keep=keep)


def serving(read: Callable[[web.Request, ChainRoute], Awaitable[web.StreamResponse]],
            resolve: Resolver) -> Handler:
    """A handler: find the chain the request names, then serve ``read`` from it."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return await read(request, await resolve(request))

    return handler
