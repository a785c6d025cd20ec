"""A client of a Chronicle's Merkle tree (``/chronicle/tlog/``): checkpoints and proofs,
believed only once verified.

Two keys vouch for what the tree says: the server's Sapient key signs every answer (as
any Chronicle answer), and the checkpoint key (a C2SP vkey, published on the chain when
the tree was enabled) signs each checkpoint note. A proof is checked against a checkpoint
that verified with both; the leaf record it carries must be the one it proves, and an
entry's body must hash to what its leaf binds.

The ``parse_*`` functions read the JSON proofs (pure, shared with the replica follower,
which keeps the raw answers as evidence); :class:`TreeClient` does the requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from chronicle.client.errors import UnexpectedResponseError, refusal
from chronicle.client.http import ChronicleClient, FetchedDocument, VerifiedEntry
from chronicle.core.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint
from chronicle.core.document import load_object
from chronicle.core.encoding import b64u_decode, b64u_encode, decode_b64_field
from chronicle.core.errors import EncodingError, IntegrityError
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import leaf_hash, verify_consistency, verify_inclusion
from chronicle.core.note import (
    MAX_NOTE_BYTES,
    Ed25519Verifier,
    UnverifiedNoteError,
    format_key,
)
from chronicle.core.sapient import SIGNATURE_HEADER
from chronicle.core.verify import DocumentSignatureError

CHECKPOINT_PATH = "/tlog/checkpoint"


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """A verified inclusion proof: leaf ``index`` (its record ``leaf``) is in the tree of
    ``checkpoint``."""

    index: int
    leaf: LeafRecord
    proof: tuple[bytes, ...]
    checkpoint: Checkpoint

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "tree-size": self.checkpoint.size,
                "root": b64u_encode(self.checkpoint.root),
                "leaf-hash": b64u_encode(self.leaf.leaf_hash()),
                "currhash": b64u_encode(self.leaf.currhash),
                "created": self.leaf.created,
                "publickey": b64u_encode(self.leaf.publickey),
                "contents-sha256": self.leaf.contents_sha256.hex(),
                "proof": [b64u_encode(h) for h in self.proof]}


def _field(results: Any, name: str, kind: type) -> Any:
    value = results.get(name) if isinstance(results, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UnexpectedResponseError(f"the tree's answer has no valid {name}", field=name,
                                      found=repr(value)[:100])
    return value


def _hash(results: Any, name: str) -> bytes:
    raw = decode_b64_field(_field(results, name, str), 32)
    if raw is None:
        raise UnexpectedResponseError(f"the tree's answer has no valid {name}", field=name)
    return raw


def _proof(results: Any) -> list[bytes]:
    items = _field(results, "proof", list)
    proof = [decode_b64_field(item, 32) if isinstance(item, str) else None for item in items]
    if any(p is None for p in proof):
        raise UnexpectedResponseError("the tree's proof holds a value that is not a hash",
                                      field="proof")
    return [p for p in proof if p is not None]


def parse_inclusion(results: Any, checkpoint: Checkpoint, *, index: int | None = None,
                    currhash: bytes | None = None) -> InclusionProof:
    """Check an inclusion proof answer against a verified checkpoint (and the entry asked
    for, by index or currhash): the leaf it carries, its hash, and the audit path."""
    found = _field(results, "index", int)
    if (index is not None and found != index) or found < 0:
        raise UnexpectedResponseError("the proof is for another entry", field="index",
                                      expected=str(index), found=str(found))
    size = _field(results, "tree-size", int)
    if size != checkpoint.size:
        raise UnexpectedResponseError("the proof is for another tree size", field="tree-size",
                                      expected=str(checkpoint.size), found=str(size))
    try:
        raw_leaf = b64u_decode(_field(results, "leaf", str), what="leaf")
    except EncodingError:
        raise UnexpectedResponseError("the tree's answer has no valid leaf",
                                      field="leaf") from None
    leaf = LeafRecord.from_bytes(raw_leaf)
    if _hash(results, "leaf-hash") != leaf_hash(raw_leaf):
        raise IntegrityError("the leaf hash is not the hash of the leaf", field="leaf-hash")
    if _hash(results, "currhash") != leaf.currhash or \
            (currhash is not None and leaf.currhash != currhash):
        raise UnexpectedResponseError("the proof's leaf is for another entry",
                                      field="currhash",
                                      expected=None if currhash is None
                                      else b64u_encode(currhash),
                                      found=b64u_encode(leaf.currhash))
    proof = _proof(results)
    verify_inclusion(found, size, leaf.leaf_hash(), proof, checkpoint.root)
    return InclusionProof(found, leaf, tuple(proof), checkpoint)


def parse_consistency(results: Any, old: Checkpoint, new: Checkpoint) -> list[bytes]:
    """Check a consistency proof answer between two verified checkpoints of one log."""
    for name, want in (("old-size", old.size), ("new-size", new.size)):
        if _field(results, name, int) != want:
            raise UnexpectedResponseError(f"the proof is for another {name}", field=name,
                                          expected=str(want))
    proof = _proof(results)
    verify_consistency(old.size, new.size, old.root, new.root, proof)
    return proof


def check_entry(proof: InclusionProof, entry: VerifiedEntry) -> None:
    """The entry (as ``/lookup`` served it, verified) is the one the proven leaf binds."""
    leaf = proof.leaf
    leaf.check_contents(entry.contents)
    for name, found, expected in (
            ("currhash", entry.currhash, b64u_encode(leaf.currhash)),
            ("created", entry.created, leaf.created),
            ("publickey", entry.publickey, b64u_encode(leaf.publickey)),
            ("signature", entry.signature, b64u_encode(leaf.signature))):
        if found != expected:
            raise IntegrityError("the entry is not the one the leaf binds", field=name,
                                 expected=expected, found=found)


def open_signed_checkpoint(doc: FetchedDocument, verifier: Ed25519Verifier
                           ) -> SignedCheckpoint:
    """A checkpoint answer: signed by the pinned server key, ``200``, and a note signed
    by the checkpoint key for its origin (the key's name)."""
    if not doc.verified:
        raise DocumentSignatureError(f"response to GET {doc.path} is not signed by the "
                                     "pinned server key", field=SIGNATURE_HEADER,
                                     found=(doc.signature or "")[:100] or None)
    body = doc.read()
    if doc.status != 200:
        error = load_object(body, what=f"the answer to GET {doc.path}")
        raise refusal(doc.status, str(error.get("message", f"HTTP {doc.status}")),
                      doc.headers)
    return open_checkpoint_with(body, verifier)


def open_checkpoint_with(note: bytes, verifier: Ed25519Verifier) -> SignedCheckpoint:
    """A checkpoint note signed by the checkpoint key, for that key's log (its name); a
    note the key did not sign is a bad document signature."""
    try:
        return open_checkpoint(note, [verifier], origin=verifier.name)
    except UnverifiedNoteError:
        raise DocumentSignatureError(
            f"the checkpoint is not signed by the checkpoint key "
            f"{format_key(verifier.name, verifier.key_id)}", field="checkpoint") from None


class TreeClient:
    """The tree of one Chronicle (its default chain), through a pinned :class:`ChronicleClient`
    and the checkpoint key ``verifier``."""

    def __init__(self, client: ChronicleClient, verifier: Ed25519Verifier) -> None:
        self.client = client
        self.verifier = verifier

    async def checkpoint(self) -> SignedCheckpoint:
        doc = await self.client.fetch(CHECKPOINT_PATH, memory_limit=MAX_NOTE_BYTES,
                                      max_size=MAX_NOTE_BYTES)
        return open_signed_checkpoint(doc, self.verifier)

    async def inclusion(self, entry: str, checkpoint: Checkpoint) -> InclusionProof:
        """Prove entry ``entry`` (a leaf index, or a currhash) in ``checkpoint``'s tree."""
        index = int(entry) if entry.isascii() and entry.isdigit() else None
        currhash = None if index is not None else decode_b64_field(entry, 32)
        if index is None and currhash is None:
            raise UnexpectedResponseError(f"{entry!r} is neither a leaf index nor a currhash")
        path = (f"/tlog/proof/inclusion/{quote(entry, safe='')}?size={checkpoint.size}")
        results = (await self.client.signed(path))[1].get("results")
        return parse_inclusion(results, checkpoint, index=index, currhash=currhash)

    async def consistency(self, old: Checkpoint, new: Checkpoint) -> list[bytes]:
        results = (await self.client.signed(
            f"/tlog/proof/consistency/{old.size}/{new.size}"))[1].get("results")
        return parse_consistency(results, old, new)
