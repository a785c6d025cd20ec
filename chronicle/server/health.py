"""Liveness, readiness, metrics and request ids: what an operator's tooling asks.

- ``GET /healthz``: the process answers (200).
- ``GET /readyz``: 200 when it can do its job — the database answers, its schema is the
  one this code needs, the signing key signs, no sequencer is stuck, and the last write
  of every chain went through; else 503 with what is wrong. Every check is named in the
  answer, so an orchestrator's log shows why.
- ``GET /metrics``: Prometheus text (:mod:`chronicle.server.metrics`).

All three are signed like every other answer. Request ids: an ``X-Request-Id`` sent by a
proxy (a short token) is kept, else one is made; it is returned on the answer and set on
every log record written while handling the request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chronicle.core.encoding import parse_timestamp
from chronicle.core.errors import ChronicleError
from chronicle.core.sapient import verify
from chronicle.server import requestids
from chronicle.server.keys import CTX, RESP
from chronicle.server.metrics import CONTENT_TYPE
from chronicle.store import schema

#: A sequencer whose queue waited this long without a batch finishing is stuck.
STUCK_AFTER = 30.0
REQUEST_ID = "X-Request-Id"
_ID_RE = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: The request's id, for the answer's header (see :func:`stamp_request_id`).
RID = web.RequestKey("request-id", str)


@web.middleware
async def with_request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The client's ``X-Request-Id`` if it is a sane one, else a new one: in every log line
    of the request, and in the answer's header."""
    sent = request.headers.get(REQUEST_ID, "")
    rid = sent if sent and _ID_RE.match(sent) else requestids.new()
    request[RID] = rid
    token = requestids.current.set(rid)
    try:
        return await handler(request)
    finally:
        requestids.current.reset(token)


def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Called as the headers go out (``on_response_prepare``): also for answers a handler
    sends itself (a spooled document), which no middleware sees before they are sent."""
    rid = request.get(RID)
    if rid is not None:
        response.headers[REQUEST_ID] = rid


async def healthz(request: web.Request) -> web.StreamResponse:
    return request.app[RESP].ok({"status": "alive"})


async def readyz(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    checks: dict[str, str] = {}
    ready = True

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal ready
        checks[name] = "ok" if ok else detail
        ready = ready and ok

    try:
        found = await schema.version(ctx.store.db)
        check("database", True, "")
        check("schema", found == schema.SCHEMA_VERSION,
              f"version {found}, this chronicle needs {schema.SCHEMA_VERSION}")
    except ChronicleError as exc:
        check("database", False, exc.message)
    probe = b"readyz"
    check("signing-key", verify(ctx.key.public, probe, ctx.key.sign(probe)), "cannot sign")
    for instance, ledger in ctx.ledgers.items():
        name = f"sequencer {instance or '(default)'}"
        stuck = ledger.stuck_for()
        check(name, stuck < STUCK_AFTER, f"no batch finished for {stuck:.0f} s")
        if ledger.disk_full:
            await ledger.make_room()
        if ledger.write_error is not None:
            check(f"writes {instance or '(default)'}", False, ledger.write_error)
    if ctx.link is not None:  # serve --workers N: worker 0 sequences our publishes
        waiting = ctx.link.oldest_waiting()
        check("sequencer link", waiting < STUCK_AFTER,
              f"worker 0 has not answered a publish for {waiting:.0f} s")
        if ctx.link.write_error is not None:
            check("writes (worker 0)", False, ctx.link.write_error)
    body: dict[str, Any] = {"ready": ready, "checks": checks}
    resp = request.app[RESP]
    if ready:
        return resp.ok(body)
    return resp.error(503, "not ready: " + "; ".join(f"{k}: {v}" for k, v in checks.items()
                                                    if v != "ok"), details=body)


async def metrics(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    m = ctx.metrics
    for instance in ctx.settings.instances:
        with _quiet():
            head = await ctx.store.chain(instance).head()
            m.chain.labels(instance or "(default)").set(0 if head is None else head.index + 1)
    now = time.time()
    with _quiet():
        for source in await ctx.store.replication.sources(None):
            m.replica_stopped.labels(source.name).set(0 if source.status == "active" else 1)
            synced = _epoch(source.last_sync)
            if synced is not None:
                m.replica_age.labels(source.name).set(max(0.0, now - synced))
    return request.app[RESP].raw(200, m.render(), content_type=CONTENT_TYPE)


class _quiet:
    """A scrape never fails for a database hiccup: that gauge is just not refreshed."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, ChronicleError)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return parse_timestamp(stamp).timestamp()
    except ChronicleError:
        return None
