"""What only replicas have: the list of replicated sources, each source's own index, and
its ``lasthash`` (an object, as PHP). Their lookup/since/export are the common chain
reads (:mod:`chronicle.server.reads`)."""

from __future__ import annotations

from aiohttp import web

from chronicle.core import protocol, replica
from chronicle.core.errors import NotFoundError
from chronicle.server.keys import CTX, RESP
from chronicle.server.routing import instance_of, replica_source


async def index(request: web.Request) -> web.StreamResponse:
    sources = await request.app[CTX].store.replication.sources(instance_of(request))
    return request.app[RESP].ok([replica.index_row(s.uniqueid, s.url, s.name, s.publickey,
                                                   status=s.status, fault=s.fault)
                                 for s in sources])


async def subindex(request: web.Request) -> web.StreamResponse:
    s = await replica_source(request)
    return request.app[RESP].ok(replica.subindex(
        s.uniqueid, s.url, s.publickey, status=s.status, fault=s.fault, reason=s.reason,
        since=s.status_since))


async def lasthash(request: web.Request) -> web.StreamResponse:
    source = await replica_source(request)
    head = await request.app[CTX].store.replication.chain(source.id).head()
    return request.app[RESP].ok(replica.lasthash_results(head), notice=replica.NOTICE)


async def unknown(request: web.Request) -> web.StreamResponse:
    instance_of(request)
    raise NotFoundError(protocol.MSG_UNKNOWN_URI)
