"""Submitting a log's checkpoint to a witness (c2sp.org/tlog-witness), and believing only
the cosignatures that verify.

:meth:`WitnessClient.submit` runs the protocol for one signed checkpoint: it starts from
the size the caller last saw the witness hold (``old 0`` if none), and on a 409 submits
again from the size the witness reports, with a new consistency proof from the caller's
``proofs(old, new)``. It never submits an empty tree. The answer's cosignature lines are
verified against the witness's key (lines by other keys are ignored, as the spec says);
the returned :class:`Submission` carries them and the size the witness now holds, which
the caller keeps for the next submission.

Errors, by who is at fault:

- the witness refused (:class:`WitnessRefused`, a
  :class:`~chronicle.client.errors.ServerRefused`, by status): 404 :class:`UnknownLogError`,
  403 :class:`LogSignatureError`, 422 :class:`ProofRejectedError`, 400
  :class:`MalformedRequestError`; a 409 that resubmitting cannot settle is a
  :class:`WitnessConflictError`: :class:`WitnessForkError` (the witness cosigned another
  root at this size) or :class:`WitnessAheadError` (it holds a larger tree than this
  checkpoint);
- the witness's answer does not verify (:class:`WitnessResponseError`);
- the network, or a witness answering 5xx/429 (:class:`~chronicle.core.errors.TransportError`);
- the caller (:class:`EmptyTreeError`: there is nothing to witness in an empty tree).

Only the cosignatures authenticate themselves: a status answer is as trustworthy as the
transport (HTTPS) that carried it; the worst a forged one can do is withhold cosignatures.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp

from chronicle.client.errors import ServerRefused
from chronicle.core.checkpoint import (
    TLOG_SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    Checkpoint,
    WitnessEndpoint,
    WitnessRequestError,
    parse_signature_lines,
    parse_tlog_size,
    verify_cosignatures,
)
from chronicle.core.errors import ChronicleError, IntegrityError, RequestError, TransportError
from chronicle.core.note import NoteSignature, parse_note

#: ``async proofs(old, new)``: the RFC 6962 consistency proof between two tree sizes.
ProofSource = Callable[[int, int], Awaitable[Sequence[bytes]]]

#: A 409 is answered by submitting again; a witness still in conflict after this many
#: (its size moving under us each time) is given up on for now.
MAX_CONFLICTS = 3
#: Largest answer read from a witness: cosignature lines are ~120 bytes each.
MAX_ANSWER = 64 << 10
#: How much of a refusal's text an error repeats.
SHOWN = 200


class WitnessRefused(ServerRefused):
    """The witness said no (its HTTP ``status``); ``witness`` is its name. A subclass
    names the status it stands for: ``class X(WitnessRefused, status=404)``."""

    def __init_subclass__(cls, *, status: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status

    def __init__(self, witness: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.witness = witness

    def diagnostics(self) -> str:
        return f"witness {self.witness} refused (HTTP {self.status}): {self.message}"


class UnknownLogError(WitnessRefused, status=404):
    """The witness does not witness this log (origin)."""


class LogSignatureError(WitnessRefused, status=403):
    """No signature on the checkpoint verifies with the keys the witness has."""


class ProofRejectedError(WitnessRefused, status=422):
    """The witness found the consistency proof wrong."""


class MalformedRequestError(WitnessRefused, status=400):
    """The witness found the request malformed."""


class WitnessConflictError(WitnessRefused, status=409):
    """A 409 that submitting again cannot settle; ``known_size`` is the witness's size."""

    def __init__(self, witness: str, message: str, *, known_size: int) -> None:
        super().__init__(witness, message)
        self.known_size = known_size


class WitnessForkError(WitnessConflictError):
    """The witness cosigned another root for this checkpoint's size: one of the two views
    of the log is a fork (or the witness is broken). Never retried."""


class WitnessAheadError(WitnessConflictError):
    """The witness holds a larger tree than this checkpoint (a stale checkpoint, or a log
    rolled back)."""


class WitnessResponseError(IntegrityError):
    """The witness's answer does not verify or has no meaning (bad cosignature, none by
    its key, a malformed size)."""


class EmptyTreeError(RequestError):
    """A checkpoint of size 0 is never submitted (tlog.md: there is nothing to witness)."""


@dataclass(frozen=True, slots=True)
class Submission:
    """A witness cosigned the checkpoint: its verified cosignatures, and the size it now
    holds (the checkpoint's; keep it for the next submission)."""

    witness: str
    size: int
    cosignatures: tuple[NoteSignature, ...]
    conflicts: int = 0
    """How many 409s it took (each answered by submitting again)."""


class _Answer(NamedTuple):
    status: int
    content_type: str
    body: bytes


def _first_line(body: bytes) -> str:
    """A refusal's text for an error message (shown, never trusted)."""
    return body.decode("utf-8", "replace").strip().split("\n", 1)[0][:SHOWN]


_REFUSALS: dict[int, type[WitnessRefused]] = {
    cls.status: cls for cls in (UnknownLogError, LogSignatureError, ProofRejectedError,
                                MalformedRequestError)}


class WitnessClient:
    """One witness (``endpoint``: its URL and cosignature key) over ``session``."""

    def __init__(self, endpoint: WitnessEndpoint, session: aiohttp.ClientSession, *,
                 timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    @property
    def name(self) -> str:
        return self.endpoint.name

    async def submit(self, note: bytes, proofs: ProofSource,
                     known_size: int | None = None) -> Submission:
        """Have the witness cosign ``note`` (the log's signed checkpoint), starting from
        ``known_size`` (what it held last time; None: ``old 0``)."""
        try:
            checkpoint = Checkpoint.parse(parse_note(note)[0])
        except ChronicleError as exc:
            raise RequestError(f"not a signed checkpoint: {exc.message}") from None
        if checkpoint.size == 0:
            raise EmptyTreeError("an empty tree is never submitted to a witness")
        old = known_size or 0
        if old > checkpoint.size:
            raise WitnessAheadError(self.name, f"the witness holds size {old}, more than "
                                    f"this checkpoint's {checkpoint.size}", known_size=old)
        for conflicts in range(MAX_CONFLICTS + 1):
            proof = () if old in (0, checkpoint.size) else \
                tuple(await proofs(old, checkpoint.size))
            answer = await self._post(AddCheckpointRequest(old, proof, note).to_bytes())
            if answer.status == 200:
                return Submission(self.name, checkpoint.size,
                                  self._cosignatures(checkpoint, answer), conflicts)
            if answer.status != 409:
                raise self._refusal(answer)
            old = self._conflict(checkpoint, old, answer)
        raise WitnessConflictError(self.name, f"still in conflict after {MAX_CONFLICTS} "
                                   f"submissions (the witness holds size {old})",
                                   known_size=old)

    def _conflict(self, checkpoint: Checkpoint, old: int, answer: _Answer) -> int:
        """The size to submit from after a 409, or the error it means."""
        if answer.content_type != TLOG_SIZE_CONTENT_TYPE:
            raise WitnessResponseError(f"witness {self.name} answered 409 with "
                                       f"{answer.content_type or 'no content type'}, not "
                                       f"{TLOG_SIZE_CONTENT_TYPE}")
        try:
            known = parse_tlog_size(answer.body)
        except WitnessRequestError as exc:
            raise WitnessResponseError(f"witness {self.name}: {exc.message}") from None
        if known == old:
            if old != checkpoint.size:
                raise WitnessResponseError(f"witness {self.name} answered 409 with the size "
                                           f"it was sent ({known})")
            raise WitnessForkError(self.name, f"the witness cosigned another root hash at "
                                   f"size {known}", known_size=known)
        if known > checkpoint.size:
            raise WitnessAheadError(self.name, f"the witness holds size {known}, more than "
                                    f"this checkpoint's {checkpoint.size}", known_size=known)
        return known

    def _cosignatures(self, checkpoint: Checkpoint,
                      answer: _Answer) -> tuple[NoteSignature, ...]:
        """The answer's cosignatures by the witness's key, all verified."""
        try:
            lines = parse_signature_lines(answer.body)
            return tuple(verify_cosignatures(checkpoint, lines, [self.endpoint.verifier]))
        except ChronicleError as exc:
            raise WitnessResponseError(f"witness {self.name}: {exc.message}") from None

    def _refusal(self, answer: _Answer) -> ChronicleError:
        status = answer.status
        if status >= 500 or status == 429:
            return TransportError(f"witness {self.name} answered HTTP {status}: "
                                  f"{_first_line(answer.body)}")
        cls = _REFUSALS.get(status, WitnessRefused)
        return cls(self.name, _first_line(answer.body) or f"HTTP {status}", status=status)

    async def _post(self, body: bytes) -> _Answer:
        url = f"{self.endpoint.url}/add-checkpoint"
        try:
            async with self.session.post(url, data=body, timeout=self.timeout,
                                         allow_redirects=False,
                                         headers={"Accept-Encoding": "identity"}) as resp:
                encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise WitnessResponseError(f"witness {self.name} answered compressed "
                                               f"({encoding}) although identity was asked")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(8192):
                    data += chunk
                    if len(data) > MAX_ANSWER:
                        raise WitnessResponseError(f"witness {self.name} answered more than "
                                                   f"{MAX_ANSWER} bytes")
                return _Answer(resp.status, resp.content_type, bytes(data))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransportError(f"cannot reach witness {self.name} at {url}: "
                                 f"{exc or type(exc).__name__}") from exc
