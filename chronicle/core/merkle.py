"""RFC 6962 Merkle tree over SHA-256: stored hashes, compact tree state, proofs, C2SP tiles.

- Hashing (RFC 6962 §2.1, mandated by C2SP tlog-tiles): ``leaf_hash(d) = SHA-256(0x00 ‖ d)``,
  ``node_hash(l, r) = SHA-256(0x01 ‖ l ‖ r)``, the empty tree hashes to ``SHA-256("")``.
- Storage ("stored hashes", the model of Go's golang.org/x/mod/sumdb/tlog): every leaf
  hash and every hash of a *completed* perfect subtree gets one stable integer index, so a
  tree of n leaves stores ``2n - popcount(n)`` hashes and never rewrites one. Appending
  record n writes its leaf hash at ``stored_hash_index(0, n)`` followed by the hashes of
  the subtrees it completes, at consecutive indexes.
- :class:`TreeState` is the compact range (the roots of the perfect subtrees, left to
  right): O(log n) bytes that let the sequencer append and compute the root without
  reading history.
- Proofs are **two-phase and sans-I/O**: ``*_indexes()`` says which stored hashes are
  needed, the caller reads them (from a database, a :class:`MemoryHashes`, or tiles) and
  passes them back *in the same order* to the matching function that assembles the
  result. Verifiers (RFC 9162 §2.1.3.2 and §2.1.4.2) raise a precise :class:`ProofError`.
- Tiles (C2SP tlog-tiles): height 8, width 256. A tile at level L holds the stored hashes
  of tree level 8·L; hashes of the levels in between are recomputed from the tile's row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from chronicle.core.errors import IntegrityError, NotFoundError, RequestError, StorageError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_TILE_LEVEL = 63
ENTRIES_LEVEL = -1
"""``Tile.level`` of an entry bundle (``tile/entries/...``), as Go's ``L = -1``."""
MAX_ENTRY_SIZE = 0xFFFF
"""Entry bundles use uint16 length prefixes: an entry must be shorter than 64 KiB."""

_sha256 = hashlib.sha256
_LEAF = b"\x00"
_NODE = b"\x01"


# --- errors -------------------------------------------------------------------------------

class ProofError(IntegrityError):
    """A Merkle proof does not verify: the data lies. Subclasses say exactly how."""


class ProofRangeError(ProofError):
    """The claimed index or tree sizes cannot describe a proof (index ≥ size, old > new...)."""


class ProofLengthError(ProofError):
    """The proof has the wrong number of hashes for its index and sizes."""


class MalformedHashError(ProofError):
    """A leaf hash or proof element is not a 32-byte SHA-256 value."""


class RootMismatchError(ProofError):
    """The proof recomputes a root other than the one claimed."""


class TreeRangeError(RequestError):
    """Asked for a hash, proof or tile that the tree (at that size) does not have."""


class HashCountError(StorageError):
    """Phase two of a proof got other hashes than phase one asked for (a storage bug)."""


class TreeStateError(IntegrityError):
    """A stored :class:`TreeState` blob is malformed or for another tree size."""


class TilePathError(NotFoundError):
    """A path that is not the canonical name of a tile or entry bundle (answered with 404)."""


class TileDataError(IntegrityError):
    """Tile data or an entry bundle has the wrong shape for its tile."""


class EntryTooLargeError(RequestError):
    """An entry does not fit an entry bundle's uint16 length prefix."""

    status = 413


# --- hashing ------------------------------------------------------------------------------

def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 §2.1: ``SHA-256(0x00 ‖ data)``."""
    return _sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1: ``SHA-256(0x01 ‖ left ‖ right)``."""
    return _sha256(_NODE + left + right).digest()


def _fold(hashes: Sequence[bytes], start: int, count: int) -> bytes:
    """Root over peak hashes listed left to right (largest first), folded from the right."""
    h = hashes[start + count - 1]
    for i in range(start + count - 2, start - 1, -1):
        h = _sha256(_NODE + hashes[i] + h).digest()
    return h


# --- stored hash indexes (Go sumdb tlog layout) -------------------------------------------

def stored_hash_index(level: int, n: int) -> int:
    """The storage index of the hash of the n-th subtree of height ``level``.

    Level ``level``'s n-th hash is written right after level ``level-1``'s (2n+1)-th hash,
    and leaf n at ``n + n/2 + n/4 + ...``; ``sum(m >> k) == 2m - popcount(m)``.
    """
    if level < 0 or n < 0:
        raise TreeRangeError(f"no stored hash at level {level}, index {n}")
    m = ((n + 1) << level) - 1
    return 2 * m - m.bit_count() + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """Inverse of :func:`stored_hash_index`: ``(level, n)``."""
    if index < 0:
        raise TreeRangeError(f"no stored hash at index {index}")
    # stored_hash_index(0, n) <= 2n, so the record that wrote `index` is at least index//2;
    # each record n then writes 1 + trailing_ones(n) hashes.
    n = index // 2
    base = 2 * n - n.bit_count()
    while True:
        nxt = base + 1 + _trailing_ones(n)
        if nxt > index:
            break
        n += 1
        base = nxt
    level = index - base
    return level, n >> level


def stored_hash_count(size: int) -> int:
    """How many stored hashes a tree of ``size`` leaves has."""
    if size < 0:
        raise TreeRangeError(f"invalid tree size {size}")
    return 2 * size - size.bit_count()


def _trailing_ones(n: int) -> int:
    return ((n ^ (n + 1)).bit_length()) - 1


def stored_hash_indexes_for_record(n: int) -> list[int]:
    """Phase one of :func:`stored_hashes_for_record`: the left siblings leaf n completes."""
    if n < 0:
        raise TreeRangeError(f"invalid record index {n}")
    m = _trailing_ones(n)
    return [stored_hash_index(i, (n >> i) - 1) for i in range(m - 1, -1, -1)]


def stored_hashes_for_record(n: int, leaf: bytes, hashes: Sequence[bytes]) -> list[bytes]:
    """The hashes to store for record n, starting at ``stored_hash_index(0, n)``.

    ``hashes`` are the stored hashes at :func:`stored_hash_indexes_for_record(n)
    <stored_hash_indexes_for_record>`, in that order. Returns the leaf hash followed by
    one hash per subtree the leaf completes (``1 + trailing_ones(n)`` hashes).
    """
    needed = stored_hash_indexes_for_record(n)
    _check_hashes(hashes, len(needed))
    out = [leaf]
    h = leaf
    for i in range(len(needed) - 1, -1, -1):
        h = _sha256(_NODE + hashes[i] + h).digest()
        out.append(h)
    return out


def _check_hashes(hashes: Sequence[bytes], count: int) -> None:
    if len(hashes) != count:
        raise HashCountError(f"expected {count} stored hashes, got {len(hashes)}")
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise HashCountError(f"stored hash must be {HASH_SIZE} bytes, got {len(h)}")


def _subtree_indexes(lo: int, hi: int, out: list[int]) -> None:
    """Stored indexes of the perfect subtrees covering leaves ``[lo, hi)``, left to right.

    Every range this module asks for starts on a boundary of its largest subtree, so the
    greedy split yields popcount(hi - lo) stored hashes.
    """
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        m = (((lo >> level) + 1) << level) - 1
        out.append(2 * m - m.bit_count() + level)
        lo += 1 << level


# --- compact tree state -------------------------------------------------------------------

_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class TreeState:
    """The compact range of a tree: its size and the roots of its perfect subtrees.

    ``peaks`` lists one hash per set bit of ``size``, largest subtree (leftmost) first.
    This is all an appender needs: O(log n) hashes, no reads of history.
    """

    size: int
    peaks: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.size < 0:
            raise TreeStateError(f"invalid tree size {self.size}", field="treestate")
        if len(self.peaks) != self.size.bit_count():
            raise TreeStateError(
                f"a tree of size {self.size} has {self.size.bit_count()} peaks, "
                f"got {len(self.peaks)}", field="treestate")
        for p in self.peaks:
            if len(p) != HASH_SIZE:
                raise TreeStateError(f"peak hash must be {HASH_SIZE} bytes, got {len(p)}",
                                     field="treestate")

    @classmethod
    def empty(cls) -> TreeState:
        return cls(0, ())

    @staticmethod
    def peak_indexes(size: int) -> list[int]:
        """Phase one of :meth:`from_stored`: the stored indexes of the peaks of ``size``."""
        return tree_hash_indexes(size)

    @classmethod
    def from_stored(cls, size: int, hashes: Sequence[bytes]) -> TreeState:
        """Rebuild the state from the stored hashes at :meth:`peak_indexes(size) <peak_indexes>`."""
        _check_hashes(hashes, size.bit_count())
        return cls(size, tuple(hashes))

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> TreeState:
        return cls.empty().extend(leaf_hashes)[0]

    def append(self, leaf: bytes) -> tuple[TreeState, list[tuple[int, bytes]]]:
        """Add one leaf hash; return the new state and the ``(stored index, hash)`` to persist."""
        return self.extend((leaf,))

    def extend(self, leaf_hashes: Iterable[bytes]) -> tuple[TreeState, list[tuple[int, bytes]]]:
        """Add leaf hashes in order; one new state for the whole batch (group commit)."""
        peaks = list(self.peaks)
        pop, push_peak = peaks.pop, peaks.append
        n = self.size
        out: list[tuple[int, bytes]] = []
        push = out.append
        sha = _sha256
        node = _NODE
        for h in leaf_hashes:
            if len(h) != HASH_SIZE:
                raise MalformedHashError(f"leaf hash must be {HASH_SIZE} bytes, got {len(h)}",
                                         index=n)
            index = 2 * n - n.bit_count()
            push((index, h))
            m = n
            while m & 1:
                index += 1
                h = sha(node + pop() + h).digest()
                push((index, h))
                m >>= 1
            push_peak(h)
            n += 1
        return TreeState(n, tuple(peaks)), out

    def root(self) -> bytes:
        """RFC 6962 Merkle Tree Hash of the whole tree (``SHA-256("")`` when empty)."""
        if not self.peaks:
            return EMPTY_ROOT
        return _fold(self.peaks, 0, len(self.peaks))

    def to_bytes(self) -> bytes:
        """``0x01 ‖ uint64-BE size ‖ peaks`` (32 bytes each, popcount(size) of them)."""
        return bytes((_STATE_VERSION,)) + self.size.to_bytes(8, "big") + b"".join(self.peaks)

    @classmethod
    def from_bytes(cls, raw: bytes, *, size: int | None = None) -> TreeState:
        """Load a stored state, checking its shape; with ``size`` it must be for that size."""
        if len(raw) < 9:
            raise TreeStateError(f"tree state must be at least 9 bytes, got {len(raw)}",
                                 field="treestate")
        if raw[0] != _STATE_VERSION:
            raise TreeStateError(f"unknown tree state version {raw[0]}", field="treestate")
        n = int.from_bytes(raw[1:9], "big")
        want = 9 + HASH_SIZE * n.bit_count()
        if len(raw) != want:
            raise TreeStateError(f"tree state for size {n} must be {want} bytes, got {len(raw)}",
                                 field="treestate")
        if size is not None and n != size:
            raise TreeStateError(f"tree state is for size {n}, expected size {size}",
                                 field="treestate", expected=str(size), found=str(n))
        peaks = tuple(raw[i:i + HASH_SIZE] for i in range(9, want, HASH_SIZE))
        return cls(n, peaks)


# --- proofs: two-phase generation ---------------------------------------------------------

def _split(n: int) -> int:
    """RFC 6962 §2.1: the largest power of two strictly smaller than n (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_hash_indexes(size: int) -> list[int]:
    """Phase one of :func:`tree_hash`: the stored hashes the root of ``size`` is made of."""
    if size < 0:
        raise TreeRangeError(f"invalid tree size {size}")
    out: list[int] = []
    _subtree_indexes(0, size, out)
    return out


def tree_hash(size: int, hashes: Sequence[bytes]) -> bytes:
    """The root of the tree of ``size`` leaves from the hashes at :func:`tree_hash_indexes`."""
    if size < 0:
        raise TreeRangeError(f"invalid tree size {size}")
    count = size.bit_count()
    _check_hashes(hashes, count)
    return EMPTY_ROOT if count == 0 else _fold(hashes, 0, count)


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form the audit path of ``index`` (RFC 6962 §2.1.1), leaf up."""
    if not 0 <= index < size:
        raise TreeRangeError(f"leaf index {index} is not in a tree of size {size}")
    ranges = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    ranges.reverse()
    return ranges


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form the consistency proof old → new (RFC 6962 §2.1.2)."""
    if not 0 <= old <= new:
        raise TreeRangeError(f"no consistency proof from size {old} to size {new}")
    ranges: list[tuple[int, int]] = []
    if old == 0:
        return ranges  # tlog-witness: the proof from the empty tree is empty
    lo, hi = 0, new
    while old != hi:
        mid = lo + _split(hi - lo)
        if old <= mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    if lo != 0:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _range_indexes(ranges: list[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for lo, hi in ranges:
        _subtree_indexes(lo, hi, out)
    return out


def _range_proof(ranges: list[tuple[int, int]], hashes: Sequence[bytes]) -> list[bytes]:
    counts = [(hi - lo).bit_count() for lo, hi in ranges]
    _check_hashes(hashes, sum(counts))
    proof = []
    pos = 0
    for c in counts:
        proof.append(hashes[pos] if c == 1 else _fold(hashes, pos, c))
        pos += c
    return proof


def inclusion_indexes(index: int, size: int) -> list[int]:
    """Phase one of :func:`inclusion_proof`: stored hashes needed to prove leaf ``index``."""
    return _range_indexes(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 audit path for leaf ``index`` in the tree of ``size`` leaves, leaf level first.

    ``hashes`` are the stored hashes at :func:`inclusion_indexes(index, size)
    <inclusion_indexes>`, in that order.
    """
    return _range_proof(_inclusion_ranges(index, size), hashes)


def consistency_indexes(old: int, new: int) -> list[int]:
    """Phase one of :func:`consistency_proof`."""
    return _range_indexes(_consistency_ranges(old, new))


def consistency_proof(old: int, new: int, hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 consistency proof from size ``old`` to size ``new`` (``0 ≤ old ≤ new``).

    Empty when ``old == new`` and, as tlog-witness requires, when ``old == 0``.
    """
    return _range_proof(_consistency_ranges(old, new), hashes)


# --- proofs: verification -----------------------------------------------------------------

def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, p in enumerate(proof):
        if len(p) != HASH_SIZE:
            raise MalformedHashError(f"proof hash {i} must be {HASH_SIZE} bytes, got {len(p)}",
                                     field="proof")


def _root_mismatch(what: str, expected: bytes, found: bytes) -> RootMismatchError:
    return RootMismatchError(f"{what} does not match the proof", field=what,
                             expected=expected.hex(), found=found.hex())


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2, organised as the path's inner part (levels below the point where
    the path to ``index`` and the path to the last leaf diverge) and its border part.
    Raises :class:`ProofRangeError`, :class:`MalformedHashError`, :class:`ProofLengthError`
    or :class:`RootMismatchError`.
    """
    if not 0 <= index < size:
        raise ProofRangeError(f"leaf index {index} is not in a tree of size {size}",
                              field="index")
    if len(leaf) != HASH_SIZE:
        raise MalformedHashError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}",
                                 field="leaf")
    _check_proof_hashes(proof)
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    if len(proof) != inner + border:
        raise ProofLengthError(
            f"inclusion proof for leaf {index} of {size} must have {inner + border} hashes, "
            f"got {len(proof)}", field="proof", expected=str(inner + border),
            found=str(len(proof)))
    h = leaf
    for i in range(inner):
        if (index >> i) & 1:
            h = _sha256(_NODE + proof[i] + h).digest()
        else:
            h = _sha256(_NODE + h + proof[i]).digest()
    for i in range(inner, inner + border):
        h = _sha256(_NODE + proof[i] + h).digest()
    if h != root:
        raise _root_mismatch("root", root, h)


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree of size ``new`` with ``new_root`` extends ``old`` with ``old_root``.

    RFC 9162 §2.1.4.2. ``old == 0`` is refused: the empty tree is a prefix of every tree,
    so such a "proof" says nothing (the RFC 6962 test vectors require the rejection).
    """
    if old <= 0 or new < old:
        raise ProofRangeError(f"no consistency proof from size {old} to size {new}",
                              field="size")
    if old == new:
        if proof:
            raise ProofLengthError(f"consistency proof between equal sizes must be empty, got "
                                   f"{len(proof)} hashes", field="proof", expected="0",
                                   found=str(len(proof)))
        if old_root != new_root:
            raise _root_mismatch("new root", old_root, new_root)
        return
    _check_proof_hashes(proof)
    # The proof is the audit path of leaf old-1 in the new tree, from the level of the
    # largest perfect subtree that ends at old (which it starts with, unless that
    # subtree is the whole old tree: then the verifier knows it as old_root).
    shift = (old & -old).bit_length() - 1
    inner = ((old - 1) ^ (new - 1)).bit_length()
    border = ((old - 1) >> inner).bit_count()
    inner -= shift
    start = 0 if old == 1 << shift else 1
    want = start + inner + border
    if len(proof) != want:
        raise ProofLengthError(
            f"consistency proof from {old} to {new} must have {want} hashes, got {len(proof)}",
            field="proof", expected=str(want), found=str(len(proof)))
    seed = old_root if start == 0 else proof[0]
    mask = (old - 1) >> shift
    h1 = h2 = seed
    for i in range(inner):
        p = proof[start + i]
        if (mask >> i) & 1:
            h1 = _sha256(_NODE + p + h1).digest()
            h2 = _sha256(_NODE + p + h2).digest()
        else:
            h2 = _sha256(_NODE + h2 + p).digest()
    for i in range(start + inner, want):
        p = proof[i]
        h1 = _sha256(_NODE + p + h1).digest()
        h2 = _sha256(_NODE + p + h2).digest()
    if h1 != old_root:
        raise _root_mismatch("old root", old_root, h1)
    if h2 != new_root:
        raise _root_mismatch("new root", new_root, h2)


# --- in-memory hash store -----------------------------------------------------------------

class MemoryHashes:
    """Every stored hash in a list: a tree for tests, clients and small tools (no database)."""

    __slots__ = ("_hashes", "_state")

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self._state = TreeState.empty()

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MemoryHashes:
        tree = cls()
        tree.extend(leaf_hashes)
        return tree

    @property
    def size(self) -> int:
        return self._state.size

    @property
    def state(self) -> TreeState:
        return self._state

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        self._state, new = self._state.extend(leaf_hashes)
        self._hashes.extend(h for _, h in new)

    def append(self, leaf: bytes) -> int:
        """Append one leaf hash; returns its leaf index."""
        self.extend((leaf,))
        return self._state.size - 1

    def read(self, indexes: Iterable[int]) -> list[bytes]:
        """The stored hashes at ``indexes``, in order (a hash store's one read call)."""
        hashes, count = self._hashes, len(self._hashes)
        out = []
        for i in indexes:
            if not 0 <= i < count:
                raise TreeRangeError(f"no stored hash {i} in a tree of size {self.size}")
            out.append(hashes[i])
        return out

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return tree_hash(size, self.read(tree_hash_indexes(size)))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        self._check_size(size)
        return inclusion_proof(index, size, self.read(inclusion_indexes(index, size)))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self.size if new is None else new
        self._check_size(new)
        return consistency_proof(old, new, self.read(consistency_indexes(old, new)))

    def tile_data(self, tile: Tile) -> bytes:
        if tile.is_entries:
            raise TreeRangeError("entry bundles hold entries, not hashes")
        return b"".join(self.read(tile.stored_indexes()))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise TreeRangeError(f"tree size {size} is beyond the current size {self.size}")


# --- tiles (C2SP tlog-tiles) --------------------------------------------------------------

_TILE_PATH_RE = re.compile(
    r"\Atile/(entries|0|[1-9][0-9]?)/((?:x[0-9]{3}/){0,6}[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?\Z")


def _encode_tile_index(n: int) -> str:
    """``1234067`` → ``x001/x234/067`` (tlog-tiles "Merkle Tree")."""
    text = f"{n % 1000:03d}"
    n //= 1000
    while n > 0:
        text = f"x{n % 1000:03d}/{text}"
        n //= 1000
    return text


@dataclass(frozen=True, slots=True)
class Tile:
    """Tile coordinates: level ``L`` (0..63, or :data:`ENTRIES_LEVEL`), index ``N``, width ``W``.

    A hash tile at level L, index N holds the stored hashes of tree level 8·L numbered
    ``256·N .. 256·N + W - 1``; an entry bundle holds the entries of leaves in that range.
    """

    level: int
    n: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if not ENTRIES_LEVEL <= self.level <= MAX_TILE_LEVEL:
            raise TreeRangeError(f"invalid tile level {self.level}")
        if self.n < 0:
            raise TreeRangeError(f"invalid tile index {self.n}")
        if not 1 <= self.width <= TILE_WIDTH:
            raise TreeRangeError(f"invalid tile width {self.width}")

    @property
    def is_entries(self) -> bool:
        return self.level == ENTRIES_LEVEL

    @property
    def is_full(self) -> bool:
        """Full tiles are immutable (cacheable forever); partial ones are replaced."""
        return self.width == TILE_WIDTH

    def path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``."""
        level = "entries" if self.is_entries else str(self.level)
        suffix = "" if self.is_full else f".p/{self.width}"
        return f"tile/{level}/{_encode_tile_index(self.n)}{suffix}"

    @classmethod
    def parse(cls, path: str) -> Tile:
        """Parse a tile path strictly: only the canonical spelling of a tile is accepted."""
        match = _TILE_PATH_RE.match(path)
        if not match:
            raise TilePathError(f"not a tile path: {path[:120]!r}")
        level_text, n_text, width_text = match.groups()
        level = ENTRIES_LEVEL if level_text == "entries" else int(level_text)
        n = int(n_text.replace("x", "").replace("/", ""))
        width = TILE_WIDTH if width_text is None else int(width_text)
        if level > MAX_TILE_LEVEL or (width_text is not None and width >= TILE_WIDTH):
            raise TilePathError(f"not a tile path: {path[:120]!r}")
        if _encode_tile_index(n) != n_text:
            raise TilePathError(f"non-canonical tile index in {path[:120]!r}")
        return cls(level, n, width)

    def with_width(self, width: int) -> Tile:
        return Tile(self.level, self.n, width)

    @property
    def start(self) -> int:
        """First leaf index covered by this tile's hashes (or entries)."""
        return (self.n << TILE_HEIGHT) << (TILE_HEIGHT * max(self.level, 0))

    def stored_indexes(self) -> list[int]:
        """Phase one of reading a hash tile: the stored indexes of its ``width`` hashes."""
        if self.is_entries:
            raise TreeRangeError("entry bundles hold entries, not hashes")
        level = TILE_HEIGHT * self.level
        first = self.n << TILE_HEIGHT
        return [stored_hash_index(level, first + i) for i in range(self.width)]


def tile_for_index(index: int) -> Tile:
    """The narrowest tile holding (or able to recompute) the stored hash at ``index``."""
    level, n = split_stored_hash_index(index)
    tile_level, within = divmod(level, TILE_HEIGHT)
    tile_n = (n << within) >> TILE_HEIGHT
    n_in_tile = n - ((tile_n << TILE_HEIGHT) >> within)
    return Tile(tile_level, tile_n, (n_in_tile + 1) << within)


def tile_width_at(level: int, n: int, size: int) -> int:
    """How many hashes tile ``(level, n)`` has in a tree of ``size`` leaves (0: none yet)."""
    row = size >> (TILE_HEIGHT * max(level, 0))
    return max(0, min(TILE_WIDTH, row - (n << TILE_HEIGHT)))


def new_tiles(old_size: int, new_size: int) -> list[Tile]:
    """The hash tiles that appear or grow when the tree goes from ``old_size`` to ``new_size``.

    Full tiles appear once; partial tiles are listed with their width at ``new_size``.
    ``new_tiles(0, size)`` lists every hash tile of a tree. Entry bundles follow the level 0
    tiles one to one.
    """
    if not 0 <= old_size <= new_size:
        raise TreeRangeError(f"tree cannot go from size {old_size} to size {new_size}")
    tiles = []
    level = 0
    while new_size >> (TILE_HEIGHT * level) > 0 and level <= MAX_TILE_LEVEL:
        old_row = old_size >> (TILE_HEIGHT * level)
        new_row = new_size >> (TILE_HEIGHT * level)
        if old_row != new_row:
            for n in range(old_row >> TILE_HEIGHT, new_row >> TILE_HEIGHT):
                tiles.append(Tile(level, n))
            n = new_row >> TILE_HEIGHT
            width = new_row - (n << TILE_HEIGHT)
            if width > 0:
                tiles.append(Tile(level, n, width))
        level += 1
    return tiles


def encode_tile(hashes: Sequence[bytes]) -> bytes:
    """Tile data: the tile's hashes concatenated (32 bytes each, 1 to 256 of them)."""
    if not 1 <= len(hashes) <= TILE_WIDTH:
        raise TreeRangeError(f"a tile holds 1 to {TILE_WIDTH} hashes, got {len(hashes)}")
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise MalformedHashError(f"tile hash must be {HASH_SIZE} bytes, got {len(h)}")
    return b"".join(hashes)


def decode_tile(tile: Tile, data: bytes) -> list[bytes]:
    """Split tile data into its hashes, checking it is exactly ``width`` hashes long."""
    _check_tile_data(tile, data)
    return [data[i:i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def _check_tile_data(tile: Tile, data: bytes) -> None:
    if tile.is_entries:
        raise TreeRangeError("entry bundles hold entries, not hashes")
    if len(data) != tile.width * HASH_SIZE:
        raise TileDataError(f"tile {tile.path()} must be {tile.width * HASH_SIZE} bytes, "
                            f"got {len(data)}", field="tile")


def hash_from_tile(tile: Tile, data: bytes, index: int) -> bytes:
    """The stored hash at ``index``, read or recomputed from ``tile``'s data.

    The tile must be :func:`tile_for_index(index) <tile_for_index>` or a wider version of
    it. Hashes of levels inside the tile are the Merkle root of their 2^k bottom hashes.
    """
    _check_tile_data(tile, data)
    need = tile_for_index(index)
    if need.level != tile.level or need.n != tile.n or need.width > tile.width:
        raise TreeRangeError(f"stored hash {index} is in {need.path()}, not {tile.path()}")
    level, n = split_stored_hash_index(index)
    within = level - TILE_HEIGHT * tile.level
    first = (n << within) - (tile.n << TILE_HEIGHT)
    return _perfect_root(data, first, 1 << within)


def _perfect_root(data: bytes, first: int, count: int) -> bytes:
    """Merkle root of ``count`` (a power of two) consecutive hashes in ``data``."""
    row = [data[(first + i) * HASH_SIZE:(first + i + 1) * HASH_SIZE] for i in range(count)]
    while len(row) > 1:
        row = [_sha256(_NODE + row[i] + row[i + 1]).digest() for i in range(0, len(row), 2)]
    return row[0]


def tiles_for_indexes(indexes: Iterable[int], size: int) -> list[Tile]:
    """The tiles (at their width in a tree of ``size``) that hold these stored hashes.

    Phase one of reading hashes from tiles: fetch these, then call
    :func:`hashes_from_tiles`. A hash the tree of ``size`` does not have is refused.
    """
    tiles: dict[Tile, None] = {}
    for index in indexes:
        need = tile_for_index(index)
        width = tile_width_at(need.level, need.n, size)
        if width < need.width:
            raise TreeRangeError(f"stored hash {index} is not in a tree of size {size}")
        tiles[need.with_width(width)] = None
    return list(tiles)


def hashes_from_tiles(indexes: Iterable[int], size: int,
                      tiles: Mapping[Tile, bytes]) -> list[bytes]:
    """Phase two: the stored hashes at ``indexes`` from the tile data fetched for them."""
    out = []
    for index in indexes:
        need = tile_for_index(index)
        tile = need.with_width(tile_width_at(need.level, need.n, size))
        data = tiles.get(tile)
        if data is None:
            raise TreeRangeError(f"tile {tile.path()} was not supplied")
        out.append(hash_from_tile(tile, data, index))
    return out


# --- entry bundles ------------------------------------------------------------------------

def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """tlog-tiles "Log entries": each entry prefixed by its big-endian uint16 length."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise TreeRangeError(f"an entry bundle holds 1 to {TILE_WIDTH} entries, "
                             f"got {len(entries)}")
    parts = []
    for i, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_SIZE:
            raise EntryTooLargeError(f"entry {i} is {len(entry)} bytes; an entry bundle "
                                     f"allows at most {MAX_ENTRY_SIZE}")
        parts.append(len(entry).to_bytes(2, "big"))
        parts.append(entry)
    return b"".join(parts)


def decode_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """Split an entry bundle; with ``width`` it must hold exactly that many entries."""
    entries: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if len(entries) == TILE_WIDTH:
            raise TileDataError(f"entry bundle holds more than {TILE_WIDTH} entries",
                                field="bundle")
        if pos + 2 > end:
            raise TileDataError("entry bundle ends inside a length prefix", field="bundle")
        length = int.from_bytes(data[pos:pos + 2], "big")
        pos += 2
        if pos + length > end:
            raise TileDataError(f"entry {len(entries)} of the bundle is truncated: "
                                f"{length} bytes announced, {end - pos} left", field="bundle")
        entries.append(data[pos:pos + length])
        pos += length
    if width is not None and len(entries) != width:
        raise TileDataError(f"entry bundle must hold {width} entries, got {len(entries)}",
                            field="bundle", expected=str(width), found=str(len(entries)))
    if not entries:
        raise TileDataError("entry bundle is empty", field="bundle")
    return entries
