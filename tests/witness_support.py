"""Test plumbing for witnesses: a log built in memory, witness directories, and our
witness served on loopback (in-process, so tests can pin its clock)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

from chronicle.cli.common import open_witness
from chronicle.config import WitnessDir, WitnessSettings, write_secret_file
from chronicle.core.checkpoint import (
    AddCheckpointRequest,
    Checkpoint,
    CosignatureVerifier,
    Cosigner,
    Quorum,
    WitnessEndpoint,
    sign_checkpoint,
)
from chronicle.core.encoding import atom, utcnow
from chronicle.core.merkle import MemoryHashes, leaf_hash
from chronicle.core.note import Ed25519Signer
from chronicle.core.sapient import SigningKey
from chronicle.server.witness import build_witness_app
from chronicle.store.witness import WitnessStore, open_witness_store
from tests.helpers import DATABASE, Response, check_signed, separate_database

ORIGIN = "log.example/chronicle/tlog"


class TestLog:
    """A log kept in memory: an RFC 6962 tree (``MemoryHashes``) and its checkpoint key.
    ``tag`` makes different histories (a fork has other leaves)."""

    __test__ = False  # not a test class

    def __init__(self, origin: str = ORIGIN, signer: Ed25519Signer | None = None,
                 tag: str = "") -> None:
        self.origin = origin
        self.signer = signer or Ed25519Signer.generate(origin)
        self.tag = tag
        self.tree = MemoryHashes()

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def vkey(self) -> str:
        return self.signer.vkey()

    def grow(self, to: int) -> TestLog:
        while self.tree.size < to:
            self.tree.append(leaf_hash(f"{self.tag}entry {self.tree.size}".encode()))
        return self

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = self.size if size is None else size
        return Checkpoint(self.origin, size, self.tree.root(size))

    def note(self, size: int | None = None) -> bytes:
        """The signed checkpoint at ``size`` (default: now)."""
        return sign_checkpoint(self.checkpoint(size), self.signer)

    def request(self, old: int, size: int | None = None) -> bytes:
        """An add-checkpoint body from ``old`` to ``size``, with the right proof (none
        where there is none: from 0, to the same size, or backwards)."""
        size = self.size if size is None else size
        proof = () if old == 0 or old >= size else tuple(self.tree.consistency_proof(old, size))
        return AddCheckpointRequest(old, proof, self.note(size)).to_bytes()

    async def proofs(self, old: int, new: int) -> list[bytes]:
        return self.tree.consistency_proof(old, new)


class FakeClock:
    """A clock a test moves by hand (a witness's cosignature timestamps)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeLog:
    """The log side of witnessing (``CheckpointLog``) over a :class:`TestLog`: what it
    publishes is recorded."""

    log: TestLog
    published: list[tuple[bytes, Quorum]] = field(default_factory=list)

    async def latest_checkpoint(self) -> bytes | None:
        return self.log.note() if self.log.size else None

    async def consistency_proof(self, old: int, new: int) -> Sequence[bytes]:
        return await self.log.proofs(old, new)

    async def publish_cosigned(self, note: bytes, quorum: Quorum) -> None:
        self.published.append((note, quorum))


def witness_database(tag: str) -> str:
    """The database URL of a witness directory in this test (SQLite: its own file)."""
    if DATABASE["url"].startswith("sqlite:"):
        return "sqlite:witness.db"
    return separate_database(f"w{tag}")


async def init_witness_dir(path: Path, name: str = "witness.example/w1",
                           key: SigningKey | None = None, **settings: object) -> WitnessDir:
    """What `chronicle witness init` does, callable from a running event loop."""
    witness_dir = WitnessDir(path)
    path.mkdir(parents=True, exist_ok=True)
    raw = WitnessSettings.with_defaults({"name": name, "database": witness_database(path.name),
                                         **{k.replace("_", "-"): v for k, v in
                                            settings.items()}})
    store = open_witness_store(raw["database"], path)
    try:
        await store.create_schema()
    finally:
        await store.close()
    write_secret_file(witness_dir.default_key_path, (key or SigningKey.generate()).to_text())
    witness_dir.write_raw(raw)
    return witness_dir


async def add_log(witness_dir: WitnessDir, log: TestLog, *vkeys: str) -> None:
    """What `chronicle witness add-log` does (the log's own key unless others are given)."""
    async with open_witness(witness_dir) as store:
        await store.add_log(log.origin, vkeys or (log.vkey,), atom(utcnow()))


@dataclass
class RunningWitness:
    """Our witness served in-process on loopback, and a session to talk to it."""

    witness_dir: WitnessDir
    store: WitnessStore
    key: SigningKey
    name: str
    runner: web.AppRunner
    url: str
    session: aiohttp.ClientSession

    @property
    def verifier(self) -> CosignatureVerifier:
        return Cosigner(self.name, self.key).verifier()

    @property
    def endpoint(self) -> WitnessEndpoint:
        return WitnessEndpoint(self.url, self.verifier)

    async def post(self, body: bytes, path: str = "/add-checkpoint") -> Response:
        """POST ``body``; the answer must be signed by the witness's key."""
        data = io.BytesIO(body) if len(body) > 1 << 20 else body  # aiohttp warns otherwise
        async with self.session.post(self.url + path, data=data) as resp:
            result = Response(resp.status, resp.headers, await resp.read())
        return check_signed(result, self.key.public)

    async def get(self, path: str) -> Response:
        async with self.session.get(self.url + path) as resp:
            result = Response(resp.status, resp.headers, await resp.read())
        return check_signed(result, self.key.public)

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.store.close()

    async def __aenter__(self) -> RunningWitness:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_witness(witness_dir: WitnessDir, *,
                        clock: Callable[[], datetime] = utcnow) -> RunningWitness:
    settings = witness_dir.settings()
    key = witness_dir.signing_key(settings)
    store = open_witness_store(settings.database, witness_dir.path)
    await store.open()
    app = build_witness_app(settings, key, store, clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return RunningWitness(witness_dir, store, key, settings.name, runner,
                          f"http://127.0.0.1:{port}", aiohttp.ClientSession())
