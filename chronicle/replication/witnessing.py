"""Witnessing, the log's side: have the newest checkpoint cosigned by the configured
witnesses, and publish it once K of N did (docs/witness.md).

:func:`witness_pass` is one pass of the background job; everything it needs comes in as
arguments, so the job that runs it (``server/jobs.py``) only schedules it:

- the log (:class:`CheckpointLog`, the seam to the tree's storage): its newest signed
  checkpoint, consistency proofs, and where a cosigned checkpoint is published;
- the witnesses and the K-of-N policy (the ``witnesses`` and ``witness-quorum``
  settings);
- a :class:`SizeBook`: the size each witness held after our last submission, kept across
  restarts (:class:`JobSizes` keeps it in the ledger's ``job_state`` table);
- a :class:`WitnessingState` the caller keeps between passes (in memory).

A pass submits when the tree grew (a new checkpoint), again to the witnesses that have
not cosigned it yet (a retry, ``retry`` seconds after a failure), and to all of them once
the checkpoint has been unchanged for ``republish`` seconds (fresh cosignature
timestamps: the log is idle, not gone). It publishes the checkpoint with the newest
cosignature of each witness whenever the quorum is met and those changed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from chronicle.client.witness import Submission, WitnessClient
from chronicle.core.checkpoint import (
    Checkpoint,
    Quorum,
    WitnessEndpoint,
    WitnessPolicy,
    add_cosignatures,
)
from chronicle.core.errors import ChronicleError
from chronicle.core.note import NoteSignature, parse_note
from chronicle.core.replica import backoff_delay
from chronicle.store.jobs import JobStore

log = logging.getLogger(__name__)

#: Seconds between passes when nothing is due and nothing will wake the job sooner.
IDLE = 60.0


class CheckpointLog(Protocol):
    """What witnessing needs from the log (its tree storage and checkpoint signer)."""

    async def latest_checkpoint(self) -> bytes | None:
        """The newest checkpoint as a signed note (the log's signature only); None while
        there is none (tree off, or empty)."""

    async def consistency_proof(self, old: int, new: int) -> Sequence[bytes]:
        """RFC 6962 consistency proof between tree sizes ``0 < old < new``."""

    async def publish_cosigned(self, note: bytes, quorum: Quorum) -> None:
        """Serve ``note`` (the checkpoint with the cosignature lines of ``quorum``
        appended) as the log's checkpoint: the quorum is met. Called again with a note
        carrying more cosignatures as they arrive."""


class SizeBook(Protocol):
    """The size each witness held after our last submission to it (by witness name)."""

    async def get(self, witness: str) -> int | None: ...

    async def set(self, witness: str, size: int) -> None: ...


class JobSizes:
    """A :class:`SizeBook` in the ledger's ``job_state`` table (``witness-size:NAME`` for
    the default chain's tree, ``witness-size:INSTANCE:NAME`` for another chain's)."""

    PREFIX = "witness-size:"

    def __init__(self, jobs: JobStore, instance: str = "") -> None:
        self._jobs = jobs
        self._prefix = self.PREFIX + (f"{instance}:" if instance else "")

    async def get(self, witness: str) -> int | None:
        value = await self._jobs.get(self._prefix + witness)
        return int(value) if value is not None else None

    async def set(self, witness: str, size: int) -> None:
        await self._jobs.set(self._prefix + witness, str(size))


@dataclass
class WitnessingState:
    """What the job remembers between passes: the checkpoint being witnessed, the newest
    cosignature of each witness on it, which witnesses it is still due to ask, when all
    had answered, what was last published, and the last error of each witness."""

    checkpoint: Checkpoint | None = None
    cosignatures: dict[str, NoteSignature] = field(default_factory=dict)
    due: set[str] | None = None
    """Witnesses to submit to (None: all of them, a new checkpoint)."""
    completed: float | None = None
    """When (the caller's clock) the last witness due had cosigned :attr:`checkpoint`."""
    published: tuple[NoteSignature, ...] | None = None
    """The cosignatures of the version last published (None: this checkpoint not yet)."""
    errors: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    """Consecutive passes in which a witness failed (they back off the retries)."""

    def start(self, checkpoint: Checkpoint) -> None:
        """A new checkpoint: nothing collected or published for it yet."""
        self.checkpoint = checkpoint
        self.cosignatures.clear()
        self.due = None
        self.completed = None
        self.published = None


@dataclass(frozen=True, slots=True)
class PassResult:
    """What a pass did, and when the next one is due (seconds)."""

    delay: float
    checkpoint: Checkpoint | None = None
    submissions: tuple[Submission, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)
    quorum: Quorum | None = None
    published: bool = False


async def _submit(witness: WitnessEndpoint, note: bytes, log_: CheckpointLog,
                  sizes: SizeBook, session: aiohttp.ClientSession,
                  request_timeout: float) -> Submission | ChronicleError:
    """One witness's submission; its error is returned, not raised (the others go on)."""
    try:
        client = WitnessClient(witness, session, timeout=request_timeout)
        submission = await client.submit(
            note, log_.consistency_proof, await sizes.get(witness.name))
    except ChronicleError as exc:
        return exc
    await sizes.set(witness.name, submission.size)
    return submission


async def witness_pass(log_: CheckpointLog, witnesses: Sequence[WitnessEndpoint],
                       policy: WitnessPolicy, sizes: SizeBook, state: WitnessingState, *,
                       session: aiohttp.ClientSession, now: float,
                       republish: float | None = 300.0, retry: float = 10.0,
                       request_timeout: float = 30.0,
                       rand: Callable[[], float] = random.random) -> PassResult:
    """One pass of the witnessing job (see the module docstring); ``now`` is the caller's
    monotonic clock in seconds. Errors of single witnesses are in the result (and logged),
    never raised: one witness down must not stop the others. After a failure the next
    pass is due in ``retry`` seconds, doubling with each failing pass (up to
    ``republish``, or an hour), with ±25 % jitter from ``rand``."""
    note = await log_.latest_checkpoint()
    if note is None:
        return PassResult(IDLE)
    checkpoint = Checkpoint.parse(parse_note(note)[0])
    if checkpoint.size == 0:
        return PassResult(IDLE, checkpoint)
    if checkpoint != state.checkpoint:
        state.start(checkpoint)
    elif state.completed is not None and republish is not None \
            and now - state.completed >= republish:
        state.due = None  # idle: the same checkpoint again, for fresh timestamps
        state.completed = None
    pending = [w for w in witnesses if state.due is None or w.name in state.due]
    submissions: list[Submission] = []
    errors: dict[str, str] = {}
    if pending:
        results = await asyncio.gather(*(_submit(w, note, log_, sizes, session,
                                                 request_timeout)
                                         for w in pending))
        for witness, result in zip(pending, results, strict=True):
            if isinstance(result, Submission):
                submissions.append(result)
                state.cosignatures[witness.name] = result.cosignatures[-1]
                state.errors.pop(witness.name, None)
            else:
                errors[witness.name] = state.errors[witness.name] = result.diagnostics()
                log.warning("witness %s did not cosign %s size %d: %s", witness.name,
                            checkpoint.origin, checkpoint.size, result.diagnostics())
        state.due = set(errors)
        if not errors:
            state.completed = now
    quorum = policy.check(checkpoint, state.cosignatures.values())
    published = False
    if quorum.satisfied and quorum.cosignatures != state.published:
        await log_.publish_cosigned(add_cosignatures(note, quorum.cosignatures), quorum)
        state.published = quorum.cosignatures
        published = True
    state.failures = state.failures + 1 if errors else 0
    if errors:
        delay = backoff_delay(retry, state.failures - 1, maximum=max(retry, republish or 3600.0),
                              rand=rand())
    elif republish is not None and state.completed is not None:
        delay = max(0.0, state.completed + republish - now)
    else:
        delay = IDLE
    return PassResult(delay, checkpoint, tuple(submissions), errors, quorum, published)
