"""The pure layers are sans-I/O: ``chronicle.core`` and ``chronicle.release`` (but for its
``sources.py``, the readers of trees and archives) import only an allow-list of standard
library modules that do no I/O, PyNaCl, blake3 and each other, and never call ``open``,
``exec`` or ``eval``. An allow-list, so that a new import has to be thought about here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import chronicle.core
import chronicle.release

PURE_STDLIB = frozenset({
    "__future__", "abc", "base64", "binascii", "bisect", "codecs", "collections",
    "collections.abc", "contextlib", "copy", "dataclasses", "datetime", "enum", "functools",
    "hashlib", "heapq", "hmac", "itertools", "json", "math", "operator", "re", "string",
    "stat", "struct", "typing", "unicodedata", "urllib.parse",
})
THIRD_PARTY = ("nacl", "blake3")
OUR_PURE = ("chronicle.core", "chronicle.release")
IMPURE_FILES = {"sources.py"}  # chronicle/release/sources.py reads directories, archives, git
FORBIDDEN_CALLS = frozenset({"open", "exec", "eval", "compile", "__import__", "input"})

ROOTS = [Path(chronicle.core.__file__).parent, Path(chronicle.release.__file__).parent]
FILES = [p for root in ROOTS for p in sorted(root.glob("*.py")) if p.name not in IMPURE_FILES]


def _allowed(module: str) -> bool:
    if module in PURE_STDLIB:
        return True
    return any(module == p or module.startswith(p + ".") for p in (*THIRD_PARTY, *OUR_PURE))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_imports_and_calls(path: Path) -> None:
    offenders = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            offenders += [a.name for a in node.names if not _allowed(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level or not node.module:
                offenders.append("relative import")
            elif not _allowed(node.module):
                offenders.append(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in FORBIDDEN_CALLS:
            offenders.append(f"{node.func.id}() at line {node.lineno}")
    assert offenders == []


def test_the_allow_list_would_catch_io() -> None:
    for module in ("os", "io", "pathlib", "urllib.request", "socket", "asyncio", "click",
                   "aiohttp", "sqlite3", "chronicle.store", "chronicle.client"):
        assert not _allowed(module), module


def test_public_api_is_explicit() -> None:
    for package in (chronicle.core, chronicle.release):
        exported = package.__all__
        assert len(set(exported)) == len(exported)
        assert all(hasattr(package, name) for name in exported)
