"""The witness tests' fixtures: our witness on loopback, and a log it witnesses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.witness_support import RunningWitness, TestLog, add_log, init_witness_dir, start_witness


@pytest.fixture
async def witness(tmp_path: Path) -> AsyncIterator[RunningWitness]:
    """Our witness ``witness.example/w1``, served in-process on loopback."""
    async with await start_witness(await init_witness_dir(tmp_path / "w")) as running:
        yield running


@pytest.fixture
async def log(witness: RunningWitness) -> TestLog:
    """A log of 5 entries, which ``witness`` witnesses (it has cosigned nothing yet)."""
    test_log = TestLog().grow(5)
    await add_log(witness.witness_dir, test_log)
    return test_log
