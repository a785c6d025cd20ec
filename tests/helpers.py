"""Shared test plumbing: data directories, servers on loopback, signed requests.

Servers here are real: an aiohttp site bound to 127.0.0.1 on a free port (in-process, so
tests can pin clocks), or a `chronicle serve` subprocess (for kill/restart tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from aiohttp import web

from chronicle import admin
from chronicle.config import KEY_FILE, SETTINGS, DataDir, write_secret_file
from chronicle.core.encoding import b64u_decode, b64u_encode, utcnow
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey, verify
from chronicle.server.app import build_app
from chronicle.server.context import ServerContext
from chronicle.store import Client, open_store

VECTORS = Path(__file__).parent / "vectors" / "chronicle-1.3"


def load_vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


# The database integration tests run against; tests/integration/conftest.py switches it
# between SQLite and PostgreSQL for every test (both backends pass the same suite).
DATABASE = {"url": "sqlite:chronicle.db"}


async def init_data_dir(path: Path, key: SigningKey | None = None, **settings: Any) -> DataDir:
    """What `chronicle init` does, callable from a running event loop."""
    key = key or SigningKey.generate()
    path.mkdir(parents=True, exist_ok=True)
    raw = {k: default for k, (default, _) in SETTINGS.items()}
    raw["database"] = DATABASE["url"]
    raw.update({k.replace("_", "-"): v for k, v in settings.items()})
    store = open_store(raw["database"], path)
    try:
        await store.create_schema()
        await store.ensure_instance("")
    finally:
        await store.close()
    write_secret_file(path / KEY_FILE, key.to_text())
    (path / "chronicle.toml").write_text(tomli_w.dumps(raw))
    return DataDir(path)


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Identity:
    name: str
    key: SigningKey
    client_id: str


@dataclass
class RunningServer:
    """An in-process server on loopback plus a client session to talk to it."""

    ctx: ServerContext
    runner: web.AppRunner
    url: str
    session: aiohttp.ClientSession
    identities: dict[str, Identity] = field(default_factory=dict)

    @property
    def key(self) -> SigningKey:
        return self.ctx.key

    async def add_client(self, name: str, *, is_admin: bool = False,
                         key: SigningKey | None = None, client_id: str | None = None,
                         instance: str = "") -> Identity:
        key = key or SigningKey.generate()
        cid = client_id or admin.new_client_id()
        async with self.ctx.store.write(instance) as tx:
            await tx.add_client(Client(cid, key.public, is_admin, None,
                                       "2026-01-01T00:00:00+00:00"))
        ident = Identity(name, key, cid)
        self.identities[name] = ident
        return ident

    async def request(self, method: str, path: str, body: bytes | str | None = None, *,
                      headers: Any = None, signed: bool = True) -> Response:
        data = body.encode() if isinstance(body, str) else body
        async with self.session.request(method, self.url + path, data=data,
                                        headers=headers, allow_redirects=False) as resp:
            raw = await resp.read()
            result = Response(resp.status, resp.headers, raw)
        if signed:
            sigs = result.headers.getall(SIGNATURE_HEADER, [])
            assert len(sigs) == 1, f"{method} {path}: expected one signature header, got {sigs}"
            assert verify(self.key.public, raw, b64u_decode(sigs[0], 64)), \
                f"{method} {path}: response signature does not verify"
        return result

    async def publish(self, who: Identity | str, body: bytes | str, *,
                      path: str = "/chronicle/publish") -> Response:
        ident = self.identities[who] if isinstance(who, str) else who
        data = body.encode() if isinstance(body, str) else body
        return await self.request("POST", path, data, headers=signed_headers(ident, data))

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.ctx.store.close()


def signed_headers(ident: Identity, body: bytes) -> dict[str, str]:
    return {CLIENT_HEADER: ident.client_id, SIGNATURE_HEADER: ident.key.sign_b64(body)}


async def start_server(data_dir: DataDir, *, clock: Callable[[], datetime] = utcnow,
                       ledger_clock: Callable[[], datetime] | None = None,
                       new_client_id: Callable[[], str] | None = None) -> RunningServer:
    settings = data_dir.settings()
    store = open_store(settings.database, data_dir.path)
    await store.open()
    ctx = ServerContext(settings=settings, key=data_dir.signing_key(settings), store=store,
                        data_dir=data_dir, clock=clock, ledger_clock=ledger_clock)
    if new_client_id is not None:
        ctx.new_client_id = new_client_id
    runner = web.AppRunner(build_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession()
    return RunningServer(ctx, runner, f"http://127.0.0.1:{port}", session)


REPO_ROOT = Path(__file__).resolve().parent.parent


def _pythonpath() -> str:
    """This checkout first: a subprocess imports the package under test, not whatever
    checkout the virtualenv was installed from."""
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(REPO_ROOT), rest) if p)


class ServerProcess:
    """`chronicle serve` in a subprocess, for tests that kill and restart it (``command``:
    another serving command, e.g. ``("witness", "serve")``)."""

    def __init__(self, data_dir: Path, *extra_args: str,
                 command: tuple[str, ...] = ("serve",)) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    async def start(self, timeout: float = 20.0) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chronicle.cli", *self.command, "--data-dir",
             str(self.data_dir), "--port", "0", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": _pythonpath()})
        assert self.proc.stderr is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stderr.readline),
                                          timeout=timeout)
            if not line:
                raise RuntimeError(f"server exited with {self.proc.wait()}")
            match = re.search(rb"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1).decode()
                loop.run_in_executor(None, self._drain)
                return self.url
        raise RuntimeError("server did not start in time")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for _ in iter(self.proc.stderr.readline, b""):
            pass

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)


def b64(raw: bytes) -> str:
    return b64u_encode(raw)


# --- appended for tests/integration/test_api.py, test_cli.py, test_crash.py ---------------


def verify_chain(rows: list[dict[str, Any]], *, export: bool = True) -> list[Any]:
    """Recompute and check a whole chain as served (export or lookup/since row shape).

    Checks, for every row in order: the link to the previous row (the first one's
    ``prev`` is JSON null), the currhash and summaryhash (recomputed from scratch with
    :class:`chronicle.core.blakechain.ChainBuilder`) and the Ed25519 signature over the
    exact contents. Returns the recomputed entries (their ``index`` is gap-free).
    """
    from chronicle.core.blakechain import ChainBuilder

    k_prev, k_curr, k_sum = ("prev", "hash", "summary") if export else \
        ("prevhash", "currhash", "summaryhash")
    builder = ChainBuilder(None)
    entries = []
    for pos, row in enumerate(rows):
        contents = row["contents"].encode("utf-8")
        publickey = b64u_decode(row["publickey"], 32)
        signature = b64u_decode(row["signature"], 64)
        assert verify(publickey, contents, signature), f"entry {pos}: bad signature"
        expected_prev = builder.prevhash
        if expected_prev is None:
            assert row[k_prev] is None, f"entry {pos}: first prev must be null"
        else:
            assert row[k_prev] == b64u_encode(expected_prev), f"entry {pos}: broken link"
        entry = builder.append(contents, publickey, signature, row["created"])
        assert entry.index == pos
        assert row[k_curr] == b64u_encode(entry.currhash), f"entry {pos}: currhash"
        assert row[k_sum] == b64u_encode(entry.summaryhash), f"entry {pos}: summaryhash"
        entries.append(entry)
    return entries


def check_signed(result: Response, server_public: bytes) -> Response:
    """Assert ``result`` carries exactly one valid server signature over its body."""
    sigs = result.headers.getall(SIGNATURE_HEADER, [])
    assert len(sigs) == 1, f"expected one signature header, got {sigs}"
    assert verify(server_public, result.body, b64u_decode(sigs[0], 64)), \
        "response signature does not verify"
    return result


async def http_request(session: aiohttp.ClientSession, base_url: str, server_public: bytes,
                       method: str, path: str, body: bytes | str | None = None, *,
                       headers: Any = None, signed: bool = True) -> Response:
    """One request to a server we only know by URL and public key (e.g. a subprocess)."""
    data = body.encode() if isinstance(body, str) else body
    async with session.request(method, base_url + path, data=data, headers=headers,
                               allow_redirects=False) as resp:
        result = Response(resp.status, resp.headers, await resp.read())
    if signed:
        check_signed(result, server_public)
    return result


async def http_publish(session: aiohttp.ClientSession, base_url: str, server_public: bytes,
                       ident: Identity, body: bytes | str) -> Response:
    data = body.encode() if isinstance(body, str) else body
    return await http_request(session, base_url, server_public, "POST", "/chronicle/publish",
                              data, headers=signed_headers(ident, data))


async def add_client_offline(data_dir: DataDir, name: str, *, is_admin: bool = False,
                             key: SigningKey | None = None, instance: str = "") -> Identity:
    """Register a client directly in the data dir's database (no server involved)."""
    key = key or SigningKey.generate()
    cid = admin.new_client_id()
    store = open_store(data_dir.settings().database, data_dir.path)
    await store.open()
    try:
        await store.ensure_instance(instance)
        async with store.write(instance) as tx:
            await tx.add_client(Client(cid, key.public, is_admin, None,
                                       "2026-01-01T00:00:00+00:00"))
    finally:
        await store.close()
    return Identity(name, key, cid)


async def start_server_with_store(data_dir: DataDir, store: Any) -> RunningServer:
    """Like :func:`start_server`, with a store the caller built (e.g. a short busy timeout)."""
    settings = data_dir.settings()
    await store.open()
    ctx = ServerContext(settings=settings, key=data_dir.signing_key(settings), store=store,
                        data_dir=data_dir)
    runner = web.AppRunner(build_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return RunningServer(ctx, runner, f"http://127.0.0.1:{port}", aiohttp.ClientSession())


async def stop_process(sp: ServerProcess, *, graceful: bool = False,
                       timeout: float = 30.0) -> int | None:
    """Stop a ServerProcess (SIGKILL, or SIGTERM when ``graceful``) and release its pipe.

    Returns the exit code, or None when it was not running. Safe to call twice.
    """
    proc = sp.proc
    if proc is None:
        return None
    if proc.poll() is None:
        if graceful:
            proc.terminate()
        else:
            proc.kill()
    code = await asyncio.to_thread(proc.wait, timeout)
    if proc.stderr is not None:
        await asyncio.to_thread(proc.stderr.close)
    return code


def admin_request_body(**fields: Any) -> bytes:
    """A register/revoke body as Sapient's createSignedJsonRequest sends it (pretty JSON)."""
    from chronicle.core.encoding import atom, php_json

    body = {k.replace("_", "-"): v for k, v in fields.items()}
    body.setdefault("request-time", atom(utcnow()))
    return php_json(body).encode("ascii")


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def separate_database(tag: str) -> str:
    """A database URL for a second data dir in the same test (SQLite paths are per dir;
    on PostgreSQL it is another schema)."""
    url = DATABASE["url"]
    if url.startswith("sqlite:"):
        return url
    return re.sub(r"schema=([^&]+)", lambda m: f"schema={m.group(1)}_{tag}", url)


@contextlib.asynccontextmanager
async def serving(path: Path, *clients: str, admins: tuple[str, ...] = (),
                  **settings: Any) -> AsyncIterator[RunningServer]:
    """A fresh ledger at ``path`` with ``settings``, served on loopback, with the named
    clients (and administrators) registered; closed on exit."""
    srv = await start_server(await init_data_dir(path, **settings))
    try:
        for name in clients:
            await srv.add_client(name)
        for name in admins:
            await srv.add_client(name, is_admin=True)
        yield srv
    finally:
        await srv.close()


# --- large documents over HTTP, and a server process seen from /proc ------------------------

GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493


class StreamingVerifier:
    """Ed25519 verification of a body fed in chunks (as libsodium: canonical S, valid R and
    A): ``[S]B == R + [k]A`` with ``k = SHA-512(R || A || body)``. A document of hundreds
    of megabytes is checked without holding it."""

    def __init__(self, public: bytes, signature: bytes) -> None:
        import hashlib

        assert len(public) == 32 and len(signature) == 64
        self._a, self._r, self._s = public, signature[:32], signature[32:]
        self._h = hashlib.sha512(self._r + self._a)
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.head = b""

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)
        if len(self.head) < 4096:
            self.head += chunk[:4096 - len(self.head)]

    def verify(self) -> bool:
        from nacl import bindings as sodium

        if int.from_bytes(self._s, "little") >= GROUP_ORDER:
            return False
        if not (sodium.crypto_core_ed25519_is_valid_point(self._r)
                and sodium.crypto_core_ed25519_is_valid_point(self._a)):
            return False
        k = sodium.crypto_core_ed25519_scalar_reduce(self._h.digest())
        s_b = sodium.crypto_scalarmult_ed25519_base_noclamp(self._s)
        k_a = sodium.crypto_scalarmult_ed25519_noclamp(k, self._a)
        return bool(sodium.crypto_core_ed25519_add(self._r, k_a) == s_b)


@dataclass
class Download:
    status: int
    size: int
    sha256: str
    signature: str
    head: bytes


async def download_verified(session: aiohttp.ClientSession, url: str,
                            server_public: bytes) -> Download:
    """GET ``url``, streaming: the signature must verify over the whole body."""
    async with session.get(url) as resp:
        sigs = resp.headers.getall(SIGNATURE_HEADER, [])
        assert len(sigs) == 1, f"{url}: expected one signature header, got {sigs}"
        check = StreamingVerifier(server_public, b64u_decode(sigs[0], 64))
        async for chunk in resp.content.iter_chunked(1 << 20):
            check.update(chunk)
        assert check.verify(), f"{url}: response signature does not verify"
        return Download(resp.status, check.size, check.sha256.hexdigest(), sigs[0], check.head)


def proc_status_mb(pid: int, field: str) -> float:
    """``VmRSS``, ``VmHWM``... of a process, in MB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def open_spool_files(pid: int, under: Path) -> dict[int, tuple[int, bool]]:
    """Files under ``under`` that ``pid`` holds open: ``{inode: (size, unlinked)}`` (each
    file once, however many descriptors)."""
    found: dict[int, tuple[int, bool]] = {}
    prefix = str(under)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(link)
            if target.startswith(prefix):
                found[os.stat(link).st_ino] = (os.stat(link).st_size,
                                               target.endswith(" (deleted)"))
        except OSError:
            continue
    return found


async def slow_reader(url: str, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Asks for ``path`` and then reads nothing (a 4 KiB receive window)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer
