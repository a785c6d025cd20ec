"""Replicas of our own server and of lying upstreams (docs/replication.md).

Upstreams are real servers on loopback: our server, or :class:`FakeUpstream`, a small
aiohttp Chronicle whose chain (and whose lies) each test controls: it rewrites an old
entry, truncates, rotates its key, alters an entry and re-signs the answer, or shows two
different histories at two addresses. Every replica is a real data dir with its own
database (a separate schema on PostgreSQL), driven through the CLI's ``main``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from chronicle.cli import main
from chronicle.client import ChronicleClient
from chronicle.client.sigpool import SignaturePool
from chronicle.config import DataDir
from chronicle.core import protocol
from chronicle.core.blakechain import ChainBuilder, ChainHead, Entry
from chronicle.core.encoding import b64u_decode, b64u_encode, utcnow
from chronicle.core.errors import EncodingError, StorageError
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, verify
from chronicle.replication.follower import Replicator
from chronicle.replication.upstream import SyncOptions
from chronicle.server.jobs import BackgroundJobs
from chronicle.store import ReplicaSource, Store, open_store
from tests import helpers
from tests.helpers import RunningServer, init_data_dir, start_server

CLIENT = SigningKey.generate()
CREATED = "2026-11-28T04:58:21+00:00"
QUIET = {"replicate_interval": "", "cross_sign_interval": "", "scheduled_attestation": ""}


# --- plumbing ---------------------------------------------------------------------------------

def database_for(name: str) -> str:
    """Each data dir gets its own database: a file under it, or its own schema."""
    url = helpers.DATABASE["url"]
    if url.startswith("sqlite:"):
        return url
    return re.sub(r"schema=([^&]+)", lambda m: f"schema={m.group(1)}_{name}", url)


async def ledger(tmp_path: Path, name: str, key: SigningKey | None = None,
                 **settings: Any) -> DataDir:
    return await init_data_dir(tmp_path / name, key, database=database_for(name.lower()),
                               **settings)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def _invoke(args: tuple[str, ...]) -> Outcome:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


async def cli(*args: str) -> Outcome:
    """``chronicle ARGS`` through ``main``, off the event loop (it runs its own)."""
    return await asyncio.to_thread(_invoke, args)


async def add_source(replica: DataDir, url: str, key: bytes, name: str = "upstream",
                     *extra: str) -> str:
    res = await cli("replica", "add", "--data-dir", str(replica.path), "--url", url,
                    "--server-key", b64u_encode(key), "--name", name, "--json", *extra)
    assert res.code == 0, res.stderr
    uniqueid = res.json["id"]
    assert len(b64u_decode(uniqueid, 33)) == 33
    return str(uniqueid)


async def sync(replica: DataDir, *names: str) -> Outcome:
    return await cli("replica", "sync", "--data-dir", str(replica.path), "--json", *names)


async def opened(data_dir: DataDir) -> Store:
    store = open_store(data_dir.settings().database, data_dir.path)
    await store.open()
    return store


async def replica_rows(data_dir: DataDir, name: str = "upstream") -> list[Entry]:
    store = await opened(data_dir)
    try:
        source = await store.replication.source(name)
        assert source is not None
        head = await store.replication.chain(source.id).head()
        count = 0 if head is None else head.index + 1
        return [e for page in [p async for p in store.replication.chain(source.id).pages(0, count)]
                for e in page]
    finally:
        await store.close()


async def source_of(data_dir: DataDir, name: str = "upstream") -> ReplicaSource:
    store = await opened(data_dir)
    try:
        source = await store.replication.source(name)
        assert source is not None
        return source
    finally:
        await store.close()


def chain(n: int, *, start: list[Entry] | None = None, prefix: str = "entry",
          key: SigningKey = CLIENT, created: str = CREATED) -> list[Entry]:
    """``start`` extended by ``n`` entries signed by ``key``."""
    out = list(start or [])
    builder = ChainBuilder(ChainHead.of(out[-1]) if out else None)
    for i in range(len(out), len(out) + n):
        body = f"{prefix} {i}".encode()
        out.append(builder.append(body, key.public, key.sign(body), created))
    return out


def same_rows(ours: list[Entry], theirs: list[Entry]) -> bool:
    fields = ("index", "contents", "prevhash", "currhash", "summaryhash", "publickey",
              "signature", "created")
    return [[getattr(e, f) for f in fields] for e in ours] == \
        [[getattr(e, f) for f in fields] for e in theirs]


# --- a Chronicle whose chain and lies the test controls -------------------------------------

@dataclass
class View:
    """One history served at one address (``/{name}/chronicle/…``)."""

    key: SigningKey
    entries: list[Entry] = field(default_factory=list)
    paginate: int = 0
    #: PHP Chronicle 1.3's replica ``since`` has no ORDER BY: rows come by summaryhash.
    since_by_summary: bool = False
    #: Rows a lying or broken upstream leaves out of its ``since`` answers.
    since_drops: set[int] = field(default_factory=set)


class FakeUpstream:
    """Serves Chronicle 1.3 answers (same renderers as our server) from in-memory chains.

    ``tamper(path, body)`` may rewrite an answer before it is signed with the view's key
    (a server lying with its real key); ``answers_signed_by`` signs with another key.
    """

    def __init__(self, key: SigningKey) -> None:
        self.views: dict[str, View] = {"": View(key)}
        self.requests: list[str] = []
        self.tamper: Callable[[str, bytes], bytes] | None = None
        self.answers_signed_by: SigningKey | None = None
        self.gzip_paths: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.base = ""

    @property
    def view(self) -> View:
        return self.views[""]

    def url(self, name: str = "") -> str:
        return f"{self.base}/{name}" if name else self.base

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.raw_path)
        parts = request.path.strip("/").split("/")
        name = parts.pop(0) if parts and parts[0] != "chronicle" else ""
        view = self.views.get(name)
        if view is None or not parts or parts[0] != "chronicle":
            return web.Response(status=404, text="no such view")
        rest = "/".join(parts[1:])
        status, body = self._answer(view, rest)
        if self.tamper is not None:
            body = self.tamper(rest, body)
        signer = self.answers_signed_by or view.key
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signer.sign_b64(body)}
        if self.gzip_paths and rest in self.gzip_paths:
            # Signed over the inflated bytes, as a compressing proxy would pass it on.
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(status=status, body=body, headers=headers)

    @staticmethod
    def _find(view: View, text: str) -> Entry | None:
        try:
            raw = b64u_decode(text, 32)
        except EncodingError:
            return None
        return next((e for e in view.entries if raw in (e.currhash, e.summaryhash)), None)

    def _answer(self, view: View, rest: str) -> tuple[int, bytes]:
        now = utcnow()
        segs = [s for s in rest.split("/") if s]
        missing = protocol.render(protocol.error_envelope(now, protocol.MSG_NO_HASH))
        if not segs:
            return 200, protocol.render(protocol.ok_envelope(
                now, protocol.index_results(client_known=False, client_admin=False),
                **{"public-key": view.key.public_b64}))
        if segs == ["lasthash"]:
            rows = [protocol.row(view.entries[-1])] if view.entries else []
            return 200, protocol.render(protocol.ok_envelope(now, rows))
        if segs[0] == "lookup" and len(segs) == 2:
            found = self._find(view, segs[1])
            if found is None:
                return 400, missing
            return 200, protocol.render(protocol.ok_envelope(now, [protocol.row(found)]))
        page = int(segs[-1]) if segs[-1].isdigit() and len(segs) > 1 else 0
        if segs[0] == "since":
            found = self._find(view, segs[1])
            if found is None:
                return 400, missing
            after = [e for e in view.entries[found.index + 1:]
                     if e.index not in view.since_drops]
            if view.since_by_summary:
                after.sort(key=lambda e: b64u_encode(e.summaryhash))
            if not view.paginate:
                return 200, protocol.render(protocol.ok_envelope(
                    now, [protocol.row(e) for e in after], total=len(after)))
            p = protocol.Page(page, view.paginate)
            rows = [protocol.row(e) for e in after[p.offset:p.offset + p.size]]
            return 200, protocol.render(protocol.ok_envelope(
                now, rows, paginated=True, **p.links(f"/since/{segs[1]}", len(after)),
                total=len(after)))
        if segs[0] == "export":
            if not view.paginate:
                return 200, protocol.render(protocol.ok_envelope(
                    now, [protocol.export_row(e) for e in view.entries],
                    total=len(view.entries)))
            p = protocol.Page(page, view.paginate)
            rows = [protocol.export_row(e) for e in view.entries[p.offset:p.offset + p.size]]
            return 200, protocol.render(protocol.ok_envelope(
                now, rows, paginated=True, **p.links("/export", len(view.entries))))
        return 404, protocol.render(protocol.error_envelope(now, "Not found"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await FakeUpstream(SigningKey.generate()).start()
    try:
        yield upstream
    finally:
        await upstream.close()


@pytest.fixture
async def replica_dir(tmp_path: Path) -> DataDir:
    return await ledger(tmp_path, "replica", **QUIET)


async def publish_many(server: RunningServer, who: str, bodies: list[str]) -> None:
    for body in bodies:
        res = await server.publish(who, body)
        assert res.status == 200, res.body


# --- our own server as the upstream ---------------------------------------------------------

@pytest.mark.parametrize("page_size", [0, 4])
async def test_replica_of_our_server_copies_it_exactly(tmp_path: Path, page_size: int) -> None:
    upstream = await start_server(await ledger(tmp_path, "A", paginate_export=page_size,
                                               publish_new_clients=False, **QUIET))
    await upstream.add_client("alice")
    await upstream.add_client("bob")
    replica = await ledger(tmp_path, "B", paginate_export=page_size or 5, **QUIET)
    served = await start_server(replica)
    try:
        bodies = [f"release pkg/{i} 1.0.{i}" for i in range(15)]
        bodies += ["Grüße ✓ 🚀", "", "{\"json\": [1, 2]}", "line\r\nbreaks\t", "a" * 70000]
        await publish_many(upstream, "alice", bodies[:10])
        await publish_many(upstream, "bob", bodies[10:])
        uniqueid = await add_source(replica, upstream.url, upstream.key.public)
        res = await sync(replica)
        assert res.code == 0, res.stderr
        (report,) = res.json["sources"]
        assert (report["status"], report["added"], report["entries"]) == ("ok", 20, 20)
        assert res.json["ok"] is True

        theirs = [await upstream.ctx.store.chain("").entry_at(i) for i in range(20)]
        ours = await replica_rows(replica)
        assert same_rows(ours, [e for e in theirs if e is not None])

        # The copy, served and walked page by page by our verifying client.
        base = f"{served.url}/chronicle/replica/{uniqueid}"
        async with ChronicleClient(base, served.key.public) as client:
            walked = [e async for e in client.export()]
            head = await client.head()
            since = [e async for e in client.since(b64u_encode(ours[4].currhash))]
        async with ChronicleClient(upstream.url, upstream.key.public) as client:
            original = [e async for e in client.export()]
            assert head == await client.head()
        assert [(e.currhash, e.summaryhash, e.contents, e.created) for e in walked] == \
            [(e.currhash, e.summaryhash, e.contents, e.created) for e in original]
        assert [e.contents.decode() for e in since] == bodies[5:]

        # The upstream grows: the next sync asks `since` our head and copies the rest.
        await publish_many(upstream, "alice", [f"later {i}" for i in range(9)])
        res = await sync(replica, "upstream")
        assert res.code == 0, res.stderr
        assert res.json["sources"][0]["added"] == 9
        theirs = [await upstream.ctx.store.chain("").entry_at(i) for i in range(29)]
        assert same_rows(await replica_rows(replica), [e for e in theirs if e is not None])
        res = await sync(replica)
        assert (res.code, res.json["sources"][0]["added"]) == (0, 0)

        listed = await cli("replica", "list", "--data-dir", str(replica.path), "--json")
        (row,) = listed.json["sources"]
        assert (row["id"], row["status"], row["entries"], row["failures"]) == \
            (uniqueid, "active", 29, 0)
        assert row["head"] == b64u_encode(theirs[-1].summaryhash)  # type: ignore[union-attr]
    finally:
        await served.close()
        await upstream.close()


async def test_replica_api_answers_and_errors(tmp_path: Path, fake: FakeUpstream) -> None:
    replica = await ledger(tmp_path, "B", paginate_export=3, **QUIET)
    fake.view.entries = chain(7)
    uniqueid = await add_source(replica, fake.url(), fake.view.key.public, "Fake A")
    served = await start_server(replica)
    try:
        # Before the first sync the copy is empty.
        base = f"/chronicle/replica/{uniqueid}"
        res = await served.request("GET", base + "/lasthash")
        assert (res.status, res.json["results"], res.json["notice"]) == \
            (200, [], "This is replicated data from another Chronicle.")
        res = await served.request("GET", base + "/export")
        assert res.json["results"] == [] and res.json["paginated"] is True
        assert (await sync(replica)).code == 0

        res = await served.request("GET", "/chronicle/replica")
        (row,) = res.json["results"]
        assert list(row) == ["uniqueid", "canonical", "name", "serverPublicKey", "index", "urls"]
        assert (row["uniqueid"], row["canonical"], row["name"], row["index"]) == \
            (uniqueid, fake.url() + "/chronicle", "Fake A", f"/replica/{uniqueid}")
        res = await served.request("GET", base)
        assert list(res.json["results"]) == ["uniqueid", "serverPublicKey", "canonical", "urls"]
        res = await served.request("GET", base + "/export/3")
        assert res.json["prev"] == f"/replica/{uniqueid}/export/2"
        assert "next" not in res.json and len(res.json["results"]) == 1
        assert (await served.request("GET", base + "/export/1")).json["results"][0]["prev"] == ""
        first = fake.view.entries[0]
        res = await served.request("GET", f"{base}/lookup/{b64u_encode(first.summaryhash)}")
        assert res.json["results"][0]["prevhash"] == ""
        res = await served.request("GET", f"{base}/since/{b64u_encode(first.currhash)}/2")
        assert (res.json["total"], [r["contents"] for r in res.json["results"]]) == \
            (6, ["entry 4", "entry 5", "entry 6"])
        assert res.json["next"] == f"/replica/{uniqueid}/since/{b64u_encode(first.currhash)}/3"
        res = await served.request("GET", f"{base}/since/{b64u_encode(first.currhash)}/"
                                   "99999999999999999999")
        assert (res.status, res.json["results"]) == (200, [])

        unknown = [(base + "/lookup/nope", "No record found matching this hash."),
                   (base + "/lookup/" + b64u_encode(b"\0" * 32),
                    "No record found matching this hash."),
                   (base + "/since/nope", "No record found matching this hash."),
                   ("/chronicle/replica/no-such-source", "Unknown URI"),
                   ("/chronicle/replica/no-such-source/lasthash", "Unknown URI"),
                   ("/chronicle/replica/Fake A/lasthash", "Unknown URI"),
                   (base + "/nothing-here", "Unknown URI")]
        for path, message in unknown:
            res = await served.request("GET", path)
            assert (res.status, res.json["status"], res.json["message"]) == \
                (404, "ERROR", message), path
        res = await served.request("POST", base + "/lasthash", b"")
        assert res.status == 405
    finally:
        await served.close()


async def test_sync_resumes_after_a_crash_without_refetching(tmp_path: Path,
                                                             fake: FakeUpstream) -> None:
    fake.view.entries = chain(40)
    replica = await ledger(tmp_path, "B", **QUIET)
    await add_source(replica, fake.url(), fake.view.key.public)
    store = await opened(replica)
    try:
        source = await store.replication.source("upstream")
        assert source is not None
        options = SyncOptions(spool_dir=replica.replication_spool_dir,
                              evidence_dir=replica.path / "evidence", chunk_rows=8,
                              commit_rows=8, memory_limit=4096)
        real_append = store.replication.append
        calls = {"n": 0}

        async def crash_after_two(*args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] > 2:
                raise StorageError("simulated crash: the disk went away")
            await real_append(*args, **kwargs)

        store.replication.append = crash_after_two  # type: ignore[method-assign]
        result = await Replicator(store, source, options).sync()
        assert (result.status, result.added, result.entries) == ("error", 16, 16)
        assert "simulated crash" in (result.error or "")
        # The spooled answer is gone, and nothing half-verified was stored.
        assert list((replica.replication_spool_dir).iterdir()) == []
        store.replication.append = real_append  # type: ignore[method-assign]
        fake.requests.clear()
        source = await store.replication.source("upstream")
        assert source is not None
        assert (source.status, source.failures) == ("active", 1)
        result = await Replicator(store, source, options).sync()
        assert (result.status, result.added, result.entries) == ("ok", 24, 40)
        # It continued from what it had stored: `since` its head, no second export.
        head16 = b64u_encode(fake.view.entries[15].summaryhash)
        assert fake.requests == ["/chronicle", f"/chronicle/since/{head16}"]
    finally:
        await store.close()
    assert same_rows(await replica_rows(replica), fake.view.entries)


async def test_paginated_upstream_is_followed_with_since(tmp_path: Path,
                                                         fake: FakeUpstream) -> None:
    """As PHP's replicator: after a page with `next`, ask `since` of the newest entry."""
    fake.view.entries = chain(10)
    fake.view.paginate = 4
    replica = await ledger(tmp_path, "B", **QUIET)
    await add_source(replica, fake.url(), fake.view.key.public)
    res = await sync(replica)
    assert res.code == 0, res.stderr
    hashes = [b64u_encode(e.summaryhash) for e in fake.view.entries]
    assert fake.requests == ["/chronicle", "/chronicle/export", f"/chronicle/since/{hashes[3]}",
                             f"/chronicle/since/{hashes[7]}"]
    assert same_rows(await replica_rows(replica), fake.view.entries)


@pytest.mark.parametrize("page_size", [0, 3])
async def test_since_in_summary_hash_order_is_put_back_in_chain_order(
        tmp_path: Path, fake: FakeUpstream, page_size: int) -> None:
    """A PHP replica as upstream: its since rows come by summaryhash, its pages cut that
    order anywhere. The genuine rows, put back in order, are accepted (issue 9)."""
    fake.view.entries = chain(5)
    fake.view.paginate = page_size
    fake.view.since_by_summary = True
    replica = await ledger(tmp_path, "B", **QUIET)
    await add_source(replica, fake.url(), fake.view.key.public)
    assert (await sync(replica)).code == 0
    for more in (20, 7):
        fake.view.entries = chain(more, start=fake.view.entries)
        listed = [b64u_encode(e.summaryhash) for e in fake.view.entries[-more:]]
        assert listed != sorted(listed)  # the order the upstream serves is not chain order
        res = await sync(replica)
        assert res.code == 0, res.stderr
        assert res.json["sources"][0]["status"] == "ok"
        assert same_rows(await replica_rows(replica), fake.view.entries)
    sources = await cli("replica", "list", "--data-dir", str(replica.path), "--json")
    assert sources.json["sources"][0]["status"] == "active"
    # The auditor's incremental mode reads such since answers too.
    state = tmp_path / "audit.state"
    args = ("audit", fake.url(), "--server-key", fake.view.key.public_b64, "--state",
            str(state), "--json")
    first = await cli(*args)
    assert first.code == 0, first.stderr
    fake.view.entries = chain(11, start=fake.view.entries)
    again = await cli(*args)
    assert again.code == 0, again.stderr
    assert (again.json["entries"], again.json["verified"]) == (len(fake.view.entries), 11)


@pytest.mark.parametrize("damage", ["dropped", "altered"])
async def test_a_shuffled_since_that_loses_or_changes_a_row_is_still_a_fork(
        tmp_path: Path, fake: FakeUpstream, damage: str) -> None:
    fake.view.entries = chain(6)
    fake.view.since_by_summary = True
    replica = await ledger(tmp_path, "B", **QUIET)
    await add_source(replica, fake.url(), fake.view.key.public)
    assert (await sync(replica)).code == 0
    verified = list(fake.view.entries)
    fake.view.entries = chain(10, start=verified)
    if damage == "dropped":
        fake.view.since_drops = {9}
    else:  # entry 9 replaced by another well-signed one: the rows after it link elsewhere
        other = chain(1, start=fake.view.entries[:9], prefix="other")[9]
        fake.view.entries = [*fake.view.entries[:9], other, *fake.view.entries[10:]]
    res = await sync(replica)
    assert res.code == 1, res.stdout
    (report,) = res.json["sources"]
    assert (report["status"], report["fault"]["kind"]) == ("forked", "history-rewritten")
    assert "do not continue our chain" in report["fault"]["message"]
    fault = await stopped(replica, "forked", "history-rewritten")
    assert [d["role"] for d in fault["documents"]][:2] == ["upstream since", "upstream since"]
    # What did continue our head was verified and kept (the other entry 9 included: it is
    # a valid continuation); nothing after the break.
    kept = 9 if damage == "dropped" else 10
    assert same_rows(await replica_rows(replica), fake.view.entries[:kept])


@pytest.mark.parametrize("page_size", [0, 3])
async def test_replica_of_an_upstream_instance(tmp_path: Path, page_size: int) -> None:
    """--upstream-instance (or ?instance= in --url) copies that chain of the upstream,
    every request (pagination links included) carrying the parameter (issue 9)."""
    upstream = await start_server(await ledger(tmp_path, "A", instances=["pkgs"],
                                               paginate_export=page_size,
                                               publish_new_clients=False, **QUIET))
    await upstream.add_client("alice")
    await upstream.add_client("bob", instance="pkgs")
    replica = await ledger(tmp_path, "B", **QUIET)
    try:
        await publish_many(upstream, "alice", [f"default {i}" for i in range(4)])
        for i in range(7):
            res = await upstream.publish("bob", f"pkgs {i}",
                                         path="/chronicle/publish?instance=pkgs")
            assert res.status == 200, res.body
        res = await cli("replica", "add", "--data-dir", str(replica.path), "--url",
                        upstream.url, "--upstream-instance", "pkgs", "--server-key",
                        upstream.key.public_b64, "--name", "upstream", "--json")
        assert res.code == 0, res.stderr
        assert res.json["url"] == f"{upstream.url}/chronicle?instance=pkgs"
        assert (await sync(replica)).code == 0
        pkgs = [await upstream.ctx.store.chain("pkgs").entry_at(i) for i in range(7)]
        assert same_rows(await replica_rows(replica), [e for e in pkgs if e is not None])
        for i in range(7, 12):  # the next sync asks since, on that chain
            res = await upstream.publish("bob", f"pkgs {i}",
                                         path="/chronicle/publish?instance=pkgs")
            assert res.status == 200
        res = await sync(replica)
        assert (res.code, res.json["sources"][0]["added"]) == (0, 5), res.stderr
        pkgs = [await upstream.ctx.store.chain("pkgs").entry_at(i) for i in range(12)]
        assert same_rows(await replica_rows(replica), [e for e in pkgs if e is not None])
        # Moving the upstream keeps the chain it follows; two names for it are refused.
        res = await cli("replica", "set-url", "--data-dir", str(replica.path), "upstream",
                        "--url", upstream.url)
        assert res.code == 0 and res.stdout.strip().endswith("/chronicle?instance=pkgs")
        res = await cli("replica", "add", "--data-dir", str(replica.path), "--url",
                        f"{upstream.url}/chronicle?instance=pkgs", "--upstream-instance",
                        "other", "--server-key", upstream.key.public_b64, "--name", "x")
        assert res.code == 2 and "names instance 'pkgs'" in res.stderr
    finally:
        await upstream.close()


# --- hostile upstreams (issue 10, finding 3) -------------------------------------------------

def _nested(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


async def test_a_hostile_upstream_fails_alone(tmp_path: Path, fake: FakeUpstream) -> None:
    """A signed index nested 100,000 deep stops its source as failed (no RecursionError
    out of the follower); the other source syncs; the auditor exits 15, no traceback."""
    fake.view.entries = chain(3)
    honest = await FakeUpstream(SigningKey.generate()).start()
    try:
        honest.view.entries = chain(4)
        replica = await ledger(tmp_path, "B", **QUIET)
        await add_source(replica, fake.url(), fake.view.key.public, "hostile")
        await add_source(replica, honest.url(), honest.view.key.public, "honest")
        fake.tamper = lambda rest, body: _nested(100_000) if rest == "" else body
        res = await sync(replica)
        assert res.code == 1
        by_name = {r["name"]: r for r in res.json["sources"]}
        assert by_name["honest"]["status"] == "ok" and by_name["honest"]["entries"] == 4
        assert by_name["hostile"]["status"] == "failed"
        assert by_name["hostile"]["fault"]["kind"] == "malformed"
        assert "nested too deeply" in by_name["hostile"]["fault"]["message"]
        out = await cli("audit", fake.url(), "--server-key", fake.view.key.public_b64)
        assert out.code == 0  # the audit does not read the index
        fake.tamper = lambda rest, body: _nested(100_000) if rest == "lasthash" else body
        out = await cli("audit", fake.url(), "--server-key", fake.view.key.public_b64)
        assert out.code == 15, out.stderr
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    finally:
        await honest.close()


async def test_a_compressed_answer_is_refused_unread_and_not_kept(replica_dir: DataDir,
                                                                  fake: FakeUpstream) -> None:
    """611 KB of gzip once became a 600 MB evidence file: now a compressed answer (we ask
    for identity) is refused before a byte is inflated, and nothing is kept."""
    fake.view.entries = chain(3)
    await add_source(replica_dir, fake.url(), fake.view.key.public)
    fake.gzip_paths = {"export"}
    fake.tamper = lambda rest, body: body + b" " * (64 << 20) if rest == "export" else body
    res = await sync(replica_dir)
    assert res.code == 1
    (report,) = res.json["sources"]
    assert (report["status"], report["fault"]["kind"]) == ("failed", "malformed")
    assert "compressed" in report["fault"]["message"]
    kept = sum(p.stat().st_size for p in replica_dir.path.rglob("*")
               if p.is_file() and ("evidence" in p.parts or "replication" in p.parts))
    assert kept < 1 << 20
    assert fake.requests[-1] == "/chronicle/export"


async def test_unsigned_answers_are_never_kept_as_evidence(replica_dir: DataDir,
                                                           fake: FakeUpstream) -> None:
    fake.view.entries = chain(3)
    await add_source(replica_dir, fake.url(), fake.view.key.public)
    fake.answers_signed_by = SigningKey.generate()
    res = await sync(replica_dir)
    assert res.code == 1
    fault = await stopped(replica_dir, "failed", "document-signature")
    for doc in fault["documents"]:
        assert doc.get("body") is None and doc["signed-by"] is None
        assert doc["size"] > 0 and len(doc["sha256"]) == 64


# --- forks and faults -----------------------------------------------------------------------

async def first_sync(replica: DataDir, fake: FakeUpstream, n: int = 10, **extra: Any) -> str:
    fake.view.entries = chain(n)
    uniqueid = await add_source(replica, fake.url(), fake.view.key.public)
    res = await sync(replica)
    assert res.code == 0, res.stderr
    return uniqueid


async def stopped(replica: DataDir, status: str, fault: str) -> dict[str, Any]:
    """The source's status in `replica list`, its evidence, its replica subindex."""
    listed = await cli("replica", "list", "--data-dir", str(replica.path), "--json")
    assert listed.code == 1  # a stopped source: an exit code alerting can use
    (row,) = listed.json["sources"]
    assert (row["status"], row["fault"]) == (status, fault), row
    evidence = await cli("replica", "evidence", "--data-dir", str(replica.path), "upstream",
                         "--json")
    assert evidence.code == 0, evidence.stderr
    faults = evidence.json["faults"]
    assert faults[-1]["status"] == status
    assert faults[-1]["fault"] == fault
    text = await cli("replica", "evidence", "--data-dir", str(replica.path), "upstream")
    assert text.code == 0 and f"({fault})" in text.stdout
    served = await start_server(replica)
    try:
        res = await served.request("GET", f"/chronicle/replica/{row['id']}")
        body = res.json["results"]
        assert (body["status"], body["fault"]) == (status, fault)
        assert body["reason"] == row["reason"]
        (indexed,) = (await served.request("GET", "/chronicle/replica")).json["results"]
        assert (indexed["status"], indexed["fault"]) == (status, fault)
    finally:
        await served.close()
    return dict(faults[-1])


async def test_upstream_rewriting_an_old_entry_is_a_fork(replica_dir: DataDir,
                                                        fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake)
    verified = list(fake.view.entries)
    # Entry 3 is replaced (re-signed by its client, every later hash recomputed) and the
    # chain grows on: a consistent, well-signed, different history.
    fake.view.entries = chain(9, start=verified[:3], prefix="rewritten")
    res = await sync(replica_dir)
    assert res.code == 1
    assert res.stderr.splitlines()[-1].startswith(
        "error: 1 of 1 source(s) did not sync cleanly: upstream forked")
    (report,) = res.json["sources"]
    assert (report["status"], report["fault"]["kind"], report["fault"]["index"]) == \
        ("forked", "history-rewritten", 3)
    assert report["fault"]["expected"] == b64u_encode(verified[3].currhash)
    assert report["fault"]["found"] == b64u_encode(fake.view.entries[3].currhash)
    fault = await stopped(replica_dir, "forked", "history-rewritten")
    roles = [d["role"] for d in fault["documents"]]
    assert roles[:2] == ["upstream since (our head unknown)", "upstream lasthash"]
    assert "upstream lookup of our entry 3 (unknown)" in roles
    assert "upstream lookup of our entry 2 (known)" in roles
    for doc in fault["documents"]:  # each kept with the signature that proves it
        assert doc["signed-by"] == fake.view.key.public_b64
        assert verify(fake.view.key.public, doc["body"].encode(),
                      b64u_decode(doc["signature"], 64))
    # The verified copy is untouched, and a stopped source is not pulled again.
    assert same_rows(await replica_rows(replica_dir), verified)
    fake.requests.clear()
    res = await sync(replica_dir)
    assert (res.code, res.json["sources"][0]["status"]) == (1, "stopped")
    assert fake.requests == []


async def test_upstream_truncating_is_a_fork(replica_dir: DataDir, fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake)
    verified = list(fake.view.entries)
    fake.view.entries = verified[:7]
    res = await sync(replica_dir)
    assert res.code == 1
    fault = res.json["sources"][0]["fault"]
    assert (fault["kind"], fault["index"], fault["found"]) == \
        ("truncated", 7, b64u_encode(verified[6].summaryhash))
    await stopped(replica_dir, "forked", "truncated")
    assert same_rows(await replica_rows(replica_dir), verified)


async def test_upstream_emptied_is_a_fork(replica_dir: DataDir, fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake, 3)
    fake.view.entries = []
    res = await sync(replica_dir)
    assert (res.code, res.json["sources"][0]["fault"]["kind"]) == (1, "truncated")
    assert len(await replica_rows(replica_dir)) == 3


async def test_upstream_with_a_new_key_stops_until_the_operator_sets_it(
        replica_dir: DataDir, fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake)
    old_key = fake.view.key
    new_key = SigningKey.generate()
    fake.view.key = new_key
    fake.view.entries = chain(3, start=fake.view.entries)
    res = await sync(replica_dir)
    assert res.code == 1
    fault = res.json["sources"][0]["fault"]
    assert (fault["kind"], fault["expected"], fault["found"]) == \
        ("key-changed", old_key.public_b64, new_key.public_b64)
    evidence = await stopped(replica_dir, "failed", "key-changed")
    assert [d["role"] for d in evidence["documents"]] == ["upstream index"]
    assert evidence["documents"][0]["signed-by"] == new_key.public_b64
    assert len(await replica_rows(replica_dir)) == 10

    res = await cli("replica", "set-key", "--data-dir", str(replica_dir.path), "upstream",
                    "--server-key", new_key.public_b64, "--reason", "announced rotation",
                    "--json")
    assert res.code == 0, res.stderr
    assert res.json == {"id": res.json["id"], "server-key": new_key.public_b64,
                        "status": "active"}
    res = await sync(replica_dir)
    assert (res.code, res.json["sources"][0]["added"]) == (0, 3)
    assert same_rows(await replica_rows(replica_dir), fake.view.entries)
    history = (await cli("replica", "evidence", "--data-dir", str(replica_dir.path),
                         "upstream", "--json")).json["keys"]
    assert [(k["public-key"], k["reason"], k["retired"] is None) for k in history] == [
        (old_key.public_b64, "added", False), (new_key.public_b64, "announced rotation", True)]


async def test_answers_signed_by_another_key_are_not_believed(replica_dir: DataDir,
                                                              fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake)
    fake.view.entries = chain(2, start=fake.view.entries)
    fake.answers_signed_by = SigningKey.generate()  # index still announces the pinned key
    res = await sync(replica_dir)
    assert res.code == 1
    assert res.json["sources"][0]["fault"]["kind"] == "document-signature"
    await stopped(replica_dir, "failed", "document-signature")
    assert len(await replica_rows(replica_dir)) == 10


async def test_an_altered_entry_in_a_re_signed_answer_fails(replica_dir: DataDir,
                                                            fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake)
    fake.view.entries = chain(4, start=fake.view.entries)

    def alter(path: str, body: bytes) -> bytes:
        # The server lies with its real key: the answer's signature is valid.
        if path.startswith("since/"):
            return body.replace(b'"entry 12"', b'"entry 12 (edited)"')
        return body

    fake.tamper = alter
    res = await sync(replica_dir)
    assert res.code == 1
    fault = res.json["sources"][0]["fault"]
    assert (fault["kind"], fault["index"]) == ("entry-signature", 12)
    evidence = await stopped(replica_dir, "failed", "entry-signature")
    (doc,) = evidence["documents"]
    assert doc["role"] == "upstream since" and "entry 12 (edited)" in doc["body"]
    # Entries before the altered one verified, so they were kept; nothing after it.
    assert same_rows(await replica_rows(replica_dir), fake.view.entries[:12])


async def test_a_consistently_hashed_entry_with_a_bad_signature_fails(
        replica_dir: DataDir, fake: FakeUpstream) -> None:
    """Links and hashes hold, but entry 13's signature is not its client's: the entries
    before it are stored, it and everything after are not."""
    await first_sync(replica_dir, fake)
    builder = ChainBuilder(ChainHead.of(fake.view.entries[-1]))
    grown = list(fake.view.entries)
    for i in range(10, 16):
        body = f"entry {i}".encode()
        signature = CLIENT.sign(b"something else" if i == 13 else body)
        grown.append(builder.append(body, CLIENT.public, signature, CREATED))
    fake.view.entries = grown
    res = await sync(replica_dir)
    assert res.code == 1
    fault = res.json["sources"][0]["fault"]
    assert (fault["kind"], fault["index"], fault["found"]) == \
        ("entry-signature", 13, b64u_encode(grown[13].signature))
    await stopped(replica_dir, "failed", "entry-signature")
    assert same_rows(await replica_rows(replica_dir), grown[:13])


async def test_a_wrong_total_is_a_fault(replica_dir: DataDir, fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake)
    fake.view.entries = chain(2, start=fake.view.entries)
    fake.tamper = lambda path, body: body.replace(b'"total": 2', b'"total": 5')
    res = await sync(replica_dir)
    fault = res.json["sources"][0]["fault"]
    assert (res.code, fault["kind"], fault["expected"], fault["found"]) == \
        (1, "anchor", "5", "2")


async def test_transient_errors_keep_the_source_active(replica_dir: DataDir,
                                                       fake: FakeUpstream) -> None:
    await first_sync(replica_dir, fake, 3)
    await fake.close()
    for attempt in (1, 2):
        res = await sync(replica_dir)
        assert res.code == 3
        assert res.json["sources"][0]["status"] == "error"
        assert "cannot reach" in res.stderr
        source = await source_of(replica_dir)
        assert (source.status, source.failures) == ("active", attempt)
        assert source.last_error is not None and "cannot reach" in source.last_error


async def test_unsigned_error_pages_only_postpone(replica_dir: DataDir,
                                                  fake: FakeUpstream) -> None:
    """A proxy's unsigned 404 proves nothing against the upstream: retried, not stopped."""
    await add_source(replica_dir, fake.url("moved-away"), fake.view.key.public)
    res = await sync(replica_dir)
    assert res.code == 3
    assert "unsigned HTTP 404 answer" in res.json["sources"][0]["error"]
    assert (await source_of(replica_dir)).status == "active"


async def test_split_view_against_a_peer_replica(tmp_path: Path, fake: FakeUpstream) -> None:
    """The upstream shows one history at one address and another at a second address;
    our replica and a peer replica each verify theirs, then compare heads."""
    common = chain(5)
    fake.views["a"] = View(fake.view.key, chain(3, start=common, prefix="seen by us"))
    fake.views["b"] = View(fake.view.key, chain(4, start=common, prefix="seen by the peer"))
    peer_dir = await ledger(tmp_path, "peer", **QUIET)
    peer_id = await add_source(peer_dir, fake.url("b"), fake.view.key.public)
    assert (await sync(peer_dir)).code == 0
    peer = await start_server(peer_dir)
    replica = await ledger(tmp_path, "B", **QUIET)
    try:
        peer_url = f"{peer.url}/chronicle/replica/{peer_id}#{peer.key.public_b64}"
        await add_source(replica, fake.url("a"), fake.view.key.public, "upstream",
                         "--peer", peer_url)
        res = await sync(replica)
        assert res.code == 1, res.stderr
        (report,) = res.json["sources"]
        assert report["fault"]["kind"] == "split-view"
        assert report["fault"]["peers"][0]["status"] == "disagrees"
        assert report["added"] == 8  # our view was verified and stored before comparing
        evidence = await stopped(replica, "forked", "split-view")
        roles = [d["role"] for d in evidence["documents"]]
        assert roles[0] == "upstream lookup of our head"
        assert any(r.endswith("lasthash") and "peer" in r for r in roles)
        assert any(r.endswith("lookup of our head") and "peer" in r for r in roles)

        # A peer that is merely behind or ahead agrees.
        fake.views["b"].entries = list(fake.views["a"].entries[:6])
        assert (await sync(peer_dir)).code == 1  # the peer itself sees a rewritten history
        other = await ledger(tmp_path, "C", **QUIET)
        await add_source(other, fake.url("a"), fake.view.key.public, "upstream",
                         "--peer", peer_url)
        res = await sync(other)
        assert res.code == 1
        fake.views["a"].entries = chain(2, start=fake.views["a"].entries)
        fresh_dir = await ledger(tmp_path, "D", **QUIET)
        fresh_id = await add_source(fresh_dir, fake.url("a"), fake.view.key.public)
        assert (await sync(fresh_dir)).code == 0
        fresh = await start_server(fresh_dir)
        try:
            agreeing = await ledger(tmp_path, "E", **QUIET)
            await add_source(agreeing, fake.url("a"), fake.view.key.public, "upstream",
                             "--peer", f"{fresh.url}/chronicle/replica/{fresh_id}")
            res = await sync(agreeing)
            assert res.code == 0, res.stderr
            assert [p["status"] for p in res.json["sources"][0]["peers"]] == ["agrees"]
        finally:
            await fresh.close()
    finally:
        await peer.close()


async def test_cross_sign_peer_catches_a_head_the_upstream_denies(tmp_path: Path,
                                                                  fake: FakeUpstream) -> None:
    """The upstream published its head on a peer (cross-sign) and later serves a history
    without it: the peer's entry, signed by the upstream's own key, is the proof."""
    from chronicle.core.replica import cross_sign_message

    witness = await start_server(await ledger(tmp_path, "W", **QUIET))
    try:
        ident = await witness.add_client("upstream", key=fake.view.key)
        honest = chain(6)
        shown_to_witness = chain(2, start=honest[:4], prefix="only the witness saw")
        for head in (honest[3], shown_to_witness[-1]):
            message = cross_sign_message(witness.key.public, utcnow(), head.currhash,
                                         head.summaryhash)
            assert (await witness.publish(ident, message)).status == 200
        fake.view.entries = honest
        replica = await ledger(tmp_path, "B", **QUIET)
        await add_source(replica, fake.url(), fake.view.key.public, "upstream",
                         "--xsign-peer", f"{witness.url}#{witness.key.public_b64}")
        res = await sync(replica)
        assert res.code == 1, res.stderr
        (report,) = res.json["sources"]
        assert report["fault"]["kind"] == "split-view"
        assert report["fault"]["peers"][0]["claims"] == 2
        evidence = await stopped(replica, "forked", "split-view")
        roles = [d["role"] for d in evidence["documents"]]
        assert f"peer {witness.url}/chronicle: the upstream's cross-sign entry" in roles
        assert "upstream lookup of the cross-signed head (unknown)" in roles
    finally:
        await witness.close()


# --- A -> B (replica of A) -> cross-signs to C ----------------------------------------------

async def test_three_level_chain(tmp_path: Path) -> None:
    a = await start_server(await ledger(tmp_path, "A", publish_new_clients=False, **QUIET))
    b = await start_server(await ledger(tmp_path, "B", paginate_export=3,
                                        publish_new_clients=False, **QUIET))
    c = await start_server(await ledger(tmp_path, "C", publish_new_clients=False, **QUIET))
    try:
        await a.add_client("alice")
        await publish_many(a, "alice", [f"a{i}" for i in range(8)])
        b_dir = DataDir(tmp_path / "B")
        uniqueid = await add_source(b_dir, a.url, a.key.public, "A")
        b_on_c = await c.add_client("B", key=b.key)
        res = await cli("cross-sign", "add", "--data-dir", str(b_dir.path), "--url", c.url,
                        "--server-key", c.key.public_b64, "--client-id", b_on_c.client_id,
                        "--push-after", "1", "--name", "C", "--json")
        assert res.code == 0, res.stderr
        assert res.json["policy"] == {"push-after": 1}

        jobs = b.ctx.jobs
        assert jobs is not None
        (result,) = await jobs.follow_once(everything=True)
        assert (result.status, result.added) == ("ok", 8)
        (attestation,) = await jobs.attest_once(force=True)
        message = json.loads(attestation.contents)
        assert list(message) == ["version", "datetime", "replication-hashes"]
        a_head = await a.ctx.store.chain("").head()
        assert a_head is not None
        assert message["replication-hashes"] == [{
            "currhash": b64u_encode(a_head.currhash),
            "summaryhash": b64u_encode(a_head.summaryhash), "source": uniqueid}]
        assert attestation.publickey == b.key.public
        (pushed,) = await jobs.cross_sign_once()
        assert pushed.status == "pushed"

        b_head = await b.ctx.store.chain("").head()
        c_head = await c.ctx.store.chain("").head()
        assert b_head is not None and c_head is not None
        claim = json.loads(c_head.contents)
        assert claim == {"target": c.key.public_b64, "cross-sign-at": claim["cross-sign-at"],
                         "currhash": b64u_encode(b_head.currhash),
                         "summaryhash": b64u_encode(b_head.summaryhash)}
        assert c_head.publickey == b.key.public
        assert pushed.peer_currhash == b64u_encode(c_head.currhash)

        # B's copy of A, as served by B page by page, is A's chain.
        async with ChronicleClient(f"{b.url}/chronicle/replica/{uniqueid}",
                                   b.key.public) as client:
            copied = [e async for e in client.export()]
        assert [e.currhash for e in copied] == [
            b64u_encode(e.currhash) for e in [await a.ctx.store.chain("").entry_at(i)
                                              for i in range(8)] if e is not None]
        # And C's cross-sign receipt is recorded on B.
        listed = await cli("cross-sign", "list", "--data-dir", str(b_dir.path), "--json")
        (target,) = listed.json["targets"]
        assert target["last-index"] == 0 and target["failures"] == 0
        assert target["last-receipt"]["currhash"] == b64u_encode(c_head.currhash)
    finally:
        await a.close()
        await b.close()
        await c.close()


# --- the follower inside `serve`, and the leader lock -----------------------------------------

async def wait_for(check: Callable[[], Any], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_follower_runs_inside_serve_and_attests(tmp_path: Path) -> None:
    a = await start_server(await ledger(tmp_path, "A", **QUIET))
    b_dir = await ledger(tmp_path, "B", replicate_interval="1 second",
                         scheduled_attestation="1 hour", cross_sign_interval="")
    b = await start_server(b_dir)
    try:
        assert b.ctx.jobs is not None
        assert await b.ctx.jobs.wait_leader()
        await a.add_client("alice")
        await publish_many(a, "alice", ["one", "two", "three"])
        await add_source(b_dir, a.url, a.key.public, "A")

        async def copied(count: int) -> bool:
            source = await b.ctx.store.replication.source("A")
            assert source is not None
            head = await b.ctx.store.replication.chain(source.id).head()
            return head is not None and head.index + 1 == count

        await wait_for(lambda: copied(3))
        await publish_many(a, "alice", ["four"])
        await wait_for(lambda: copied(4))
        # The attestation came after the first pass that had something to attest.
        head = await b.ctx.store.chain("").head()
        assert head is not None
        assert b"replication-hashes" in head.contents
        assert await b.ctx.store.jobs.get("attestation:") is not None
    finally:
        await b.close()
        await a.close()


async def test_follower_backs_off_with_jitter_after_errors(tmp_path: Path) -> None:
    from tests.helpers import free_port

    b_dir = await ledger(tmp_path, "B", **QUIET)
    b = await start_server(b_dir)
    try:
        await add_source(b_dir, f"http://127.0.0.1:{free_port()}", CLIENT.public, "down")
        jobs = b.ctx.jobs
        assert jobs is not None
        jobs.rand = lambda: 1.0  # the top of the jitter range
        (result,) = await jobs.follow_once()
        assert result.status == "error"
        assert await jobs.follow_once() == []  # not due yet: backing off
        source = await source_of(b_dir, "down")
        delay = jobs._next_sync[source.id] - time.monotonic()
        assert 140 < delay <= 150  # 60 s doubled once, +25 % jitter
        (again,) = await jobs.follow_once(everything=True)
        assert again.status == "error"
        delay = jobs._next_sync[source.id] - time.monotonic()
        assert 290 < delay <= 300  # doubled again
        assert (await source_of(b_dir, "down")).failures == 2
    finally:
        await b.close()


async def test_only_one_server_process_runs_the_jobs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BackgroundJobs, "LEADER_RETRY", 0.1)
    monkeypatch.setattr(BackgroundJobs, "LEADER_CHECK", 0.1)
    data_dir = await ledger(tmp_path, "B", replicate_interval="1 minute")
    one = await start_server(data_dir)
    two = await start_server(data_dir)
    try:
        assert one.ctx.jobs is not None and two.ctx.jobs is not None
        await wait_for(lambda: _any_leader(one, two))
        await asyncio.sleep(0.3)
        assert [one.ctx.jobs.is_leader, two.ctx.jobs.is_leader].count(True) == 1
        leader, other = (one, two) if one.ctx.jobs.is_leader else (two, one)
        await leader.close()
        assert other.ctx.jobs is not None
        assert await other.ctx.jobs.wait_leader(5.0)
    finally:
        for server in (one, two):
            if server.runner.sites:
                await server.close()


async def _any_leader(*servers: RunningServer) -> bool:
    return any(s.ctx.jobs is not None and s.ctx.jobs.is_leader for s in servers)


@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_signature_pool_finds_the_bad_ones(mode: str) -> None:
    items = [(CLIENT.public, CLIENT.sign(f"m{i}".encode()), f"m{i}".encode())
             for i in range(50)]
    items[7] = (CLIENT.public, CLIENT.sign(b"other"), b"m7")
    items[31] = (CLIENT.public[:5], items[31][1], items[31][2])  # malformed key
    items[40] = (CLIENT.public, b"short", b"m40")  # malformed signature
    async with SignaturePool(mode=mode, workers=2) as pool:
        results = await asyncio.gather(*(pool.check(items) for _ in range(3)))
        assert results == [[7, 31, 40]] * 3
        assert await pool.check([]) == []


async def test_replica_cli_usage_errors(replica_dir: DataDir) -> None:
    res = await cli("replica", "add", "--data-dir", str(replica_dir.path), "--url",
                    "ftp://nowhere", "--server-key", CLIENT.public_b64, "--name", "x")
    assert res.code == 2 and res.stderr.startswith("error: ")
    res = await cli("replica", "add", "--data-dir", str(replica_dir.path), "--url",
                    "http://127.0.0.1:1", "--server-key", "garbage", "--name", "x")
    assert res.code == 2
    res = await cli("replica", "add", "--data-dir", str(replica_dir.path), "--url",
                    "http://127.0.0.1:1", "--server-key", CLIENT.public_b64, "--name", "x",
                    "--peer", "http://127.0.0.1:2#not-a-key")
    assert res.code == 2
    await add_source(replica_dir, "http://127.0.0.1:1", CLIENT.public, "x")
    res = await cli("replica", "add", "--data-dir", str(replica_dir.path), "--url",
                    "http://127.0.0.1:1", "--server-key", CLIENT.public_b64, "--name", "x")
    assert res.code == 1 and "already exists" in res.stderr
    for command in (("sync", "nope"), ("evidence", "nope"), ("remove", "nope"),
                    ("resume", "nope")):
        res = await cli("replica", command[0], "--data-dir", str(replica_dir.path),
                        command[1])
        assert (res.code, res.stderr) == (1, "error: no replication source 'nope'\n")
    res = await cli("replica", "remove", "--data-dir", str(replica_dir.path), "x", "--json")
    assert res.code == 0 and res.json["removed"] is True
    res = await sync(replica_dir)
    assert (res.code, res.json) == (0, {"ok": True, "sources": []})
