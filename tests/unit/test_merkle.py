"""RFC 6962 tree, stored hashes, TreeState and proofs (tests/vectors/rfc6962 + properties)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronicle.core import merkle
from chronicle.core.errors import IntegrityError, RequestError, StorageError
from chronicle.core.merkle import (
    EMPTY_ROOT,
    HashCountError,
    MalformedHashError,
    MemoryHashes,
    ProofError,
    ProofLengthError,
    ProofRangeError,
    RootMismatchError,
    TreeRangeError,
    TreeState,
    TreeStateError,
    consistency_indexes,
    consistency_proof,
    inclusion_indexes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    stored_hash_indexes_for_record,
    stored_hashes_for_record,
    tree_hash,
    tree_hash_indexes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent.parent / "vectors" / "rfc6962"
CASES = sorted(p for p in VECTORS.rglob("*.json"))

# The leaves the RFC 6962 vectors were generated from (the classic CT test tree).
RFC_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash, straight from the definition (slow, obviously right)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def leaves_of(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def tree_of(n: int) -> MemoryHashes:
    return MemoryHashes.from_leaf_hashes(leaf_hash(d) for d in leaves_of(n))


# --- vectors ------------------------------------------------------------------------------

def test_vectors_are_present() -> None:
    assert len(CASES) == 196
    assert {p.relative_to(VECTORS).parts[0] for p in CASES} == {"inclusion", "consistency"}


@pytest.mark.parametrize("path", CASES, ids=lambda p: str(p.relative_to(VECTORS)))
def test_rfc6962_vector(path: Path) -> None:
    case = load(path)
    proof = [b64(p) for p in case.get("proof") or []]
    try:
        if "leafIdx" in case:
            verify_inclusion(case["leafIdx"], case["treeSize"], b64(case["leafHash"]), proof,
                             b64(case["root"]))
        else:
            verify_consistency(case["size1"], case["size2"], b64(case["root1"]),
                               b64(case["root2"]), proof)
    except ProofError:
        assert case["wantErr"], case["desc"]
    else:
        assert not case["wantErr"], case["desc"]


def test_rfc_leaves_reproduce_the_vector_trees() -> None:
    tree = MemoryHashes.from_leaf_hashes(leaf_hash(d) for d in RFC_LEAVES)
    happy = load(VECTORS / "inclusion" / "1" / "happy-path.json")
    assert tree.root(8) == b64(happy["root"]) == mth(RFC_LEAVES)


def _from_rfc_tree(case: dict[str, Any]) -> bool:
    """Happy-path cases whose tree is the RFC test tree (the others use other leaves)."""
    tree = MemoryHashes.from_leaf_hashes(leaf_hash(d) for d in RFC_LEAVES)
    if case["wantErr"]:
        return False
    if "leafIdx" in case:
        return 0 < case["treeSize"] <= len(RFC_LEAVES) and case["root"] != "" \
            and tree.root(case["treeSize"]) == b64(case["root"])
    return case["size2"] <= len(RFC_LEAVES) and tree.root(case["size2"]) == b64(case["root2"])


@pytest.mark.parametrize("path", [p for p in CASES if _from_rfc_tree(load(p))],
                         ids=lambda p: str(p.relative_to(VECTORS)))
def test_generated_proofs_equal_the_vectors(path: Path) -> None:
    case = load(path)
    want = [b64(p) for p in case.get("proof") or []]
    tree = MemoryHashes.from_leaf_hashes(leaf_hash(d) for d in RFC_LEAVES)
    if "leafIdx" in case:
        assert tree.inclusion_proof(case["leafIdx"], case["treeSize"]) == want
    else:
        assert tree.consistency_proof(case["size1"], case["size2"]) == want


# --- hashing and stored hashes ------------------------------------------------------------

def test_hash_definitions() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert TreeState.empty().root() == EMPTY_ROOT == tree_hash(0, [])


def test_stored_hash_index_layout() -> None:
    # Go sumdb tlog's layout: record n writes its leaf then the subtrees it completes.
    expected = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0), (0, 4)]
    assert [split_stored_hash_index(i) for i in range(8)] == expected
    assert [stored_hash_index(level, n) for level, n in expected] == list(range(8))
    assert [stored_hash_count(n) for n in range(9)] == [0, 1, 3, 4, 7, 8, 10, 11, 15]


@given(st.integers(0, 2**40))
def test_split_inverts_stored_hash_index(index: int) -> None:
    level, n = split_stored_hash_index(index)
    assert stored_hash_index(level, n) == index


@given(st.integers(0, 40), st.integers(0, 2**40))
def test_stored_hash_index_round_trip(level: int, n: int) -> None:
    assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)


def test_stored_hash_index_refuses_negatives() -> None:
    with pytest.raises(TreeRangeError):
        stored_hash_index(-1, 0)
    with pytest.raises(TreeRangeError):
        split_stored_hash_index(-1)
    with pytest.raises(TreeRangeError):
        stored_hash_count(-1)


def naive_stored(leaves: list[bytes]) -> dict[int, bytes]:
    """Every completed perfect subtree hash, at its stored index, by definition."""
    out = {}
    level = 0
    while (1 << level) <= len(leaves):
        for n in range(len(leaves) >> level):
            out[stored_hash_index(level, n)] = mth(leaves[n << level:(n + 1) << level])
        level += 1
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 300))
def test_stored_hashes_match_the_definition(n: int) -> None:
    leaves = leaves_of(n)
    state, new = TreeState.empty().extend(leaf_hash(d) for d in leaves)
    assert dict(new) == naive_stored(leaves)
    assert [i for i, _ in new] == list(range(stored_hash_count(n)))
    assert state.root() == mth(leaves)


def test_stored_hashes_for_record_two_phase() -> None:
    tree = MemoryHashes()
    for n, data in enumerate(leaves_of(100)):
        need = stored_hash_indexes_for_record(n)
        assert need == sorted(need)
        new = stored_hashes_for_record(n, leaf_hash(data), tree.read(need))
        before = stored_hash_count(n)
        tree.append(leaf_hash(data))
        assert new == tree.read(range(before, stored_hash_count(n + 1)))
    with pytest.raises(HashCountError):
        stored_hashes_for_record(3, leaf_hash(b""), [])


# --- TreeState ----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=20))
def test_tree_state_batches_equal_one_by_one(batches: list[int]) -> None:
    total = sum(batches)
    hashes = [leaf_hash(d) for d in leaves_of(total)]
    batched, one = TreeState.empty(), TreeState.empty()
    stored_b: list[tuple[int, bytes]] = []
    stored_o: list[tuple[int, bytes]] = []
    pos = 0
    for size in batches:
        batched, new = batched.extend(hashes[pos:pos + size])
        stored_b += new
        for h in hashes[pos:pos + size]:
            one, new = one.append(h)
            stored_o += new
        pos += size
        assert batched == one
        assert batched.root() == mth(leaves_of(pos))
    assert stored_b == stored_o


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 5000))
def test_tree_state_bytes_round_trip(n: int) -> None:
    state = TreeState.from_leaf_hashes(leaf_hash(d) for d in leaves_of(n))
    raw = state.to_bytes()
    assert len(raw) == 9 + 32 * n.bit_count()
    assert TreeState.from_bytes(raw) == state
    assert TreeState.from_bytes(raw, size=n) == state


def test_tree_state_from_bytes_is_strict() -> None:
    raw = TreeState.from_leaf_hashes(leaf_hash(d) for d in leaves_of(5)).to_bytes()
    with pytest.raises(TreeStateError, match="at least 9 bytes"):
        TreeState.from_bytes(raw[:5])
    with pytest.raises(TreeStateError, match="unknown tree state version 2"):
        TreeState.from_bytes(b"\x02" + raw[1:])
    with pytest.raises(TreeStateError, match="for size 5 must be 73 bytes, got 72"):
        TreeState.from_bytes(raw[:-1])
    with pytest.raises(TreeStateError, match="for size 5 must be 73 bytes, got 74"):
        TreeState.from_bytes(raw + b"\x00")
    with pytest.raises(TreeStateError, match="for size 7 must be 105 bytes, got 73"):
        TreeState.from_bytes(raw[:1] + (7).to_bytes(8, "big") + raw[9:])
    with pytest.raises(TreeStateError, match="is for size 5, expected size 6") as info:
        TreeState.from_bytes(raw, size=6)
    assert isinstance(info.value, IntegrityError)
    assert info.value.field == "treestate"


def test_tree_state_validates_its_fields() -> None:
    with pytest.raises(TreeStateError, match="has 2 peaks, got 1"):
        TreeState(3, (b"\x00" * 32,))
    with pytest.raises(TreeStateError, match="must be 32 bytes"):
        TreeState(1, (b"\x00" * 31,))
    with pytest.raises(MalformedHashError):
        TreeState.empty().append(b"short")


def test_tree_state_from_stored_hashes() -> None:
    tree = tree_of(77)
    state = TreeState.from_stored(77, tree.read(TreeState.peak_indexes(77)))
    assert state == tree.state
    with pytest.raises(HashCountError):
        TreeState.from_stored(77, [])


# --- proofs -------------------------------------------------------------------------------

def test_tree_hash_two_phase() -> None:
    tree = tree_of(100)
    for n in range(101):
        assert tree_hash(n, tree.read(tree_hash_indexes(n))) == mth(leaves_of(n))


def test_generation_refuses_impossible_requests() -> None:
    for args in [(0, 0), (5, 5), (-1, 5)]:
        with pytest.raises(TreeRangeError):
            inclusion_indexes(*args)
    for args in [(6, 5), (-1, 5)]:
        with pytest.raises(TreeRangeError):
            consistency_indexes(*args)
    assert consistency_indexes(0, 5) == [] == consistency_proof(0, 5, [])
    assert consistency_indexes(5, 5) == []
    assert isinstance(TreeRangeError("x"), RequestError)
    with pytest.raises(HashCountError) as info:
        inclusion_proof(0, 8, [b"\x00" * 32])
    assert isinstance(info.value, StorageError)
    with pytest.raises(HashCountError, match="must be 32 bytes"):
        inclusion_proof(0, 2, [b"\x00" * 31])
    with pytest.raises(TreeRangeError):
        tree_of(3).root(4)


sizes = st.integers(1, 3000)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes)
    return size, draw(st.integers(0, size - 1))


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(sizes)
    return draw(st.integers(1, new)), new


_TREE = tree_of(3000)
_LEAVES = [leaf_hash(d) for d in leaves_of(3000)]


def flip(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    out = list(proof)
    h = bytearray(out[which])
    h[bit // 8] ^= 1 << (bit % 8)
    out[which] = bytes(h)
    return out


@settings(max_examples=300, deadline=None)
@given(tree_and_index(), st.data())
def test_inclusion_proofs_verify_and_mutations_fail(case: tuple[int, int],
                                                     data: st.DataObject) -> None:
    size, index = case
    root = _TREE.root(size)
    leaf = _LEAVES[index]
    proof = _TREE.inclusion_proof(index, size)
    verify_inclusion(index, size, leaf, proof, root)

    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(RootMismatchError):
            verify_inclusion(index, size, leaf, flip(proof, which, bit), root)
        with pytest.raises(ProofLengthError):
            verify_inclusion(index, size, leaf, proof[:which] + proof[which + 1:], root)
    with pytest.raises(ProofLengthError):
        verify_inclusion(index, size, leaf, [*proof, b"\x00" * 32], root)
    with pytest.raises(ProofLengthError):
        verify_inclusion(index, size, leaf, [b"\x00" * 32, *proof], root)
    with pytest.raises(RootMismatchError):
        verify_inclusion(index, size, leaf_hash(b"other"), proof, root)

    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        verify_inclusion(other, size, leaf, proof, root)

    # Another size: a proof of size n verifies against the tree of size n' only if it *is*
    # that tree's proof (RFC 6962 paths do not encode the size beyond their shape).
    bad_size = data.draw(st.integers(index + 1, 3000).filter(lambda s: s != size))
    if _TREE.inclusion_proof(index, bad_size) != proof:
        with pytest.raises(ProofError):
            verify_inclusion(index, bad_size, leaf, proof, _TREE.root(bad_size))
    with pytest.raises(ProofRangeError):
        verify_inclusion(size, size, leaf, proof, root)


@settings(max_examples=300, deadline=None)
@given(two_sizes(), st.data())
def test_consistency_proofs_verify_and_mutations_fail(case: tuple[int, int],
                                                       data: st.DataObject) -> None:
    old, new = case
    old_root, new_root = _TREE.root(old), _TREE.root(new)
    proof = _TREE.consistency_proof(old, new)
    verify_consistency(old, new, old_root, new_root, proof)

    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(RootMismatchError):
            verify_consistency(old, new, old_root, new_root, flip(proof, which, bit))
        with pytest.raises(ProofLengthError):
            verify_consistency(old, new, old_root, new_root, proof[:which] + proof[which + 1:])
    with pytest.raises(ProofLengthError):
        verify_consistency(old, new, old_root, new_root, [*proof, b"\x00" * 32])
    if old != new:
        with pytest.raises(RootMismatchError):
            verify_consistency(old, new, old_root, leaf_hash(b"x"), proof)
        with pytest.raises(RootMismatchError):
            verify_consistency(old, new, leaf_hash(b"x"), new_root, proof)
        with pytest.raises(ProofError):
            verify_consistency(old, new, new_root, old_root, proof)

    old2 = data.draw(st.integers(1, 3000))
    new2 = data.draw(st.integers(old2, 3000))
    if (old2, new2) != (old, new) and _TREE.consistency_proof(old2, new2) != proof:
        with pytest.raises(ProofError):
            verify_consistency(old2, new2, _TREE.root(old2), _TREE.root(new2), proof)
    with pytest.raises(ProofRangeError):
        verify_consistency(new + 1, new, new_root, new_root, proof)


def test_verifiers_name_the_failure() -> None:
    tree = tree_of(10)
    proof = tree.inclusion_proof(3)
    with pytest.raises(ProofRangeError, match="leaf index 10 is not in a tree of size 10"):
        verify_inclusion(10, 10, _LEAVES[3], proof, tree.root())
    with pytest.raises(ProofLengthError, match="must have 4 hashes, got 3") as length:
        verify_inclusion(3, 10, _LEAVES[3], proof[:3], tree.root())
    assert (length.value.expected, length.value.found) == ("4", "3")
    with pytest.raises(MalformedHashError, match="proof hash 1 must be 32 bytes"):
        verify_inclusion(3, 10, _LEAVES[3], [proof[0], proof[1] + b"\x00", *proof[2:]],
                         tree.root())
    with pytest.raises(MalformedHashError, match="leaf hash must be 32 bytes"):
        verify_inclusion(3, 10, b"", proof, tree.root())
    with pytest.raises(RootMismatchError, match="root does not match") as mismatch:
        verify_inclusion(3, 10, _LEAVES[4], proof, tree.root())
    assert mismatch.value.expected == tree.root().hex()
    with pytest.raises(ProofRangeError, match="from size 0 to size 10"):
        verify_consistency(0, 10, EMPTY_ROOT, tree.root(), [])
    with pytest.raises(RootMismatchError, match="old root"):
        verify_consistency(3, 10, tree.root(4), tree.root(), tree.consistency_proof(3))
    with pytest.raises(RootMismatchError, match="new root"):
        verify_consistency(3, 10, tree.root(3), tree.root(9), tree.consistency_proof(3))
    with pytest.raises(ProofLengthError, match="equal sizes must be empty"):
        verify_consistency(4, 4, tree.root(4), tree.root(4), proof[:1])


def test_memory_hashes_reads_and_tiles_are_bounded() -> None:
    tree = tree_of(5)
    with pytest.raises(TreeRangeError, match="no stored hash 8 in a tree of size 5"):
        tree.read([stored_hash_count(5)])
    with pytest.raises(TreeRangeError):
        tree.read([-1])
    assert tree.read([0, 1, 2]) == [_LEAVES[0], _LEAVES[1], node_hash(_LEAVES[0], _LEAVES[1])]
    assert merkle.MemoryHashes().size == 0
