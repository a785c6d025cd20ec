"""The tlog leaf record: one fixed binary record per Chronicle entry (docs/tlog-leaf.md).

Leaf ``i`` of the Merkle tree is the record of chain entry ``i`` (0-based chain position)::

    offset   size  field
    0        1     version, 0x01
    1        2     L = length of created, uint16 big-endian
    3        L     created: ASCII, exactly the string the chain hashed
                   (e.g. "2026-11-28T04:58:27+00:00")
    3+L      32    publickey (Ed25519, raw)
    35+L     64    signature (Ed25519 over contents, raw)
    99+L     32    SHA-256(contents)
    131+L    32    currhash (raw BLAKE2b-256 chain hash of this entry)
    total    163+L bytes

The tree's leaf hash is ``SHA-256(0x00 ‖ record)`` (RFC 6962). Contents are bound by their
SHA-256 so a leaf stays small (entry bundles cap entries below 64 KiB) while the body
itself stays on ``/lookup`` and ``/export``; ``currhash`` makes the tree head at size n
also authenticate the chain's lasthash (and so its summaryhash) at n. Parsing is strict:
one record has exactly one encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from chronicle.core.blakechain import Entry
from chronicle.core.errors import IntegrityError
from chronicle.core.merkle import MAX_ENTRY_SIZE, leaf_hash

LEAF_VERSION = 0x01
PUBLICKEY_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32
FIXED_BYTES = 1 + 2 + PUBLICKEY_BYTES + SIGNATURE_BYTES + HASH_BYTES + HASH_BYTES
"""Everything but ``created``: 163 bytes."""
MAX_CREATED_BYTES = MAX_ENTRY_SIZE - FIXED_BYTES
"""``created`` may not push the record past what an entry bundle can carry."""


class LeafFormatError(IntegrityError):
    """A leaf record (or a field meant for one) is malformed: wrong version, length or bytes."""


@dataclass(frozen=True, slots=True)
class LeafRecord:
    """The fields a leaf binds; :meth:`to_bytes` is the leaf, :meth:`leaf_hash` its tree hash."""

    created: str
    publickey: bytes
    signature: bytes
    contents_sha256: bytes
    currhash: bytes

    def __post_init__(self) -> None:
        _check_created(self.created)
        _check_len("publickey", self.publickey, PUBLICKEY_BYTES)
        _check_len("signature", self.signature, SIGNATURE_BYTES)
        _check_len("contents_sha256", self.contents_sha256, HASH_BYTES)
        _check_len("currhash", self.currhash, HASH_BYTES)

    @classmethod
    def build(cls, created: str, publickey: bytes, signature: bytes, contents: bytes,
              currhash: bytes) -> LeafRecord:
        """From the raw fields of an entry, hashing its contents."""
        return cls(created, publickey, signature, hashlib.sha256(contents).digest(), currhash)

    @classmethod
    def of(cls, entry: Entry) -> LeafRecord:
        return cls.build(entry.created, entry.publickey, entry.signature, entry.contents,
                         entry.currhash)

    def to_bytes(self) -> bytes:
        created = self.created.encode("ascii")
        return b"".join((bytes((LEAF_VERSION,)), len(created).to_bytes(2, "big"), created,
                         self.publickey, self.signature, self.contents_sha256, self.currhash))

    def leaf_hash(self) -> bytes:
        return leaf_hash(self.to_bytes())

    def check_contents(self, contents: bytes) -> None:
        """Raise :class:`IntegrityError` unless SHA-256(contents) is the one this leaf binds."""
        found = hashlib.sha256(contents).digest()
        if found != self.contents_sha256:
            raise IntegrityError("contents do not match the leaf's SHA-256", field="contents",
                                 expected=self.contents_sha256.hex(), found=found.hex())

    @classmethod
    def from_bytes(cls, raw: bytes) -> LeafRecord:
        """Parse a leaf strictly: version 1, exact lengths, no trailing bytes."""
        if len(raw) < 3:
            raise LeafFormatError(f"leaf record is {len(raw)} bytes, shorter than its header",
                                  field="leaf")
        if raw[0] != LEAF_VERSION:
            raise LeafFormatError(f"unknown leaf record version {raw[0]}", field="version",
                                  expected=str(LEAF_VERSION), found=str(raw[0]))
        size = int.from_bytes(raw[1:3], "big")
        want = FIXED_BYTES + size
        if len(raw) != want:
            what = "truncated" if len(raw) < want else "has trailing bytes"
            raise LeafFormatError(f"leaf record {what}: {len(raw)} bytes, expected {want} for "
                                  f"a {size}-byte created", field="leaf", expected=str(want),
                                  found=str(len(raw)))
        try:
            created = raw[3:3 + size].decode("ascii")
        except UnicodeDecodeError:
            raise LeafFormatError("leaf created is not ASCII", field="created") from None
        pos = 3 + size
        publickey = raw[pos:pos + PUBLICKEY_BYTES]
        pos += PUBLICKEY_BYTES
        signature = raw[pos:pos + SIGNATURE_BYTES]
        pos += SIGNATURE_BYTES
        contents_sha256 = raw[pos:pos + HASH_BYTES]
        pos += HASH_BYTES
        return cls(created, publickey, signature, contents_sha256, raw[pos:pos + HASH_BYTES])


def entry_leaf(entry: Entry) -> bytes:
    """The leaf record bytes of a chain entry."""
    return LeafRecord.of(entry).to_bytes()


def entry_leaf_hash(entry: Entry) -> bytes:
    """The Merkle leaf hash of a chain entry: what the sequencer appends to the tree."""
    return leaf_hash(entry_leaf(entry))


def _check_len(field: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise LeafFormatError(f"leaf {field} must be {size} bytes, got {len(value)}",
                              field=field, expected=str(size), found=str(len(value)))


def _check_created(created: str) -> None:
    if not created:
        raise LeafFormatError("leaf created is empty", field="created")
    if not created.isascii() or not created.isprintable():
        raise LeafFormatError("leaf created must be printable ASCII", field="created")
    if len(created) > MAX_CREATED_BYTES:
        raise LeafFormatError(f"leaf created is {len(created)} bytes; at most "
                              f"{MAX_CREATED_BYTES} fit an entry bundle", field="created")
