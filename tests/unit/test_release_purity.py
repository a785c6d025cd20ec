"""chronicle.release is pure except sources.py (the readers): no I/O imports elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import chronicle.release

FORBIDDEN = ("os", "io", "pathlib", "shutil", "tempfile", "subprocess", "socket", "asyncio",
             "sqlite3", "zipfile", "tarfile", "gzip", "aiohttp", "aiosqlite", "asyncpg",
             "chronicle.server", "chronicle.store", "chronicle.client", "chronicle.ledger",
             "chronicle.release.sources")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_release_core_imports_nothing_io() -> None:
    root = Path(chronicle.release.__file__).parent
    offenders = [f"{path.name}: {name}" for path in sorted(root.glob("*.py"))
                 if path.name != "sources.py" for name in _imports(path)
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert offenders == []


def test_public_api_is_explicit() -> None:
    exported = set(chronicle.release.__all__)
    assert all(hasattr(chronicle.release, name) for name in exported)
    assert len(exported) == len(chronicle.release.__all__)
