"""`chronicle backup`: a consistent snapshot taken under write load serves and verifies."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from chronicle.backup import run_backup
from chronicle.config import DataDir
from chronicle.core.errors import RequestError
from tests import helpers
from tests.helpers import init_data_dir, start_server, verify_chain


async def test_backup_while_publishing_then_serve_the_copy(tmp_path: Path) -> None:
    if not helpers.DATABASE["url"].startswith("sqlite:"):
        dd = await init_data_dir(tmp_path / "ledger")
        with pytest.raises(RequestError, match="pg_dump"):
            await run_backup(dd, tmp_path / "copy")
        return
    dd = await init_data_dir(tmp_path / "ledger")
    srv = await start_server(dd)
    try:
        await srv.add_client("alice")
        for i in range(50):
            assert (await srv.publish("alice", f"before {i}")).status == 200

        async def writer() -> int:
            done = 0
            for i in range(200):
                assert (await srv.publish("alice", f"during {i}")).status == 200
                done += 1
            return done

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.05)
        report = await run_backup(dd, tmp_path / "copy")
        await task
    finally:
        await srv.close()
    copied = report.chains[""]["entries"]
    assert 50 <= copied <= 250 + 1  # a consistent cut somewhere in the load (+1: client)
    assert stat.S_IMODE((tmp_path / "copy" / "signing-secret.key").stat().st_mode) == 0o600

    restored = await start_server(DataDir(tmp_path / "copy"))
    try:
        rows = (await restored.request("GET", "/chronicle/export")).json["results"]
        assert len(rows) == copied
        verify_chain(rows)
        assert restored.key.public == dd.signing_key(dd.settings()).public
        assert rows[-1]["summary"] == report.chains[""]["summaryhash"]
    finally:
        await restored.close()


async def test_backup_refuses_a_non_empty_target(tmp_path: Path) -> None:
    dd = await init_data_dir(tmp_path / "ledger")
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("x")
    with pytest.raises(RequestError, match=r"not empty|pg_dump"):
        await run_backup(dd, target)
    assert (target / "something").read_text() == "x"
