"""Ceiling server: POST /chronicle/publish doing only a publish's cryptography, no storage.

It verifies ``Body-Signature-Ed25519`` over the exact body with the client key named by
``Chronicle-Client-Key-ID`` (an in-memory dict), hashes the entry like the chain would
(one keyed BLAKE2b-256 and a running summary), and answers a Chronicle-shaped receipt
signed in ``Body-Signature-Ed25519``. Same primitives (chronicle.core.sapient), same JSON
renderer and the same aiohttp + uvloop setup as ``chronicle serve``: whatever the real
server does beyond this (sequencing, SQLite, durable commit) is what the benchmark
compares against.

With ``--durable DIR`` it is the *durable floor* instead: each entry is also appended to a
file in DIR and answered only once that file is ``fdatasync``-ed, one sync per group of
waiting entries on one writer thread, as the real server commits (a file: no database,
index or tree). A server on this stack that answers only after its entry is durable
should not expect to beat that on the same machine, whatever its storage.

    python scripts/ceiling_server.py --port 0 --client ID=PUBLICKEY [--workers N] [--durable DIR]

prints ``server-public-key: ...`` then ``listening on http://HOST:PORT`` on stderr. With
``--workers N`` the parent binds the socket and forks N processes that share it, as
``chronicle serve --workers N`` does (each keeps its own running hash; no storage anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop
from aiohttp import web

from chronicle.core import protocol
from chronicle.core.blakechain import SummaryState
from chronicle.core.encoding import atom, b64u_decode, b64u_encode, utcnow
from chronicle.core.errors import EncodingError
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey, verify

CLIENTS = web.AppKey("clients", dict)
KEY = web.AppKey("key", SigningKey)
CHAIN = web.AppKey("chain", list)


class GroupLog:
    """An append-only file with group commit: entries wait for one ``fdatasync`` together."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="durable-writer")
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _sync(self, data: bytes) -> None:
        os.write(self._fd, data)
        os.fdatasync(self._fd)

    async def append(self, *parts: bytes) -> None:
        """Return once ``parts`` (length-prefixed, as one record) are on disk."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((b"".join(struct.pack(">I", len(p)) + p for p in parts), done))
        self._wakeup.set()
        await done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await loop.run_in_executor(self._writer, self._sync,
                                           b"".join(record for record, _ in batch))
            except OSError as exc:
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)


DURABLE = web.AppKey("durable", GroupLog)


def _answer(key: SigningKey, status: int, envelope: dict[str, object]) -> web.Response:
    body = protocol.render(envelope)
    return web.Response(status=status, body=body, headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: key.sign_b64(body)})


def _error(key: SigningKey, status: int, message: str) -> web.Response:
    return _answer(key, status, protocol.error_envelope(utcnow(), message))


async def publish(request: web.Request) -> web.Response:
    """Verify the client's signature, sign a receipt; store nothing."""
    key: SigningKey = request.app[KEY]
    ids = request.headers.getall(CLIENT_HEADER, [])
    sigs = request.headers.getall(SIGNATURE_HEADER, [])
    if len(ids) != 1 or len(sigs) != 1:
        return _error(key, 403, protocol.MSG_NO_SIGNATURE)
    public = request.app[CLIENTS].get(ids[0])
    if public is None:
        return _error(key, 403, protocol.MSG_CLIENT_NOT_FOUND)
    body = await request.read()
    try:
        signature = b64u_decode(sigs[0], 64, what="signature")
    except EncodingError:
        return _error(key, 403, protocol.MSG_BAD_SIGNATURE)
    if not verify(public, body, signature):
        return _error(key, 403, protocol.MSG_BAD_SIGNATURE)
    now = utcnow()
    created = atom(now)
    prev, summary = request.app[CHAIN]
    h = hashlib.blake2b(digest_size=32, key=prev)
    for part in (created.encode(), public, signature, body):
        h.update(part)
    curr = h.digest()
    summary.update(curr)
    request.app[CHAIN][0] = curr
    durable = request.app.get(DURABLE)
    if durable is not None:
        await durable.append(created.encode(), public, signature, body, curr)
    receipt = {"currhash": b64u_encode(curr), "summaryhash": b64u_encode(summary.digest()),
               "created": created}
    return _answer(key, 200, protocol.ok_envelope(now, receipt))


def build_app(clients: dict[str, bytes], key: SigningKey,
              durable: Path | None = None) -> web.Application:
    app = web.Application()
    app[CLIENTS] = clients
    app[KEY] = key
    app[CHAIN] = [b"", SummaryState()]
    if durable is not None:
        app[DURABLE] = GroupLog(durable / f"entries-{os.getpid()}.log")
    app.router.add_post("/chronicle/publish", publish)
    return app


async def serve(app: web.Application, host: str, port: int,
                sock: socket.socket | None = None) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        if sock is None:
            bound = runner.addresses[0][1]
            print(f"server-public-key: {app[KEY].public_b64}", file=sys.stderr, flush=True)
            print(f"listening on http://{host}:{bound}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_workers(clients: dict[str, bytes], key: SigningKey, host: str, port: int,
                  workers: int, durable: Path | None) -> None:
    """Bind once, fork ``workers`` servers on the socket, stop them all on SIGTERM."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                uvloop.run(serve(build_app(clients, key, durable), host, port, sock=sock))
                code = 0
            finally:
                os._exit(code)
        children.append(pid)

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"server-public-key: {key.public_b64}", file=sys.stderr, flush=True)
    print(f"listening on http://{host}:{sock.getsockname()[1]} ({workers} workers)",
          file=sys.stderr, flush=True)
    failed = False
    for child in children:
        _, status = os.waitpid(child, 0)
        failed = failed or os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM)
    sys.exit(1 if failed else 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the listening socket")
    parser.add_argument("--client", action="append", default=[], metavar="ID=PUBLICKEY",
                        help="a client allowed to publish (repeatable)")
    parser.add_argument("--durable", type=Path, metavar="DIR",
                        help="the durable floor: append every entry to a file in DIR (an "
                             "existing directory) and answer after its fdatasync")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the ceiling server listens on loopback only")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    clients: dict[str, bytes] = {}
    for item in args.client:
        cid, _, pk = item.partition("=")
        clients[cid] = b64u_decode(pk, 32, what="client public key")
    key = SigningKey.generate()  # throwaway, announced on stderr
    if args.workers > 1:
        serve_workers(clients, key, args.host, args.port, args.workers, args.durable)
    else:
        uvloop.run(serve(build_app(clients, key, args.durable), args.host, args.port))


if __name__ == "__main__":
    main()
