"""SQLite's write-ahead log after a full disk (issue 14, item 5): a batch refused while
the log still holds pages it can give back is retried after a TRUNCATE checkpoint. The
log is SQLite's, so this runs on SQLite only; test_faults.py covers both backends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import init_data_dir, start_server
from tests.integration.test_faults import audit, fill, small_filesystem


@pytest.fixture
def backend() -> str:
    """Overrides the suite's both-backends fixture: the WAL is SQLite's."""
    return "sqlite"


async def test_a_batch_refused_for_a_full_disk_is_retried_once_room_is_made(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The disk fills while the WAL still holds pages it could give back (a reader kept it
    from being reused): the refused batch is retried after a TRUNCATE checkpoint and its
    publisher gets a 200, not a 503."""
    with small_filesystem(tmp_path / "small") as mnt:
        path = mnt / "ledger" / "chronicle.db"
        srv = await start_server(await init_data_dir(mnt / "ledger",
                                                     publish_new_clients=False))
        try:
            await srv.add_client("alice")
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
                # Free pages inside the database file: moving the WAL back into it later
                # needs no growth of the file.
                db.execute("CREATE TABLE scratch (x BLOB)")
                db.execute("INSERT INTO scratch VALUES (zeroblob(700000))")
                db.execute("DROP TABLE scratch")
                assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
                # A reader on an old snapshot: the WAL cannot be reused, it grows.
                db.execute("BEGIN")
                db.execute("SELECT count(*) FROM entries").fetchone()
                receipts = {}
                for i in range(20):
                    res = await srv.publish("alice", f"while read {i}")
                    assert res.status == 200, res.body
                    receipts[f"while read {i}"] = res.json["results"]["currhash"]
                # The background checkpoint of the last commit ends while the reader
                # still holds its snapshot (else it could empty the log first), and the
                # disk fills before the reader lets go.
                while srv.ctx.store.db._ckpt_running:
                    await asyncio.sleep(0.01)
                assert os.path.getsize(str(path) + "-wal") > 300_000
                assert fill(mnt / "filler") > 0
                db.execute("COMMIT")
            res = await srv.publish("alice", "on a full disk")
            assert res.status == 200, res.body
            receipts["on a full disk"] = res.json["results"]["currhash"]
            assert any("retrying it" in r.getMessage() for r in caplog.records)
            assert (await srv.request("GET", "/readyz")).status == 200
            await audit(srv, receipts)
        finally:
            await srv.close()
