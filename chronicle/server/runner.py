"""``chronicle serve``: run the HTTP server for one data directory until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from chronicle.config import DataDir
from chronicle.server.app import build_app
from chronicle.server.context import ServerContext
from chronicle.store import store_for_url

log = logging.getLogger(__name__)


async def open_context(data_dir: DataDir) -> ServerContext:
    settings = data_dir.settings()
    key = data_dir.signing_key(settings)
    store = store_for_url(settings.database, data_dir.path)
    await store.open()
    return ServerContext(settings=settings, key=key, store=store,
                         cache_dir=data_dir.cache_dir)


async def serve(data_dir: DataDir, host: str, port: int, *, shutdown_timeout: float = 30.0) -> None:
    """Serve until a stop signal, then drain: stop accepting, finish requests, commit queues."""
    ctx = await open_context(data_dir)
    app = build_app(ctx)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        server = site._server  # the bound socket tells the real port when port was 0
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        print(f"listening on http://{host}:{bound}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: draining requests and the append queue")
    finally:
        await runner.cleanup()
        with contextlib.suppress(Exception):
            await ctx.store.close()


def run(data_dir: Path, host: str, port: int) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(serve(DataDir(data_dir), host, port))
    else:
        uvloop.run(serve(DataDir(data_dir), host, port))
