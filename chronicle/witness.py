"""Our witness (c2sp.org/tlog-witness): the one place an ``add-checkpoint`` is decided.

For each request: parse it, lock the log's row and read what the witness remembers
(:meth:`~chronicle.store.witness.WitnessStore.witnessing`), decide with the pure
:func:`~chronicle.core.checkpoint.decide_add_checkpoint`, remember the new (size, root)
in the same transaction, commit, and only then cosign. So a checkpoint is cosigned only
after its state is durable, and two requests for one log are decided one after the
other: the witness never cosigns a smaller tree, two roots for one size, or a tree not
proven consistent with the last one it cosigned.

A request refused although the log's signature on it verified (an inconsistent proof,
another root for a size already cosigned) is kept as evidence, as the spec allows: it
may be proof that the log misbehaved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, TypeAlias

from chronicle.core.checkpoint import (
    AddCheckpointRequest,
    BadProof,
    BadRequest,
    BadSignature,
    Checkpoint,
    Conflict,
    Cosign,
    Cosigner,
    UnknownLog,
    Verdict,
    WitnessRequestError,
    cosignature_response,
    decide_add_checkpoint,
)
from chronicle.core.encoding import atom, utcnow
from chronicle.core.errors import ChronicleError
from chronicle.core.note import Ed25519Verifier, NoteFormatError, NoteSignature
from chronicle.store.witness import WitnessStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Cosigned:
    """200: the new state is durable; these are the witness's cosignatures."""

    checkpoint: Checkpoint
    signatures: tuple[NoteSignature, ...]
    status: ClassVar[int] = 200

    def body(self) -> bytes:
        """The cosignature lines (tlog-witness: one or more note signature lines)."""
        return cosignature_response(self.signatures)


#: What the witness answers: cosignatures, or the refusal the decision made.
Answer: TypeAlias = Cosigned | Conflict | UnknownLog | BadSignature | BadProof | BadRequest


def evidence(request: AddCheckpointRequest, verdict: Verdict) -> str | None:
    """Why ``verdict`` is evidence against the log, or None.

    Evidence is a refusal made after the log's signature verified that shows the log (or
    its proof) at odds with what the witness cosigned: a failing consistency proof, or
    another root for the size the witness holds (a 409 whose old size *is* the witness's
    size can only mean that). A plain 409 for a stale old size is no evidence.
    """
    if isinstance(verdict, BadProof) or (
            isinstance(verdict, Conflict) and request.old_size == verdict.known_size):
        return verdict.reason
    return None


class Witness:
    """Decides ``add-checkpoint`` requests for the logs in ``store``, cosigning with
    ``cosigner``; ``clock`` dates the cosignatures (POSIX seconds) and the records."""

    def __init__(self, store: WitnessStore, cosigner: Cosigner, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.cosigner = cosigner
        self.clock = clock
        self._verifiers: dict[str, Ed25519Verifier | None] = {}

    def _verifier(self, vkey: str) -> Ed25519Verifier | None:
        """A stored log key (checked when it was added; a bad one is skipped, logged)."""
        if vkey not in self._verifiers:
            try:
                self._verifiers[vkey] = Ed25519Verifier.from_vkey(vkey)
            except ChronicleError as exc:
                log.error("ignoring a stored log key that does not parse (%s): %s", vkey,
                          exc.message)
                self._verifiers[vkey] = None
        return self._verifiers[vkey]

    async def add_checkpoint(self, body: bytes) -> Answer:
        """The answer to ``POST /add-checkpoint`` with ``body`` (tlog-witness)."""
        try:
            request = AddCheckpointRequest.parse(body)
            origin = request.origin
        except (WitnessRequestError, NoteFormatError) as exc:
            return BadRequest(exc.message)
        now = self.clock()
        when = atom(now)
        async with self.store.witnessing(origin) as tx:
            verifiers = [v for v in map(self._verifier, tx.vkeys) if v is not None]
            verdict = decide_add_checkpoint(request, verifiers, tx.state)
            if isinstance(verdict, Cosign):
                await tx.advance(verdict.new_state, request.checkpoint, when)
            elif (reason := evidence(request, verdict)) is not None:
                await tx.keep_evidence(verdict.status, reason, body, when)
                log.warning("kept evidence against %s: %s", origin, reason)
        if not isinstance(verdict, Cosign):
            return verdict
        # Committed: the state is durable before the cosignature exists.
        signature = self.cosigner.cosign(verdict.checkpoint, int(now.timestamp()))
        return Cosigned(verdict.checkpoint, (signature,))
