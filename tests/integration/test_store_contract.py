"""The storage contract: every backend behaves the same (run on SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from chronicle.core.blakechain import ChainBuilder, ChainHead, Entry
from chronicle.core.errors import RequestError, SchemaMismatchError, StorageError
from chronicle.core.sapient import SigningKey
from chronicle.store import Client, Mirror, Store, open_store
from chronicle.store.postgres import PostgresStore
from chronicle.store.sqlite import SqliteStore
from tests import helpers


async def _store(tmp_path: Path, *, create: bool = True) -> Store:
    store = open_store(helpers.DATABASE["url"], tmp_path)
    if create:
        await store.create_schema()
        await store.ensure_instance("")
    return store


def _entries(n: int, start: list[Entry] | None = None) -> list[Entry]:
    key = SigningKey.generate()
    builder = ChainBuilder(None)
    out = []
    for i in range(n):
        body = f"entry {i}".encode()
        out.append(builder.append(body, key.public, key.sign(body), "2026-01-01T00:00:00+00:00"))
    return out


async def test_fresh_schema_then_open_checks_version(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    await store.close()
    reopened = await _store(tmp_path, create=False)
    await reopened.open()
    assert await reopened.chain("").head() is None
    with pytest.raises(StorageError, match="already"):
        await reopened.create_schema()
    await reopened.close()


async def test_open_refuses_an_empty_database(tmp_path: Path) -> None:
    store = await _store(tmp_path, create=False)
    with pytest.raises(SchemaMismatchError, match="chronicle init"):
        await store.open()


async def _set_schema_version(store: Store, version: int) -> None:
    """Tamper with the version row directly, as an older or newer chronicle would leave it."""
    sql = f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'"
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute(sql)
    else:
        assert isinstance(store, PostgresStore)
        await store.pool.execute(sql)


async def test_open_refuses_a_newer_schema(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    await _set_schema_version(store, 99)
    await store.close()
    again = await _store(tmp_path, create=False)
    with pytest.raises(SchemaMismatchError, match="newer than this software"):
        await again.open()
    with pytest.raises(SchemaMismatchError):
        await again.migrate()
    await again.close()


async def test_append_read_and_lookup(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        entries = _entries(25)
        async with store.write("") as tx:
            assert await tx.head() is None
            await tx.insert_entries(entries)
        head = await store.chain("").head()
        assert head == entries[-1]
        assert await store.chain("").entry_at(7) == entries[7]
        assert await store.chain("").lookup(entries[3].currhash) == [entries[3]]
        assert await store.chain("").lookup(entries[3].summaryhash) == [entries[3]]
        assert await store.chain("").lookup(b"\x00" * 32) == []
        bare = [replace(e, hashstate=b"") for e in entries]  # ranges omit the hash state
        assert await store.chain("").range(5, 9) == bare[5:9]
        assert await store.chain("").range(24, 100) == bare[24:]
        pages = [p async for p in store.chain("").pages(0, 25, page=10)]
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [e for p in pages for e in p] == bare
        async with store.write("") as tx:
            got = await tx.head()
            assert got is not None and got.currhash == entries[-1].currhash
            found = await tx.find_signatures([entries[2].signature, b"\x01" * 64])
            assert found == {entries[2].signature: entries[2]}
    finally:
        await store.close()


async def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        entries = _entries(3)
        with pytest.raises(RuntimeError):
            async with store.write("") as tx:
                await tx.insert_entries(entries)
                raise RuntimeError("boom")
        assert await store.chain("").head() is None
        async with store.write("") as tx:
            await tx.insert_entries(entries)
        assert (await store.chain("").head()) == entries[-1]
    finally:
        await store.close()


async def test_duplicate_signature_or_index_is_refused_by_the_database(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        entries = _entries(2)
        async with store.write("") as tx:
            await tx.insert_entries(entries)
        with pytest.raises(Exception):  # noqa: B017 - driver-specific unique violation
            async with store.write("") as tx:
                await tx.insert_entries([entries[1]])
        assert (await store.chain("").head()) == entries[-1]
    finally:
        await store.close()


async def test_rows_inserted_at_commit_are_seen_by_the_transaction(tmp_path: Path) -> None:
    """A group commit's rows may wait for the commit (SQLite writes them on the writer's
    thread), but any statement after them in the same transaction sees them."""
    store = await _store(tmp_path)
    try:
        entries = _entries(4)
        async with store.write("") as tx:
            await tx.insert_entries(entries[:2])
            assert await tx.head() == ChainHead.of(entries[1])
            await tx.insert_entries(entries[2:])
            found = await tx.find_signatures([e.signature for e in entries])
            assert found == {e.signature: e for e in entries}
        assert await store.chain("").head() == entries[-1]
    finally:
        await store.close()


async def test_a_row_refused_at_commit_stores_nothing_of_the_transaction(
        tmp_path: Path) -> None:
    """A uniqueness violation found when the waiting rows are written fails the commit:
    the rest of the transaction (here a client) is rolled back with them, and the next
    transaction finds the database and its lock as they were."""
    store = await _store(tmp_path)
    try:
        entries = _entries(3)
        async with store.write("") as tx:
            await tx.insert_entries(entries[:2])
        client = Client("refused-with-the-batch", SigningKey.generate().public, False, "",
                        "2026-01-01T00:00:00+00:00")
        with pytest.raises(StorageError):
            async with store.write("") as tx:
                await tx.add_client(client)
                await tx.insert_entries([entries[1]])  # already stored: refused
        assert await store.chain("").head() == entries[1]
        assert await store.clients.get("", client.publicid) is None
        async with store.write("") as tx:
            await tx.insert_entries(entries[2:])
        assert await store.chain("").head() == entries[-1]
    finally:
        await store.close()


async def test_clients(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        key = SigningKey.generate()
        client = Client("cid", key.public, False, "note", "2026-01-01T00:00:00+00:00")
        async with store.write("") as tx:
            await tx.add_client(client)
        assert await store.clients.get("", "cid") == client
        with pytest.raises(RequestError) as info:
            async with store.write("") as tx:
                await tx.add_client(client)
        assert info.value.status == 409
        async with store.write("") as tx:
            assert set(await tx.active_clients(["cid", "other"])) == {"cid"}
            await tx.revoke_client("cid", "2026-01-02T00:00:00+00:00")
        assert await store.clients.get("", "cid") is None
        assert await store.clients.all("") == []
        revoked = await store.clients.all("", include_revoked=True)
        assert [c.revoked for c in revoked] == ["2026-01-02T00:00:00+00:00"]
        async with store.write("") as tx:  # the id can be reused after revocation
            await tx.add_client(client)
        assert await store.clients.get("", "cid") == client
    finally:
        await store.close()


async def test_instances_are_separate_chains(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        await store.ensure_instance("other")
        await store.ensure_instance("other")
        entries = _entries(2)
        async with store.write("other") as tx:
            await tx.insert_entries(entries)
        assert await store.chain("").head() is None
        assert await store.chain("other").head() == entries[-1]
        assert await store.chain("").lookup(entries[0].currhash) == []
        async with store.write("") as tx:  # the same entries may exist on another chain
            await tx.insert_entries(entries)
        with pytest.raises(StorageError, match="does not exist"):
            await store.chain("missing").head()
    finally:
        await store.close()


async def test_mirrors(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        await store.mirrors.add("", Mirror("https://b", "pkB", "B", 5), "t")
        await store.mirrors.add("", Mirror("https://a", "pkA", None, 1), "t")
        assert [m.url for m in await store.mirrors.all("")] == ["https://a", "https://b"]
        await store.mirrors.add("", Mirror("https://b", "pkB2", "B2", 0), "t")
        assert (await store.mirrors.all(""))[0] == Mirror("https://b", "pkB2", "B2", 0)
        assert await store.mirrors.remove("", "https://b")
        assert not await store.mirrors.remove("", "https://b")
        assert [m.url for m in await store.mirrors.all("")] == ["https://a"]
    finally:
        await store.close()


async def test_postgres_url_parameters(tmp_path: Path, postgres_database: str) -> None:
    """``schema`` and ``statement_cache_size`` (PgBouncer transaction mode) are ours."""
    url = f"{postgres_database}?schema=params_{tmp_path.name[-6:]}&statement_cache_size=0"
    store = PostgresStore(url)
    await store.create_schema()
    try:
        await store.ensure_instance("")
        entries = _entries(3)
        async with store.write("") as tx:
            await tx.insert_entries(entries)
        assert await store.chain("").head() == entries[-1]
        assert await store.pool.fetchval("SHOW search_path") == \
            f"params_{tmp_path.name[-6:]}"
    finally:
        await store.close()
