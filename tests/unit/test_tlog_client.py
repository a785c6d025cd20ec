"""The tree's clients without a server: proof answers read and checked (client/tlog.py),
the audit's tree check (audit/engine.py TreeCheck). Every malformed answer has its error."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from chronicle.audit.engine import TreeCheck
from chronicle.client.errors import RecordNotFound, ServerRefused
from chronicle.client.http import FetchedDocument
from chronicle.client.tlog import (
    open_signed_checkpoint,
    parse_consistency,
    parse_inclusion,
)
from chronicle.core.checkpoint import Checkpoint, sign_checkpoint
from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import IntegrityError
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import MemoryHashes, ProofLengthError
from chronicle.core.note import Ed25519Signer
from chronicle.core.verify import (
    AnchorError,
    ChainVerifier,
    DocumentSignatureError,
    HashMismatchError,
    MalformedError,
)

ORIGIN = "log.test/chronicle/tlog"
LEAVES = [LeafRecord("2026-01-01T00:00:00+00:00", os.urandom(32), os.urandom(64),
                     os.urandom(32), os.urandom(32)) for _ in range(9)]
TREE = MemoryHashes.from_leaf_hashes(leaf.leaf_hash() for leaf in LEAVES)
CHECKPOINT = Checkpoint(ORIGIN, 9, TREE.root())


def inclusion(index: int = 4) -> dict[str, Any]:
    leaf = LEAVES[index]
    return {"index": index, "tree-size": 9, "root": b64u_encode(TREE.root()),
            "leaf": b64u_encode(leaf.to_bytes()), "leaf-hash": b64u_encode(leaf.leaf_hash()),
            "currhash": b64u_encode(leaf.currhash),
            "proof": [b64u_encode(h) for h in TREE.inclusion_proof(index)]}


def test_a_good_inclusion_answer() -> None:
    proof = parse_inclusion(inclusion(), CHECKPOINT, index=4, currhash=LEAVES[4].currhash)
    assert proof.leaf == LEAVES[4] and proof.index == 4
    assert proof.as_dict()["tree-size"] == 9


@pytest.mark.parametrize("change,error,message", [
    ({"index": "4"}, MalformedError, "the tree's answer has no valid index"),
    ({"index": True}, MalformedError, "the tree's answer has no valid index"),
    ({"index": 5}, MalformedError, "the proof is for another entry"),
    ({"tree-size": 8}, MalformedError, "the proof is for another tree size"),
    ({"leaf": "***"}, MalformedError, "the tree's answer has no valid leaf"),
    ({"leaf": b64u_encode(b"\x02" + bytes(5))}, IntegrityError,
     "unknown leaf record version 2"),
    ({"leaf-hash": "AAAA"}, MalformedError, "the tree's answer has no valid leaf-hash"),
    ({"leaf-hash": b64u_encode(bytes(32))}, IntegrityError,
     "the leaf hash is not the hash of the leaf"),
    ({"currhash": b64u_encode(bytes(32))}, MalformedError,
     "the proof's leaf is for another entry"),
    ({"proof": "x"}, MalformedError, "the tree's answer has no valid proof"),
    ({"proof": [1]}, MalformedError, "the tree's proof holds a value that is not a hash"),
    ({"proof": []}, ProofLengthError, "inclusion proof for leaf 4 of 9 must have 4 hashes, "
                                      "got 0"),
])
def test_malformed_or_lying_inclusion_answers(change: dict[str, Any], error: type[Exception],
                                              message: str) -> None:
    with pytest.raises(error) as caught:
        parse_inclusion({**inclusion(), **change}, CHECKPOINT, index=4)
    assert caught.value.message == message  # type: ignore[attr-defined]


def test_an_inclusion_answer_for_another_currhash() -> None:
    with pytest.raises(MalformedError, match=r"^the proof's leaf is for another entry$"):
        parse_inclusion(inclusion(), CHECKPOINT, currhash=bytes(32))
    with pytest.raises(MalformedError, match=r"^the tree's answer has no valid index$"):
        parse_inclusion(["not", "an", "object"], CHECKPOINT)


def test_consistency_answers() -> None:
    old = Checkpoint(ORIGIN, 5, TREE.root(5))
    good = {"old-size": 5, "new-size": 9,
            "proof": [b64u_encode(h) for h in TREE.consistency_proof(5, 9)]}
    assert parse_consistency(good, old, CHECKPOINT) == TREE.consistency_proof(5, 9)
    with pytest.raises(MalformedError, match=r"^the proof is for another old-size$"):
        parse_consistency({**good, "old-size": 4}, old, CHECKPOINT)
    with pytest.raises(MalformedError, match=r"^the proof is for another new-size$"):
        parse_consistency({**good, "new-size": 10}, old, CHECKPOINT)
    with pytest.raises(IntegrityError, match=r"^old root does not match the proof$"):
        parse_consistency({**good, "proof": [b64u_encode(bytes(32))] * 5}, old, CHECKPOINT)


def _doc(body: bytes, status: int = 200, verified: bool = True) -> FetchedDocument:
    return FetchedDocument(method="GET", path="/tlog/checkpoint", url="u", status=status,
                           signature="sig", verified=verified, size=len(body), body=body)


def test_open_signed_checkpoint() -> None:
    signer = Ed25519Signer.generate(ORIGIN)
    note = sign_checkpoint(CHECKPOINT, signer)
    assert open_signed_checkpoint(_doc(note), signer.verifier()).checkpoint == CHECKPOINT
    with pytest.raises(DocumentSignatureError, match=r"^response to GET /tlog/checkpoint is "
                                                     "not signed by the pinned server key$"):
        open_signed_checkpoint(_doc(note, verified=False), signer.verifier())
    other = Ed25519Signer.generate(ORIGIN)
    with pytest.raises(DocumentSignatureError, match=r"^the checkpoint is not signed by the "
                                                     "checkpoint key "):
        open_signed_checkpoint(_doc(note), other.verifier())
    error = b'{"status": "ERROR", "message": "The Merkle tree is not enabled on this chain"}'
    with pytest.raises(ServerRefused) as refused:
        open_signed_checkpoint(_doc(error, status=404), signer.verifier())
    assert (refused.value.status, refused.value.message) == (
        404, "The Merkle tree is not enabled on this chain")
    with pytest.raises(RecordNotFound):
        open_signed_checkpoint(_doc(b'{"message": "No record found matching this hash."}',
                                    status=404), signer.verifier())
    with pytest.raises(MalformedError, match="is not JSON"):
        open_signed_checkpoint(_doc(b"<html>", status=500), signer.verifier())


# --- the audit's tree check ---------------------------------------------------------------------

def _rows(count: int) -> list[dict[str, Any]]:
    from chronicle.core.blakechain import ChainBuilder
    from chronicle.core.protocol import export_row
    from chronicle.core.sapient import SigningKey

    key = SigningKey.generate()
    builder = ChainBuilder(None)
    return [export_row(builder.append(b"e%d" % i, key.public, key.sign(b"e%d" % i),
                                      "2026-01-01T00:00:00+00:00")) for i in range(count)]


def _feed(check: TreeCheck, rows: list[dict[str, Any]], batch: int = 3) -> None:
    verifier = ChainVerifier(None)
    for start in range(0, len(rows), batch):
        for row in rows[start:start + batch]:
            check.add(verifier, verifier.check(row))
        check.flush()


def _root(rows: list[dict[str, Any]], size: int) -> bytes:
    from chronicle.core.encoding import b64u_decode

    return MemoryHashes.from_leaf_hashes(
        LeafRecord.build(r["created"], b64u_decode(r["publickey"]), b64u_decode(r["signature"]),
                         r["contents"].encode(), b64u_decode(r["hash"])).leaf_hash()
        for r in rows).root(size)


@pytest.mark.parametrize("size", [1, 3, 4, 7])
def test_tree_check_takes_the_root_at_the_checkpoint_size(size: int) -> None:
    rows = _rows(7)
    check = TreeCheck(Checkpoint(ORIGIN, size, _root(rows, size)))
    _feed(check, rows)
    assert check.finish() == {"origin": ORIGIN, "tree-size": size,
                              "root": b64u_encode(_root(rows, size)), "status": "matches"}
    assert check.state.size == 7


def test_tree_check_faults() -> None:
    rows = _rows(5)
    short = TreeCheck(Checkpoint(ORIGIN, 6, bytes(32)))
    _feed(short, rows)
    with pytest.raises(AnchorError) as caught:
        short.finish()
    assert (caught.value.message, caught.value.expected, caught.value.found) == (
        "the chain ends before the signed checkpoint's tree size: truncated (or another "
        "chain)", "6", "5")
    other = TreeCheck(Checkpoint(ORIGIN, 4, hashlib.sha256(b"x").digest()))
    _feed(other, rows)
    with pytest.raises(HashMismatchError) as mismatch:
        other.finish()
    assert (mismatch.value.index, mismatch.value.field) == (3, "root")
    assert mismatch.value.found == b64u_encode(_root(rows, 4))
