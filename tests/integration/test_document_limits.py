"""Issue 10, finding 2: one anonymous ``/since`` or ``/export`` must not cost gigabytes.

The ledger of the report: 16 entries of 8 MiB of ``\\x01`` (48 MiB each once JSON-escaped,
a 768 MiB document). Before the fix one ``GET /since/{hash}`` took a ``chronicle serve``
process to 2.5 GB, two parallel exports to 3.9 GB, and 8 slow readers held 8 copies of the
export (6 GiB) in unlinked spool files. Here the same attack runs against a ``chronicle
serve`` subprocess on loopback while its memory is read from ``/proc``: the process stays
under ``BUDGET_MB``, identical requests share one build and one spool file, the request
past the build cap gets the exact signed 503, the spool bound its exact signed 507/503,
and a legitimate client keeps reading and publishing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from chronicle.config import DataDir
from chronicle.core.encoding import b64u_encode, php_json
from chronicle.server.export import MSG_BUSY, msg_spool_busy, msg_too_large
from tests.helpers import (
    Download,
    Identity,
    Response,
    ServerProcess,
    download_verified,
    http_publish,
    http_request,
    init_data_dir,
    open_spool_files,
    proc_status_mb,
    slow_reader,
    start_server,
    stop_process,
)

BUDGET_MB = 300  # the bound for this finding: peak RSS of the server process
BIG = 8 << 20
HUGE_ROWS = 16
DOCUMENT = HUGE_ROWS * 6 * BIG  # at least this many bytes: the escaped bodies alone


async def _huge_ledger(path: Path, **settings: Any) -> tuple[DataDir, Identity, list[str]]:
    """A small first entry, 16 entries of 8 MiB of \\x01, a small head; and a client
    "bob" for legitimate traffic. Returns the data dir, bob, and the entries' hashes."""
    dd = await init_data_dir(path, max_body_size=9 << 20, publish_new_clients=False,
                             **settings)
    srv = await start_server(dd)
    try:
        alice = await srv.add_client("alice")
        bob = await srv.add_client("bob")
        ledger = srv.ctx.ledger("")
        bodies = [b"first", *(b"\x01" * (BIG - 8) + b"%08d" % i for i in range(HUGE_ROWS)),
                  b"small head"]
        hashes = []
        for body in bodies:  # one by one: in this order
            entry = await ledger.append(body, alice.key.public, alice.key.sign(body),
                                        client_id=alice.client_id)
            hashes.append(b64u_encode(entry.currhash))
    finally:
        await srv.close()
    return dd, bob, hashes


def _set(dd: DataDir, **settings: Any) -> None:
    raw = dd.read_raw()
    raw.update({k.replace("_", "-"): v for k, v in settings.items()})
    dd.config_path.write_text(tomli_w.dumps(raw))


class Watch:
    """Samples the server process: RSS, and the spool files it holds open."""

    def __init__(self, pid: int, cache: Path) -> None:
        self.pid = pid
        self.cache = cache
        self.rss_mb = 0.0
        self.spool_files = 0
        self.spool_bytes = 0

    def sample(self) -> dict[int, tuple[int, bool]]:
        self.rss_mb = max(self.rss_mb, proc_status_mb(self.pid, "VmRSS"))
        files = open_spool_files(self.pid, self.cache)
        self.spool_files = max(self.spool_files, len(files))
        self.spool_bytes = max(self.spool_bytes, sum(size for size, _ in files.values()))
        return files

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.02)

    @property
    def peak_mb(self) -> float:
        return proc_status_mb(self.pid, "VmHWM")


@contextlib.asynccontextmanager
async def _serving(dd: DataDir) -> AsyncIterator[tuple[str, bytes, Watch, aiohttp.ClientSession]]:
    sp = ServerProcess(dd.path)
    watcher: asyncio.Future[None] | None = None
    try:
        url = await sp.start()
        assert sp.proc is not None
        watch = Watch(sp.proc.pid, dd.cache_dir)
        watcher = asyncio.ensure_future(watch.run())
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield url, dd.signing_key(dd.settings()).public, watch, session
        watch.sample()
        print(f"server peak RSS {watch.peak_mb:.0f} MB (sampled {watch.rss_mb:.0f} MB); "
              f"spool: at most {watch.spool_files} files open, {watch.spool_bytes} bytes")
        assert watch.peak_mb < BUDGET_MB, f"server peak RSS {watch.peak_mb:.0f} MB"
    finally:
        if watcher is not None:
            watcher.cancel()
        await stop_process(sp)


def _assert_error(res: Response, status: int, message: str) -> None:
    """Exactly Chronicle's signed error body (the signature was checked on receipt)."""
    assert res.status == status, (res.status, res.body[:300])
    expected = {"version": "1.3.x", "datetime": res.json["datetime"], "status": "ERROR",
                "message": message}
    assert res.body == php_json(expected).encode("ascii")


async def _legit(session: aiohttp.ClientSession, url: str, key: bytes, bob: Identity,
                 stop: asyncio.Event) -> list[float]:
    """A client reading the head and publishing, as long as the attack runs: every answer
    is 200 and signed. Returns the time each round took."""
    loop = asyncio.get_running_loop()
    rounds: list[float] = []
    while not stop.is_set():
        began = loop.time()
        head = await http_request(session, url, key, "GET", "/chronicle/lasthash")
        assert head.status == 200 and head.json["status"] == "OK"
        published = await http_publish(session, url, key, bob, f"legit {len(rounds)}")
        assert published.status == 200 and published.json["status"] == "OK"
        rounds.append(loop.time() - began)
        await asyncio.sleep(0.05)
    return rounds


async def _until(check: Any, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_since_exports_and_slow_readers_stay_within_budget(tmp_path: Path) -> None:
    """One since, two parallel exports, 8 slow readers of the export, one request past the
    build cap, a legitimate client throughout."""
    dd, bob, hashes = await _huge_ledger(tmp_path / "l", document_queue=0,
                                         document_send_timeout="6 seconds")
    async with _serving(dd) as (url, key, watch, session):
        since = asyncio.ensure_future(
            download_verified(session, f"{url}/chronicle/since/{hashes[0]}", key))
        exports = [asyncio.ensure_future(
            download_verified(session, f"{url}/chronicle/export", key)) for _ in range(2)]
        await asyncio.sleep(0.5)
        slow = [await slow_reader(url, "/chronicle/export") for _ in range(8)]
        await asyncio.sleep(0.5)

        # Both build slots are taken (since, export) and document-queue is 0: another
        # document is refused at once, signed; the slow readers joined the export's build.
        over = await http_request(session, url, key, "GET", f"/chronicle/since/{hashes[1]}")
        _assert_error(over, 503, MSG_BUSY)
        assert over.headers["Retry-After"] == "5"

        stop = asyncio.Event()
        legit = asyncio.ensure_future(_legit(session, url, key, bob, stop))
        got_since: Download = await since
        got = await asyncio.gather(*exports)
        stop.set()
        rounds = await legit

        assert got_since.status == 200 and got_since.size > DOCUMENT
        assert b'"total": 17,' in got_since.head
        for export in got:
            assert export.status == 200 and export.size > DOCUMENT
            assert b'"total": 18,' in export.head
        # the two exports (and the slow readers) shared one build: the same bytes
        assert got[0].sha256 == got[1].sha256 and got[0].signature == got[1].signature
        assert len(rounds) >= 3, rounds
        print(f"legit rounds (lasthash + publish): {len(rounds)}, slowest {max(rounds):.2f} s")

        # 11 readers of two documents: never more than those two files, once each
        assert watch.spool_files <= 2
        assert watch.spool_bytes <= got_since.size + got[0].size

        # The slow readers are cut off once they take nothing for document-send-timeout,
        # and their share (the export's file) is freed.
        await _until(lambda: not watch.sample(), 30)
        for reader, writer in slow:
            received = await asyncio.wait_for(reader.read(), 10)
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
                received += chunk
            assert received.startswith(b"HTTP/1.1 200 OK\r\n")
            assert len(received) < got[0].size
            writer.close()
        assert list(dd.cache_dir.rglob("doc-*")) == []  # small documents are not kept


async def test_the_spool_bound_gives_signed_507_and_503(tmp_path: Path) -> None:
    """spool-max-bytes below one document: 507; room for one document, held by a reader:
    503 for another."""
    dd, bob, hashes = await _huge_ledger(tmp_path / "l", spool_max_bytes=256 << 20)
    async with _serving(dd) as (url, key, watch, session):
        for path in ("/chronicle/export", f"/chronicle/since/{hashes[0]}"):
            res = await http_request(session, url, key, "GET", path)
            _assert_error(res, 507, msg_too_large(256 << 20))
        assert not watch.sample()  # the partial spool files are gone
        assert list(dd.cache_dir.rglob("doc-*")) == []
        head = await http_request(session, url, key, "GET", "/chronicle/lasthash")
        assert head.status == 200
        assert (await http_publish(session, url, key, bob, "still served")).status == 200

    limit = 1 << 30  # one document fits, two do not
    _set(dd, spool_max_bytes=limit, document_send_timeout="4 seconds")
    async with _serving(dd) as (url, key, watch, session):
        _, writer = await slow_reader(url, "/chronicle/export")
        await _until(lambda: any(unlinked for _, unlinked in watch.sample().values()), 60)
        res = await http_request(session, url, key, "GET", f"/chronicle/since/{hashes[0]}")
        _assert_error(res, 503, msg_spool_busy(limit))
        assert res.headers["Retry-After"] == "5"
        await _until(lambda: not watch.sample(), 30)  # the slow reader was cut off
        writer.close()
        again = await download_verified(session, f"{url}/chronicle/since/{hashes[0]}", key)
        assert again.status == 200 and again.size > DOCUMENT


async def test_a_page_of_16_huge_rows_stays_within_budget(tmp_path: Path) -> None:
    """Paginated answers go through the same builder: a page of 16 rows of 8 MiB of
    control characters is a 768 MiB document, rendered and served in bounded memory."""
    dd, _, hashes = await _huge_ledger(tmp_path / "l", paginate_export=16)
    async with _serving(dd) as (url, key, _, session):
        pages = await asyncio.gather(
            download_verified(session, f"{url}/chronicle/export/1", key),
            download_verified(session, f"{url}/chronicle/since/{hashes[0]}/1", key),
            download_verified(session, f"{url}/chronicle/export/2", key))
        for page in pages[:2]:
            assert page.status == 200 and page.size > (HUGE_ROWS - 1) * 6 * BIG
            assert b'"paginated": true,' in page.head
        assert pages[2].status == 200 and pages[2].size < 6 * BIG + 4096  # rows 16, 17
