"""Crash safety: nothing acknowledged is ever lost, and a failed commit stores nothing.

A `chronicle serve` subprocess takes concurrent publishes from several workers and is
killed (SIGKILL) or stopped (SIGTERM) mid-load. After a restart on the same data dir
every publish that got a 200 must be in the chain with the receipt it was given, the
whole chain must verify, and publishing must continue from the stored head.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from chronicle.config import DataDir
from chronicle.core.sapient import SigningKey
from chronicle.store import open_store
from chronicle.store.postgres import PostgresStore, split_url
from chronicle.store.sqlite import SqliteStore
from tests.helpers import (
    Identity,
    ServerProcess,
    add_client_offline,
    check_signed,
    http_publish,
    http_request,
    init_data_dir,
    start_server_with_store,
    stop_process,
    verify_chain,
)

WORKERS = 8


@dataclass
class Load:
    """What the workers sent and what the server acknowledged."""

    sent: set[str] = field(default_factory=set)
    acked: dict[str, dict[str, str]] = field(default_factory=dict)  # body -> receipt
    refused: list[tuple[int, bytes]] = field(default_factory=list)
    enough: asyncio.Event = field(default_factory=asyncio.Event)


async def _worker(session: aiohttp.ClientSession, url: str, server_public: bytes,
                  ident: Identity, number: int, load: Load, target: int) -> None:
    nonce = os.urandom(4).hex()
    for seq in range(10_000):
        body = f"crash-test worker={number} seq={seq} nonce={nonce}"
        load.sent.add(body)
        try:
            res = await http_publish(session, url, server_public, ident, body)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return  # the server went away
        if res.status != 200:
            load.refused.append((res.status, res.body))
            if res.status == 503:  # draining on SIGTERM: not acknowledged, stop
                return
            continue
        check_signed(res, server_public)
        load.acked[body] = res.json["results"]
        if len(load.acked) >= target:
            load.enough.set()


async def _run_load(sp: ServerProcess, server_public: bytes, idents: list[Identity],
                    stop: str, target: int = 200, load: Load | None = None) -> Load:
    """Publish from WORKERS workers until ``load`` holds ``target`` acks, then stop the
    server (``load``: what earlier runs sent and were acknowledged, added to)."""
    load = load or Load()
    load.enough = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=15)
    connector = aiohttp.TCPConnector(limit=WORKERS * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [asyncio.create_task(_worker(session, sp.url, server_public,
                                             idents[i % len(idents)], i, load, target))
                 for i in range(WORKERS)]
        try:
            await asyncio.wait_for(load.enough.wait(), timeout=30)
            assert sp.proc is not None
            if stop == "kill":
                sp.proc.kill()
            else:
                sp.proc.terminate()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
    return load


async def _setup(tmp_path: Path, clients: int = 4
                 ) -> tuple[DataDir, SigningKey, list[Identity]]:
    key = SigningKey.generate()
    data_dir = await init_data_dir(tmp_path / "ledger", key)
    idents = [await add_client_offline(data_dir, f"c{i}") for i in range(clients)]
    return data_dir, key, idents


async def _check_after_restart(data_dir: DataDir, key: SigningKey, load: Load,
                               ident: Identity) -> None:
    sp = ServerProcess(data_dir.path)
    await sp.start()
    try:
        async with aiohttp.ClientSession() as session:
            async def get(path: str) -> Any:
                res = await http_request(session, sp.url, key.public, "GET", path)
                assert res.status == 200, (path, res.status, res.body)
                return res.json

            export = await get("/chronicle/export")
            rows = export["results"]
            assert export["total"] == len(rows)
            verify_chain(rows)
            contents = [r["contents"] for r in rows]
            assert len(set(contents)) == len(contents)
            assert set(contents) <= load.sent  # nothing we did not send
            assert set(load.acked) <= set(contents)  # everything acknowledged survived

            by_hash = {r["hash"]: r for r in rows}
            for body, receipt in load.acked.items():
                row = by_hash[receipt["currhash"]]
                assert row["contents"] == body
                assert (row["summary"], row["created"]) == \
                    (receipt["summaryhash"], receipt["created"])
            # lookup of a sample of receipts answers the same summaryhash/created
            for body, receipt in list(load.acked.items())[:: max(1, len(load.acked) // 10)]:
                found = (await get(f"/chronicle/lookup/{receipt['currhash']}"))["results"]
                assert [(r["contents"], r["summaryhash"], r["created"]) for r in found] == \
                    [(body, receipt["summaryhash"], receipt["created"])]

            # publishing continues from the stored head
            head = rows[-1]["hash"]
            res = await http_publish(session, sp.url, key.public, ident, "after the restart")
            assert res.status == 200, res.body
            receipt = res.json["results"]
            found = (await get(f"/chronicle/lookup/{receipt['currhash']}"))["results"]
            assert found[0]["prevhash"] == head
            assert (await get("/chronicle/export"))["total"] == len(rows) + 1
        assert await stop_process(sp, graceful=True) == 0
    finally:
        await stop_process(sp)

    # storage level: indices are gap-free
    store = open_store(data_dir.settings().database, data_dir.path)
    await store.open()
    try:
        stored = await store.chain("").range(0, 1_000_000)
    finally:
        await store.close()
    assert [e.index for e in stored] == list(range(len(rows) + 1))


async def test_sigkill_mid_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir, key, idents = await _setup(tmp_path)
    sp = ServerProcess(data_dir.path)
    await sp.start()
    try:
        load = await _run_load(sp, key.public, idents, "kill")
    finally:
        await stop_process(sp)
    assert load.refused == []
    assert len(load.acked) >= 200
    await _check_after_restart(data_dir, key, load, idents[0])


async def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    data_dir, key, idents = await _setup(tmp_path)
    sp = ServerProcess(data_dir.path)
    await sp.start()
    try:
        load = await _run_load(sp, key.public, idents, "term")
        assert sp.proc is not None
        code = await asyncio.to_thread(sp.proc.wait, 30)
        assert code == 0
    finally:
        await stop_process(sp)
    # while draining the server may refuse new work, but only with a signed 503
    assert all(status == 503 for status, _ in load.refused), load.refused
    assert len(load.acked) >= 200
    await _check_after_restart(data_dir, key, load, idents[0])


def _publisher(body: str, idents: list[Identity]) -> Identity:
    """The identity that signed a body sent by :func:`_worker`."""
    match = re.match(r"crash-test worker=(\d+) ", body)
    assert match is not None, body
    return idents[int(match.group(1)) % len(idents)]


async def test_repeated_sigkill_under_load_then_retries_store_each_publish_once(
        tmp_path: Path) -> None:
    """Three SIGKILLs under load. After each restart the publishes whose answer was lost
    are retried, byte for byte: each ends up on the chain exactly once (stored before the
    kill: the retry answers the stored receipt), and everything acknowledged survives
    every later kill."""
    data_dir, key, idents = await _setup(tmp_path)
    load = Load()
    retried = 0
    for cycle in range(3):
        sp = ServerProcess(data_dir.path)
        await sp.start()
        try:
            async with aiohttp.ClientSession() as session:
                in_doubt = sorted(load.sent - set(load.acked))
                for body in in_doubt:
                    res = await http_publish(session, sp.url, key.public,
                                             _publisher(body, idents), body)
                    assert res.status == 200, (cycle, res.status, res.body)
                    check_signed(res, key.public)
                    load.acked[body] = res.json["results"]
                retried += len(in_doubt)
            load = await _run_load(sp, key.public, idents, "kill",
                                   target=len(load.acked) + 150, load=load)
        finally:
            await stop_process(sp)
        assert load.refused == []
    assert retried > 0  # answers were lost in the kills and their publishes retried
    await _check_after_restart(data_dir, key, load, idents[0])


class _LockHolder:
    """Holds the chain's write lock from another connection, as a stuck writer would."""

    def __init__(self, data_dir: Any) -> None:
        self.url = data_dir.settings().database
        self.path = data_dir.path / "chronicle.db"
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    def store(self) -> Any:
        """A store that gives up on the lock quickly (200 ms)."""
        if self.url.startswith("sqlite:"):
            return SqliteStore(self.path, busy_timeout_ms=200)
        return PostgresStore(self.url, lock_timeout_ms=200)

    async def __aenter__(self) -> None:
        if self.url.startswith("sqlite:"):
            self._sqlite = sqlite3.connect(self.path, isolation_level=None)
            self._sqlite.execute("BEGIN EXCLUSIVE")
            return
        dsn, schema = split_url(self.url)
        self._pg = await asyncpg.connect(dsn, server_settings={"search_path": schema or ""})
        await self._pg.execute("BEGIN")
        await self._pg.execute("SELECT id FROM instances FOR UPDATE")

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()


async def test_failed_commit_stores_nothing_and_answers_503(tmp_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "ledger")
    holder = _LockHolder(data_dir)
    srv = await start_server_with_store(data_dir, holder.store())
    try:
        alice = await srv.add_client("alice")
        res = await srv.publish(alice, "before the lock")
        assert res.status == 200
        before = res.json["results"]

        async with holder:
            results = await asyncio.gather(
                srv.publish(alice, "blocked"),
                *(srv.publish(alice, f"blocked {i}") for i in range(3)))
            for res in results:  # RunningServer.request checked the signatures
                assert res.status == 503, (res.status, res.body)
                doc = res.json
                assert doc["status"] == "ERROR" and doc["message"].startswith(
                    "Nothing was stored, retry later")
                assert list(doc) == ["version", "datetime", "status", "message"]
                assert int(res.headers["Retry-After"]) >= 0
            last = await srv.request("GET", "/chronicle/lasthash")
            assert [r["currhash"] for r in last.json["results"]] == [before["currhash"]]

        res = await srv.publish(alice, "blocked")  # the client's retry now succeeds
        assert res.status == 200, res.body
        receipt = res.json["results"]
        found = (await srv.request("GET", f"/chronicle/lookup/{receipt['currhash']}")).json
        assert found["results"][0]["prevhash"] == before["currhash"]
        rows = (await srv.request("GET", "/chronicle/export")).json["results"]
        assert [r["contents"] for r in rows] == ["before the lock", "blocked"]
        verify_chain(rows)
    finally:
        await srv.close()
