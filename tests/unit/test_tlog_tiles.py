"""C2SP tlog-tiles: coordinates, paths, tile data, entry bundles, proofs from tiles alone."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronicle.core.errors import IntegrityError, NotFoundError
from chronicle.core.merkle import (
    ENTRIES_LEVEL,
    TILE_WIDTH,
    EntryTooLargeError,
    MalformedHashError,
    MemoryHashes,
    Tile,
    TileDataError,
    TilePathError,
    TreeRangeError,
    consistency_indexes,
    consistency_proof,
    decode_entry_bundle,
    decode_tile,
    encode_entry_bundle,
    encode_tile,
    hash_from_tile,
    hashes_from_tiles,
    inclusion_indexes,
    inclusion_proof,
    leaf_hash,
    new_tiles,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    tile_for_index,
    tile_width_at,
    tiles_for_indexes,
    tree_hash,
    tree_hash_indexes,
    verify_consistency,
    verify_inclusion,
)


def tree_of(n: int) -> MemoryHashes:
    return MemoryHashes.from_leaf_hashes(leaf_hash(i.to_bytes(4, "big")) for i in range(n))


# --- paths --------------------------------------------------------------------------------

@pytest.mark.parametrize(("tile", "path"), [
    (Tile(0, 0), "tile/0/000"),
    (Tile(0, 1234067), "tile/0/x001/x234/067"),
    (Tile(1, 999, 17), "tile/1/999.p/17"),
    (Tile(2, 1000, 1), "tile/2/x001/000.p/1"),
    (Tile(63, 5, 255), "tile/63/005.p/255"),
    (Tile(ENTRIES_LEVEL, 42), "tile/entries/042"),
    (Tile(ENTRIES_LEVEL, 1_000_000, 3), "tile/entries/x001/x000/000.p/3"),
])
def test_tile_paths(tile: Tile, path: str) -> None:
    assert tile.path() == path
    assert Tile.parse(path) == tile


@given(st.integers(ENTRIES_LEVEL, 63), st.integers(0, 10**18), st.integers(1, TILE_WIDTH))
def test_tile_path_round_trip(level: int, n: int, width: int) -> None:
    tile = Tile(level, n, width)
    assert Tile.parse(tile.path()) == tile


@pytest.mark.parametrize("path", [
    "tile/0/x000/001",          # non-canonical index
    "tile/0/x001",              # x on the last element
    "tile/0/1", "tile/0/0001",  # not three digits
    "tile/00/000", "tile/01/000", "tile/64/000", "tile/-1/000",
    "tile/0/000.p/256", "tile/0/000.p/0", "tile/0/000.p/05", "tile/0/000.p/",
    "tile/entries/000.p/256", "tile/data/000", "tile/8/0/000",  # Go sumdb's spelling
    "/tile/0/000", "tile/0/000/", "tile/0/000\n", "tile/0/x001/x002/x003/x004/x005/x006/x007/000",
    "tile/0/+00", "tile/0/٠٠٠", "checkpoint", "",
])
def test_tile_path_parsing_is_strict(path: str) -> None:
    with pytest.raises(TilePathError) as info:
        Tile.parse(path)
    assert isinstance(info.value, NotFoundError)
    assert info.value.status == 404


def test_tile_coordinates_are_validated() -> None:
    for args in [(64, 0), (-2, 0), (0, -1), (0, 0, 0), (0, 0, 257)]:
        with pytest.raises(TreeRangeError):
            Tile(*args)


# --- which hashes a tile holds ------------------------------------------------------------

def test_tile_stored_indexes() -> None:
    assert Tile(0, 0, 3).stored_indexes() == [0, 1, 3]
    assert Tile(1, 2, 2).stored_indexes() == [stored_hash_index(8, 512),
                                               stored_hash_index(8, 513)]
    assert Tile(0, 1).start == 256 and Tile(1, 1).start == 65536
    assert Tile(ENTRIES_LEVEL, 3).start == 768
    with pytest.raises(TreeRangeError):
        Tile(ENTRIES_LEVEL, 0).stored_indexes()


def naive_tile_for_index(index: int) -> Tile:
    """Search every candidate tile for the narrowest one whose bottom row covers the hash."""
    level, n = split_stored_hash_index(index)
    tile_level = level // 8
    first, last = n << (level - 8 * tile_level), ((n + 1) << (level - 8 * tile_level)) - 1
    for tile_n in range(0, last // 256 + 1):
        for width in range(1, 257):
            lo, hi = tile_n * 256, tile_n * 256 + width
            if lo <= first and last < hi:
                return Tile(tile_level, tile_n, width)
    raise AssertionError("no tile")


@given(st.integers(0, 2**20))
def test_tile_for_index_matches_naive(index: int) -> None:
    assert tile_for_index(index) == naive_tile_for_index(index)


@given(st.integers(0, 2**50))
def test_tile_for_index_is_consistent(index: int) -> None:
    level, n = split_stored_hash_index(index)
    tile = tile_for_index(index)
    assert tile.level == level // 8
    within = level - 8 * tile.level
    first = n << within
    assert tile.n == first >> 8
    assert tile.width == ((n + 1) << within) - tile.n * 256


def naive_tiles(size: int) -> list[Tile]:
    """tlog-tiles: level l has floor(s/256**l) hashes: full tiles, then one partial."""
    tiles = []
    level = 0
    while size // 256**level:
        row = size // 256**level
        tiles += [Tile(level, n) for n in range(row // 256)]
        if row % 256:
            tiles.append(Tile(level, row // 256, row % 256))
        level += 1
    return tiles


def test_new_tiles_matches_the_spec_examples() -> None:
    tiles = new_tiles(0, 70_000)
    assert sum(1 for t in tiles if t.level == 0 and t.is_full) == 273
    assert Tile(0, 273, 112) in tiles
    assert [t for t in tiles if t.level == 1] == [Tile(1, 0), Tile(1, 1, 17)]
    assert [t for t in tiles if t.level == 2] == [Tile(2, 0, 1)]
    assert new_tiles(0, 256) == [Tile(0, 0), Tile(1, 0, 1)]
    assert new_tiles(0, 0) == [] == new_tiles(10, 10)
    with pytest.raises(TreeRangeError):
        new_tiles(5, 4)


@settings(max_examples=200)
@given(st.integers(0, 200_000), st.integers(0, 200_000))
def test_new_tiles_are_what_changed(a: int, b: int) -> None:
    old, new = min(a, b), max(a, b)
    assert new_tiles(0, new) == naive_tiles(new)
    before, after = set(naive_tiles(old)), naive_tiles(new)
    assert new_tiles(old, new) == [t for t in after if t not in before]
    for t in after:
        assert tile_width_at(t.level, t.n, new) == t.width


# --- tile data, and proofs from tiles alone -----------------------------------------------

def test_tile_data_encoding() -> None:
    hashes = [bytes([i]) * 32 for i in range(3)]
    data = encode_tile(hashes)
    assert data == b"".join(hashes)
    assert decode_tile(Tile(0, 0, 3), data) == hashes
    with pytest.raises(TileDataError, match="must be 96 bytes, got 95") as info:
        decode_tile(Tile(0, 0, 3), data[:-1])
    assert isinstance(info.value, IntegrityError)
    with pytest.raises(TileDataError):
        decode_tile(Tile(0, 0), data)
    with pytest.raises(TreeRangeError):
        encode_tile([])
    with pytest.raises(TreeRangeError):
        encode_tile([b"\x00" * 32] * 257)
    with pytest.raises(MalformedHashError):
        encode_tile([b"\x00" * 31])


def test_hash_from_tile_reads_every_stored_hash() -> None:
    size = 256 * 3 + 77
    tree = tree_of(size)
    for tile in new_tiles(0, size):
        data = tree.tile_data(tile)
        assert decode_tile(tile, data) == tree.read(tile.stored_indexes())
    for index in range(stored_hash_count(size)):
        need = tile_for_index(index)
        tile = need.with_width(tile_width_at(need.level, need.n, size))
        assert hash_from_tile(tile, tree.tile_data(tile), index) == tree.read([index])[0]
        assert hash_from_tile(need, tree.tile_data(need), index) == tree.read([index])[0]


def test_hash_from_tile_refuses_the_wrong_tile() -> None:
    tree = tree_of(600)
    data = tree.tile_data(Tile(0, 1))
    with pytest.raises(TreeRangeError, match="is in tile/0/000"):
        hash_from_tile(Tile(0, 1), data, 3)
    narrow = Tile(0, 0, 2)
    with pytest.raises(TreeRangeError, match=r"not tile/0/000\.p/2"):
        hash_from_tile(narrow, tree.tile_data(narrow), stored_hash_index(0, 5))
    with pytest.raises(TileDataError):
        hash_from_tile(Tile(0, 1), data[:-32], stored_hash_index(0, 256))


_BIG = tree_of(70_000)


def read_from_tiles(indexes: list[int], size: int) -> list[bytes]:
    """A client reading stored hashes from what a tiled log of ``size`` serves."""
    wanted = tiles_for_indexes(indexes, size)
    assert set(wanted) <= set(new_tiles(0, size))
    return hashes_from_tiles(indexes, size, {t: _BIG.tile_data(t) for t in wanted})


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70_000) | st.integers(65_000, 70_000), st.data())
def test_proofs_from_tiles_alone(size: int, data: st.DataObject) -> None:
    root = tree_hash(size, read_from_tiles(tree_hash_indexes(size), size))
    assert root == _BIG.root(size)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, read_from_tiles(inclusion_indexes(index, size), size))
    verify_inclusion(index, size, _BIG.read([stored_hash_index(0, index)])[0], proof, root)
    old = data.draw(st.integers(1, size))
    cproof = consistency_proof(old, size, read_from_tiles(consistency_indexes(old, size), size))
    verify_consistency(old, size, _BIG.root(old), root, cproof)


@pytest.mark.parametrize("size", [1, 255, 256, 257, 65_535, 65_536, 65_537, 69_999, 70_000])
def test_proofs_from_tiles_at_tile_boundaries(size: int) -> None:
    root = tree_hash(size, read_from_tiles(tree_hash_indexes(size), size))
    assert root == _BIG.root(size)
    for index in {0, size // 2, size - 1}:
        indexes = inclusion_indexes(index, size)
        proof = inclusion_proof(index, size, read_from_tiles(indexes, size))
        verify_inclusion(index, size, _BIG.read([stored_hash_index(0, index)])[0], proof, root)
    for old in {1, size // 3 or 1, size - 1 or 1}:
        indexes = consistency_indexes(old, size)
        proof = consistency_proof(old, size, read_from_tiles(indexes, size))
        verify_consistency(old, size, _BIG.root(old), root, proof)


def test_tiles_for_indexes_refuses_hashes_beyond_the_tree() -> None:
    with pytest.raises(TreeRangeError, match="not in a tree of size 5"):
        tiles_for_indexes([stored_hash_index(0, 5)], 5)
    with pytest.raises(TreeRangeError, match="not in a tree of size 300"):
        tiles_for_indexes([stored_hash_index(8, 1)], 300)
    with pytest.raises(TreeRangeError, match="was not supplied"):
        hashes_from_tiles([0], 5, {})


# --- entry bundles ------------------------------------------------------------------------

@given(st.lists(st.binary(max_size=300), min_size=1, max_size=TILE_WIDTH))
def test_entry_bundle_round_trip(entries: list[bytes]) -> None:
    data = encode_entry_bundle(entries)
    assert decode_entry_bundle(data) == entries
    assert decode_entry_bundle(data, width=len(entries)) == entries


def test_entry_bundle_layout() -> None:
    assert encode_entry_bundle([b"a", b"", b"bc"]) == b"\x00\x01a\x00\x00\x00\x02bc"
    assert decode_entry_bundle(encode_entry_bundle([b"x" * 0xFFFF]))[0] == b"x" * 0xFFFF


def test_entry_bundle_refuses_what_does_not_fit() -> None:
    with pytest.raises(EntryTooLargeError, match="entry 1 is 65536 bytes") as info:
        encode_entry_bundle([b"", b"x" * 65536])
    assert info.value.status == 413
    with pytest.raises(TreeRangeError):
        encode_entry_bundle([])
    with pytest.raises(TreeRangeError):
        encode_entry_bundle([b""] * 257)


@pytest.mark.parametrize(("data", "width", "message"), [
    (b"", None, "empty"),
    (b"\x00", None, "inside a length prefix"),
    (b"\x00\x03ab", None, "entry 0 of the bundle is truncated: 3 bytes announced, 2 left"),
    (b"\x00\x01a\x00", None, "inside a length prefix"),
    (b"\x00\x01a", 2, "must hold 2 entries, got 1"),
    (b"\x00\x00" * 257, None, "more than 256 entries"),
])
def test_entry_bundle_decoding_is_strict(data: bytes, width: int | None, message: str) -> None:
    with pytest.raises(TileDataError, match=message):
        decode_entry_bundle(data, width)
