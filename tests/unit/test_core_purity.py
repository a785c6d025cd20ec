"""chronicle.core is sans-I/O: it must not import the server, storage or HTTP stacks."""

from __future__ import annotations

import ast
from pathlib import Path

import chronicle.core

FORBIDDEN = ("aiohttp", "aiosqlite", "asyncpg", "asyncio", "sqlite3", "socket",
             "chronicle.server", "chronicle.store", "chronicle.client", "chronicle.ledger")


def test_core_imports_nothing_io() -> None:
    root = Path(chronicle.core.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert offenders == []
