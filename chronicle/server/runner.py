"""``chronicle serve``: run the HTTP server for one data directory until SIGTERM/SIGINT.

With ``--workers N`` the parent binds the socket, forks N server processes that share it
(the kernel spreads connections), restarts a worker that dies, and on SIGTERM stops them
all. Each worker has its own database connections; client publishes are sequenced by
worker 0, to which the others forward them over a private Unix socket
(:mod:`~chronicle.server.sequencer_link`), so each group commit holds everyone's. Any
other append (and a forwarded one whose link is down) goes through the worker's own
sequencer: appends from all processes are ordered by the database's chain-head lock
(SQLite's write lock, PostgreSQL's row lock), so the chain stays gap-free however many
processes write.

:func:`run_site` is the serving itself (connection gate, signal handling, draining), for
any app: ``chronicle witness serve`` runs the witness's through it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from chronicle.config import DataDir, IPNetwork
from chronicle.server.admission import MSG_TOO_MANY, ConnectionGate, GatedSite, raise_fd_limit
from chronicle.server.app import build_app
from chronicle.server.context import ServerContext
from chronicle.server.keys import RESP
from chronicle.server.metrics import enable_multiprocess, worker_gone
from chronicle.server.responses import Responder
from chronicle.server.sequencer_link import LinkClient, LinkServer
from chronicle.store import open_store

log = logging.getLogger(__name__)


#: Seconds the rest of a refused request body is drained before the connection closes.
LINGER = 2.0


async def open_context(data_dir: DataDir) -> ServerContext:
    settings = data_dir.settings()
    key = data_dir.signing_key(settings)
    store = open_store(settings.database, data_dir.path)
    await store.open()
    return ServerContext(settings=settings, key=key, store=store,
                         data_dir=data_dir)


Announce = Callable[[str, int], None]


def announce_on_stderr(url: str, workers: int) -> None:
    """The line that says the server accepts connections (scripts wait for it)."""
    more = f" ({workers} workers)" if workers > 1 else ""
    print(f"listening on {url}{more}", file=sys.stderr, flush=True)


class Admission(Protocol):
    """The settings :func:`run_site` needs (the ledger's and the witness's both have them)."""

    @property
    def max_connections(self) -> int: ...

    @property
    def max_connections_per_ip(self) -> int: ...

    @property
    def idle_timeout(self) -> timedelta | None: ...

    @property
    def trusted_proxies(self) -> tuple[IPNetwork, ...]: ...


async def run_site(app: web.Application, responder: Responder, limits: Admission, host: str,
                   port: int, *, sock: socket.socket | None = None,
                   shutdown_timeout: float = 30.0,
                   announce: Announce = announce_on_stderr) -> None:
    """Serve ``app`` on ``host:port`` (or the bound ``sock``) behind the connection gate
    until a stop signal, then drain: stop accepting, finish requests, run the app's
    cleanup. ``announce(url, 1)`` once it accepts connections on its own socket."""
    files = raise_fd_limit()
    # Refuse in time: leave descriptors for the database, spool files and workers.
    gate = ConnectionGate(min(limits.max_connections, max(16, files - 64)),
                          limits.max_connections_per_ip,
                          lambda: responder.error_bytes(503, "Service Unavailable",
                                                        MSG_TOO_MANY, {"Retry-After": "1"}),
                          limits.trusted_proxies)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=shutdown_timeout,
                           # The signature covers the bytes sent: never inflate a body.
                           auto_decompress=False,
                           keepalive_timeout=limits.idle_timeout.total_seconds()
                           if limits.idle_timeout else 75.0,
                           # After an answer sent before the body was read (408, 413,
                           # 415, 503), what the client still sends is drained for this
                           # long so the answer is not lost to a reset, then the
                           # connection is closed: aiohttp's 10 s let a stalled upload
                           # hold its connection five times the body timeout.
                           lingering_time=LINGER)
    own_socket = sock is None
    listening = sock
    try:
        await runner.setup()
        if listening is None:
            listening = _bind(host, port)
        await GatedSite(runner, listening, gate, responder.error,
                        shutdown_timeout=shutdown_timeout).start()
        if own_socket:
            announce(f"http://{host}:{listening.getsockname()[1]}", 1)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: draining requests")
    finally:
        await runner.cleanup()
        if own_socket and listening is not None:
            listening.close()


@dataclass(frozen=True)
class LinkRole:
    """A worker's part in sequencing (``serve --workers N``): worker 0 listens on ``path``
    and sequences, the others forward their publishes to it."""

    path: Path
    sequencer: bool
    workers: int


async def serve(data_dir: DataDir, host: str, port: int, *, sock: socket.socket | None = None,
                shutdown_timeout: float = 30.0, announce: Announce = announce_on_stderr,
                link: LinkRole | None = None) -> None:
    """Serve until a stop signal, then drain: stop accepting, finish requests, commit queues."""
    ctx = await open_context(data_dir)
    server: LinkServer | None = None
    try:
        if link is not None and link.sequencer:
            ctx.queue_share = link.workers  # the others' publishes queue here too
            server = LinkServer(ctx.sequence_forwarded, ctx.settings.max_body_size)
            try:
                await server.start(link.path)
            except OSError as exc:
                # Only an optimisation: the other workers, finding nobody there, append
                # through their own sequencers as before.
                log.error("cannot listen for the other workers' publishes on %s: %s",
                          link.path, exc)
                server = None
        elif link is not None:
            ctx.link = LinkClient(link.path)
        app = build_app(ctx)
        if server is not None:
            link_server = server

            async def close_link(_: web.Application) -> None:
                # Before the sequencer stops: what was forwarded is answered, and what
                # the other workers send from now on they append themselves.
                await link_server.close()

            app.on_shutdown.append(close_link)
        await run_site(app, app[RESP], ctx.settings, host, port, sock=sock,
                       shutdown_timeout=shutdown_timeout, announce=announce)
    finally:
        if server is not None:
            await server.close()
        if ctx.link is not None:
            await ctx.link.close()
        with contextlib.suppress(Exception):
            await ctx.store.close()


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


QUICK_FAILURE_S = 10.0
MAX_QUICK_FAILURES = 5


async def _preflight(data_dir: DataDir) -> None:
    ctx = await open_context(data_dir)
    await ctx.store.close()


PR_SET_PDEATHSIG = 1


def _stop_with(parent: int) -> None:
    """Linux: a SIGTERM for this worker when its supervisor dies (SIGKILL, the OOM
    killer), so that no worker serves on, unsupervised, as an orphan."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request above
        os.kill(os.getpid(), signal.SIGTERM)


class _Supervisor:
    """Forks ``workers`` servers on one socket and restarts any that dies."""

    def __init__(self, data_dir: DataDir, host: str, port: int, sock: socket.socket,
                 link_dir: Path, workers: int) -> None:
        self.data_dir, self.host, self.port, self.sock = data_dir, host, port, sock
        self.link_path = link_dir / "sequencer.sock"
        self.workers = workers
        self.stopping = False
        self.failed = False
        self.children: dict[int, int] = {}  # pid -> slot
        self.started: dict[int, float] = {}  # slot -> when its current worker started
        self.quick_failures = 0

    def spawn(self, slot: int) -> None:
        self.started[slot] = time.monotonic()
        # A SIGTERM arriving between fork and the child's own handlers ran the supervisor's
        # handler in the new worker, which then served on as an orphan after its
        # supervisor exited: the signals wait (blocked) until the child has reset them.
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _stop_with(supervisor)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            code = 0
            try:
                run_loop(serve(self.data_dir, self.host, self.port, sock=self.sock,
                               link=LinkRole(self.link_path, slot == 0, self.workers)))
            except BaseException:
                log.exception("worker %d failed", slot)
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = slot
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)

    def stop(self, _signum: int = signal.SIGTERM, _frame: object = None) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reaped(self, pid: int, status: int) -> None:
        """One worker ended: note it, and restart it unless stopping or failing at start."""
        if pid not in self.children:
            return
        slot = self.children.pop(pid)
        worker_gone(pid)
        code = os.waitstatus_to_exitcode(status)
        if self.stopping:
            self.failed = self.failed or code not in (0, -signal.SIGTERM)
            return
        lived = time.monotonic() - self.started.get(slot, 0.0)
        self.quick_failures = self.quick_failures + 1 if lived < QUICK_FAILURE_S else 0
        if self.quick_failures >= MAX_QUICK_FAILURES:
            log.error("workers keep failing at start (last: worker %d, exit %d); stopping",
                      slot, code)
            self.stop()
            self.failed = True
            return
        log.error("worker %d (pid %d) exited with %d; restarting it", slot, pid, code)
        time.sleep(1.0)
        if not self.stopping:
            self.spawn(slot)


def _run_workers(data_dir: DataDir, host: str, port: int, workers: int,
                 announce: Announce) -> None:
    """The supervisor process: fork the workers, wait on them, exit 1 if any failed."""
    # Fail here, once, with a clear error, on a bad configuration, key or database:
    # not in every worker, over and over.
    asyncio.run(_preflight(data_dir))
    # Every worker writes its metrics to files there; a scrape of any worker sums them.
    metrics_dir = data_dir.cache_dir / f"metrics-{os.getpid()}"
    enable_multiprocess(metrics_dir)
    sock = _bind(host, port)
    # Worker 0's sequencer socket: in a directory only this user can enter (mkdtemp: 0700),
    # under the temporary directory because a Unix socket's path is limited to ~100 bytes.
    link_dir = Path(tempfile.mkdtemp(prefix="chronicle-seq-"))
    if len(str(link_dir)) > 80:  # a long TMPDIR: the socket's path would not fit
        shutil.rmtree(link_dir, ignore_errors=True)
        link_dir = Path(tempfile.mkdtemp(prefix="chronicle-seq-", dir="/tmp"))
    sup = _Supervisor(data_dir, host, port, sock, link_dir, workers)
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    try:
        for slot in range(workers):
            sup.spawn(slot)
        # Connections queue on the bound socket until a worker accepts them.
        announce(f"http://{host}:{sock.getsockname()[1]}", workers)
        while sup.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            sup.reaped(pid, status)
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(link_dir, ignore_errors=True)
    if sup.failed:
        sys.exit(1)


def run(data_dir: Path, host: str, port: int, *, workers: int = 1,
        announce: Announce = announce_on_stderr) -> None:
    """Serve ``data_dir`` until SIGTERM; ``announce(url, workers)`` once connections are
    accepted."""
    if workers > 1:
        _run_workers(DataDir(data_dir), host, port, workers, announce)
    else:
        run_loop(serve(DataDir(data_dir), host, port, announce=announce))
