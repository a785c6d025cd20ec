"""The tlog leaf record against its published vectors (tests/vectors/tlog-leaf)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from chronicle.core.blakechain import ChainBuilder
from chronicle.core.encoding import b64u_decode
from chronicle.core.errors import IntegrityError
from chronicle.core.leaf import (
    FIXED_BYTES,
    MAX_CREATED_BYTES,
    LeafFormatError,
    LeafRecord,
    entry_leaf,
    entry_leaf_hash,
)
from chronicle.core.merkle import MAX_ENTRY_SIZE, MemoryHashes, leaf_hash

REPO = Path(__file__).parent.parent.parent
VECTORS: dict[str, Any] = json.loads((REPO / "tests/vectors/tlog-leaf/leaves.json").read_text())
ENTRIES: list[dict[str, Any]] = VECTORS["entries"]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_tlog_vectors",
                                                  REPO / "scripts" / "gen_tlog_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regeneration_produces_the_committed_file() -> None:
    text = (REPO / "tests/vectors/tlog-leaf/leaves.json").read_text()
    assert load_script().build(REPO) == text


def record_of(row: dict[str, Any]) -> LeafRecord:
    return LeafRecord.build(row["created"], b64u_decode(row["publickey"], 32),
                            b64u_decode(row["signature"], 64), row["contents"].encode("utf-8"),
                            b64u_decode(row["currhash"], 32))


@pytest.mark.parametrize("row", ENTRIES, ids=lambda r: f"entry{r['index']}")
def test_leaf_vector(row: dict[str, Any]) -> None:
    record = record_of(row)
    leaf = bytes.fromhex(row["leaf"])
    assert record.to_bytes() == leaf
    assert record.leaf_hash().hex() == row["leaf_hash"] == leaf_hash(leaf).hex()
    assert LeafRecord.from_bytes(leaf) == record
    # The layout spelled out independently of the module.
    created = row["created"].encode("ascii")
    assert leaf == (b"\x01" + len(created).to_bytes(2, "big") + created
                    + b64u_decode(row["publickey"]) + b64u_decode(row["signature"])
                    + hashlib.sha256(row["contents"].encode("utf-8")).digest()
                    + b64u_decode(row["currhash"]))
    assert len(leaf) == 188


def test_roots_vector() -> None:
    tree = MemoryHashes.from_leaf_hashes(bytes.fromhex(r["leaf_hash"]) for r in ENTRIES)
    assert [{"size": n, "root": tree.root(n).hex()} for n in range(1, len(ENTRIES) + 1)] \
        == VECTORS["roots"]


def test_leaf_of_a_chain_entry() -> None:
    builder = ChainBuilder(None)
    entry = builder.append(b"body", b"p" * 32, b"s" * 64, "2026-01-02T03:04:05+00:00")
    record = LeafRecord.of(entry)
    assert record.currhash == entry.currhash
    assert entry_leaf(entry) == record.to_bytes()
    assert entry_leaf_hash(entry) == record.leaf_hash()
    record.check_contents(b"body")
    with pytest.raises(IntegrityError, match="contents do not match") as info:
        record.check_contents(b"Body")
    assert info.value.field == "contents"


GOOD = record_of(ENTRIES[0]).to_bytes()


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "0 bytes, shorter than its header"),
    (b"\x01\x00", "2 bytes, shorter than its header"),
    (b"\x02" + GOOD[1:], "unknown leaf record version 2"),
    (b"\x00" + GOOD[1:], "unknown leaf record version 0"),
    (GOOD[:-1], "truncated: 187 bytes, expected 188"),
    (GOOD + b"\x00", "has trailing bytes: 189 bytes, expected 188"),
    (GOOD[:1] + b"\x00\x1a" + GOOD[3:], "truncated: 188 bytes, expected 189"),
    (GOOD[:1] + b"\x00\x18" + GOOD[3:], "trailing bytes: 188 bytes, expected 187"),
    (GOOD[:3] + b"\xff" + GOOD[4:], "not ASCII"),
    (GOOD[:3] + b"\n" + GOOD[4:], "printable ASCII"),
    (b"\x01\x00\x00" + GOOD[28:], "created is empty"),
])
def test_parsing_is_strict(raw: bytes, message: str) -> None:
    with pytest.raises(LeafFormatError, match=message) as info:
        LeafRecord.from_bytes(raw)
    assert isinstance(info.value, IntegrityError)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("publickey", b"p" * 31, "publickey must be 32 bytes, got 31"),
    ("signature", b"s" * 65, "signature must be 64 bytes, got 65"),
    ("contents_sha256", b"", "contents_sha256 must be 32 bytes, got 0"),
    ("currhash", b"c" * 64, "currhash must be 32 bytes, got 64"),
    ("created", "2026-01-02T03:04:05+00:00\u00e9", "printable ASCII"),
    ("created", "x" * (MAX_CREATED_BYTES + 1), "at most 65372 fit an entry bundle"),
])
def test_building_checks_fields(field: str, value: Any, message: str) -> None:
    fields: dict[str, Any] = {"created": "2026-01-02T03:04:05+00:00", "publickey": b"p" * 32,
                              "signature": b"s" * 64, "contents_sha256": b"h" * 32,
                              "currhash": b"c" * 32}
    fields[field] = value
    with pytest.raises(LeafFormatError, match=message):
        LeafRecord(**fields)


def test_largest_created_still_fits_an_entry_bundle() -> None:
    record = LeafRecord("x" * MAX_CREATED_BYTES, b"p" * 32, b"s" * 64, b"h" * 32, b"c" * 32)
    assert len(record.to_bytes()) == MAX_ENTRY_SIZE == FIXED_BYTES + MAX_CREATED_BYTES
    assert LeafRecord.from_bytes(record.to_bytes()) == record
