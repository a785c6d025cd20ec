"""chronicle verify --tlog: how a sync moves from the checkpoint it holds to the ledger's new one.

A fake ledger stands in for the HTTP client: it serves signed checkpoints of a tree of
made-up leaves and real consistency proofs between them, shaped as chronicle's server
answers them.
"""

from __future__ import annotations

from typing import Any

import pytest

from chronicle.client.http import FetchedDocument
from chronicle.core.checkpoint import Checkpoint, sign_checkpoint
from chronicle.core.encoding import b64u_encode
from chronicle.core.merkle import MemoryHashes, TreeState, leaf_hash
from chronicle.core.note import Ed25519Signer
from chronicle.verify.faults import VerifyFault
from chronicle.verify.statedir import SyncState
from chronicle.verify.sync import SyncReport, TreeSync

ORIGIN = "verify.test/log"
SIGNER = Ed25519Signer.generate(ORIGIN)


class FakeLedger:
    """``fetch`` the checkpoint of ``size`` leaves (or a forged root), ``signed`` proofs."""

    def __init__(self, size: int, *, root: bytes | None = None) -> None:
        self.leaves = [leaf_hash(b"%d" % i) for i in range(size)]
        self.size = size
        self.root = root or TreeState.from_leaf_hashes(self.leaves).root()

    async def fetch(self, path: str, **_: Any) -> FetchedDocument:
        note = sign_checkpoint(Checkpoint(ORIGIN, self.size, self.root), SIGNER)
        return FetchedDocument("GET", path, path, 200, "sig", True, len(note), body=note)

    async def signed(self, path: str, **_: Any) -> tuple[None, dict[str, Any]]:
        old, new = (int(x) for x in path.rsplit("/", 2)[1:])
        proof = MemoryHashes.from_leaf_hashes(self.leaves).consistency_proof(old, new) \
            if old else []
        return None, {"results": {"old-size": old, "new-size": new,
                                  "proof": [b64u_encode(h) for h in proof]}}


def _held(size: int) -> SyncState:
    """A state that holds the ledger's signed checkpoint of ``size`` leaves."""
    ledger = FakeLedger(size)
    note = sign_checkpoint(Checkpoint(ORIGIN, size, ledger.root), SIGNER)
    return SyncState(checkpoint=note.decode())


async def _start(sync: SyncState, ledger: FakeLedger) -> TreeSync:
    tree = TreeSync(SIGNER.vkey(), sync)
    await tree.start(ledger)  # type: ignore[arg-type]
    return tree


async def test_from_the_empty_tree_to_a_grown_one() -> None:
    sync = SyncState()
    (await _start(sync, FakeLedger(0))).finish(SyncReport())
    assert sync.checkpoint is not None and sync.checkpoint.splitlines()[:2] == [ORIGIN, "0"]
    # no proof to ask for from size 0: the empty tree is a prefix of every tree
    tree = await _start(sync, FakeLedger(3))
    assert tree.check is not None and tree.check.checkpoint.size == 3


async def test_a_grown_tree_must_prove_it_extends_the_held_one() -> None:
    tree = await _start(_held(7), FakeLedger(9))
    assert tree.check is not None and tree.check.checkpoint.size == 9
    with pytest.raises(VerifyFault) as caught:
        await _start(_held(7), FakeLedger(9, root=b"\x01" * 32))
    assert caught.value.kind == "split-view"
    assert "not consistent with the one of size 7" in caught.value.message
    # the new signed checkpoint is kept with the fault: it is the portable evidence
    assert caught.value.details["checkpoint_now"].splitlines()[:2] == [ORIGIN, "9"]


async def test_a_smaller_or_rewritten_tree_is_a_split_view() -> None:
    for ledger in (FakeLedger(5), FakeLedger(7, root=b"\x02" * 32)):
        with pytest.raises(VerifyFault) as caught:
            await _start(_held(7), ledger)
        assert caught.value.kind == "split-view"
        assert "does not extend the one it signed before (size 7)" in caught.value.message
        assert caught.value.details["checkpoint_now"].splitlines()[1] == str(ledger.size)
