"""The sequencer on a real store: byte bounds on the queue and on each batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from chronicle.core.blakechain import Entry
from chronicle.core.errors import ChronicleError, OverloadedError, RequestError, StorageError
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Ledger
from chronicle.store import Candidate, ChainHook, HookBatch, WriteTx, open_store
from tests.helpers import init_data_dir


async def test_queue_and_batches_are_bounded_by_bytes(tmp_path: Path) -> None:
    dd = await init_data_dir(tmp_path / "l")
    store = open_store(dd.settings().database, dd.path)
    await store.open()
    key = SigningKey.generate()
    ledger = Ledger(store, "", max_batch_bytes=3000, max_queue_bytes=10_000)
    sizes: list[int] = []
    original = ledger._commit

    async def spy(batch: list) -> list:  # type: ignore[type-arg]
        sizes.append(sum(len(r.contents) for r in batch))
        return await original(batch)

    ledger._commit = spy  # type: ignore[method-assign]
    try:
        bodies = [bytes([65 + i]) * 1000 for i in range(9)]
        tasks = [asyncio.ensure_future(ledger.append(b, key.public, key.sign(b)))
                 for b in bodies]
        await asyncio.sleep(0)
        big = b"x" * 9000  # would take the queue over 10,000 bytes
        with pytest.raises(OverloadedError):
            await ledger.append(big, key.public, key.sign(big))
        entries = await asyncio.gather(*tasks)
        assert [e.index for e in entries] == list(range(9))
        assert max(sizes) <= 3000 and sum(sizes) == 9000
        alone = b"y" * 9000  # an empty queue always takes one request, however large
        assert (await ledger.append(alone, key.public, key.sign(alone))).index == 9
    finally:
        await ledger.stop()
        await store.close()


class _Recorder(ChainHook):
    """A chain hook for the test: refuses bodies starting with b"no", records the rest,
    and writes a job-state row in the batch's transaction (or fails, when told to)."""

    def __init__(self) -> None:
        self.admitted: list[tuple[int, bytes]] = []
        self.fail = False

    async def begin(self, tx: WriteTx, contents: Sequence[bytes]) -> HookBatch | None:
        return _RecorderBatch(self)


class _RecorderBatch(HookBatch):
    def __init__(self, hook: _Recorder) -> None:
        self.hook = hook
        self.seen: list[Entry] = []

    def admit(self, candidate: Candidate) -> ChronicleError | None:
        if candidate.contents.startswith(b"no"):
            return RequestError(f"refused at {candidate.index}", status=403)
        self.hook.admitted.append((candidate.index, candidate.currhash))
        return None

    def appended(self, entry: Entry) -> None:
        self.seen.append(entry)

    async def commit(self, tx: WriteTx) -> None:
        if self.hook.fail:
            raise StorageError("the hook's write failed")
        await tx.session.execute(
            "INSERT INTO job_state (name, value) VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET value = excluded.value", "recorded", str(len(self.seen)))


async def test_chain_hooks_judge_in_order_and_commit_with_the_entries(tmp_path: Path) -> None:
    dd = await init_data_dir(tmp_path / "l")
    store = open_store(dd.settings().database, dd.path)
    await store.open()
    hook = _Recorder()
    store._hooks = (hook,)
    key = SigningKey.generate()
    ledger = Ledger(store, "")
    try:
        bodies = [b"yes 0", b"no 1", b"yes 2"]
        outcomes = await asyncio.gather(*(ledger.append(b, key.public, key.sign(b))
                                          for b in bodies), return_exceptions=True)
        assert isinstance(outcomes[1], RequestError) and outcomes[1].status == 403
        entries = [o for o in outcomes if isinstance(o, Entry)]
        assert [e.index for e in entries] == [0, 1]  # the refused one took no place
        assert hook.admitted == [(e.index, e.currhash) for e in entries]
        assert await store.jobs.get("recorded") is not None
        hook.fail = True  # the hook's write fails: its batch's entries are not stored
        with pytest.raises(StorageError):
            await ledger.append(b"yes 3", key.public, key.sign(b"yes 3"))
        head = await store.chain("").head()
        assert head is not None and head.index == 1
    finally:
        await ledger.stop()
        await store.close()


class _SwallowingHook(ChainHook, HookBatch):
    """A (buggy) hook whose failing statement is caught: on PostgreSQL the transaction is
    aborted all the same, and its COMMIT is answered with ROLLBACK."""

    async def begin(self, tx: WriteTx, contents: Sequence[bytes]) -> HookBatch | None:
        return self

    def appended(self, entry: Entry) -> None:
        pass

    async def commit(self, tx: WriteTx) -> None:
        with contextlib.suppress(StorageError):
            await tx.session.execute("INSERT INTO no_such_table (x) VALUES (?)", 1)


# PostgreSQL's own behaviour: run on that backend only (SQLite neither aborts a transaction
# on a failed statement nor has a server connection to lose).
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_commit_of_an_aborted_transaction_is_a_failure(
        tmp_path: Path, backend: str) -> None:
    dd = await init_data_dir(tmp_path / "l")
    store = open_store(dd.settings().database, dd.path)
    await store.open()
    store._hooks = (_SwallowingHook(),)
    key = SigningKey.generate()
    ledger = Ledger(store, "")
    try:
        with pytest.raises(StorageError) as err:
            await ledger.append(b"lost", key.public, key.sign(b"lost"))
        assert err.value.status == 503
        assert "Nothing was stored" in err.value.message
        assert await store.chain("").head() is None
    finally:
        await ledger.stop()
        await store.close()


# PostgreSQL's own behaviour: run on that backend only (SQLite neither aborts a transaction
# on a failed statement nor has a server connection to lose).
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_writer_connection_lost_costs_at_most_one_batch(
        tmp_path: Path, backend: str) -> None:
    dd = await init_data_dir(tmp_path / "l")
    store = open_store(dd.settings().database, dd.path)
    await store.open()
    key = SigningKey.generate()
    ledger = Ledger(store, "")
    try:
        first = await ledger.append(b"one", key.public, key.sign(b"one"))
        writer = store.database._writer  # type: ignore[attr-defined]
        assert writer is not None
        await store.database.pool.execute(  # type: ignore[attr-defined]
            "SELECT pg_terminate_backend($1)", writer.get_server_pid())
        # Refused (503, nothing stored) if the loss is noticed only when the batch uses
        # the connection; either way the next try reconnects.
        outcomes: list[Entry | StorageError] = []
        while not outcomes or isinstance(outcomes[-1], StorageError):
            assert len(outcomes) < 2, outcomes
            try:
                outcomes.append(await ledger.append(b"two", key.public, key.sign(b"two")))
            except StorageError as exc:
                outcomes.append(exc)
        assert [o.status for o in outcomes if isinstance(o, StorageError)] in ([], [503])
        again = outcomes[-1]
        assert isinstance(again, Entry)
        assert (first.index, again.index) == (0, 1)
        assert again.prevhash == first.currhash
    finally:
        await ledger.stop()
        await store.close()
