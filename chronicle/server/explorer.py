"""The web explorer's routes (issue 15; docs/explorer.md): ``/`` (the overview),
``/explorer/entries`` (list and search), ``/explorer/entry/{currhash}``, the release
ledger's pages under ``/explorer/release``, and the static files of
:mod:`chronicle.explorer`. Thin like every handler: read the model, render, answer.

Every answer is signed by the responder like any other, and carries :data:`SECURITY`:
a Content-Security-Policy allowing scripts, styles and requests from this origin only
(no inline script, no ``'unsafe-inline'``, no nonce), no framing, no referrer.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from chronicle.core.errors import NotFoundError
from chronicle.core.sapient import CLIENT_HEADER
from chronicle.explorer import model, releases, render
from chronicle.releaselog import status as release_status
from chronicle.server.keys import CTX, RELEASE, RESP
from chronicle.server.routing import instance_of, query_param

HTML = "text/html; charset=utf-8"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache"}
#: The static files served, with their content types (nothing else under static/ is).
STATIC = {"explorer.css": "text/css; charset=utf-8",
          "check.js": "text/javascript; charset=utf-8",
          "favicon.svg": "image/svg+xml",
          "vendor/nacl-fast.js": "text/javascript; charset=utf-8",
          "vendor/blake2b.js": "text/javascript; charset=utf-8"}
GATE = web.AppKey("explorer-search-gate", model.SearchGate)


def _html(request: web.Request, body: bytes) -> web.StreamResponse:
    return request.app[RESP].raw(200, body, content_type=HTML, headers=SECURITY)


def _page(request: web.Request, *, title: str, kind: str, main: str,
          query: str = "") -> web.StreamResponse:
    ctx = request.app[CTX]
    return _html(request, render.page(title=title, kind=kind, main=main,
                                      server_key=ctx.key.public_b64,
                                      instance=instance_of(request), query=query))


async def root(request: web.Request) -> web.StreamResponse:
    """``/``: the overview; a Chronicle client (it sends its client id) is sent to the
    API instead, as PHP does."""
    if CLIENT_HEADER in request.headers:
        return request.app[RESP].raw(302, b"", content_type=HTML,
                                     headers={"Location": "/chronicle"})
    return await overview(request)


async def overview(request: web.Request) -> web.StreamResponse:
    instance = instance_of(request)
    ctx = request.app[CTX]
    state = ctx.jobs.witnessing.get(instance) if ctx.jobs is not None else None
    ov = await model.overview(ctx.store, instance, instances=ctx.settings.instances,
                              witnesses=ctx.settings.witnesses,
                              witness_errors=dict(state.errors) if state else {},
                              public_key=ctx.key.public_b64, now=ctx.clock())
    main = render.overview_main(ov)
    release = await release_status(ctx.store, instance)
    if release.get("enabled"):
        main += "\n" + releases.summary(release, instance)
    return _page(request, title=f"{instance or 'default'} chain", kind="overview", main=main)


async def entries(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    instance = instance_of(request)
    before = model.parse_before(request.query.getall("before", []))
    query = query_param(request, "q")
    if query is not None and query.strip():
        listing = await model.search(ctx.store, request.app[GATE], instance, query, before)
    else:
        listing = await model.listing(ctx.store, instance, before)
    return _page(request, title="Search" if listing.searched else "Entries", kind="entries",
                 main=render.entries_main(listing, instance), query=query or "")


async def entry(request: web.Request) -> web.StreamResponse:
    instance = instance_of(request)
    raw = model.parse_hash(request.match_info["hash"])
    ctx = request.app[CTX]
    view = await model.entry(ctx.store, ctx.tlog, instance, raw)
    return _page(request, title=f"Entry {view.entry.index}", kind="entry",
                 main=render.entry_main(view, instance))


async def release_ledger(request: web.Request) -> web.StreamResponse:
    """The release ledger: its enable entry, newest releases, vendors (paged)."""
    instance = instance_of(request)
    reads = request.app[RELEASE]
    facts = await reads.ledger(instance)
    vendors = await reads.vendors(instance, query_param(request, "after"))
    recent = await request.app[CTX].store.browse.recent_releases(instance,
                                                                 releases.RECENT_RELEASES)
    return _page(request, title="Release ledger", kind="release",
                 main=releases.ledger_main(facts, vendors, recent, instance))


async def release_vendor(request: web.Request) -> web.StreamResponse:
    """A vendor: its keys (revoked ones in red) and its packages (paged)."""
    instance = instance_of(request)
    vendor = request.match_info["vendor"]
    reads = request.app[RELEASE]
    await reads.ledger(instance)
    packages = await request.app[CTX].store.browse.packages(
        instance, vendor, query_param(request, "after") or "", releases.PACKAGES_PAGE)
    try:
        keys = await reads.keys(instance, vendor)
    except NotFoundError:
        if not packages[0]:
            raise
        keys = None
    return _page(request, title=f"Vendor {vendor}", kind="release",
                 main=releases.vendor_main(vendor, keys, packages, instance))


async def release_package(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    instance = instance_of(request)
    updates = await request.app[RELEASE].updates(instance, m["vendor"], m["name"],
                                                 query_param(request, "after"))
    return _page(request, title=updates["package"], kind="release",
                 main=releases.package_main(updates, instance, m["vendor"], m["name"]))


async def release_update(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    instance = instance_of(request)
    found = await request.app[RELEASE].update(instance, m["vendor"], m["name"], m["version"],
                                              query_param(request, "after"))
    return _page(request, title=f"{m['vendor']}/{m['name']} {m['version']}", kind="release",
                 main=releases.update_main(found, instance))


@cache
def _static(name: str) -> bytes:
    return resources.files("chronicle.explorer").joinpath("static", name).read_bytes()


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = STATIC.get(name)
    if content_type is None:
        raise NotFoundError("Not found")
    return request.app[RESP].raw(200, _static(name), content_type=content_type,
                                 headers={**SECURITY, "Cache-Control": "public, max-age=300"})


def add_routes(app: web.Application) -> None:
    """The explorer's pages, ``/`` included."""
    app[GATE] = model.SearchGate()
    r = app.router
    r.add_get("/", root)
    for path in ("/explorer", "/explorer/"):
        r.add_get(path, overview)
    r.add_get("/explorer/entries", entries)
    r.add_get("/explorer/entry/{hash}", entry)
    r.add_get("/explorer/release", release_ledger)
    r.add_get("/explorer/release/vendors/{vendor}", release_vendor)
    r.add_get("/explorer/release/packages/{vendor}/{name}", release_package)
    r.add_get("/explorer/release/packages/{vendor}/{name}/{version}", release_update)
    r.add_get("/explorer/static/{name:.+}", static)
