"""The write endpoints: ``publish`` (registered clients), ``register`` and ``revoke``
(admins). Each request is checked the Sapient way before anything else happens: exactly
one known client, exactly one valid signature over the exact body bytes."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from chronicle import admin
from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.errors import (
    AuthError,
    EncodingError,
    NotFoundError,
    OverloadedError,
    RequestError,
)
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, verify
from chronicle.server.admission import read_body
from chronicle.server.context import ServerContext
from chronicle.server.keys import CTX, RESP
from chronicle.server.routing import instance_of
from chronicle.store import Client

#: How long an address over its limits waits for its 429. Answered at once, a flood that
#: waits for each answer got as many signed 429s as the server could sign, and valid
#: publishers slowed down by 2.6x (scripts/bench_flood.py); held, each of its connections
#: (at most max-connections-per-ip) costs the server about one answer a second.
TARPIT_S = 1.0


def _retry(wait: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait)))}


async def authenticate(request: web.Request, instance: str, *, admin_only: bool
                       ) -> tuple[Client, bytes, bytes]:
    """:func:`_authenticate` behind the per-address limits: an address over its write rate,
    or whose recent writes kept failing the check (a flood of forged signatures, each one
    costing a verification), gets a signed 429 before anything is verified."""
    ctx = request.app[CTX]
    address = request.remote or ""
    wait = max(ctx.failures.waiting(address), ctx.ip_limiter.retry_after(address))
    if wait > 0:
        await asyncio.sleep(TARPIT_S)
        raise RequestError("Too many requests from this address, retry later", status=429,
                           headers=_retry(wait))
    try:
        return await _authenticate(request, instance, admin_only=admin_only)
    except AuthError:
        ctx.failures.retry_after(address)
        raise


async def _authenticate(request: web.Request, instance: str, *, admin_only: bool
                        ) -> tuple[Client, bytes, bytes]:
    """Sapient request check: one known client, one valid signature over the exact body.

    Returns ``(client, body, signature)``. The body is read only after the client is
    known, and within the admission limits (``server/admission.py``): client ids are
    public, so anyone can get this far.
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
    body = await read_body(request, ctx.body_limits)
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


def _check_writable(ctx: ServerContext) -> None:
    if ctx.settings.read_only:
        raise OverloadedError("This ledger is read-only at the moment; nothing was stored",
                              retry_after=60)


async def publish(request: web.Request) -> web.StreamResponse:
    ctx, resp = request.app[CTX], request.app[RESP]
    instance = instance_of(request)
    _check_writable(ctx)
    client, body, signature = await authenticate(request, instance, admin_only=False)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("Request body is not valid UTF-8") from None
    protocol.check_publish_timestamp(body, resp.clock(), ctx.settings.request_timeout)
    if ctx.limiter.rate > 0:
        # A retry of a stored entry (anyone can resend a public one) takes no token:
        # otherwise strangers could spend a client's rate limit with its old entries.
        stored = await ctx.store.chain(instance).with_signature(signature)
        if stored is not None and stored.contents == body \
                and stored.publickey == client.publickey:
            return resp.ok(stored.receipt())
        wait = ctx.limiter.retry_after(instance, client.publicid)
        if wait > 0:
            raise RequestError("Rate limit exceeded, retry later", status=429,
                               headers=_retry(wait))
    entry: Entry = await ctx.publish(instance, body, client.publickey, signature,
                                     client.publicid)
    return resp.ok(entry.receipt())


@dataclass(frozen=True)
class AdminCall:
    """An authenticated administrator's request: its checked fields and where it goes."""

    ctx: ServerContext
    instance: str
    now: datetime
    fields: dict[str, Any]
    by: Client
    signature: bytes

    def record(self, action: str) -> admin.AdminRequest:
        """What the replay guard keeps of it (one use per signed request)."""
        return admin.AdminRequest(self.by.publicid, self.signature, action)


async def _admin_call(request: web.Request) -> AdminCall:
    ctx = request.app[CTX]
    instance = instance_of(request)
    _check_writable(ctx)
    by, body, signature = await authenticate(request, instance, admin_only=True)
    now = request.app[RESP].clock()
    fields = protocol.parse_admin_body(body, now, ctx.settings.request_timeout)
    return AdminCall(ctx, instance, now, fields, by, signature)


async def register(request: web.Request) -> web.StreamResponse:
    call = await _admin_call(request)
    ctx = call.ctx
    publickey, comment = protocol.parse_register(call.fields)
    client = await admin.register_client(
        ctx.store, ctx.ledger(call.instance), ctx.key, publickey=publickey, is_admin=False,
        comment=comment, client_id=ctx.new_client_id(), now=call.now,
        publish=ctx.settings.publish_new_clients, request=call.record("register"))
    return request.app[RESP].ok({"client-id": client.publicid})


async def revoke(request: web.Request) -> web.StreamResponse:
    call = await _admin_call(request)
    ctx = call.ctx
    client_id, key_text = protocol.parse_revoke(call.fields)
    client = await ctx.store.clients.get(call.instance, client_id)
    if client is None or b64u_encode(client.publickey) != key_text:
        raise NotFoundError(protocol.MSG_REVOKE_UNKNOWN)
    if client.is_admin:
        raise AuthError(protocol.MSG_REVOKE_ADMIN)
    await admin.revoke_client(ctx.store, ctx.ledger(call.instance), ctx.key, client=client,
                              now=call.now, publish=ctx.settings.publish_revoked_clients,
                              request=call.record("revoke"))
    return request.app[RESP].ok({"deleted": True})
