"""The BLAKE2b hash chain (protocol.md "The chain"; paragonie/blakechain).

- ``currhash[n] = BLAKE2b-256(created || pk(32) || sig(64) || contents, key=currhash[n-1])``,
  unkeyed for the first entry;
- ``summaryhash[n] = BLAKE2b-256(currhash[0] || ... || currhash[n])``, unkeyed;
- ``hashstate[n]``: libsodium's 384-byte ``crypto_generichash`` state after those updates,
  unfinalised. PyNaCl's state buffer is byte-identical, so a stored state lets us append
  without rehashing history and lets us import a PHP Chronicle database as is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from nacl import bindings as sodium
from nacl._sodium import ffi, lib
from nacl.bindings.crypto_generichash import Blake2State

from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import IntegrityError

HASH_BYTES = 32
STATE_BYTES = 384
PUBLICKEY_BYTES = 32
SIGNATURE_BYTES = 64


def entry_preimage(created: str, publickey: bytes, signature: bytes, contents: bytes) -> bytes:
    """The bytes a currhash covers: the timestamp string exactly as stored, then raw fields."""
    return created.encode("utf-8") + publickey + signature + contents


def currhash(prevhash: bytes | None, created: str, publickey: bytes, signature: bytes,
             contents: bytes) -> bytes:
    """Keyed BLAKE2b-256 of the entry preimage; key = previous currhash (none for the first)."""
    h = hashlib.blake2b(digest_size=HASH_BYTES, key=prevhash or b"")
    h.update(created.encode("utf-8"))
    h.update(publickey)
    h.update(signature)
    h.update(contents)
    return h.digest()


class SummaryState:
    """Running unkeyed BLAKE2b-256 over all currhashes, exportable as libsodium's state."""

    __slots__ = ("_state",)

    def __init__(self, state: Blake2State | None = None) -> None:
        self._state = state if state is not None else sodium.crypto_generichash_blake2b_init(
            digest_size=HASH_BYTES)

    @classmethod
    def from_bytes(cls, raw: bytes, *, count: int | None = None) -> SummaryState:
        """Restore from a stored 384-byte libsodium state (ours or PHP Chronicle's).

        The state is copied into libsodium's own buffer, so it is checked first: a
        ``buflen`` past the buffer would make the next update write out of bounds.
        Layout (libsodium's blake2b_state): h[8] u64 @0, t[2] u64 @64, f[2] u64 @80,
        buf[256] @96, buflen (size_t) @352, last_node u8 @360. With ``count`` (entries
        hashed so far) the byte counter must also say exactly ``32 * count``.
        """
        if len(raw) != STATE_BYTES:
            raise IntegrityError(f"hash state must be {STATE_BYTES} bytes, got {len(raw)}",
                                 field="hashstate")
        buflen = int.from_bytes(raw[352:360], "little")
        compressed = int.from_bytes(raw[64:80], "little")
        if buflen > 256 or any(raw[80:96]) or raw[360] > 1:
            raise IntegrityError("hash state is not a valid unfinalised BLAKE2b state",
                                 field="hashstate")
        if count is not None and compressed + buflen != HASH_BYTES * count:
            raise IntegrityError(f"hash state covers {compressed + buflen} bytes, not the "
                                 f"{HASH_BYTES * count} of {count} entries", field="hashstate")
        state = sodium.crypto_generichash_blake2b_init(digest_size=HASH_BYTES)
        ffi.memmove(state._statebuf, raw, STATE_BYTES)
        return cls(state)

    def to_bytes(self) -> bytes:
        return bytes(ffi.buffer(self._state._statebuf, STATE_BYTES))

    def copy(self) -> SummaryState:
        return SummaryState(self._state.copy())

    # update and digest call libsodium directly: they run for every appended, replicated
    # and audited entry, and PyNaCl's wrappers cost more than the hashing.
    def update(self, currhash_raw: bytes) -> None:
        if lib.crypto_generichash_blake2b_update(self._state._statebuf, currhash_raw,
                                                 len(currhash_raw)) != 0:
            raise IntegrityError("BLAKE2b update failed", field="hashstate")

    def digest(self) -> bytes:
        """The summary hash so far (finalises a copy; this state stays usable)."""
        copy = ffi.new("unsigned char[]", STATE_BYTES)
        ffi.memmove(copy, self._state._statebuf, STATE_BYTES)
        out = ffi.new("unsigned char[]", HASH_BYTES)
        if lib.crypto_generichash_blake2b_final(copy, out, HASH_BYTES) != 0:
            raise IntegrityError("BLAKE2b finalisation failed", field="hashstate")
        return bytes(ffi.buffer(out, HASH_BYTES))


@dataclass(frozen=True, slots=True)
class Entry:
    """One chain row. ``index`` is the 0-based position; raw bytes for every hash and key."""

    index: int
    contents: bytes
    prevhash: bytes | None
    currhash: bytes
    summaryhash: bytes
    hashstate: bytes
    publickey: bytes
    signature: bytes
    created: str

    def receipt(self) -> dict[str, str]:
        """What a publisher is told: ``{currhash, summaryhash, created}``."""
        return {
            "currhash": b64u_encode(self.currhash),
            "summaryhash": b64u_encode(self.summaryhash),
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class ChainHead:
    """What appending needs to know about the newest entry."""

    index: int
    currhash: bytes
    summaryhash: bytes
    hashstate: bytes
    created: str

    @classmethod
    def of(cls, entry: Entry) -> ChainHead:
        return cls(entry.index, entry.currhash, entry.summaryhash, entry.hashstate, entry.created)


class ChainBuilder:
    """Extends a chain in memory: the single place where new entries get their hashes."""

    def __init__(self, head: ChainHead | None) -> None:
        self._next_index = 0 if head is None else head.index + 1
        self._prev = None if head is None else head.currhash
        self._state = SummaryState() if head is None else \
            SummaryState.from_bytes(head.hashstate, count=head.index + 1)

    @property
    def next_index(self) -> int:
        return self._next_index

    @property
    def prevhash(self) -> bytes | None:
        return self._prev

    def append(self, contents: bytes, publickey: bytes, signature: bytes, created: str) -> Entry:
        cur = currhash(self._prev, created, publickey, signature, contents)
        self._state.update(cur)
        entry = Entry(
            index=self._next_index,
            contents=contents,
            prevhash=self._prev,
            currhash=cur,
            summaryhash=self._state.digest(),
            hashstate=self._state.to_bytes(),
            publickey=publickey,
            signature=signature,
            created=created,
        )
        self._prev = cur
        self._next_index += 1
        return entry
