"""The storage contract of schema version 2 (replication, evidence, cross-signing, jobs),
run on SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from chronicle.core.blakechain import ChainBuilder, Entry
from chronicle.core.errors import RequestError
from chronicle.core.sapient import SigningKey
from chronicle.store import (
    SCHEMA_VERSION,
    EvidenceDocument,
    ReplicaConflict,
    ReplicaFault,
    ReplicaPeer,
    ReplicaSource,
    Store,
    XsignReceipt,
    XsignTarget,
    open_store,
    postgres,
    sqlite,
)
from chronicle.store.postgres import PostgresStore, split_url
from chronicle.store.schema import MIGRATIONS, ddl
from chronicle.store.sqlite import SqliteStore
from tests import helpers

KEY = SigningKey.generate()
WHEN = "2026-11-28T05:00:00+00:00"


async def _store(tmp_path: Path) -> Store:
    store = open_store(helpers.DATABASE["url"], tmp_path)
    await store.create_schema()
    await store.ensure_instance("")
    return store


def _chain(n: int, created: str = "2026-11-28T04:58:21+00:00") -> list[Entry]:
    builder = ChainBuilder(None)
    out = []
    for i in range(n):
        body = f"upstream entry {i}".encode()
        out.append(builder.append(body, KEY.public, KEY.sign(body), created))
    return out


def _source(name: str = "upstream", uniqueid: str = "id-" + "x" * 41) -> ReplicaSource:
    return ReplicaSource(uniqueid=uniqueid, name=name, url="http://127.0.0.1:1/chronicle",
                         publickey=KEY.public, created=WHEN)


async def test_schema_version_is_5(tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 5
    assert sorted(MIGRATIONS) == [1, 2, 3, 4, 5]
    store = await _store(tmp_path)
    try:
        assert await store.replication.sources() == []
        assert await store.xsign.targets() == []
    finally:
        await store.close()


async def test_sources_add_find_list_remove(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        peers = [ReplicaPeer("http://127.0.0.1:2/chronicle/replica/abc", KEY.public),
                 ReplicaPeer("http://127.0.0.1:3/chronicle", None, "xsign")]
        added = await store.replication.add_source(_source(), peers)
        assert added.id > 0
        assert (added.status, added.fault, added.failures, added.instance) == \
            ("active", None, 0, "")
        assert await store.replication.source("upstream") == added
        assert await store.replication.source(added.uniqueid) == added
        assert await store.replication.source(added.uniqueid, "") == added
        assert await store.replication.source("nope") is None
        with pytest.raises(RequestError) as dup:
            await store.replication.add_source(_source(uniqueid="other-id"))
        assert dup.value.status == 409
        with pytest.raises(RequestError):
            await store.replication.add_source(_source(name="other name"))
        second = await store.replication.add_source(_source("second", "id-2"))
        assert [s.name for s in await store.replication.sources()] == ["upstream", "second"]
        assert [s.name for s in await store.replication.sources("")] == ["upstream", "second"]

        found = await store.replication.peers(added.id)
        assert [(p.url, p.publickey, p.kind, p.cursor) for p in found] == [
            (peers[0].url, KEY.public, "replica", None), (peers[1].url, None, "xsign", None)]
        await store.replication.set_peer_cursor(found[1].id, "cursor-hash")
        assert (await store.replication.peers(added.id))[1].cursor == "cursor-hash"
        await store.replication.set_peers(added.id, peers[:1])
        assert len(await store.replication.peers(added.id)) == 1
        with pytest.raises(RequestError):
            await store.replication.set_peers(added.id, [peers[0], peers[0]])
        assert len(await store.replication.peers(added.id)) == 1

        await store.replication.append(added.id, _chain(3), replicated=WHEN)
        await store.replication.record_fault(added.id, ReplicaFault(
            "failed", "entry-signature", "bad", WHEN, {}, (
                EvidenceDocument("upstream export", "GET", "http://x", 200, "sig", None,
                                 b"{}", None, 2, "ab"),)))
        assert await store.replication.remove_source(added.id)
        assert not await store.replication.remove_source(added.id)
        assert await store.replication.source("upstream") is None
        assert await store.replication.chain(added.id).head() is None
        assert await store.replication.faults(added.id) == []
        assert [s.name for s in await store.replication.sources()] == [second.name]
    finally:
        await store.close()


async def test_status_attempts_url_and_key_history(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        source = await store.replication.add_source(_source())
        await store.replication.record_attempt(source.id, when="t1", error="connection refused")
        await store.replication.record_attempt(source.id, when="t2", error="timeout")
        got = await store.replication.source("upstream")
        assert got is not None
        assert (got.last_attempt, got.last_error, got.failures, got.last_sync) == \
            ("t2", "timeout", 2, None)
        await store.replication.record_attempt(source.id, when="t3", error=None)
        got = await store.replication.source("upstream")
        assert got is not None
        assert (got.last_attempt, got.last_error, got.failures, got.last_sync) == \
            ("t3", None, 0, "t3")
        await store.replication.set_status(source.id, "forked", fault="truncated", reason="why",
                                       when="t4")
        got = await store.replication.source("upstream")
        assert got is not None
        assert (got.status, got.fault, got.reason, got.status_since) == \
            ("forked", "truncated", "why", "t4")
        await store.replication.set_url(source.id, "http://elsewhere/chronicle")
        new_key = SigningKey.generate().public
        await store.replication.set_key(source.id, new_key, when="t5", reason="rotation")
        got = await store.replication.source("upstream")
        assert got is not None
        assert (got.url, got.publickey) == ("http://elsewhere/chronicle", new_key)
        history = await store.replication.keys(source.id)
        assert [(k.publickey, k.since, k.retired, k.reason) for k in history] == [
            (KEY.public, WHEN, "t5", "added"), (new_key, "t5", None, "rotation")]
    finally:
        await store.close()


async def test_replica_chain_append_and_reads(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        source = await store.replication.add_source(_source())
        other = await store.replication.add_source(_source("other", "id-other"))
        chain = _chain(7)
        assert await store.replication.chain(source.id).head() is None
        with pytest.raises(ReplicaConflict):
            await store.replication.append(source.id, chain[1:3], replicated=WHEN)
        await store.replication.append(source.id, chain[:3], replicated=WHEN)
        await store.replication.append(source.id, [], replicated=WHEN)
        with pytest.raises(ReplicaConflict) as conflict:
            await store.replication.append(source.id, chain[:2], replicated=WHEN)
        assert conflict.value.status == 409
        with pytest.raises(ReplicaConflict):
            await store.replication.append(source.id, chain[4:], replicated=WHEN)
        await store.replication.append(source.id, chain[3:], replicated=WHEN)
        # The same upstream copied twice under two names: both copies live side by side.
        await store.replication.append(other.id, chain[:2], replicated=WHEN)

        head = await store.replication.chain(source.id).head()
        assert head == chain[-1]
        first = await store.replication.chain(source.id).entry_at(0)
        assert first == chain[0]
        assert first is not None
        assert first.prevhash is None  # stored as "" (PHP), read back as "no previous"
        assert await store.replication.chain(source.id).entry_at(7) is None
        assert await store.replication.chain(source.id).lookup(chain[2].currhash) == [chain[2]]
        assert await store.replication.chain(source.id).lookup(chain[2].summaryhash) == [chain[2]]
        assert await store.replication.chain(source.id).lookup(b"\0" * 32) == []
        assert await store.replication.chain(other.id).lookup(chain[5].currhash) == []
        ranged = await store.replication.chain(source.id).range(2, 5)
        assert [e.index for e in ranged] == [2, 3, 4]
        assert all(e.hashstate == b"" for e in ranged)
        assert [e.currhash for e in ranged] == [e.currhash for e in chain[2:5]]
        pages = [[e.index for e in page]
                 async for page in store.replication.chain(source.id).pages(0, 7, page=3)]
        assert pages == [[0, 1, 2], [3, 4, 5], [6]]
        assert (await store.replication.chain(other.id).head()) == chain[1]
    finally:
        await store.close()


async def test_replica_created_is_stored_exactly(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        source = await store.replication.add_source(_source())
        chain = _chain(2, created="2026-11-28T05:58:21+01:00")
        await store.replication.append(source.id, chain, replicated=WHEN)
        assert [e.created for e in await store.replication.chain(source.id).range(0, 2)] == \
            ["2026-11-28T05:58:21+01:00"] * 2
    finally:
        await store.close()


async def test_faults_keep_their_evidence_and_stop_the_source(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        source = await store.replication.add_source(_source())
        body = b'{\n    "status": "ERROR"\n}\xff'
        docs = (EvidenceDocument("upstream since", "GET", "http://u/since/x", 400, "c2ln",
                                 KEY.public, body, None, len(body), "00" * 32),
                EvidenceDocument("upstream export", "GET", "http://u/export", 200, None, None,
                                 None, "/data/evidence/x.json", 10 << 30, "11" * 32))
        fid = await store.replication.record_fault(source.id, ReplicaFault(
            "forked", "history-rewritten", "entry 3 differs", WHEN,
            {"index": 3, "peers": [{"url": "u"}]}, docs))
        assert fid > 0
        got = await store.replication.source(source.uniqueid)
        assert got is not None
        assert (got.status, got.fault, got.reason, got.status_since) == \
            ("forked", "history-rewritten", "entry 3 differs", WHEN)
        await store.replication.record_fault(source.id, ReplicaFault(
            "failed", "key-changed", "new key", "later"))
        faults = await store.replication.faults(source.id)
        assert [(f.status, f.kind) for f in faults] == [("forked", "history-rewritten"),
                                                       ("failed", "key-changed")]
        assert faults[0].details == {"index": 3, "peers": [{"url": "u"}]}
        assert faults[0].documents == docs
        assert faults[1].documents == ()
        assert faults[0].id == fid
    finally:
        await store.close()


async def test_cross_sign_targets_and_receipts(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        peer = SigningKey.generate().public
        target = await store.xsign.add_target(XsignTarget(
            name="peer", url="http://peer/chronicle", publickey=peer, clientid="client-id",
            policy='{"push-after":2}', created=WHEN))
        assert target.id > 0
        assert (target.last_index, target.last_run, target.failures) == (None, None, 0)
        with pytest.raises(RequestError):
            await store.xsign.add_target(XsignTarget(name="peer", url="http://other",
                                                     publickey=peer, clientid="c", policy="{}"))
        assert [t.name for t in await store.xsign.targets("")] == ["peer"]
        await store.xsign.record_attempt(target.id, when="t1", error="refused")
        await store.xsign.record_attempt(target.id, when="t2", error="refused again")
        (got,) = await store.xsign.targets()
        assert (got.failures, got.last_error, got.last_attempt, got.last_run) == \
            (2, "refused again", "t2", None)
        await store.xsign.record_attempt(target.id, when="t3", error=None, index=41)
        (got,) = await store.xsign.targets()
        assert (got.failures, got.last_error, got.last_index, got.last_run) == \
            (0, None, 41, "t3")
        first = XsignReceipt(target.id, "t1", "failed", 40, b"c" * 32, b"s" * 32, b"msg",
                             "sig", response=b"bad", response_signature="x", error="bad sig")
        second = XsignReceipt(target.id, "t3", "ok", 41, b"d" * 32, b"t" * 32, b"msg2",
                              "sig2", "pc", "ps", "created", b"{}", "rs")
        ids = [await store.xsign.add_receipt(first), await store.xsign.add_receipt(second)]
        receipts = await store.xsign.receipts(target.id)
        assert [r.id for r in receipts] == ids[::-1]
        assert receipts[1] == XsignReceipt(**{**{n: getattr(first, n) for n in (
            "target_id", "recorded", "status", "index", "currhash", "summaryhash", "message",
            "signature", "peer_currhash", "peer_summaryhash", "peer_created", "response",
            "response_signature", "error")}, "id": ids[0]})
        assert len(await store.xsign.receipts(target.id, limit=1)) == 1
        assert await store.xsign.remove_target("", "peer")
        assert not await store.xsign.remove_target("", "peer")
        assert await store.xsign.targets() == []
    finally:
        await store.close()


async def test_job_state(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        assert await store.jobs.get("attestation:") is None
        await store.jobs.set("attestation:", "t1")
        await store.jobs.set("attestation:", "t2")
        assert await store.jobs.get("attestation:") == "t2"
    finally:
        await store.close()


async def test_leader_lock_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    one = await _store(tmp_path)
    two = open_store(helpers.DATABASE["url"], tmp_path)
    await two.open()
    a, b = one.jobs.leader_lock(), two.jobs.leader_lock()
    try:
        assert await a.acquire()
        assert await a.acquire()  # already ours
        assert not await b.acquire()
        assert await a.still_held()
        assert not await b.still_held()
        await a.release()
        assert not await a.still_held()
        assert await b.acquire()
        assert not await a.acquire()
        # Another name is another lock.
        other = one.jobs.leader_lock("other")
        assert await other.acquire()
        await other.release()
    finally:
        await a.release()
        await b.release()
        await one.close()
        await two.close()


async def test_migrate_a_version_1_database(tmp_path: Path) -> None:
    """`chronicle migrate` brings a schema-1 ledger (entries kept) to the current version."""
    url = helpers.DATABASE["url"]
    store = open_store(url, tmp_path)
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            conn.executescript(ddl(1, sqlite.DIALECT))
            conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
            conn.execute("INSERT INTO instances (name) VALUES ('')")
    else:
        assert isinstance(store, PostgresStore)
        dsn, schema = split_url(url)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(ddl(1, postgres.DIALECT))
            await conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
            await conn.execute("INSERT INTO instances (name) VALUES ('')")
        finally:
            await conn.close()
    assert await store.migrate() == (1, SCHEMA_VERSION)
    assert await store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    await store.close()
    await store.open()
    try:
        source = await store.replication.add_source(_source())
        await store.replication.append(source.id, _chain(2), replicated=WHEN)
        assert (await store.replication.chain(source.id).head()) is not None
    finally:
        await store.close()
