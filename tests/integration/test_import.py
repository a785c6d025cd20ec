"""Migration from PHP Chronicle: the recorded databases import exactly, tampering is refused.

The recorded tables (db/A.json, db/B.json) are loaded into a real PHP-shaped database —
a SQLite file built with PHP's own CREATE statements, and PostgreSQL tables — and imported
with `chronicle import`. The test suite runs this on both of our storage backends.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chronicle.config import DataDir
from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import IntegrityError, RequestError
from chronicle.core.sapient import SigningKey
from chronicle.importer import run_import
from chronicle.store import open_store
from chronicle.store.postgres import split_url
from tests import helpers
from tests.helpers import VECTORS, init_data_dir, load_vector, start_server, verify_chain

KEYS = load_vector("keys.json")
DB_A = load_vector("db/A.json")
CHAIN_A = load_vector("hashchains.json")["A"]["entries"]


def php_sqlite(path: Path, dump: dict[str, Any],
               tamper: tuple[int, str, Any] | None = None) -> Path:
    """A PHP Chronicle SQLite database with the recorded rows (optionally one changed)."""
    conn = sqlite3.connect(path)
    for statement in dump["schema"]:
        if "sqlite_sequence" not in statement:
            conn.execute(statement)
    for table, rows in dump["tables"].items():
        for row in rows:
            row = dict(row)
            if tamper and table == "chronicle_chain" and row["id"] == tamper[0]:
                row[tamper[1]] = tamper[2]
            cols = ", ".join(row)
            conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})",
                         list(row.values()))
    conn.commit()
    conn.close()
    return path


async def _fresh_dir(tmp_path: Path) -> DataDir:
    return await init_data_dir(tmp_path / "ours", publish_new_clients=False)


async def _stored(dd: DataDir) -> list[Any]:
    store = open_store(dd.settings().database, dd.path)
    await store.open()
    try:
        return [await store.chain("").entry_at(i) for i in range(len(CHAIN_A))]
    finally:
        await store.close()


def _assert_chain_a(entries: list[Any]) -> None:
    assert len(entries) == len(CHAIN_A)
    for entry, row in zip(entries, CHAIN_A, strict=True):
        assert entry.contents.decode() == row["contents"]
        assert b64u_encode(entry.currhash) == row["currhash"]
        assert b64u_encode(entry.summaryhash) == row["summaryhash"]
        assert b64u_encode(entry.hashstate) == row["hashstate"]
        assert entry.created == row["created"]
        assert b64u_encode(entry.signature) == row["signature"]


async def test_import_php_sqlite_database_then_continue_the_chain(tmp_path: Path) -> None:
    source = php_sqlite(tmp_path / "php.db", DB_A)
    dd = await _fresh_dir(tmp_path)
    report = await run_import(dd, str(source))
    assert [(c.instance, c.entries, c.clients, c.mirrors) for c in report.chains] == \
        [("", 29, 4, 2)]
    assert report.chains[0].head == CHAIN_A[-1]["summaryhash"]
    _assert_chain_a(await _stored(dd))

    srv = await start_server(dd)
    try:
        mirrors = (await srv.request("GET", "/chronicle/mirrors")).json["results"]
        assert [m["comment"] for m in mirrors] == [None, "B mirrors A"]
        alice = KEYS["clients"]["alice"]
        srv.identities["alice"] = helpers.Identity(
            "alice", SigningKey.from_text(alice["secretkey"]), alice["client_id"]["A"])
        res = await srv.publish("alice", "first entry after the migration")
        assert res.status == 200, res.body
        rows = (await srv.request("GET", "/chronicle/export")).json["results"]
        assert len(rows) == 30 and rows[-1]["prev"] == CHAIN_A[-1]["currhash"]
        verify_chain(rows)
        # A revoked PHP client (bob) was deleted there and does not come back.
        bob = KEYS["clients"]["bob"]
        srv.identities["bob"] = helpers.Identity(
            "bob", SigningKey.from_text(bob["secretkey"]), bob["client_id"]["A"])
        assert (await srv.publish("bob", "nope")).status == 403
    finally:
        await srv.close()


@pytest.mark.parametrize(("row_id", "field", "value", "index", "fault_field"), [
    (5, "data", "tampered body", 4, "signature"),
    (12, "summaryhash", CHAIN_A[0]["summaryhash"], 11, "summaryhash"),
    (20, "prevhash", CHAIN_A[3]["summaryhash"], 19, "prevhash"),
    (29, "hashstate", CHAIN_A[27]["hashstate"], 28, "hashstate"),
    (9, "created", "2026-11-28T04:58:22+00:00", 8, "currhash"),  # created is hashed
])
async def test_tampered_php_database_is_refused_at_the_entry(
        tmp_path: Path, row_id: int, field: str, value: str, index: int, fault_field: str,
) -> None:
    source = php_sqlite(tmp_path / "php.db", DB_A, tamper=(row_id, field, value))
    dd = await _fresh_dir(tmp_path)
    with pytest.raises(IntegrityError) as info:
        await run_import(dd, str(source))
    assert info.value.index == index
    assert info.value.field == fault_field
    assert f"PHP row id {row_id}" in info.value.message
    store = open_store(dd.settings().database, dd.path)
    await store.open()
    try:
        assert await store.chain("").head() is None  # nothing stored
        assert await store.clients.all("") == []
    finally:
        await store.close()


async def test_import_refuses_a_non_empty_chain(tmp_path: Path) -> None:
    source = php_sqlite(tmp_path / "php.db", DB_A)
    dd = await _fresh_dir(tmp_path)
    await run_import(dd, str(source))
    with pytest.raises(RequestError, match="not empty"):
        await run_import(dd, str(source))


async def test_import_an_export_document_including_a_replica(tmp_path: Path) -> None:
    dd = await _fresh_dir(tmp_path)
    report = await run_import(dd, str(VECTORS / "exports" / "A-final-export.body.json"))
    assert report.chains[0].entries == 29
    _assert_chain_a(await _stored(dd))
    # B's replica of A stores the first prev as "" and is accepted like null.
    other = await init_data_dir(tmp_path / "replica-copy", publish_new_clients=False,
                                database=helpers.separate_database("b"))
    report = await run_import(other, str(VECTORS / "exports" / "B-final-replica-export.body.json"))
    assert report.chains[0].head == CHAIN_A[-1]["summaryhash"]


async def test_truncated_export_document_is_refused(tmp_path: Path) -> None:
    body = (VECTORS / "exports" / "A-final-export.body.json").read_bytes()
    cut = tmp_path / "cut.json"
    cut.write_bytes(body[: len(body) // 2])
    dd = await _fresh_dir(tmp_path)
    with pytest.raises(IntegrityError):
        await run_import(dd, str(cut))
    doc = json.loads(body)
    doc["total"] = 30
    wrong = tmp_path / "wrong-total.json"
    wrong.write_text(json.dumps(doc))
    other = await init_data_dir(tmp_path / "b", publish_new_clients=False,
                                database=helpers.separate_database("b"))
    with pytest.raises(IntegrityError, match="total"):
        await run_import(other, str(wrong))


async def test_import_php_postgresql_database_with_instances(
        tmp_path: Path, postgres_database: str) -> None:
    """PHP's tables in PostgreSQL (text columns as PHP creates them), two instances."""
    dsn, _ = split_url(postgres_database)
    schema = f"php_{tmp_path.name[-8:].replace('-', '_').lower()}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for prefix in ("", "second_"):
            await conn.execute(f"""
                CREATE TABLE chronicle_{prefix}clients (id SERIAL PRIMARY KEY,
                  publicid TEXT, publickey TEXT, "isAdmin" BOOLEAN, comment TEXT,
                  created TIMESTAMP, modified TIMESTAMP);
                CREATE TABLE chronicle_{prefix}chain (id SERIAL PRIMARY KEY, data TEXT,
                  prevhash TEXT, currhash TEXT, hashstate TEXT, summaryhash TEXT,
                  publickey TEXT, signature TEXT, created TEXT)""")
            for row in DB_A["tables"]["chronicle_chain"]:
                await conn.execute(
                    f"INSERT INTO chronicle_{prefix}chain (id, data, prevhash, currhash, "
                    "hashstate, summaryhash, publickey, signature, created) "
                    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                    row["id"], row["data"], row["prevhash"], row["currhash"],
                    row["hashstate"], row["summaryhash"], row["publickey"], row["signature"],
                    row["created"])
            for row in DB_A["tables"]["chronicle_clients"]:
                await conn.execute(
                    f'INSERT INTO chronicle_{prefix}clients (publicid, publickey, "isAdmin") '
                    "VALUES ($1, $2, $3)", row["publicid"], row["publickey"],
                    bool(row["isAdmin"]))
    finally:
        await conn.close()
    dd = await _fresh_dir(tmp_path)
    report = await run_import(dd, f"{dsn}?schema={schema}")
    assert [(c.instance, c.entries, c.clients) for c in report.chains] == \
        [("", 29, 4), ("second", 29, 4)]
    assert dd.settings().instances == ("", "second")
    _assert_chain_a(await _stored(dd))


def test_cli_import_reports_the_faulty_entry(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from chronicle.cli import main

    runner = CliRunner()
    data = tmp_path / "ours"
    assert runner.invoke(main, ["init", "--data-dir", str(data)]).exit_code == 0
    bad = php_sqlite(tmp_path / "bad.db", DB_A, tamper=(7, "data", "changed"))
    result = runner.invoke(main, ["import", "--data-dir", str(data), str(bad)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: entry signature does not verify (PHP row id 7); "
                                    "entry 6; field signature")
    good = php_sqlite(tmp_path / "good.db", DB_A)
    result = runner.invoke(main, ["import", "--data-dir", str(data), str(good), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["chains"] == [{"instance": "", "entries": 29, "clients": 4, "mirrors": 2,
                              "summaryhash": CHAIN_A[-1]["summaryhash"]}]
    missing = runner.invoke(main, ["import", "--data-dir", str(data), str(tmp_path / "no.db")])
    assert missing.exit_code == 3 and "no such file" in missing.stderr


async def test_replica_tables_of_an_instance_are_not_taken_for_instances(
        tmp_path: Path) -> None:
    weird = tmp_path / "dir #1"  # a '#' must not cut the path short
    weird.mkdir()
    source = php_sqlite(weird / "php.db", DB_A)
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE chronicle_p_replication_chain (id INTEGER PRIMARY KEY, "
                 "source INTEGER, data TEXT, prevhash TEXT, currhash TEXT, hashstate TEXT, "
                 "summaryhash TEXT, publickey TEXT, signature TEXT, created TEXT)")
    conn.execute("INSERT INTO chronicle_p_replication_chain (data) VALUES ('not ours')")
    conn.commit()
    conn.close()
    dd = await _fresh_dir(tmp_path)
    report = await run_import(dd, str(source))
    assert [c.instance for c in report.chains] == [""]
    assert dd.settings().instances == ("",)
