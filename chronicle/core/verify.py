"""Pure verification of Chronicle chains, entries and signed documents (sans-I/O).

Bytes and parsed JSON in; results or :class:`ChainFault` errors out. The auditor, the client
library and the tests call these same functions; they never touch a socket, a file or an
event loop (``tests/unit/test_core_purity.py`` enforces it).

Three pieces:

- **Ed25519.** :func:`verify_detached` (libsodium's ``crypto_sign_verify_detached``, whole
  message in memory), :func:`verify_batch` (many of them, picklable for a worker pool) and
  :class:`StreamingVerifier`, which checks a signature over a message fed chunk by chunk — a
  700 MB export — with exactly libsodium's rejections (see the class docstring).
- **The chain** (protocol.md "The chain"). :class:`ChainVerifier` takes rows as the wire
  carries them (export shape ``prev/hash/summary`` or row shape
  ``prevhash/currhash/summaryhash``) and checks, in order, the link to the previous entry,
  the currhash and the summaryhash; the entry signature is handed back to the caller so it
  can be checked in parallel (hashing is inherently sequential, signatures are not).
- **Faults**, one class per kind of lie, each an :class:`IntegrityError` carrying the entry
  index, the field, and what was expected vs found. The auditor maps each kind to an exit
  code.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from nacl import bindings as sodium
from nacl._sodium import ffi, lib

from chronicle.core.blakechain import HASH_BYTES, STATE_BYTES, SummaryState, currhash
from chronicle.core.encoding import b64u_decode, b64u_encode, decode_b64_field
from chronicle.core.errors import ChronicleError, IntegrityError
from chronicle.core.sapient import (
    P,
    has_small_order,
    is_canonical_point,
    is_canonical_scalar,
)

# --- faults ---------------------------------------------------------------------------------


class ChainFault(IntegrityError):
    """Base of every verification failure; ``kind`` names the fault class."""

    kind: ClassVar[str] = "integrity"

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.kind, "message": self.message, "index": self.index,
                "field": self.field, "expected": self.expected, "found": self.found}


class DocumentSignatureError(ChainFault):
    """A response body or export document is unsigned or its signature does not verify."""

    kind = "document-signature"


class EntrySignatureError(ChainFault):
    """An entry's Ed25519 signature over its contents does not verify with its public key."""

    kind = "entry-signature"


class BrokenLinkError(ChainFault):
    """An entry's ``prev`` is not the previous entry's currhash (or the first is not null)."""

    kind = "broken-link"


class HashMismatchError(ChainFault):
    """A recomputed currhash or summaryhash differs from the one the data claims."""

    kind = "hash-mismatch"


class AnchorError(ChainFault):
    """The chain ends somewhere else than a signed head says (truncated, or a wrong total)."""

    kind = "anchor"


class MalformedError(ChainFault):
    """The data is not what the protocol says it is (not JSON, a field missing or mistyped,
    an answer that does not fit its request, a stale ``datetime``)."""

    kind = "malformed"


class HistoryRewrittenError(ChainFault):
    """A head verified earlier is no longer on the chain: history was rewritten."""

    kind = "history-rewritten"


class SplitViewError(ChainFault):
    """Peers or replicas disagree about the audited head (or too few confirm it)."""

    kind = "split-view"

    def __init__(self, message: str, *, peers: list[dict[str, Any]] | None = None,
                 **details: Any) -> None:
        super().__init__(message, **details)
        self.peers = list(peers or [])

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "peers": self.peers}


# --- Ed25519 --------------------------------------------------------------------------------

SIGNATURE_BYTES = 64
PUBLICKEY_BYTES = 32

_IDENTITY = (1).to_bytes(32, "little")


def verify_detached(publickey: bytes, message: bytes, signature: bytes) -> bool:
    """libsodium ``crypto_sign_verify_detached``: True only for a valid signature."""
    if len(signature) != SIGNATURE_BYTES or len(publickey) != PUBLICKEY_BYTES:
        return False
    signed = signature + message
    return bool(lib.crypto_sign_open(ffi.NULL, ffi.NULL, signed, len(signed), publickey) == 0)


def verify_batch(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[int]:
    """Positions in ``items`` (``(publickey, signature, message)``) whose signature fails.

    A plain top-level function over bytes so a process pool can run it; libsodium does the
    work (PyNaCl's cffi calls release the GIL, so threads can run it too).
    """
    bad: list[int] = []
    open_ = lib.crypto_sign_open
    null = ffi.NULL
    for pos, (publickey, signature, message) in enumerate(items):
        if len(signature) != SIGNATURE_BYTES or len(publickey) != PUBLICKEY_BYTES:
            bad.append(pos)
            continue
        signed = signature + message
        if open_(null, null, signed, len(signed), publickey) != 0:
            bad.append(pos)
    return bad


class StreamingVerifier:
    """Verify an Ed25519 signature over a message fed in chunks, in one pass.

    Ed25519 verification needs the message only through ``k = SHA-512(R || A || M)``, so
    ``k`` is computed incrementally; the final check ``[S]B == R + [k]A`` uses libsodium's
    group operations. The result equals libsodium's ``crypto_sign_verify_detached`` (the
    tests compare both on random and crafted inputs), including its rejections:

    - ``S`` must be canonical (``S < L``);
    - ``R`` and ``A`` must not be small-order encodings (libsodium's blacklist, sign bit
      ignored); ``A`` must be canonical (y < p) and decode to a curve point;
    - ``R`` must be the canonical encoding of ``[S]B - [k]A`` (compared bytewise, so a
      non-canonical ``R`` never verifies).

    libsodium's check is cofactorless and accepts a public key with a torsion component;
    ``crypto_scalarmult_ed25519_noclamp`` refuses such points, so for them the final
    equation is computed with the small pure-Python group law below (never for keys made
    by ``crypto_sign_keypair``, which are always in the prime-order subgroup).
    """

    __slots__ = ("_hash", "_pk", "_precheck", "_r", "_s")

    def __init__(self, publickey: bytes, signature: bytes) -> None:
        self._pk = bytes(publickey)
        sig = bytes(signature)
        self._r = sig[:32]
        self._s = sig[32:]
        self._precheck = (
            len(sig) == SIGNATURE_BYTES
            and len(self._pk) == PUBLICKEY_BYTES
            and is_canonical_scalar(self._s)
            and not has_small_order(self._r)
            and is_canonical_point(self._pk)
            and not has_small_order(self._pk)
        )
        self._hash = hashlib.sha512(self._r + self._pk)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)

    def verify(self) -> bool:
        """True iff the signature is valid for everything fed so far."""
        if not self._precheck:
            return False
        k = bytes(sodium.crypto_core_ed25519_scalar_reduce(self._hash.digest()))
        if sodium.crypto_core_ed25519_is_valid_point(self._pk):
            s_b = (_IDENTITY if not any(self._s)
                   else bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(self._s)))
            k_a = (_IDENTITY if not any(k)
                   else bytes(sodium.crypto_scalarmult_ed25519_noclamp(k, self._pk)))
            check = bytes(sodium.crypto_core_ed25519_sub(s_b, k_a))
        else:
            # Not in the prime-order subgroup (or not on the curve): libsodium's own
            # decoder decides, then the cofactorless equation in pure Python.
            point = _decode_point(self._pk)
            if point is None:
                return False
            check = _encode_point(_add(_scalarmult(int.from_bytes(self._s, "little"), _BASE),
                                       _neg(_scalarmult(int.from_bytes(k, "little"), point))))
        return hmac.compare_digest(check, self._r)


# Twisted Edwards group law over GF(2^255-19), extended coordinates (RFC 8032 section 5.1).
# Only for the rare fallback above: a few milliseconds per document, never per entry.
_D = -121665 * pow(121666, P - 2, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
_Point = tuple[int, int, int, int]


def _add(p1: _Point, p2: _Point) -> _Point:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * _D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _neg(p1: _Point) -> _Point:
    x, y, z, t = p1
    return (-x % P, y, z, -t % P)


def _scalarmult(n: int, point: _Point) -> _Point:
    result: _Point = (0, 1, 1, 0)
    while n:
        if n & 1:
            result = _add(result, point)
        point = _add(point, point)
        n >>= 1
    return result


def _decode_point(encoded: bytes) -> _Point | None:
    """libsodium ``ge25519_frombytes``: y taken mod nothing (caller checked y < p)."""
    value = int.from_bytes(encoded, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (_D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        if (v * x * x + u) % P != 0:
            return None
        x = x * _SQRT_M1 % P
    if (x & 1) != sign:
        x = -x % P
    return (x, y, 1, x * y % P)


def _encode_point(point: _Point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


_BY = 4 * pow(5, P - 2, P) % P
_BASE: _Point = _decode_point(_BY.to_bytes(32, "little")) or (0, 1, 1, 0)


# --- the chain ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowKeys:
    """Wire names of the three hash fields: export rows rename them."""

    prev: str
    curr: str
    summary: str


EXPORT_KEYS = RowKeys("prev", "hash", "summary")
ROW_KEYS = RowKeys("prevhash", "currhash", "summaryhash")
_STR_FIELDS = ("contents", "created", "publickey", "signature")


def row_keys_for(row: Any) -> RowKeys:
    """Export shape if the row has ``hash``, else lookup/since/lasthash shape."""
    return EXPORT_KEYS if isinstance(row, dict) and "hash" in row else ROW_KEYS


@dataclass(frozen=True, slots=True)
class SignedContents:
    """What an entry signature covers, with where the entry sits (for fault reports)."""

    index: int
    publickey: bytes
    signature: bytes
    contents: bytes


@dataclass(frozen=True, slots=True)
class ChainState:
    """A verified position: enough to continue verifying from it without the history.

    ``count`` entries have been verified; the last one has ``currhash``/``summaryhash``;
    ``hashstate`` is libsodium's 384-byte BLAKE2b state over all currhashes (None when not
    tracked, e.g. a state built from a single looked-up entry).
    """

    count: int
    currhash: bytes | None = None
    summaryhash: bytes | None = None
    hashstate: bytes | None = None
    created: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "currhash": None if self.currhash is None else b64u_encode(self.currhash),
            "summaryhash": None if self.summaryhash is None else b64u_encode(self.summaryhash),
            "hashstate": None if self.hashstate is None else b64u_encode(self.hashstate),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ChainState:
        """Inverse of :meth:`as_dict`; a malformed value raises :class:`MalformedError`."""
        if not isinstance(data, dict):
            raise MalformedError("chain state is not a JSON object")
        count = data.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise MalformedError("chain state has no valid count", field="count")

        def raw(name: str, length: int) -> bytes | None:
            value = data.get(name)
            if value is None:
                return None
            try:
                return b64u_decode(value, length, what=name)
            except ChronicleError as exc:
                raise MalformedError(f"chain state: {exc.message}", field=name) from None

        state = cls(count, raw("currhash", HASH_BYTES), raw("summaryhash", HASH_BYTES),
                    raw("hashstate", STATE_BYTES),
                    data.get("created") if isinstance(data.get("created"), str) else None)
        if (count == 0) != (state.currhash is None) or (count == 0) != (state.summaryhash is None):
            raise MalformedError("chain state: hashes do not match the count", field="count")
        return state


def _show(value: Any) -> str:
    if value is None:
        return "null"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class ChainVerifier:
    """Check rows one by one: link, currhash, summaryhash. Sequential by nature.

    ``check(row)`` raises the first fault of that row, or returns the :class:`SignedContents`
    whose signature the caller must verify (in parallel, in order of index). When a row's
    link or hash is wrong, its signature is checked here first, so that a tampered body is
    reported as a bad entry signature, the more precise diagnosis.

    Start from genesis (``start=None``), from a :class:`ChainState` with a hash state
    (every check), or from a state without one (links and currhashes only: a ``since``
    answer checked against a looked-up entry). A first ``prev`` of ``""`` is accepted like
    ``null`` (PHP replicas store it that way).
    """

    __slots__ = ("_check_summary", "_count", "_created", "_digest", "_keys", "_keys_fixed",
                 "_pk_cache", "_prev_raw", "_prev_text", "_sodium", "_summary_raw",
                 "anchors", "anchors_seen")

    def __init__(self, start: ChainState | None = None, *, keys: RowKeys | None = None,
                 track_hashstate: bool = False, check_summary: bool = True,
                 index: int | None = None, anchors: Iterable[bytes] = ()) -> None:
        start = start or ChainState(0)
        self._count = start.count if index is None else index
        self._prev_raw = start.currhash
        self._prev_text = None if start.currhash is None else b64u_encode(start.currhash)
        self._summary_raw = start.summaryhash
        self._created = start.created
        self._keys = keys or EXPORT_KEYS
        self._keys_fixed = keys is not None
        self._pk_cache: dict[str, bytes] = {}
        self._digest: Any = None
        self._sodium: SummaryState | None = None
        self._check_summary = check_summary
        if not check_summary:
            pass
        elif start.count == 0:
            # From genesis: hashlib's running BLAKE2b gives a summary per entry cheaply;
            # libsodium's state is kept too only when the caller wants to save it.
            self._digest = hashlib.blake2b(digest_size=HASH_BYTES)
            self._sodium = SummaryState() if track_hashstate else None
        elif start.hashstate is not None:
            self._sodium = SummaryState.from_bytes(start.hashstate, count=start.count)
        else:
            self._check_summary = False
        #: summaryhashes (base64url) to locate on the chain -> (index, currhash) once seen
        self.anchors = {b64u_encode(a) for a in anchors}
        self.anchors_seen: dict[str, tuple[int, str]] = {}

    @property
    def count(self) -> int:
        """Entries verified so far (the index the next row gets)."""
        return self._count

    @property
    def checks_summary(self) -> bool:
        return self._check_summary

    @property
    def last_currhash(self) -> bytes | None:
        return self._prev_raw

    @property
    def last_summaryhash(self) -> bytes | None:
        return self._summary_raw

    @property
    def last_created(self) -> str | None:
        return self._created

    @property
    def hashstate(self) -> bytes | None:
        """libsodium's 384-byte summary state after the last verified row (None when not
        tracked): what a replica stores with each copied row to continue from it."""
        return None if self._sodium is None else self._sodium.to_bytes()

    def expect_keys(self, keys: RowKeys | None) -> None:
        """Rows from now on use ``keys`` (None: detect from the next row): an audit that
        continues an ``export`` with ``since`` pages switches shapes mid-chain."""
        self._keys = keys or EXPORT_KEYS
        self._keys_fixed = keys is not None

    @property
    def keys(self) -> RowKeys:
        return self._keys

    def state(self) -> ChainState:
        """Where the verified chain ends now (with a hash state if one is tracked)."""
        return ChainState(self._count, self._prev_raw, self._summary_raw,
                          None if self._sodium is None else self._sodium.to_bytes(),
                          self._created)

    def _fault(self, cls: type[ChainFault], message: str, field: str, expected: Any,
               found: Any) -> ChainFault:
        return cls(message, index=self._count, field=field, expected=_show(expected),
                   found=_show(found))

    def check(self, row: Any) -> SignedContents:
        """Verify the next row: its fields, its link, its currhash and summaryhash (the
        entry signature is the caller's, in parallel); raise the first fault."""
        signed = self._fields(row)
        keys = self._keys
        self._check_link(signed, row.get(keys.prev))
        cur = currhash(self._prev_raw, row["created"], signed.publickey, signed.signature,
                       signed.contents)
        cur_text = b64u_encode(cur)
        claimed_cur = row.get(keys.curr)
        if claimed_cur != cur_text:
            self._fail_after_signature(signed, HashMismatchError, "currhash does not match",
                                       keys.curr, cur_text, claimed_cur)
        summary, sum_text = self._summary(signed, cur, row.get(keys.summary))
        if self.anchors and sum_text in self.anchors:
            self.anchors_seen[sum_text] = (signed.index, cur_text)
        self._prev_raw = cur
        self._prev_text = cur_text
        self._summary_raw = summary
        self._created = row["created"]
        self._count = signed.index + 1
        return signed

    def _fields(self, row: Any) -> SignedContents:
        """The row's types and encodings: what its entry signature covers."""
        index = self._count
        if not isinstance(row, dict):
            raise MalformedError("entry is not a JSON object", index=index)
        if not self._keys_fixed:
            self._keys = row_keys_for(row)
            self._keys_fixed = True
        for name in _STR_FIELDS:
            if not isinstance(row.get(name), str):
                raise self._fault(MalformedError, f"entry field {name} missing or not a string",
                                  name, "string", row.get(name, "(missing)"))
        pk_text: str = row["publickey"]
        publickey = self._pk_cache.get(pk_text)
        if publickey is None:
            publickey = decode_b64_field(pk_text, PUBLICKEY_BYTES)
            if publickey is None:
                raise self._fault(MalformedError, "entry public key is not 32 bytes of base64url",
                                  "publickey", "base64url public key", pk_text)
            if len(self._pk_cache) > 4096:
                self._pk_cache.clear()
            self._pk_cache[pk_text] = publickey
        signature = decode_b64_field(row["signature"], SIGNATURE_BYTES)
        if signature is None:
            raise self._fault(MalformedError, "entry signature is not 64 bytes of base64url",
                              "signature", "base64url signature", row["signature"])
        contents = self._utf8(row, "contents")
        self._utf8(row, "created")
        return SignedContents(index, publickey, signature, contents)

    def _utf8(self, row: dict[str, Any], name: str) -> bytes:
        try:
            return str(row[name]).encode("utf-8")
        except UnicodeEncodeError:
            raise self._fault(MalformedError, f"entry {name} is not valid Unicode", name,
                              "UTF-8 text", "lone surrogate") from None

    def _check_link(self, signed: SignedContents, prev: Any) -> None:
        if self._prev_text is None:
            if prev is not None and prev != "":
                self._fail_after_signature(signed, BrokenLinkError,
                                           "first entry must not link to a previous one",
                                           self._keys.prev, None, prev)
        elif prev != self._prev_text:
            self._fail_after_signature(signed, BrokenLinkError,
                                       "entry does not link to the previous entry",
                                       self._keys.prev, self._prev_text, prev)

    def _summary(self, signed: SignedContents, cur: bytes, claimed: Any) -> tuple[bytes, str]:
        """The summaryhash after ``cur``: recomputed and compared when the history is
        known, else taken from the row (it must at least be a hash)."""
        if not self._check_summary:
            summary = decode_b64_field(claimed, HASH_BYTES)
            if summary is None:
                self._fail_after_signature(signed, MalformedError,
                                           "summaryhash is not 32 bytes of base64url",
                                           self._keys.summary, "base64url hash", claimed)
            return summary, str(claimed)
        if self._sodium is not None:
            self._sodium.update(cur)
        if self._digest is not None:
            self._digest.update(cur)
            summary = self._digest.copy().digest()
        else:
            assert self._sodium is not None
            summary = self._sodium.digest()
        sum_text = b64u_encode(summary)
        if claimed != sum_text:
            self._fail_after_signature(signed, HashMismatchError, "summaryhash does not match",
                                       self._keys.summary, sum_text, claimed)
        return summary, sum_text

    def _fail_after_signature(self, signed: SignedContents, cls: type[ChainFault], message: str,
                              field: str, expected: Any, found: Any) -> NoReturn:
        check_entry_signature(signed)
        raise self._fault(cls, message, field, expected, found)


def check_entry_signature(signed: SignedContents) -> None:
    """Raise :class:`EntrySignatureError` unless ``signed`` verifies."""
    if not verify_detached(signed.publickey, signed.contents, signed.signature):
        raise EntrySignatureError("entry signature does not verify", index=signed.index,
                                  field="signature", expected="valid Ed25519 signature",
                                  found=b64u_encode(signed.signature))


def verify_row(row: Any, *, keys: RowKeys | None = None, index: int = 0) -> SignedContents:
    """Check one row on its own: signature, and currhash recomputed from its own ``prev``.

    For single answers (``lasthash``, ``lookup``) where no previous entry is at hand; the
    summaryhash cannot be recomputed without the chain and is only checked for form.
    """
    keys = keys or row_keys_for(row)
    if not isinstance(row, dict):
        raise MalformedError("entry is not a JSON object", index=index)
    prev = row.get(keys.prev)
    if prev is None or prev == "":
        verifier = ChainVerifier(None, keys=keys, check_summary=False, index=index)
    else:
        prev_raw = decode_b64_field(prev, HASH_BYTES)
        if prev_raw is None:
            raise MalformedError("prevhash is not 32 bytes of base64url", index=index,
                                 field=keys.prev, found=_show(prev))
        verifier = ChainVerifier(ChainState(1, prev_raw), keys=keys, check_summary=False,
                                 index=index)
    signed = verifier.check(row)
    check_entry_signature(signed)
    return signed
