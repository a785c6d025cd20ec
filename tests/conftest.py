"""Fixtures: a fresh ledger server on loopback with a normal and an admin client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import RunningServer, init_data_dir, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    data_dir = await init_data_dir(tmp_path / "ledger")
    srv = await start_server(data_dir)
    await srv.add_client("alice")
    await srv.add_client("admin", is_admin=True)
    try:
        yield srv
    finally:
        await srv.close()
