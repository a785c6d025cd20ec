"""The upstream's Merkle tree, held consistent from one sync to the next (issue 11).

For a source whose checkpoint key the operator gave (``chronicle replica
set-checkpoint-key``), every sync also fetches the upstream's checkpoint: signed by its
server key like any answer, and by the checkpoint key. The first one is remembered; each
later one must extend the last one verified: a larger tree proven consistent with it by
the upstream's own consistency proof, or the same tree. A smaller tree, another root at
the same size, or a proof that does not verify stops the source as forked, with both
signed checkpoints (and the proof) as evidence. A source without a checkpoint key is
not asked (a PHP Chronicle has no tree).
"""

from __future__ import annotations

from chronicle.client.errors import ServerRefused
from chronicle.client.http import FetchedDocument
from chronicle.client.tlog import CHECKPOINT_PATH, open_signed_checkpoint, parse_consistency
from chronicle.core.checkpoint import Checkpoint
from chronicle.core.encoding import atom, b64u_encode
from chronicle.core.errors import ChronicleError
from chronicle.core.merkle import ProofError
from chronicle.core.note import Ed25519Verifier
from chronicle.core.replica import TreeForkError
from chronicle.core.verify import ChainFault, DocumentSignatureError, MalformedError
from chronicle.ledger import Clock
from chronicle.replication.upstream import Evidence, Stop, Upstream
from chronicle.store import ReplicaSource, Store
from chronicle.store.tlog import VerifiedCheckpoint

ROLE = "upstream tlog checkpoint"


def _remembered(last: VerifiedCheckpoint) -> FetchedDocument:
    """The last verified checkpoint answer, as evidence (its bytes and signature header)."""
    return FetchedDocument(method="GET", path=CHECKPOINT_PATH, url=last.url, status=200,
                           signature=last.signature, verified=True, size=len(last.body),
                           body=last.body)


def _fault(exc: ChronicleError) -> ChainFault:
    """What a checkpoint that cannot be believed says about the upstream."""
    if isinstance(exc, ChainFault):
        return exc
    if isinstance(exc, ProofError):
        return TreeForkError(f"the upstream's checkpoints are not consistent: {exc.message}",
                             field="proof")
    if exc.status == 400:  # a malformed note or checkpoint
        return MalformedError(f"the upstream's checkpoint is malformed: {exc.message}",
                              field="checkpoint")
    return DocumentSignatureError(f"the upstream's checkpoint does not verify: {exc.message}",
                                  field="checkpoint")


async def check_tree(store: Store, source: ReplicaSource, upstream: Upstream,
                     clock: Clock) -> None:
    """Check the upstream's newest checkpoint against the last one verified (see the
    module docstring); raise :class:`Stop` on a fork."""
    watched = await store.tlog.upstream(source.id)
    if watched is None:
        return
    doc = await upstream.fetch(CHECKPOINT_PATH, ROLE)
    evidence: Evidence = [(ROLE, doc, upstream.key)]
    try:
        new = open_signed_checkpoint(doc, Ed25519Verifier.from_vkey(watched.vkey)).checkpoint
    except ServerRefused:
        doc.discard()
        raise
    except ChronicleError as exc:
        raise Stop(_fault(exc), evidence) from None
    if watched.last is not None:
        evidence.insert(0, (ROLE + " (verified before)", _remembered(watched.last),
                            upstream.key))
        old = Checkpoint(new.origin, watched.last.size, watched.last.root)
        if new.size < old.size or (new.size == old.size and new.root != old.root):
            raise Stop(TreeForkError(
                "the upstream signed a checkpoint of a smaller tree, or of another tree of "
                "the same size, than one it signed before", field="tree-size",
                expected=f"{old.size} ({b64u_encode(old.root)}) or more",
                found=f"{new.size} ({b64u_encode(new.root)})"), evidence)
        if new.size > old.size:
            path = f"/tlog/proof/consistency/{old.size}/{new.size}"
            proof_doc, parsed = await upstream.small(path, "upstream tlog consistency proof")
            evidence.append(("upstream tlog consistency proof", proof_doc, upstream.key))
            try:
                parse_consistency(parsed.get("results"), old, new)
            except ChronicleError as exc:
                raise Stop(_fault(exc), evidence) from None
            proof_doc.discard()
    await store.tlog.save_upstream(watched, VerifiedCheckpoint(
        new.size, new.root, doc.read(), doc.signature, doc.url, atom(clock())))
    doc.discard()
