"""The Chronicle 1.3 API (protocol.md "Endpoints"): routing table and the few handlers
that belong to no group (index, ``lasthash``, mirrors).

Handlers are thin: parse the request, call the store / ledger / core, answer signed JSON.
The chain reads live in :mod:`~chronicle.server.reads` (one implementation for our chains
and replicas), the writes in :mod:`~chronicle.server.writes`, what only replicas have in
:mod:`~chronicle.server.replicas`, the Merkle tree's in :mod:`~chronicle.server.tlog`, the
release ledger's in :mod:`~chronicle.server.release`, the web explorer's (``/`` and
``/explorer/…``) in :mod:`~chronicle.server.explorer`. Every route is described in
:mod:`chronicle.server.openapi` (served at ``/openapi.json``).
Any :class:`ChronicleError` becomes Chronicle's signed JSON error with its status
(:func:`~chronicle.server.responses.signed_errors`).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from chronicle.core import protocol
from chronicle.core.encoding import atom
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER
from chronicle.releaselog import ReleaseReads
from chronicle.server import explorer, health, openapi, reads, release, replicas, tlog, writes
from chronicle.server.admission import holding, real_client
from chronicle.server.context import ServerContext
from chronicle.server.export import DocumentBuilder
from chronicle.server.health import stamp_request_id, with_request_id
from chronicle.server.keys import CTX, DOCS, LASTHASH, RELEASE, RESP, TLOG
from chronicle.server.metrics import timing
from chronicle.server.responses import Responder, paced, signed_errors
from chronicle.server.routing import instance_of, main_route, replica_route

# --- handlers -----------------------------------------------------------------------------

async def index(request: web.Request) -> web.StreamResponse:
    """The endpoint list. A registered client id also sees ``publish`` (as PHP); an admin's
    id sees nothing more: PHP lists the admin endpoints to anyone sending an admin's
    public id, which tells strangers who the administrators are."""
    ctx = request.app[CTX]
    instance = instance_of(request)
    ids = request.headers.getall(CLIENT_HEADER, [])
    known = len(ids) == 1 and protocol.valid_client_id(ids[0]) and \
        await ctx.store.clients.get(instance, ids[0]) is not None
    results = protocol.index_results(client_known=known, client_admin=False)
    return request.app[RESP].ok(results, **{"public-key": ctx.key.public_b64})


async def lasthash(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = instance_of(request)
    head = await ctx.store.chain(instance).head()
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


async def mirrors(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    instance = instance_of(request)
    rows = [{"url": m.url, "publickey": m.publickey, "comment": m.comment}
            for m in await ctx.store.mirrors.all(instance)]
    return request.app[RESP].ok(rows, **{"public-key": ctx.key.public_b64})


# --- middleware and app -------------------------------------------------------------------

#: Browsers may read every answer from any page, and the signature header with it, so
#: that a page can verify what it was told (nothing here depends on cookies or origins).
CORS = {"Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": f"{SIGNATURE_HEADER}, Retry-After"}
PREFLIGHT = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
             "Access-Control-Allow-Headers":
                 f"Content-Type, {CLIENT_HEADER}, {SIGNATURE_HEADER}",
             "Access-Control-Max-Age": "86400"}


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer (errors included) readable by browser clients; a browser's preflight
    (OPTIONS with Access-Control-Request-Method) answered empty, signed like any other."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return request.app[RESP].raw(204, b"", content_type="text/plain", headers=PREFLIGHT)
    return await handler(request)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The headers every answer carries, set as they go out: answers a handler sends
    itself (a spooled document) included."""
    response.headers.update(CORS)
    stamp_request_id(request, response)


def build_app(ctx: ServerContext) -> web.Application:
    # The body limit is enforced by us (signed 413); aiohttp's own check is set just above
    # it as a backstop for bodies read without a Content-Length.
    responder = Responder(ctx.key, ctx.clock)
    # Each layer costs every request a coroutine: the proxy one only where it has work.
    proxies = [real_client(ctx.settings.trusted_proxies)] \
        if ctx.settings.trusted_proxies else []
    send_timeout = ctx.settings.document_send_timeout
    app = web.Application(middlewares=[
        paced(send_timeout.total_seconds() if send_timeout else None),
        *proxies, with_request_id, timing(ctx.metrics), cors,
        signed_errors(responder, ctx.settings.max_body_size), holding],
        client_max_size=ctx.settings.max_body_size)
    app.on_response_prepare.append(on_prepare)
    app[CTX] = ctx
    app[RESP] = responder
    app[DOCS] = DocumentBuilder(ctx.key, ctx.data_dir.cache_dir,
                                cache_exports=ctx.settings.export_cache)
    app[LASTHASH] = {}
    app[TLOG] = ctx.tlog
    app[RELEASE] = ReleaseReads(ctx.store)
    r = app.router
    explorer.add_routes(app)
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", health.metrics)
    r.add_get("/openapi.json", openapi.openapi_json)
    for path in ("/chronicle", "/chronicle/"):
        r.add_get(path, index)
    r.add_get("/chronicle/lasthash", lasthash)
    r.add_post("/chronicle/publish", writes.publish)
    r.add_post("/chronicle/register", writes.register)
    r.add_post("/chronicle/revoke", writes.revoke)
    r.add_get("/chronicle/mirrors", mirrors)
    r.add_get("/chronicle/replica", replicas.index)
    r.add_get("/chronicle/replica/{source}", replicas.subindex)
    r.add_get("/chronicle/replica/{source}/lasthash", replicas.lasthash)
    # Page numbers are ASCII digits ([0-9], as the description says): \d would also take
    # any other script's digits ("/export/٣" served as page 3).
    for prefix, resolve in (("/chronicle", main_route),
                            ("/chronicle/replica/{source}", replica_route)):
        r.add_get(prefix + "/lookup/{hash}", reads.serving(reads.lookup, resolve))
        since = reads.serving(reads.since, resolve)
        r.add_get(prefix + "/since/{hash}", since)
        r.add_get(prefix + r"/since/{hash}/{page:[0-9]+}", since)
        export = reads.serving(reads.export, resolve)
        r.add_get(prefix + "/export", export)
        r.add_get(prefix + r"/export/{page:[0-9]+}", export)
    r.add_get("/chronicle/replica/{tail:.+}", replicas.unknown)
    tlog.add_routes(r)
    release.add_routes(r)

    async def on_startup(_: web.Application) -> None:
        await ctx.start()

    async def on_cleanup(app: web.Application) -> None:
        app[DOCS].close()
        await ctx.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
