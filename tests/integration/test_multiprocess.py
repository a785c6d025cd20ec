"""Several server processes on one database: appends stay ordered, gap-free, and durable.

Two independent nodes (separate data dirs, one database, one key) and `serve --workers 2`
publish concurrently; one process is SIGKILLed mid-load. Every acknowledged publish must
be in the chain exactly once, the indices gap-free, the chain verify end to end. Runs on
SQLite (one file, several processes) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from click.testing import CliRunner

from chronicle.cli import main
from chronicle.config import KEY_FILE, DataDir
from chronicle.core.sapient import SigningKey
from chronicle.store import SCHEMA_VERSION, open_store
from tests.helpers import (
    Identity,
    ServerProcess,
    add_client_offline,
    check_signed,
    http_publish,
    http_request,
    init_data_dir,
    stop_process,
    verify_chain,
)

WORKERS = 8


@dataclass
class Load:
    sent: set[str] = field(default_factory=set)
    acked: dict[str, dict[str, str]] = field(default_factory=dict)
    refused: list[tuple[int, bytes]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _worker(session: aiohttp.ClientSession, urls: list[str], key: bytes,
                  ident: Identity, number: int, load: Load) -> None:
    """Publish to the nodes in turn; a node that stops answering is dropped."""
    alive = list(urls)
    seq = 0
    while alive and not load.stop.is_set():
        url = alive[(number + seq) % len(alive)]
        body = f"multi worker={number} seq={seq} nonce={os.urandom(4).hex()}"
        seq += 1
        load.sent.add(body)
        try:
            res = await http_publish(session, url, key, ident, body)
        except (TimeoutError, aiohttp.ClientError, OSError):
            await asyncio.sleep(0.05)
            if url in alive and len(alive) > 1:
                alive.remove(url)
            continue
        if res.status != 200:
            load.refused.append((res.status, res.body))
            continue
        check_signed(res, key)
        load.acked[body] = res.json["results"]


async def _until(load: Load, acks: int, timeout: float = 60) -> None:
    async def wait() -> None:
        while len(load.acked) < acks:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(wait(), timeout)


@contextlib.asynccontextmanager
async def _load(urls: list[str], key: bytes, idents: list[Identity]) -> Any:
    load = Load()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15),
                                     connector=aiohttp.TCPConnector(limit=64)) as session:
        tasks = [asyncio.create_task(_worker(session, urls, key, idents[i % len(idents)], i,
                                             load)) for i in range(WORKERS)]
        try:
            yield load
        finally:
            load.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def _second_node(primary: DataDir, path: Path) -> DataDir:
    """Another node of the same ledger: same database (absolute), same signing key."""
    path.mkdir()
    raw = primary.read_raw()
    if raw["database"].startswith("sqlite:") and not raw["database"][7:].startswith("/"):
        raw["database"] = f"sqlite:{primary.path / raw['database'][7:]}"
    shutil.copy(primary.path / KEY_FILE, path / KEY_FILE)
    (path / KEY_FILE).chmod(0o600)
    node = DataDir(path)
    node.write_raw(raw)
    return node


async def _verify(url: str, key: bytes, load: Load) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        res = await http_request(session, url, key, "GET", "/chronicle/export")
    assert res.status == 200
    rows: list[dict[str, Any]] = res.json["results"]
    assert res.json["total"] == len(rows)
    verify_chain(rows)  # links, both hashes, every signature; indices gap-free
    contents = [r["contents"] for r in rows]
    assert len(set(contents)) == len(contents), "an entry was stored twice"
    assert set(contents) <= load.sent
    by_hash = {r["hash"]: r for r in rows}
    for body, receipt in load.acked.items():  # every acknowledged publish, as receipted
        row = by_hash[receipt["currhash"]]
        assert (row["contents"], row["summary"], row["created"]) == \
            (body, receipt["summaryhash"], receipt["created"])
    assert load.refused == []
    return rows


async def _gap_free(data_dir: DataDir, count: int) -> None:
    store = open_store(data_dir.settings().database, data_dir.path)
    await store.open()
    try:
        stored = await store.chain("").range(0, count + 10)
    finally:
        await store.close()
    assert [e.index for e in stored] == list(range(count))


async def _setup(tmp_path: Path) -> tuple[DataDir, SigningKey, list[Identity]]:
    key = SigningKey.generate()
    primary = await init_data_dir(tmp_path / "node-a", key, publish_new_clients=False)
    idents = [await add_client_offline(primary, f"c{i}") for i in range(4)]
    return primary, key, idents


async def test_two_nodes_publish_concurrently(tmp_path: Path) -> None:
    primary, key, idents = await _setup(tmp_path)
    second = await _second_node(primary, tmp_path / "node-b")
    nodes = [ServerProcess(primary.path), ServerProcess(second.path)]
    try:
        urls = [await n.start() for n in nodes]
        async with _load(urls, key.public, idents) as load:
            await _until(load, 300)
        rows = await _verify(urls[1], key.public, load)
        assert len(rows) >= 300
        await _gap_free(primary, len(rows))
    finally:
        for n in nodes:
            await stop_process(n)


async def test_a_node_killed_mid_load_loses_nothing(tmp_path: Path) -> None:
    primary, key, idents = await _setup(tmp_path)
    second = await _second_node(primary, tmp_path / "node-b")
    a, b = ServerProcess(primary.path), ServerProcess(second.path)
    try:
        urls = [await a.start(), await b.start()]
        async with _load(urls, key.public, idents) as load:
            await _until(load, 150)
            assert a.proc is not None
            a.proc.kill()  # SIGKILL, with publishes in flight on it
            before = len(load.acked)
            await _until(load, before + 150)  # the other node carries on
        await stop_process(a)
        rows = await _verify(urls[1], key.public, load)
        # The killed node comes back and continues the same chain.
        url_a = await a.start()
        async with aiohttp.ClientSession() as session:
            res = await http_publish(session, url_a, key.public, idents[0], "after restart")
        assert res.status == 200, res.body
        receipt = res.json["results"]
        load.sent.add("after restart")
        load.acked["after restart"] = receipt
        rows = await _verify(url_a, key.public, load)
        assert rows[-1]["contents"] == "after restart"
        await _gap_free(primary, len(rows))
    finally:
        await stop_process(a)
        await stop_process(b)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def test_serve_workers_restarts_a_killed_worker(tmp_path: Path) -> None:
    primary, key, idents = await _setup(tmp_path)
    sp = ServerProcess(primary.path, "--workers", "2")
    try:
        url = await sp.start()
        assert sp.proc is not None
        workers = _children(sp.proc.pid)
        assert len(workers) == 2
        async with _load([url], key.public, idents) as load:
            await _until(load, 150)
            os.kill(workers[0], signal.SIGKILL)
            before = len(load.acked)
            await _until(load, before + 150)
        rows = await _verify(url, key.public, load)
        await _gap_free(primary, len(rows))
        for _ in range(100):  # the supervisor replaces the killed worker
            now = _children(sp.proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            await asyncio.sleep(0.05)
        assert len(now) == 2 and workers[0] not in now
        assert await stop_process(sp, graceful=True) == 0
    finally:
        await stop_process(sp)


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


async def test_serve_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """A supervisor killed outright (SIGKILL, the OOM killer) leaves no worker serving on
    as an orphan: each gets SIGTERM from the kernel and stops."""
    primary, _, _ = await _setup(tmp_path)
    sp = ServerProcess(primary.path, "--workers", "2")
    try:
        await sp.start()
        assert sp.proc is not None
        workers = _children(sp.proc.pid)
        assert len(workers) == 2
        sp.proc.kill()
        for _ in range(200):
            alive = [w for w in workers if _running(w)]
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert not alive, f"workers still running after their supervisor died: {alive}"
    finally:
        await stop_process(sp)


def _forwarded(metrics: str) -> dict[str, float]:
    """``chronicle_forwarded_publishes_total`` by outcome, from /metrics (all workers)."""
    found: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("chronicle_forwarded_publishes_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


async def test_serve_workers_sequence_publishes_in_worker_zero(tmp_path: Path) -> None:
    """With ``--workers 2`` the worker that is not worker 0 forwards its publishes to
    worker 0's sequencer (each on a new connection, so both workers take some)."""
    primary, key, idents = await _setup(tmp_path)
    sp = ServerProcess(primary.path, "--workers", "2")
    load = Load()
    try:
        url = await sp.start()
        forwarded: dict[str, float] = {}
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as session:
            for n in range(400):
                body = f"which worker {n}"
                load.sent.add(body)
                res = await http_publish(session, url, key.public, idents[n % 4], body)
                assert res.status == 200, res.body
                load.acked[body] = res.json["results"]
                if n % 20 == 19:
                    async with session.get(url + "/metrics") as got:
                        forwarded = _forwarded(await got.text())
                    if forwarded.get("sequencer", 0) >= 5:
                        break
        assert forwarded.get("sequencer", 0) >= 5, forwarded
        assert forwarded.get("fallback", 0) == 0, forwarded
        rows = await _verify(url, key.public, load)
        await _gap_free(primary, len(rows))
        assert await stop_process(sp, graceful=True) == 0
    finally:
        await stop_process(sp)


async def test_serve_workers_stopped_under_load_lose_nothing(tmp_path: Path) -> None:
    """SIGTERM to ``serve --workers 2`` while publishes stream in through both workers
    (worker 0 sequencing the other's): every acknowledged publish is stored exactly once,
    and a publish refused on the way out is a 503 (safe to retry), never a 500."""
    primary, key, idents = await _setup(tmp_path)
    sp = ServerProcess(primary.path, "--workers", "2")
    again = ServerProcess(primary.path)
    try:
        url = await sp.start()
        async with _load([url], key.public, idents) as load:
            await _until(load, 200)
            assert await stop_process(sp, graceful=True) == 0
        assert {status for status, _ in load.refused} <= {503}, load.refused
        load.refused.clear()
        rows = await _verify(await again.start(), key.public, load)
        await _gap_free(primary, len(rows))
        assert len(rows) >= len(load.acked) >= 200
    finally:
        await stop_process(again)
        await stop_process(sp)


def test_workers_refuse_a_bad_database_once(tmp_path: Path) -> None:
    """A schema mismatch stops `serve --workers` at once with one error line (exit 3),
    instead of workers restarting forever."""
    data = tmp_path / "d"
    assert CliRunner().invoke(main, ["init", "--data-dir", str(data)]).exit_code == 0
    with sqlite3.connect(data / "chronicle.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    proc = subprocess.run([sys.executable, "-m", "chronicle.cli", "serve", "--data-dir",
                           str(data), "--port", "0", "--workers", "2"],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 3
    assert proc.stderr.decode().strip().splitlines() == [
        f"error: database schema version 99, this chronicle needs {SCHEMA_VERSION} "
        "(the database is newer than this software)"]
