"""Run every integration test on both storage backends: SQLite and a real PostgreSQL.

PostgreSQL comes from ``CHRONICLE_TEST_POSTGRES`` (``.ci/run`` starts one and sets it;
default: the local server on 127.0.0.1:5432). The session creates its own database and
drops it at the end; each test gets a fresh schema inside it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests import helpers

ADMIN_URL = os.environ.get("CHRONICLE_TEST_POSTGRES",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
_counter = itertools.count()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    name = f"chronicle_test_{os.getpid()}_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        asyncio.run(drop())


@pytest.fixture(params=["sqlite", "postgres"], autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        helpers.DATABASE["url"] = "sqlite:chronicle.db"
    else:
        database = request.getfixturevalue("postgres_database")
        schema = f"t{next(_counter)}_{secrets.token_hex(3)}"
        helpers.DATABASE["url"] = f"{database}?schema={schema}"
    try:
        yield request.param
    finally:
        helpers.DATABASE["url"] = "sqlite:chronicle.db"
