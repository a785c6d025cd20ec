"""Which chain a request names: ``?instance=NAME`` for ours, ``{source}`` for a replica."""

from __future__ import annotations

from aiohttp import web

from chronicle.core import protocol, replica
from chronicle.core.errors import NotFoundError, RequestError
from chronicle.server.keys import CTX
from chronicle.server.reads import ChainRoute
from chronicle.store import ReplicaSource


def query_param(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once (twice is ambiguous: 400)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise RequestError(f"Only one {name} parameter may be provided")
    return values[0] if values else None


def instance_of(request: web.Request) -> str:
    """The ``instance`` query parameter (``""``: the default chain); unknown → 404."""
    name = query_param(request, "instance") or ""
    if name not in request.app[CTX].settings.instances:
        raise NotFoundError(protocol.MSG_INSTANCE_NOT_FOUND)
    return name


async def main_route(request: web.Request) -> ChainRoute:
    instance = instance_of(request)
    return ChainRoute(request.app[CTX].store.chain(instance), links="", cache_key=instance)


async def replica_source(request: web.Request) -> ReplicaSource:
    """The source named by ``{source}`` (its uniqueid); else PHP's 404 "Unknown URI"."""
    ref = request.match_info["source"]
    source = await request.app[CTX].store.replication.source(ref, instance_of(request))
    if source is None or source.uniqueid != ref:
        raise NotFoundError(protocol.MSG_UNKNOWN_URI)
    return source


async def replica_route(request: web.Request) -> ChainRoute:
    source = await replica_source(request)
    return ChainRoute(request.app[CTX].store.replication.chain(source.id),
                      links=replica.source_path(source.uniqueid),
                      cache_key=f"replica:{source.uniqueid}", first_prev="", not_found=404,
                      notice=replica.NOTICE)
