"""Answers built in memory go out paced, like spooled documents: a reader that never reads
is cut off after ``document-send-timeout`` instead of holding the answer in the server's
memory for good. And every answer, those a handler sends itself included, carries the
CORS headers and its request id."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SIGNATURE_HEADER, verify
from tests.helpers import RunningServer, init_data_dir, slow_reader, start_server

HEAD = 2 << 20  # a head entry of 2 MiB of \x01: its lasthash is over 12 MiB (\u0001 each)


async def _big_head(path: Path, **settings: Any) -> RunningServer:
    srv = await start_server(await init_data_dir(path, publish_new_clients=False, **settings))
    alice = await srv.add_client("alice")
    body = b"\x01" * HEAD
    await srv.ctx.ledger("").append(body, alice.key.public, alice.key.sign(body),
                                    client_id=alice.client_id)
    return srv


async def _get(srv: RunningServer, path: str, rid: str) -> tuple[int, Any, bytes]:
    async with srv.session.get(srv.url + path, headers={"X-Request-Id": rid}) as res:
        return res.status, res.headers, await res.read()


def _check(srv: RunningServer, headers: Any, body: bytes, rid: str) -> None:
    assert headers["Content-Length"] == str(len(body))
    assert verify(srv.key.public, body, b64u_decode(headers[SIGNATURE_HEADER], 64))
    assert headers["X-Request-Id"] == rid
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert SIGNATURE_HEADER in headers["Access-Control-Expose-Headers"]


async def test_readers_that_never_read_a_large_lasthash_are_cut_off(tmp_path: Path) -> None:
    srv = await _big_head(tmp_path / "l", document_send_timeout="2 seconds")
    try:
        status, headers, body = await _get(srv, "/chronicle/lasthash", "lasthash-1")
        assert status == 200 and len(body) > 6 * HEAD  # whole, signed, with its headers
        _check(srv, headers, body, "lasthash-1")
        readers = [await slow_reader(srv.url, "/chronicle/lasthash") for _ in range(4)]
        await asyncio.sleep(4)  # two send timeouts
        for reader, writer in readers:
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
                    got += len(chunk)
            assert got < len(body)  # cut off: the connection ended before the answer did
            writer.close()
        status, _, again = await _get(srv, "/chronicle/lasthash", "lasthash-2")
        assert status == 200 and len(again) == len(body)  # still served to others
        async with srv.session.head(srv.url + "/chronicle/lasthash") as res:
            assert res.status == 200 and await res.read() == b""  # headers alone
            assert int(res.headers["Content-Length"]) == len(body)
        status, _, again = await _get(srv, "/chronicle/lasthash", "lasthash-3")
        assert status == 200 and len(again) == len(body)  # the connection is still sound
    finally:
        await srv.close()


async def test_a_spooled_export_carries_cors_and_the_request_id(tmp_path: Path) -> None:
    srv = await _big_head(tmp_path / "l")
    try:
        status, headers, body = await _get(srv, "/chronicle/export", "export-1")
        assert status == 200 and len(body) > 6 * HEAD  # over 4 MiB: built in a spool file
        _check(srv, headers, body, "export-1")
    finally:
        await srv.close()
