"""Our server in PHP Chronicle server B's place: replicating the recorded server A.

A loopback server plays A by sending A's recorded answers (bodies and
``Body-Signature-Ed25519`` exactly as recorded) to the requests B's replicator made. Our
replica, running with B's key and B's source id under clocks pinned to the recording,
syncs at the moments B's ``scheduled-tasks.php`` ran (an ``export``, then ``since``, then
``since`` page after page of a paginated A), attests after the first run, receives A's
cross-sign publishes, and answers every request B answered. The replica ends with exactly
the rows of B's recorded replica chain (hash states included), B's own chain is
reproduced entry for entry (our attestation is B's first entry, byte for byte), and every
answer is B's, same bytes, same signature — except the replica ``since`` answers, where
PHP's order is an accident of its query plan (rows sorted by summaryhash, which no client
can verify) and we answer in chain order: asserted explicitly below.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from chronicle.config import DataDir
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_decode, b64u_encode, parse_timestamp
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, verify
from chronicle.replication.attest import attest
from chronicle.replication.follower import Replicator
from chronicle.replication.upstream import SyncOptions
from chronicle.store import Client, ReplicaSource
from tests.helpers import VECTORS, RunningServer, init_data_dir, load_vector, start_server
from tests.integration.test_replay_php import PinnedClock, _body, _header, _times

KEYS = load_vector("keys.json")
EXCHANGES = {e["id"]: e for e in load_vector("exchanges.json")["exchanges"]}
B_TABLES = load_vector("db/B.json")["tables"]
A_KEY = b64u_decode(KEYS["servers"]["A"]["publickey"], 32)
B_KEY = SigningKey.from_text(KEYS["servers"]["B"]["secretkey"])
SOURCE = "wBiorLqcC-U8iRZNKhEDuSS1X2GQHBHQFlA1-UNhjOhP"
SOURCE_NAME = "Chronicle A (replicated by B)"
RECORDED_URL = "http://127.0.0.1:18111/chronicle"
A_AS_CLIENT_OF_B = KEYS["servers"]["A"]["registered_as_client"]["B"]

# B's scheduled-tasks runs: (sync clock, the recorded answers of A its replicator used).
RUNS = [("2026-11-28T04:58:25+00:00", [83, 84]),
        ("2026-11-28T04:58:25+00:00", [83, 101]),
        ("2026-11-28T04:58:27+00:00", [83, 120, 121, 122])]
# B's exchanges, and after which sync run each came.
B_EXCHANGES = [(0, [86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98]),
               (1, [102, 103, 104, 106, 109, 111, 112, 113, 115, 118]),
               (2, [123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 135, 136])]
# Replica `since`: PHP sorts the rows by summaryhash; we answer in chain order.
CHAIN_ORDER = {93, 103, 131, 132}


class RecordedA:
    """Serves A's recorded answers to the requests B's replicator made (by target)."""

    def __init__(self) -> None:
        self.routes: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    def serve(self, ids: list[int]) -> None:
        self.routes = {unquote(EXCHANGES[i]["request"]["target"]): EXCHANGES[i]["response"]
                       for i in ids}

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        response = self.routes.get(request.path)
        if response is None:
            return web.Response(status=599, text=f"not recorded: {request.path}")
        resp = web.Response(status=response["status"], body=_body(response))
        for name, value in response["headers"]:
            if name.lower() in ("content-type", "body-signature-ed25519"):
                resp.headers.add(name, value)
        return resp

    async def start(self) -> RecordedA:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/chronicle"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _settings(ex: dict[str, Any]) -> dict[str, Any]:
    return {"paginate-export": ex["server_settings"]["paginate-export"] or 0}


async def _restart(server: RunningServer | None, data: Path, settings: dict[str, Any],
                   clocks: tuple[PinnedClock, PinnedClock]) -> RunningServer:
    if server is not None:
        await server.close()
    dd = DataDir(data)
    raw = dd.read_raw()
    raw.update(settings)
    dd.write_raw(raw)
    return await start_server(dd, clock=clocks[0], ledger_clock=clocks[1])


async def _send(server: RunningServer, ex: dict[str, Any]) -> tuple[int, Any, bytes]:
    req = ex["request"]
    headers = [(k, v) for k, v in req["headers"]
               if k.lower() not in ("host", "content-length", "connection")]
    async with server.session.request(req["method"], server.url + req["target"],
                                      data=_body(req), headers=headers,
                                      allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.read()


def _rows_in_chain_order(recorded: dict[str, Any], copy: list[Entry], start: int,
                         stop: int) -> list[dict[str, Any]]:
    """What we answer instead of PHP's summaryhash-sorted rows: the same rows (when the
    page is the whole answer) in the order of the chain."""
    rows = {r["currhash"]: r for r in recorded["results"]}
    ours = [b64u_encode(e.currhash) for e in copy[start:stop]]
    return [rows[h] for h in ours if h in rows]


def check_chain_order(ex_id: int, body: bytes, copy: list[Entry]) -> None:
    recorded = json.loads(EXCHANGES[ex_id]["response"]["body_text"])
    ours = json.loads(body)
    assert [k for k in ours if k != "results"] == [k for k in recorded if k != "results"]
    assert {k: v for k, v in ours.items() if k != "results"} == \
        {k: v for k, v in recorded.items() if k != "results"}
    target = EXCHANGES[ex_id]["request"]["target"]
    after = next(e.index for e in copy if b64u_encode(e.currhash) in target
                 or b64u_encode(e.summaryhash) in target) + 1
    if "paginated" in recorded:
        page = int(target.rsplit("/", 1)[1]) if target.count("/") == 6 else 1
        size = 5
        first = after + (page - 1) * size
        expected = [b64u_encode(e.currhash) for e in copy[first:first + size]]
    else:
        expected = [b64u_encode(e.currhash) for e in copy[after:]]
        # Unpaginated: the very same rows as PHP's answer, only in chain order.
        assert sorted(r["currhash"] for r in ours["results"]) == \
            sorted(r["currhash"] for r in recorded["results"])
        assert ours["results"] == _rows_in_chain_order(recorded, copy, after, len(copy))
    assert [r["currhash"] for r in ours["results"]] == expected
    assert [r["summaryhash"] for r in recorded["results"]] == \
        sorted(r["summaryhash"] for r in recorded["results"])  # PHP's accidental order


async def _setup(tmp_path: Path) -> tuple[Path, DataDir]:
    data = tmp_path / "B"
    dd = await init_data_dir(data, B_KEY, publish_new_clients=False,
                             publish_revoked_clients=False, replicate_interval="",
                             cross_sign_interval="", scheduled_attestation="")
    server = await start_server(dd)
    try:
        async with server.ctx.store.write("") as tx:
            await tx.add_client(Client(A_AS_CLIENT_OF_B, A_KEY, False, None,
                                       "2026-11-28 04:58:25"))
        await server.ctx.store.replication.add_source(ReplicaSource(
            uniqueid=SOURCE, name=SOURCE_NAME, url=RECORDED_URL, publickey=A_KEY,
            created="2026-11-28T04:58:24+00:00"))
    finally:
        await server.close()
    return data, dd


async def _sync(server: RunningServer, a: RecordedA, run: int, tmp_path: Path) -> None:
    """One of B's scheduled-tasks runs: replicate, then the attestation if due."""
    stamp, answers = RUNS[run]
    a.serve(answers)
    a.requests.clear()
    store = server.ctx.store
    source = await store.replication.source(SOURCE)
    assert source is not None
    await store.replication.set_url(source.id, a.url)
    source = await store.replication.source(SOURCE)
    assert source is not None
    clock = PinnedClock()
    clock.value = parse_timestamp(stamp)
    options = SyncOptions(spool_dir=tmp_path / "spool", evidence_dir=tmp_path / "evidence",
                          clock=clock)
    result = await Replicator(store, source, options).sync()
    assert result.status == "ok", result.error
    # What B's replicator asked for, in order (our follower reads the index every time).
    assert a.requests == [unquote(EXCHANGES[i]["request"]["target"]) for i in answers]
    await store.replication.set_url(source.id, RECORDED_URL)
    entry = await attest(store, server.ctx.ledger(""), server.key, every=timedelta(days=7),
                         clock=clock)
    assert (entry is not None) == (run == 0)


async def test_replica_of_recorded_php_chronicle_a(tmp_path: Path) -> None:
    data, _ = await _setup(tmp_path)
    clocks = (PinnedClock(), PinnedClock())
    a = await RecordedA().start()
    server: RunningServer | None = None
    settings: dict[str, Any] | None = None
    answered = 0
    try:
        for run, exchange_ids in B_EXCHANGES:
            if server is None:
                settings = _settings(EXCHANGES[exchange_ids[0]])
                server = await _restart(None, data, settings, clocks)
            for c in clocks:
                c.value = parse_timestamp(RUNS[run][0])
            await _sync(server, a, run, tmp_path)
            source = await server.ctx.store.replication.source(SOURCE)
            assert source is not None
            head = await server.ctx.store.replication.chain(source.id).head()
            assert head is not None
            chain = server.ctx.store.replication.chain(source.id)
            copy = [e async for page in chain.pages(0, head.index + 1) for e in page]
            for ex_id in exchange_ids:
                ex = EXCHANGES[ex_id]
                if _settings(ex) != settings:
                    settings = _settings(ex)
                    server = await _restart(server, data, settings, clocks)
                clocks[0].value, clocks[1].value = _times(ex)
                status, headers, body = await _send(server, ex)
                sig = headers.getall(SIGNATURE_HEADER)
                assert len(sig) == 1 and verify(B_KEY.public, body, b64u_decode(sig[0], 64))
                assert headers.getall("Content-Type") == ["application/json"]
                assert status == ex["response"]["status"], (ex_id, body[:300])
                if ex_id in CHAIN_ORDER:
                    check_chain_order(ex_id, body, copy)
                    continue
                assert body == _body(ex["response"]), (ex_id, ex["label"])
                assert sig[0] == _header(ex["response"], SIGNATURE_HEADER)
                answered += 1
        assert answered == sum(len(ids) for _, ids in B_EXCHANGES) - len(CHAIN_ORDER)
        assert server is not None
        await _check_tables(server)
        index = load_vector("exports/index.json")
        for name in ("B-final-export", "B-final-replica-export"):
            item = index[name]
            recorded = (VECTORS / "exports" / item["file"]).read_bytes()
            assert _body(EXCHANGES[item["exchange_id"]]["response"]) == recorded
    finally:
        if server is not None:
            await server.close()
        await a.close()


async def _check_tables(server: RunningServer) -> None:
    """Our replica holds B's replica rows, our chain is B's chain, row for row."""
    store = server.ctx.store
    source = await store.replication.source(SOURCE)
    assert source is not None
    assert (source.name, source.url, source.publickey) == (SOURCE_NAME, RECORDED_URL, A_KEY)
    recorded = B_TABLES["chronicle_replication_chain"]
    assert len(recorded) == 29
    for index, row in enumerate(recorded):
        entry = await store.replication.chain(source.id).entry_at(index)
        assert entry is not None
        assert entry.contents.decode() == row["data"]
        assert (b64u_encode(entry.prevhash) if entry.prevhash else "") == row["prevhash"]
        assert b64u_encode(entry.currhash) == row["currhash"]
        assert b64u_encode(entry.summaryhash) == row["summaryhash"]
        assert b64u_encode(entry.hashstate) == row["hashstate"]
        assert b64u_encode(entry.publickey) == row["publickey"]
        assert b64u_encode(entry.signature) == row["signature"]
        assert entry.created == row["created"]
    chain = B_TABLES["chronicle_chain"]
    for index, row in enumerate(chain):
        entry = await store.chain("").entry_at(index)
        assert entry is not None
        assert entry.contents.decode() == row["data"]
        assert b64u_encode(entry.currhash) == row["currhash"]
        assert b64u_encode(entry.hashstate) == row["hashstate"]
        assert b64u_encode(entry.signature) == row["signature"]
        assert entry.created == row["created"]
    assert await store.chain("").entry_at(len(chain)) is None
