"""What can go wrong for a verifying client, by class (docs/cli.md, ``chronicle verify``).

Each class is a refinement of exit code 1 that a CI job can branch on; the CLI maps
:attr:`VerifyFault.kind` to its code. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from chronicle.core.errors import ChronicleError


@dataclass(frozen=True, slots=True)
class FaultClass:
    """One fault class: its name, exit code and what it means."""

    kind: str
    code: int
    meaning: str


#: In order of precedence: when packages of one lock file fail for different reasons, the
#: command exits with the code of the first class in this list that occurred.
FAULT_CLASSES: Final = (
    FaultClass("split-view", 15, "split view: a mirror holds another history for our head, "
               "or the ledger no longer holds the entry we last verified (evidence kept)"),
    FaultClass("held-for-review", 16, "a history violation or a core-vendor emergency "
               "action is held for `chronicle verify review`"),
    FaultClass("stale", 17, "--offline and the last sync is older than --max-age (or there "
               "was none)"),
    FaultClass("quorum", 18, "fewer than --quorum mirrors confirmed our head"),
    FaultClass("digest-mismatch", 13, "the recomputed source tree digest (or dist SHA-256) "
               "differs from the release's"),
    FaultClass("untrusted-key", 12, "the release's key is not trusted: unknown, revoked, "
               "not valid when the release was appended, or trusted only through a "
               "core-vendor action the policy ignores"),
    FaultClass("revoked-release", 11, "the release was revoked by its vendor"),
    FaultClass("unknown-release", 10, "no release of that package and version on the ledger"),
    FaultClass("unsigned-denied", 14, "the package's vendor signs nothing on the ledger and "
               "the policy for its namespace is deny"),
)
FAULT_CODES: Final = {f.kind: f.code for f in FAULT_CLASSES}
_PRECEDENCE: Final = {f.kind: i for i, f in enumerate(FAULT_CLASSES)}


def worst(kinds: list[str]) -> str | None:
    """The kind that decides the exit code among several (None if there are none)."""
    return min(kinds, key=_PRECEDENCE.__getitem__) if kinds else None


class VerifyFault(ChronicleError):
    """A refusal of one fault class; ``details`` go into the ``--json`` error object."""

    def __init__(self, kind: str, message: str, **details: Any) -> None:
        if kind not in FAULT_CODES:
            raise ValueError(f"unknown fault class {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.details = details

    @property
    def code(self) -> int:
        return FAULT_CODES[self.kind]

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.kind, "message": self.message, **self.details}
