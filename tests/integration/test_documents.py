"""Large signed documents: spooled past the memory limit, never corrupted across processes,
never left behind on disk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SIGNATURE_HEADER, verify
from chronicle.server.export import MEMORY_BYTES, SMALL_DOCUMENT_ROWS
from chronicle.server.keys import DOCS
from tests.helpers import (
    ServerProcess,
    add_client_offline,
    init_data_dir,
    start_server,
    stop_process,
    verify_chain,
)


async def _fill(srv: object, count: int, size: int) -> None:
    alice = srv.identities["alice"]  # type: ignore[attr-defined]
    ledger = srv.ctx.ledger("")  # type: ignore[attr-defined]
    bodies = [f"{i:08d}".encode() + b"x" * size for i in range(count)]
    await asyncio.gather(*(ledger.append(b, alice.key.public, alice.key.sign(b),
                                         client_id=alice.client_id) for b in bodies))


def _spool_files(cache: Path) -> list[Path]:
    return list(cache.rglob("doc-*")) if cache.exists() else []


async def test_big_bodies_are_spooled_signed_and_cleaned_up(tmp_path: Path) -> None:
    dd = await init_data_dir(tmp_path / "l", max_body_size=2 << 20, export_cache=False)
    srv = await start_server(dd)
    try:
        await srv.add_client("alice")
        await _fill(srv, 6, 1 << 20)  # ~6 MiB of bodies: past MEMORY_BYTES
        first = (await srv.request("GET", "/chronicle/export")).json["results"][0]["hash"]
        for path in ("/chronicle/export", f"/chronicle/since/{first}"):
            res = await srv.request("GET", path)  # the helper checks the signature
            assert res.status == 200 and len(res.body) > MEMORY_BYTES
            rows = res.json["results"]
            assert len(rows) in (6, 5)
        verify_chain((await srv.request("GET", "/chronicle/export")).json["results"])
        assert _spool_files(dd.cache_dir) == []  # nothing kept without export-cache
    finally:
        await srv.close()


async def test_exports_from_several_workers_always_verify(tmp_path: Path) -> None:
    dd = await init_data_dir(tmp_path / "w", publish_new_clients=False)
    ident = await add_client_offline(dd, "alice")
    srv = await start_server(dd)
    try:
        srv.identities["alice"] = ident
        await _fill(srv, SMALL_DOCUMENT_ROWS + 100, 50)
    finally:
        await srv.close()
    sp = ServerProcess(dd.path, "--workers", "2")
    key = dd.signing_key(dd.settings()).public
    try:
        url = await sp.start()
        async with aiohttp.ClientSession() as session:
            async def get() -> tuple[bytes, str]:
                async with session.get(url + "/chronicle/export") as resp:
                    return await resp.read(), resp.headers[SIGNATURE_HEADER]

            for _ in range(4):  # rounds a second apart: datetimes (and bodies) differ
                results = await asyncio.gather(*(get() for _ in range(12)))
                for body, sig in results:
                    assert verify(key, body, b64u_decode(sig, 64))
                await asyncio.sleep(1.05)
        assert await stop_process(sp, graceful=True) == 0
    finally:
        await stop_process(sp)


async def test_spool_directories_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dd = await init_data_dir(tmp_path / "s")
    dead = dd.cache_dir / "p999999999"
    dead.mkdir(parents=True)
    (dead / "doc-stale.json").write_text("{}")
    (dd.cache_dir / "export-old-5.json").write_text("{}")  # an older layout's leftover
    srv = await start_server(dd)
    try:
        await srv.add_client("alice")
        await _fill(srv, SMALL_DOCUMENT_ROWS + 1, 10)
        assert (await srv.request("GET", "/chronicle/export")).status == 200
        docs = srv.runner.app[DOCS]
        assert not dead.exists()
        assert not (dd.cache_dir / "export-old-5.json").exists()
        assert docs.cache_dir.name == f"p{os.getpid()}"
    finally:
        await srv.close()


async def test_large_rows_render_as_php_would_in_every_answer(tmp_path: Path) -> None:
    """Rows rendered in pieces (lookup, since, export, their pages) are PHP's bytes."""
    from chronicle.core import protocol
    from chronicle.core.encoding import b64u_encode, php_json
    from chronicle.server.export import PIECE

    dd = await init_data_dir(tmp_path / "p", paginate_export=2, publish_new_clients=False)
    srv = await start_server(dd)
    try:
        alice = await srv.add_client("alice")
        ledger = srv.ctx.ledger("")
        bodies = [b"small", ("\x01/\"caf\u00e9 \U0001f680\x7f" * (PIECE // 4)).encode(),
                  b"\x02" * (3 * PIECE + 1), b"tail"]
        for body in bodies:
            await ledger.append(body, alice.key.public, alice.key.sign(body),
                                client_id=alice.client_id)
        stored = await srv.ctx.store.chain("").range(0, 10)

        def expect(res: object, rows: list[dict[str, object]], **extra: object) -> None:
            doc = res.json  # type: ignore[attr-defined]
            body = php_json({"version": "1.3.x", "datetime": doc["datetime"], "status": "OK",
                             **extra, "results": rows}).encode("ascii")
            assert res.body == body  # type: ignore[attr-defined]

        big = b64u_encode(stored[1].currhash)
        expect(await srv.request("GET", f"/chronicle/lookup/{big}"), [protocol.row(stored[1])])
        first = b64u_encode(stored[0].currhash)
        expect(await srv.request("GET", f"/chronicle/since/{first}/1"),
               [protocol.row(e) for e in stored[1:3]], paginated=True,
               next=f"/since/{first}/2", total=3)
        expect(await srv.request("GET", "/chronicle/export/2"),
               [protocol.export_row(e) for e in stored[2:4]], paginated=True,
               prev="/export/1", next="/export/3")
    finally:
        await srv.close()


async def test_identical_requests_share_one_build(tmp_path: Path) -> None:
    dd = await init_data_dir(tmp_path / "s", max_body_size=2 << 20, publish_new_clients=False)
    srv = await start_server(dd)
    try:
        await srv.add_client("alice")
        await _fill(srv, 8, 1 << 20)
        docs = srv.runner.app[DOCS]
        rows = (await srv.request("GET", "/chronicle/export")).json["results"]
        renders = docs.renders
        since = f"/chronicle/since/{rows[0]['hash']}"
        got = await asyncio.gather(*(srv.request("GET", since) for _ in range(6)),
                                   *(srv.request("GET", "/chronicle/export") for _ in range(6)))
        assert docs.renders == renders + 2  # one since, one export
        assert len({r.body for r in got[:6]}) == 1 and len({r.body for r in got[6:]}) == 1
        assert _spool_files(dd.cache_dir) == []  # neither is kept: 8 rows
        assert docs.spool.used == 0 and docs.gate.running == 0
    finally:
        await srv.close()
