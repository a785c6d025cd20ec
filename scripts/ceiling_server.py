"""Ceiling server: POST /chronicle/publish doing only a publish's cryptography, no storage.

It verifies ``Body-Signature-Ed25519`` over the exact body with the client key named by
``Chronicle-Client-Key-ID`` (an in-memory dict), hashes the entry like the chain would
(one keyed BLAKE2b-256 and a running summary), and answers a Chronicle-shaped receipt
signed in ``Body-Signature-Ed25519``. Same primitives (chronicle.core.sapient), same JSON
renderer and the same aiohttp + uvloop setup as ``chronicle serve``: whatever the real
server does beyond this (sequencing, SQLite, durable commit) is what the benchmark
compares against.

    python scripts/ceiling_server.py --port 0 --client ID=PUBLICKEY

prints ``server-public-key: ...`` then ``listening on http://HOST:PORT`` on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import sys

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
    receipt = {"currhash": b64u_encode(curr), "summaryhash": b64u_encode(summary.digest()),
               "created": created}
    return _answer(key, 200, protocol.ok_envelope(now, receipt))


def build_app(clients: dict[str, bytes], key: SigningKey) -> web.Application:
    app = web.Application()
    app[CLIENTS] = clients
    app[KEY] = key
    app[CHAIN] = [b"", SummaryState()]
    app.router.add_post("/chronicle/publish", publish)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client", action="append", default=[], metavar="ID=PUBLICKEY",
                        help="a client allowed to publish (repeatable)")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the ceiling server listens on loopback only")
    clients: dict[str, bytes] = {}
    for item in args.client:
        cid, _, pk = item.partition("=")
        clients[cid] = b64u_decode(pk, 32, what="client public key")
    key = SigningKey.generate()  # throwaway, announced on stderr
    uvloop.run(serve(build_app(clients, key), args.host, args.port))


if __name__ == "__main__":
    main()
