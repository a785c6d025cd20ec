"""The sequencer on a real store: byte bounds on the queue and on each batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chronicle.core.errors import OverloadedError
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Ledger
from chronicle.store import open_store
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
