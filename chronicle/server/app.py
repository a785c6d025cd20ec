"""Routes, middleware and handlers of the Chronicle 1.3 API (protocol.md "Endpoints").

Handlers are thin: parse the request, call the store / ledger / core, answer signed JSON.
Any :class:`ChronicleError` becomes Chronicle's signed JSON error with its status.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from chronicle import admin
from chronicle.core import protocol, replica
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import atom, b64u_decode, b64u_encode
from chronicle.core.errors import (
    AuthError,
    ChronicleError,
    EncodingError,
    NotFoundError,
    OverloadedError,
    RequestError,
)
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, verify
from chronicle.server.context import ServerContext
from chronicle.server.export import SMALL_DOCUMENT_ROWS, DocumentBuilder, respond
from chronicle.server.responses import Responder
from chronicle.store.base import Client, ReplicaSource

log = logging.getLogger(__name__)

CTX = web.AppKey("ctx", ServerContext)
RESP = web.AppKey("responder", Responder)
DOCS = web.AppKey("documents", DocumentBuilder)
LASTHASH = web.AppKey("lasthash_cache", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

INDEX_HTML = """<!DOCTYPE html>
<html>
    <head>
        <meta charset="utf-8" />
        <title>Chronicle</title>
    </head>
    <body>
        <h1>Chronicle</h1>
        <p>An append-only, cryptographically signed ledger (Chronicle 1.3 protocol).</p>
        <p><a href="./chronicle">Click Here for the Chronicle API</a></p>
    </body>
</html>
"""


# --- helpers ------------------------------------------------------------------------------

def _instance(request: web.Request) -> str:
    ctx = request.app[CTX]
    values = request.query.getall("instance", [])
    if len(values) > 1:
        raise RequestError("Only one instance parameter may be provided")
    name = values[0] if values else ""
    if name not in ctx.settings.instances:
        raise NotFoundError(protocol.MSG_INSTANCE_NOT_FOUND)
    return name


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[CTX].settings.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(f"Request body too large (limit {limit} bytes)", status=413)
    return await request.read()


async def _authenticate(request: web.Request, instance: str, *, admin_only: bool
                        ) -> tuple[Client, bytes, bytes]:
    """Sapient request check: one known client, one valid signature over the exact body.

    Returns ``(client, body, signature)``. The body is read only after the client is
    known, so strangers cannot make us buffer large bodies.
    """
    ctx = request.app[CTX]
    ids = request.headers.getall(CLIENT_HEADER, [])
    if not ids:
        raise AuthError(protocol.MSG_NO_CLIENT_HEADER)
    if len(ids) > 1:
        raise AuthError(protocol.MSG_TWO_CLIENT_HEADERS)
    # Admin rights are checked against the database itself, never a cached answer.
    client = await ctx.clients.get(instance, ids[0], fresh=admin_only) \
        if protocol.valid_client_id(ids[0]) else None
    if client is None or (admin_only and not client.is_admin):
        raise AuthError(protocol.MSG_CLIENT_NOT_FOUND)
    if client.publickey == ctx.key.public:
        raise AuthError(protocol.MSG_SERVER_KEY)
    sigs = request.headers.getall(SIGNATURE_HEADER, [])
    if not sigs:
        raise AuthError(protocol.MSG_NO_SIGNATURE)
    if len(sigs) > 1:
        raise AuthError(protocol.MSG_TWO_SIGNATURE_HEADERS)
    body = await _read_body(request)
    try:
        signature = b64u_decode(sigs[0], 64, what="signature")
    except EncodingError:
        raise AuthError(protocol.MSG_BAD_SIGNATURE) from None
    if not verify(client.publickey, body, signature):
        # The cached key may be stale (the id was revoked and registered again): ask the
        # database before refusing.
        current = await ctx.clients.get(instance, ids[0], fresh=True)
        if current is None:
            raise AuthError(protocol.MSG_CLIENT_NOT_FOUND)
        if current.publickey == ctx.key.public:
            raise AuthError(protocol.MSG_SERVER_KEY)
        if current.publickey == client.publickey \
                or not verify(current.publickey, body, signature):
            raise AuthError(protocol.MSG_BAD_SIGNATURE)
        client = current
    return client, body, signature


def _hash_param(request: web.Request) -> bytes:
    """The ``{hash}`` path segment; anything that is not a hash is 'not found' (as PHP)."""
    try:
        return b64u_decode(request.match_info["hash"], 32)
    except EncodingError:
        raise RequestError(protocol.MSG_NO_HASH, status=400) from None


def _page(request: web.Request) -> protocol.Page | None:
    size = request.app[CTX].settings.paginate_export
    if size <= 0:
        return None
    digits = request.match_info.get("page", "0") or "0"
    # Past 18 digits every page is past the end; don't let int() see 10,000 of them.
    number = int(digits) if len(digits) <= 18 else 10**18
    return protocol.Page(number=number, size=size)


# --- handlers -----------------------------------------------------------------------------

async def root(request: web.Request) -> web.StreamResponse:
    resp = request.app[RESP]
    if CLIENT_HEADER in request.headers:
        return resp.raw(302, b"", content_type="text/html; charset=UTF-8",
                        headers={"Location": "/chronicle"})
    return resp.raw(200, INDEX_HTML.encode(), content_type="text/html; charset=UTF-8")


async def index(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    instance = _instance(request)
    known = is_admin = False
    ids = request.headers.getall(CLIENT_HEADER, [])
    if len(ids) == 1 and protocol.valid_client_id(ids[0]):
        client = await ctx.store.get_client(instance, ids[0])
        known = client is not None
        is_admin = bool(client and client.is_admin)
    results = protocol.index_results(client_known=known, client_admin=is_admin)
    return request.app[RESP].ok(results, **{"public-key": ctx.key.public_b64})


async def lasthash(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = _instance(request)
    head = await ctx.store.head(instance)
    now = resp.clock()
    stamp = atom(now)
    cache: dict[str, tuple[bytes | None, str, bytes, str]] = request.app[LASTHASH]
    cached = cache.get(instance)
    head_hash = head.currhash if head else None
    if cached and cached[0] == head_hash and cached[1] == stamp:
        return resp.raw(200, cached[2], signature=cached[3])
    results = [protocol.row(head)] if head else []
    body = protocol.render(protocol.ok_envelope(now, results))
    signature = ctx.key.sign_b64(body)
    cache[instance] = (head_hash, stamp, body, signature)
    return resp.raw(200, body, signature=signature)


async def lookup(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    instance = _instance(request)
    entries = await ctx.store.lookup(instance, _hash_param(request))
    if not entries:
        raise RequestError(protocol.MSG_NO_HASH, status=400)
    return request.app[RESP].ok([protocol.row(e) for e in entries])


async def _document(request: web.Request, envelope: dict[str, Any], instance: str,
                    start: int, stop: int, *, export: bool) -> web.StreamResponse:
    docs = request.app[DOCS]
    doc = await docs.render(envelope, docs.pages(instance, start, stop), export=export)
    return await respond(request, doc)


async def since(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = _instance(request)
    raw_hash = _hash_param(request)
    matches = await ctx.store.lookup(instance, raw_hash)
    if not matches:
        raise RequestError(protocol.MSG_NO_HASH, status=400)
    head = await ctx.store.head(instance)
    assert head is not None
    start = matches[0].index + 1
    total = head.index + 1 - start
    page = _page(request)
    now = resp.clock()
    if page is None:
        envelope = protocol.ok_envelope(now, None, total=total)
        return await _document(request, envelope, instance, start, head.index + 1, export=False)
    first = start + page.offset
    end = head.index + 1
    entries = [] if first >= end else await ctx.store.range(
        instance, first, min(first + page.size, end))
    links = page.links(f"/since/{request.match_info['hash']}", total)
    return resp.ok([protocol.row(e) for e in entries], paginated=True, **links, total=total)


async def export(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = _instance(request)
    head = await ctx.store.head(instance)
    count = head.index + 1 if head else 0
    page = _page(request)
    if page is not None:
        entries = [] if page.offset >= count else await ctx.store.range(
            instance, page.offset, min(page.offset + page.size, count))
        links = page.links("/export", count)
        return resp.ok([protocol.export_row(e) for e in entries], paginated=True, **links)
    if head is None or count <= SMALL_DOCUMENT_ROWS:
        envelope = protocol.ok_envelope(resp.clock(), None, total=count)
        return await _document(request, envelope, instance, 0, count, export=True)
    doc = await request.app[DOCS].export(
        instance, head, lambda: protocol.ok_envelope(resp.clock(), None, total=count))
    return await respond(request, doc)


def _check_writable(ctx: ServerContext) -> None:
    if ctx.settings.read_only:
        raise OverloadedError("This ledger is read-only at the moment; nothing was stored",
                              retry_after=60)


async def publish(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = _instance(request)
    _check_writable(ctx)
    client, body, signature = await _authenticate(request, instance, admin_only=False)
    wait = ctx.limiter.retry_after(instance, client.publicid)
    if wait > 0:
        raise RequestError("Rate limit exceeded, retry later", status=429,
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("Request body is not valid UTF-8") from None
    protocol.check_publish_timestamp(body, resp.clock(), ctx.settings.request_timeout)
    entry: Entry = await ctx.ledger(instance).append(body, client.publickey, signature,
                                                     client_id=client.publicid)
    return resp.ok(entry.receipt())


async def register(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = _instance(request)
    _check_writable(ctx)
    admin_client, body, _ = await _authenticate(request, instance, admin_only=True)
    now = resp.clock()
    fields = protocol.parse_admin_body(body, now, ctx.settings.request_timeout)
    publickey, comment = protocol.parse_register(fields)
    client = await admin.register_client(
        ctx.store, ctx.ledger(instance), ctx.key, publickey=publickey, is_admin=False,
        comment=comment, client_id=ctx.new_client_id(), now=now,
        publish=ctx.settings.publish_new_clients, by_admin=admin_client.publicid)
    return resp.ok({"client-id": client.publicid})


async def revoke(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = _instance(request)
    _check_writable(ctx)
    admin_client, body, _ = await _authenticate(request, instance, admin_only=True)
    now = resp.clock()
    fields = protocol.parse_admin_body(body, now, ctx.settings.request_timeout)
    client_id, key_text = protocol.parse_revoke(fields)
    client = await ctx.store.get_client(instance, client_id)
    if client is None or b64u_encode(client.publickey) != key_text:
        raise NotFoundError(protocol.MSG_REVOKE_UNKNOWN)
    if client.is_admin:
        raise AuthError(protocol.MSG_REVOKE_ADMIN)
    await admin.revoke_client(ctx.store, ctx.ledger(instance), ctx.key, client=client, now=now,
                              publish=ctx.settings.publish_revoked_clients,
                              by_admin=admin_client.publicid)
    return resp.ok({"deleted": True})


async def mirrors(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    instance = _instance(request)
    rows = [{"url": m.url, "publickey": m.publickey, "comment": m.comment}
            for m in await ctx.store.list_mirrors(instance)]
    return request.app[RESP].ok(rows, **{"public-key": ctx.key.public_b64})


# --- replicas: the copies of other Chronicles this server keeps (core/replica.py) ------------

async def _replica_source(request: web.Request) -> ReplicaSource:
    """The source named by ``{source}`` (its uniqueid); else PHP's 404 "Unknown URI"."""
    ref = request.match_info["source"]
    source = await request.app[CTX].store.get_replica_source(ref, _instance(request))
    if source is None or source.uniqueid != ref:
        raise NotFoundError(protocol.MSG_UNKNOWN_URI)
    return source


def _replica_hash(request: web.Request) -> bytes:
    """A replica answers an unknown or malformed hash with 404 (the main chain: 400)."""
    try:
        return b64u_decode(request.match_info["hash"], 32)
    except EncodingError:
        raise NotFoundError(protocol.MSG_NO_HASH) from None


async def _replica_document(request: web.Request, source: ReplicaSource,
                            envelope: dict[str, Any], start: int, stop: int, *,
                            export: bool) -> web.StreamResponse:
    ctx, docs = request.app[CTX], request.app[DOCS]
    doc = await docs.render(envelope, ctx.store.iter_replica_range(source.id, start, stop),
                            export=export, first_prev="")
    return await respond(request, doc)


async def replica_index(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    sources = await ctx.store.list_replica_sources(_instance(request))
    return request.app[RESP].ok([replica.index_row(s.uniqueid, s.url, s.name, s.publickey)
                                 for s in sources])


async def replica_subindex(request: web.Request) -> web.StreamResponse:
    s = await _replica_source(request)
    return request.app[RESP].ok(replica.subindex(
        s.uniqueid, s.url, s.publickey, status=s.status, fault=s.fault, reason=s.reason,
        since=s.status_since))


async def replica_lasthash(request: web.Request) -> web.StreamResponse:
    source = await _replica_source(request)
    head = await request.app[CTX].store.replica_head(source.id)
    return request.app[RESP].ok(replica.lasthash_results(head), notice=replica.NOTICE)


async def replica_lookup(request: web.Request) -> web.StreamResponse:
    source = await _replica_source(request)
    entries = await request.app[CTX].store.replica_lookup(source.id, _replica_hash(request))
    if not entries:
        raise NotFoundError(protocol.MSG_NO_HASH)
    return request.app[RESP].ok([replica.row(e) for e in entries], notice=replica.NOTICE)


async def replica_since(request: web.Request) -> web.StreamResponse:
    """Entries after the hash, in chain order (PHP 1.3.1 returns them sorted by summaryhash,
    an accident of its query plan that no client can verify; see README)."""
    ctx, resp = request.app[CTX], request.app[RESP]
    source = await _replica_source(request)
    matches = await ctx.store.replica_lookup(source.id, _replica_hash(request))
    if not matches:
        raise NotFoundError(protocol.MSG_NO_HASH)
    head = await ctx.store.replica_head(source.id)
    assert head is not None
    start, end = matches[0].index + 1, head.index + 1
    total = end - start
    page = _page(request)
    if page is None:
        envelope = protocol.ok_envelope(resp.clock(), None, total=total)
        return await _replica_document(request, source, envelope, start, end, export=False)
    first = start + page.offset
    entries = [] if first >= end else await ctx.store.replica_range(
        source.id, first, min(first + page.size, end))
    links = page.links(f"{replica.source_path(source.uniqueid)}/since/"
                       f"{request.match_info['hash']}", total)
    return resp.ok([replica.row(e) for e in entries], paginated=True, **links, total=total)


async def replica_export(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    source = await _replica_source(request)
    head = await ctx.store.replica_head(source.id)
    count = head.index + 1 if head else 0
    page = _page(request)
    if page is not None:
        entries = [] if page.offset >= count else await ctx.store.replica_range(
            source.id, page.offset, min(page.offset + page.size, count))
        links = page.links(f"{replica.source_path(source.uniqueid)}/export", count)
        return resp.ok([replica.export_row(e) for e in entries], paginated=True, **links)
    if head is None or count <= SMALL_DOCUMENT_ROWS:
        envelope = protocol.ok_envelope(resp.clock(), None, total=count)
        return await _replica_document(request, source, envelope, 0, count, export=True)

    def pages(a: int, b: int) -> AsyncIterator[list[Entry]]:
        return ctx.store.iter_replica_range(source.id, a, b)

    doc = await request.app[DOCS].export(
        f"replica:{source.uniqueid}", head,
        lambda: protocol.ok_envelope(resp.clock(), None, total=count), pages=pages,
        first_prev="")
    return await respond(request, doc)


async def replica_unknown(request: web.Request) -> web.StreamResponse:
    _instance(request)
    raise NotFoundError(protocol.MSG_UNKNOWN_URI)


# --- middleware and app -------------------------------------------------------------------

@web.middleware
async def signed_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a signed JSON error; never leak a traceback or HTML page."""
    resp = request.app[RESP]
    try:
        return await handler(request)
    except ChronicleError as exc:
        return resp.error(exc.status, exc.message, exc.headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CTX].settings.max_body_size
        return resp.error(413, f"Request body too large (limit {limit} bytes)")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return resp.error(405, f"Method not allowed. Must be one of: {allowed}",
                          {"Allow": allowed})
    except web.HTTPNotFound:
        return resp.error(404, "Not found")
    except web.HTTPException as exc:
        return resp.error(exc.status, exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return resp.error(500, "Internal server error")


def build_app(ctx: ServerContext) -> web.Application:
    # The body limit is enforced by us (signed 413); aiohttp's own check is set just above
    # it as a backstop for bodies read without a Content-Length.
    app = web.Application(middlewares=[signed_errors],
                          client_max_size=ctx.settings.max_body_size)
    app[CTX] = ctx
    app[RESP] = Responder(ctx.key, ctx.clock)
    app[DOCS] = DocumentBuilder(ctx.store, ctx.key, ctx.cache_dir,
                                cache_exports=ctx.settings.export_cache)
    app[LASTHASH] = {}
    r = app.router
    r.add_get("/", root)
    for path in ("/chronicle", "/chronicle/"):
        r.add_get(path, index)
    r.add_get("/chronicle/lasthash", lasthash)
    r.add_get("/chronicle/lookup/{hash}", lookup)
    r.add_get("/chronicle/since/{hash}", since)
    r.add_get(r"/chronicle/since/{hash}/{page:\d+}", since)
    r.add_get("/chronicle/export", export)
    r.add_get(r"/chronicle/export/{page:\d+}", export)
    r.add_post("/chronicle/publish", publish)
    r.add_post("/chronicle/register", register)
    r.add_post("/chronicle/revoke", revoke)
    r.add_get("/chronicle/mirrors", mirrors)
    r.add_get("/chronicle/replica", replica_index)
    r.add_get("/chronicle/replica/{source}", replica_subindex)
    r.add_get("/chronicle/replica/{source}/lasthash", replica_lasthash)
    r.add_get("/chronicle/replica/{source}/lookup/{hash}", replica_lookup)
    r.add_get("/chronicle/replica/{source}/since/{hash}", replica_since)
    r.add_get(r"/chronicle/replica/{source}/since/{hash}/{page:\d+}", replica_since)
    r.add_get("/chronicle/replica/{source}/export", replica_export)
    r.add_get(r"/chronicle/replica/{source}/export/{page:\d+}", replica_export)
    r.add_get("/chronicle/replica/{tail:.+}", replica_unknown)

    async def on_startup(_: web.Application) -> None:
        await ctx.start()

    async def on_cleanup(_: web.Application) -> None:
        await ctx.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
