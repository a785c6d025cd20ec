"""Cross-signing: our head published on peers by policy, in the background.

Peers are real servers on loopback: our own server (our key registered as one of its
clients), recorded PHP server B (its recorded answers to A's cross-signs), a peer that is
down, one that hangs, one that answers with a bad signature, one that refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chronicle.config import DataDir
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import atom, b64u_decode, b64u_encode, parse_timestamp
from chronicle.core.replica import CrossSignPolicy
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey
from chronicle.replication.crosssign import push
from chronicle.server.app import build_app
from chronicle.server.context import ServerContext
from chronicle.store import XsignTarget, open_store
from tests.helpers import RunningServer, free_port, load_vector, start_server
from tests.integration.test_replay_php import PinnedClock
from tests.integration.test_replication import QUIET, cli, ledger, publish_many

KEYS = load_vector("keys.json")
EXCHANGES = {e["id"]: e for e in load_vector("exchanges.json")["exchanges"]}
CHAIN_A = load_vector("hashchains.json")["A"]["entries"]
A_KEY = SigningKey.from_text(KEYS["servers"]["A"]["secretkey"])
B_PUBLIC = b64u_decode(KEYS["servers"]["B"]["publickey"], 32)
A_ON_B = KEYS["servers"]["A"]["registered_as_client"]["B"]


async def add_target(data_dir: DataDir, peer_url: str, peer_key: bytes, client_id: str,
                     *policy: str, name: str = "peer") -> None:
    res = await cli("cross-sign", "add", "--data-dir", str(data_dir.path), "--url", peer_url,
                    "--server-key", b64u_encode(peer_key), "--client-id", client_id,
                    "--name", name, *policy)
    assert res.code == 0, res.stderr


async def targets(data_dir: DataDir) -> list[dict[str, Any]]:
    res = await cli("cross-sign", "list", "--data-dir", str(data_dir.path), "--json")
    assert res.code == 0, res.stderr
    return list(res.json["targets"])


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Our server A (alice publishes) and a peer C where A's key is a registered client."""
    a = await start_server(await ledger(tmp_path, "A", publish_new_clients=False, **QUIET))
    c = await start_server(await ledger(tmp_path, "C", publish_new_clients=False, **QUIET))
    await a.add_client("alice")
    await c.add_client("A", key=a.key)
    try:
        yield a, c
    finally:
        await a.close()
        await c.close()


def _a_dir(a: RunningServer) -> DataDir:
    return a.ctx.data_dir


async def test_policy_by_count(pair: tuple[RunningServer, RunningServer]) -> None:
    a, c = pair
    await add_target(_a_dir(a), c.url, c.key.public, c.identities["A"].client_id,
                     "--push-after", "2")
    jobs = a.ctx.jobs
    assert jobs is not None
    assert [r.status for r in await jobs.cross_sign_once()] == ["skipped"]  # empty chain
    pushed = []
    for i in range(6):
        await publish_many(a, "alice", [f"entry {i}"])
        (result,) = await jobs.cross_sign_once()
        pushed.append(result.status)
    # The first entry is cross-signed at once, then every second one.
    assert pushed == ["pushed", "skipped", "pushed", "skipped", "pushed", "skipped"]
    claims = [json.loads(e.contents) for e in await c.ctx.store.chain("").range(0, 10)]
    a_entries = await a.ctx.store.chain("").range(0, 6)
    assert [cl["currhash"] for cl in claims] == \
        [b64u_encode(a_entries[i].currhash) for i in (0, 2, 4)]
    assert all(cl["target"] == c.key.public_b64 for cl in claims)
    (target,) = await targets(_a_dir(a))
    assert (target["last-index"], target["failures"], target["policy"]) == \
        (4, 0, {"push-after": 2})
    c_head = await c.ctx.store.chain("").head()
    assert c_head is not None
    assert target["last-receipt"]["currhash"] == b64u_encode(c_head.currhash)
    assert target["last-receipt"]["status"] == "ok"


async def test_policy_by_days(tmp_path: Path) -> None:
    clock = PinnedClock()
    clock.value = parse_timestamp("2026-01-01T00:00:00+00:00")
    a = await start_server(await ledger(tmp_path, "A", publish_new_clients=False, **QUIET),
                           clock=clock)
    c = await start_server(await ledger(tmp_path, "C", publish_new_clients=False, **QUIET),
                           clock=clock)
    try:
        await a.add_client("alice")
        peer = await c.add_client("A", key=a.key)
        await add_target(_a_dir(a), c.url, c.key.public, peer.client_id, "--push-days", "1")
        jobs = a.ctx.jobs
        assert jobs is not None
        await publish_many(a, "alice", ["one"])
        assert [r.status for r in await jobs.cross_sign_once()] == ["pushed"]
        await publish_many(a, "alice", ["two", "three"])
        clock.value += timedelta(hours=23)
        assert [r.status for r in await jobs.cross_sign_once()] == ["skipped"]
        clock.value += timedelta(hours=2)
        assert [r.status for r in await jobs.cross_sign_once()] == ["pushed"]
        claims = [json.loads(e.contents) for e in await c.ctx.store.chain("").range(0, 5)]
        assert [cl["cross-sign-at"] for cl in claims] == [
            "2026-01-01T00:00:00+00:00", "2026-01-02T01:00:00+00:00"]
        # Nothing new: no cross-sign, however old the last one is.
        clock.value += timedelta(days=30)
        assert [r.status for r in await jobs.cross_sign_once()] == ["skipped"]
    finally:
        await a.close()
        await c.close()


async def start_server_on(data_dir: DataDir, port: int) -> RunningServer:
    settings = data_dir.settings()
    store = open_store(settings.database, data_dir.path)
    await store.open()
    ctx = ServerContext(settings=settings, key=data_dir.signing_key(settings), store=store,
                        data_dir=data_dir)
    runner = web.AppRunner(build_app(ctx), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningServer(ctx, runner, f"http://127.0.0.1:{port}", aiohttp.ClientSession())


async def test_a_peer_that_is_down_is_retried_later(tmp_path: Path,
                                                    pair: tuple[RunningServer, RunningServer]
                                                    ) -> None:
    a, _ = pair
    port = free_port()
    c_dir = await ledger(tmp_path, "late", publish_new_clients=False, **QUIET)
    c_key = c_dir.signing_key(c_dir.settings())
    await add_target(_a_dir(a), f"http://127.0.0.1:{port}", c_key.public, "id-of-a-on-c",
                     "--push-after", "1")
    jobs = a.ctx.jobs
    assert jobs is not None
    await publish_many(a, "alice", ["first"])
    (result,) = await jobs.cross_sign_once()
    assert result.status == "error"
    assert result.error is not None and "cannot reach" in result.error
    # Our writes go on as if nothing happened.
    await publish_many(a, "alice", ["second", "third"])
    (target,) = await targets(_a_dir(a))
    assert (target["failures"], target["last-index"]) == (1, None)
    assert "cannot reach" in target["last-error"]
    # The background job backs off: not retried at once.
    assert await jobs.cross_sign_once() == []
    res = await cli("cross-sign", "run", "--data-dir", str(_a_dir(a).path), "--json")
    assert res.code == 3 and res.json["targets"][0]["status"] == "error"

    c = await start_server_on(c_dir, port)
    try:
        await c.add_client("A", key=a.key, client_id="id-of-a-on-c")
        res = await cli("cross-sign", "run", "--data-dir", str(_a_dir(a).path), "--json")
        assert res.code == 0, res.stderr
        assert res.json["targets"][0]["status"] == "pushed"
        head = await a.ctx.store.chain("").head()
        assert head is not None
        claim = json.loads((await c.ctx.store.chain("").entry_at(0)).contents)  # type: ignore[union-attr]
        assert claim["currhash"] == b64u_encode(head.currhash)
        (target,) = await targets(_a_dir(a))
        assert (target["failures"], target["last-index"], target["last-error"]) == (0, 2, None)
    finally:
        await c.close()


class OddPeer:
    """A peer that hangs, or answers a receipt signed with the wrong key."""

    def __init__(self, key: SigningKey, *, hang: float = 0.0,
                 sign_with: SigningKey | None = None) -> None:
        self.key = key
        self.hang = hang
        self.sign_with = sign_with
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()

    async def _publish(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        if self.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.hang)
        body = json.dumps({"version": "1.3.x", "datetime": atom(
            parse_timestamp("2026-11-28T04:58:26+00:00")), "status": "OK", "results": {
                "currhash": b64u_encode(b"c" * 32), "summaryhash": b64u_encode(b"s" * 32),
                "created": "2026-11-28T04:58:26+00:00"}}).encode()
        signer = self.sign_with or self.key
        return web.Response(body=body, headers={SIGNATURE_HEADER: signer.sign_b64(body)})

    async def start(self) -> OddPeer:
        app = web.Application()
        app.router.add_post("/chronicle/publish", self._publish)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


async def test_a_slow_peer_never_slows_our_writes(pair: tuple[RunningServer, RunningServer]
                                                  ) -> None:
    a, _ = pair
    peer = await OddPeer(SigningKey.generate(), hang=30).start()
    try:
        await add_target(_a_dir(a), peer.url, peer.key.public, "x", "--push-after", "1")
        await publish_many(a, "alice", ["before"])
        assert a.ctx.jobs is not None
        job = asyncio.create_task(a.ctx.jobs.cross_sign_once())
        while not peer.bodies:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        for i in range(10):
            started = loop.time()
            res = await a.publish("alice", f"while the peer hangs {i}")
            assert res.status == 200
            assert loop.time() - started < 1.0
        assert not job.done()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    finally:
        await peer.close()


async def test_a_peer_answer_with_a_bad_signature_is_a_failure(
        pair: tuple[RunningServer, RunningServer]) -> None:
    a, _ = pair
    peer = await OddPeer(SigningKey.generate(), sign_with=SigningKey.generate()).start()
    try:
        await add_target(_a_dir(a), peer.url, peer.key.public, "x", "--push-after", "1")
        await publish_many(a, "alice", ["one"])
        res = await cli("cross-sign", "run", "--data-dir", str(_a_dir(a).path), "--json")
        assert res.code == 1
        (result,) = res.json["targets"]
        assert result["status"] == "failed"
        assert "not signed by its pinned key" in result["error"]
        assert res.stderr.splitlines()[-1].startswith("error: peer: ")
        (target,) = await targets(_a_dir(a))
        assert (target["failures"], target["last-index"]) == (1, None)
        receipt = target["last-receipt"]
        assert (receipt["status"], receipt["currhash"]) == ("failed", None)
        assert "not signed" in receipt["error"]
        store = a.ctx.store
        (row,) = await store.xsign.targets()
        (kept,) = await store.xsign.receipts(row.id)
        assert kept.response is not None and b'"currhash"' in kept.response
        assert kept.message == peer.bodies[0]
    finally:
        await peer.close()


async def test_a_refusing_peer(pair: tuple[RunningServer, RunningServer]) -> None:
    a, c = pair
    await add_target(_a_dir(a), c.url, c.key.public, "not-registered-there", "--push-after",
                     "1")
    await publish_many(a, "alice", ["one"])
    res = await cli("cross-sign", "run", "--data-dir", str(_a_dir(a).path), "--json")
    assert res.code == 1
    (result,) = res.json["targets"]
    assert (result["status"], result["error"]) == \
        ("refused", "server refused (HTTP 403): Client not found")
    assert await c.ctx.store.chain("").head() is None


async def test_cross_signing_runs_inside_serve(tmp_path: Path) -> None:
    a_dir = await ledger(tmp_path, "A", publish_new_clients=False, cross_sign_interval="1 second",
                         replicate_interval="", scheduled_attestation="")
    a = await start_server(a_dir)
    c = await start_server(await ledger(tmp_path, "C", publish_new_clients=False, **QUIET))
    try:
        await a.add_client("alice")
        peer = await c.add_client("A", key=a.key)
        await add_target(a_dir, c.url, c.key.public, peer.client_id, "--push-after", "1")
        await publish_many(a, "alice", ["one", "two"])
        deadline = asyncio.get_running_loop().time() + 15
        while await c.ctx.store.chain("").head() is None:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        c_head = await c.ctx.store.chain("").head()
        assert c_head is not None and c_head.publickey == a.key.public
    finally:
        await a.close()
        await c.close()


async def test_cross_sign_cli(tmp_path: Path) -> None:
    a_dir = await ledger(tmp_path, "A", **QUIET)
    own = a_dir.signing_key(a_dir.settings())
    peer = SigningKey.generate()
    base = ["cross-sign", "add", "--data-dir", str(a_dir.path), "--url", "http://127.0.0.1:9",
            "--client-id", "id"]
    res = await cli(*base, "--server-key", peer.public_b64)
    assert res.code == 2 and res.stderr.startswith("error: ")
    res = await cli(*base, "--server-key", peer.public_b64, "--push-after", "0")
    assert res.code == 2
    res = await cli(*base, "--server-key", own.public_b64, "--push-after", "1")
    assert (res.code, res.stderr) == (
        1, "error: a cross-sign target must be another server (this is our own key)\n")
    res = await cli(*base, "--server-key", peer.public_b64, "--push-after", "2",
                    "--push-days", "30", "--json")
    assert res.code == 0, res.stderr
    assert res.json == {"name": "http://127.0.0.1:9/chronicle",
                        "url": "http://127.0.0.1:9/chronicle",
                        "policy": {"push-after": 2, "push-days": 30}}
    res = await cli(*base, "--server-key", peer.public_b64, "--push-after", "2")
    assert res.code == 1 and "already exists" in res.stderr
    (target,) = await targets(a_dir)
    assert (target["client-id"], target["last-receipt"]) == ("id", None)
    res = await cli("cross-sign", "remove", "--data-dir", str(a_dir.path),
                    "http://127.0.0.1:9/chronicle")
    assert res.code == 0
    res = await cli("cross-sign", "remove", "--data-dir", str(a_dir.path), "nope")
    assert (res.code, res.stderr) == (1, "error: no cross-sign target 'nope'\n")
    assert await targets(a_dir) == []


# --- against recorded PHP server B ----------------------------------------------------------

class RecordedB:
    """Answers A's cross-sign POSTs with B's recorded answers, in order, and keeps what
    it was sent."""

    def __init__(self, ids: list[int]) -> None:
        self.answers = [EXCHANGES[i] for i in ids]
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _publish(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        response = self.answers[len(self.received) - 1]["response"]
        resp = web.Response(status=response["status"], body=response["body_text"].encode())
        for name, value in response["headers"]:
            if name.lower() in ("content-type", "body-signature-ed25519"):
                resp.headers.add(name, value)
        return resp

    async def start(self) -> RecordedB:
        app = web.Application()
        app.router.add_post("/chronicle/publish", self._publish)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/chronicle"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _entry(index: int) -> Entry:
    row = CHAIN_A[index]
    return Entry(index, row["contents"].encode(), b64u_decode(row["prevhash"], 32)
                 if row["prevhash"] else None, b64u_decode(row["currhash"], 32),
                 b64u_decode(row["summaryhash"], 32), b64u_decode(row["hashstate"], 384),
                 b64u_decode(row["publickey"], 32), b64u_decode(row["signature"], 64),
                 row["created"])


async def test_our_cross_signs_are_php_a_s_byte_for_byte(tmp_path: Path) -> None:
    """A's chain grows entry by entry as recorded; after each entry the policy
    (push-after 2, push-days 30) is applied: we send exactly A's four recorded cross-sign
    requests, and record B's signed receipts."""
    a_dir = await ledger(tmp_path, "A", A_KEY, **QUIET)
    b = await RecordedB([106, 109, 115, 118]).start()
    store = open_store(a_dir.settings().database, a_dir.path)
    await store.open()
    try:
        target = await store.xsign.add_target(XsignTarget(
            name="chronicle-B", url=b.url, publickey=B_PUBLIC, clientid=A_ON_B,
            policy=CrossSignPolicy(2, 30).as_json()))
        assert target.policy == '{"push-after":2,"push-days":30}'
        clock = PinnedClock()
        statuses = []
        for index in range(len(CHAIN_A)):
            async with store.write("") as tx:
                await tx.insert_entries([_entry(index)])
            if index < 21:  # the target was configured after entry 20
                continue
            requests_before = len(b.received)
            request = (EXCHANGES[[106, 109, 115, 118][requests_before]]["request"]
                       if requests_before < 4 else None)
            clock.value = parse_timestamp(
                json.loads(request["body_text"])["cross-sign-at"] if request
                else CHAIN_A[index]["created"])
            (target,) = await store.xsign.targets()
            result = await push(store, A_KEY, target, clock=clock)
            statuses.append((index, result.status))
        assert statuses == [(21, "pushed"), (22, "skipped"), (23, "pushed"), (24, "skipped"),
                            (25, "pushed"), (26, "skipped"), (27, "pushed"), (28, "skipped")]
        for (body, headers), exchange_id in zip(b.received, [106, 109, 115, 118], strict=True):
            recorded = EXCHANGES[exchange_id]["request"]
            assert body == recorded["body_text"].encode()
            want = dict(recorded["headers"])
            for name in ("Chronicle-Client-Key-ID", "Body-Signature-Ed25519", "Content-Type"):
                assert headers[name] == want[name]
        receipts = await store.xsign.receipts(target.id)
        assert [(r.status, r.index) for r in receipts] == \
            [("ok", 27), ("ok", 25), ("ok", 23), ("ok", 21)]
        for receipt, exchange_id in zip(receipts[::-1], [106, 109, 115, 118], strict=True):
            results = json.loads(EXCHANGES[exchange_id]["response"]["body_text"])["results"]
            assert (receipt.peer_currhash, receipt.peer_summaryhash, receipt.peer_created) == \
                (results["currhash"], results["summaryhash"], results["created"])
            assert receipt.response == EXCHANGES[exchange_id]["response"]["body_text"].encode()
        # B stored each as an entry signed by A's key: B's chain, rows 2-5.
        b_chain = load_vector("db/B.json")["tables"]["chronicle_chain"][1:]
        assert [r.peer_currhash for r in receipts[::-1]] == [row["currhash"] for row in b_chain]
    finally:
        await store.close()
        await b.close()
