"""PostgreSQL set-ups an operator meets: a role that may not create tables."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.integration.conftest import ADMIN_URL
from tests.integration.test_cli import assert_error_line, run_cli


@pytest.fixture
def backend() -> str:
    """About PostgreSQL roles: runs once, not once per backend."""
    return "postgres"


async def test_init_as_a_role_without_create_leaves_nothing_behind(tmp_path: Path) -> None:
    """It printed a traceback and left an empty data directory (issue 14)."""
    name = f"noperm_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE ROLE "{name}" LOGIN')
        await admin.execute(f'CREATE DATABASE "{name}"')
        db = await asyncpg.connect(urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name)))
        try:
            await db.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        finally:
            await db.close()
        parts = urlsplit(ADMIN_URL)
        weak = urlunsplit(parts._replace(netloc=f"{name}@{parts.hostname}:{parts.port}",
                                         path="/" + name))
        data = tmp_path / "new" / "ledger"
        code, _, err = await run_cli("init", "--data-dir", str(data), "--database", weak)
        assert code == 3
        assert assert_error_line(err) == \
            "error: schema change failed: permission denied for schema public"
        assert not (tmp_path / "new").exists()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()
