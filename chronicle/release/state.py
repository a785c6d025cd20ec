"""The release rules and the state they build: pure, deterministic, shared by gate and verifier.

Spec: release.md "Our rules". Entries are judged one at a time, in chain order, against a
small read interface (:class:`ReleaseView`). A judgment is :class:`Accepted` (with the
:data:`Effect` rows to persist), :class:`Violation` (a stable code, an exact message and
the HTTP status the gate answers with) or :class:`Skipped` (not a release message).

Two callers:

- a verifier replays a whole chain into a :class:`ReleaseState` (:func:`replay`);
- the ledger's gate asks :func:`needs` what a message reads, prefetches those rows into a
  partial :class:`ReleaseState` (:meth:`ReleaseState.partial`), judges the batch's
  messages in order, applying each accepted one's effects before judging the next, and
  persists the effects row by row. A partial state refuses (:class:`NotPrefetched`) any
  read outside what was prefetched, so a gap in :func:`needs` fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Protocol

from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import RequestError
from chronicle.release.messages import (
    OP_ADD_KEY,
    OP_ATTEST_UPDATE,
    OP_REVOKE_KEY,
    OP_REVOKE_UPDATE,
    OP_UPDATE,
    AddKey,
    AttestUpdate,
    EnableLedger,
    MalformedMessage,
    Metadata,
    NotRelease,
    ReleaseMessage,
    RevokeKey,
    RevokeUpdate,
    Update,
    UpdateRef,
    classify,
)

# --- violations -----------------------------------------------------------------------------

# code -> (HTTP status, message template). 403: not authorised by the rules; 409: conflicts
# with the ledger's state (duplicates, replays); 404: names a key or update that is not
# there; 400: malformed.
VIOLATIONS: Final[dict[str, tuple[int, str]]] = {
    "malformed": (400, "malformed release message: {detail}"),
    "bad-signature": (403, "op-sig does not verify over op-body with op-public-key {key}"),
    "replay": (409, "op-sig was already used at entry {index}: the message is a replay"),
    "not-enabled": (403, "the release ledger is not enabled on this chain"),
    "enable-not-server": (403, "a Release Ledger Enabled entry must be signed by the "
                               "server key"),
    "already-enabled": (409, "the release ledger was already enabled at entry {index}"),
    "unknown-vendor": (403, "unknown vendor {vendor}: it has no keys"),
    "first-key-not-vouched": (403, "the first key of vendor {vendor} must be signed by a "
                                   "trusted key of the core vendor {core}"),
    "first-key-limited": (403, "the first key of vendor {vendor} cannot be limited"),
    "key-not-trusted": (403, "key {key} is not a trusted key of vendor {vendor}"),
    "key-revoked": (403, "key {key} of vendor {vendor} was revoked at entry {index}"),
    "limited-key-op": (403, "key {key} of vendor {vendor} is limited: it may only sign "
                            "update for {vendor}"),
    "self-revocation": (403, "key {key} cannot revoke itself: revoke it with another key "
                             "of vendor {vendor}"),
    "last-full-key": (409, "key {key} is the last full key of vendor {vendor}: add another "
                           "full key first"),
    "key-exists": (409, "key {key} was already added to vendor {vendor} at entry {index}"),
    "key-unknown": (404, "key {key} is not a key of vendor {vendor}"),
    "key-already-revoked": (409, "key {key} of vendor {vendor} was already revoked at entry "
                                 "{index}"),
    "update-exists": (409, "{vendor}/{name} {version} was already released at entry "
                           "{index}"),
    "update-unknown": (404, "there is no update {vendor}/{name} {version}"),
    "update-revoked": (409, "{vendor}/{name} {version} was already revoked at entry "
                            "{index}"),
    "attestor-mismatch": (403, "key {key} is not a trusted key of attestor {attestor}"),
}


class ReleaseViolation(RequestError):
    """A refused release message as an exception: ``code`` plus the HTTP ``status``."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message, status=status)
        self.code = code

    def diagnostics(self) -> str:
        return f"{self.code}: {self.message}"


class NotPrefetched(LookupError):
    """A partial state was asked for a row its prefetch did not cover (a gap in needs())."""


# --- positions, records, effects --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Position:
    """Where on the chain: the entry's index and currhash (base64url)."""

    index: int
    currhash: str


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """What the rules read of a chain entry. ``publickey`` is the entry signer's (base64url)."""

    index: int
    currhash: str
    created: str
    publickey: str
    contents: bytes

    @classmethod
    def from_entry(cls, entry: Entry) -> ChainEntry:
        return cls(index=entry.index, currhash=b64u_encode(entry.currhash),
                   created=entry.created, publickey=b64u_encode(entry.publickey),
                   contents=entry.contents)

    @property
    def at(self) -> Position:
        return Position(self.index, self.currhash)


@dataclass(frozen=True, slots=True)
class UpdateKey:
    """An update's identity: vendor, package name and Composer-normalised version."""

    vendor: str
    name: str
    version_key: str


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A vendor key: who added it where, whether limited, and its revocation if any."""

    vendor: str
    publickey: str
    name: str | None
    limited: bool
    added: Position
    added_by: str
    added_emergency: bool
    revoked: Position | None = None
    revoked_by: str | None = None
    revoked_emergency: bool = False

    @property
    def trusted(self) -> bool:
        return self.revoked is None


@dataclass(frozen=True, slots=True)
class UpdateRow:
    """An update as its entry inserted it: identity, the signed body verbatim, its metadata,
    who signed it, where, and whether the core vendor acted for the vendor."""

    at: Position
    vendor: str
    name: str
    version: str
    version_key: str
    metadata: Metadata
    body: str
    op_sig: str
    signer: str
    emergency: bool


@dataclass(frozen=True, slots=True)
class UpdateRecord(UpdateRow):
    """A release: the row its entry inserted, and its revocation if any."""

    revoked: Position | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    revoked_emergency: bool = False

    @property
    def key(self) -> UpdateKey:
        return UpdateKey(self.vendor, self.name, self.version_key)

    @classmethod
    def inserted(cls, row: UpdateRow) -> UpdateRecord:
        """The record that an :class:`AddUpdateEffect` inserts: ``row``, not revoked."""
        return cls(**{f.name: getattr(row, f.name) for f in fields(UpdateRow)})


@dataclass(frozen=True, slots=True)
class EnableEffect:
    """The ledger was enabled: one row, the core vendor and where."""

    at: Position
    now: str
    core_vendor: str
    core_key: str


@dataclass(frozen=True, slots=True)
class AddKeyEffect:
    """Insert a key row. ``first``: the vendor's first key (vouched by the core vendor)."""

    at: Position
    vendor: str
    publickey: str
    name: str | None
    limited: bool
    signer: str
    first: bool
    emergency: bool


@dataclass(frozen=True, slots=True)
class RevokeKeyEffect:
    """Mark key (vendor, publickey) revoked at ``at``."""

    at: Position
    vendor: str
    publickey: str
    signer: str
    emergency: bool


@dataclass(frozen=True, slots=True)
class AddUpdateEffect(UpdateRow):
    """Insert an update row (unique on vendor, name, version_key)."""


@dataclass(frozen=True, slots=True)
class RevokeUpdateEffect:
    """Mark update (vendor, name, version_key) revoked at ``at`` with ``reason``."""

    at: Position
    vendor: str
    name: str
    version: str
    version_key: str
    reason: str
    signer: str
    emergency: bool


@dataclass(frozen=True, slots=True)
class AttestationEffect:
    """Insert an attestation row (also the record type: attestations never change)."""

    at: Position
    vendor: str
    name: str
    version: str
    version_key: str
    attestor: str
    attestation: str
    details: str | None
    signer: str


@dataclass(frozen=True, slots=True)
class MarkOpSigEffect:
    """Remember an op-sig as used (unique), so the same signed message cannot come twice."""

    at: Position
    op_sig: str


Effect = (EnableEffect | AddKeyEffect | RevokeKeyEffect | AddUpdateEffect
          | RevokeUpdateEffect | AttestationEffect | MarkOpSigEffect)
Attestation = AttestationEffect


# --- verdicts ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Accepted:
    """The message is authorised; persist ``effects`` in order. ``emergency``: see release.md."""

    op: str
    effects: tuple[Effect, ...]
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class Violation:
    """The message breaks a rule; the gate answers ``status`` with ``message``."""

    code: str
    message: str
    status: int

    def error(self) -> ReleaseViolation:
        return ReleaseViolation(self.code, self.message, self.status)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Not a release message (:class:`~chronicle.release.messages.NotRelease` kinds)."""

    kind: str


Verdict = Accepted | Violation | Skipped


def violation(code: str, **fields: object) -> Violation:
    status, template = VIOLATIONS[code]
    return Violation(code=code, message=template.format(**fields), status=status)


# --- the read interface -------------------------------------------------------------------------

class ReleaseView(Protocol):
    """What a judgment reads. Sync lookups: the gate prefetches, then judges in memory."""

    def ledger(self) -> EnableEffect | None:
        """The enable row, or None while the release ledger is not enabled."""

    def vendor_keys(self, vendor: str) -> Sequence[KeyRecord]:
        """Every key ever added to ``vendor`` (trusted and revoked), in chain order."""

    def update(self, key: UpdateKey) -> UpdateRecord | None:
        """The update with this identity, revoked or not."""

    def op_sig_index(self, op_sig: str) -> int | None:
        """The index of the entry that used ``op_sig``, or None if unused."""


@dataclass(frozen=True, slots=True)
class Needs:
    """What judging one entry reads, beyond the enable row (always read).

    ``core_keys``: also the keys of the core vendor (named by the enable row).
    """

    vendors: frozenset[str] = frozenset()
    core_keys: bool = False
    updates: frozenset[UpdateKey] = frozenset()
    op_sigs: frozenset[str] = frozenset()

    def union(self, other: Needs) -> Needs:
        return Needs(vendors=self.vendors | other.vendors,
                     core_keys=self.core_keys or other.core_keys,
                     updates=self.updates | other.updates,
                     op_sigs=self.op_sigs | other.op_sigs)


def _update_key(body: UpdateRef) -> UpdateKey:
    return UpdateKey(body.vendor, body.name, body.version_key)


Classified = ReleaseMessage | EnableLedger | NotRelease | MalformedMessage
"""What an entry's contents are (:func:`classify`), a parse error included: the gate parses
each body once and hands the result to :func:`needs` and :func:`judge`."""


def classified(contents: bytes) -> Classified:
    """:func:`classify`, with a malformed message returned instead of raised."""
    try:
        return classify(contents)
    except MalformedMessage as exc:
        return exc


def needs(contents: bytes | Classified) -> Needs:
    """Exactly the rows :func:`judge` may read for these contents (enable row aside)."""
    message = classified(contents) if isinstance(contents, bytes) else contents
    if not isinstance(message, ReleaseMessage):
        return Needs()
    body = message.body
    sigs = frozenset({message.op_sig})
    if isinstance(body, AttestUpdate):
        return Needs(vendors=frozenset({body.attestor}), updates=frozenset({_update_key(body)}),
                     op_sigs=sigs)
    if isinstance(body, AddKey | RevokeKey):
        return Needs(vendors=frozenset({body.vendor}), core_keys=True, op_sigs=sigs)
    return Needs(vendors=frozenset({body.vendor}), core_keys=True,
                 updates=frozenset({_update_key(body)}), op_sigs=sigs)


# --- the rules ----------------------------------------------------------------------------------

def _find(keys: Sequence[KeyRecord], publickey: str) -> KeyRecord | None:
    for record in keys:
        if record.publickey == publickey:
            return record
    return None


@dataclass(frozen=True, slots=True)
class _Authority:
    emergency: bool


def _authorise(view: ReleaseView, ledger: EnableEffect, vendor: str,
               keys: Sequence[KeyRecord], signer: str, op: str) -> _Authority | Violation:
    """Who may act for ``vendor``: its own trusted keys, or the core vendor in an emergency.

    The vendor named in the message must be the signer's (libgossamer does not check this);
    only a full key of the core vendor may act for another vendor, and that is an emergency
    action the clients apply under their policy.
    """
    own = _find(keys, signer)
    if own is not None and own.trusted:
        if own.limited and op != OP_UPDATE:
            return violation("limited-key-op", key=signer, vendor=vendor)
        return _Authority(emergency=False)
    if vendor != ledger.core_vendor:
        core = _find(view.vendor_keys(ledger.core_vendor), signer)
        if core is not None and core.trusted:
            if core.limited:
                return violation("limited-key-op", key=signer, vendor=ledger.core_vendor)
            return _Authority(emergency=True)
    if own is not None:
        assert own.revoked is not None
        return violation("key-revoked", key=signer, vendor=vendor, index=own.revoked.index)
    return violation("key-not-trusted", key=signer, vendor=vendor)


def _judge_add_key(view: ReleaseView, ledger: EnableEffect, at: Position, body: AddKey,
                   signer: str) -> Accepted | Violation:
    keys = view.vendor_keys(body.vendor)
    if not keys:
        core = _find(view.vendor_keys(ledger.core_vendor), signer)
        if core is None or not core.trusted:
            return violation("first-key-not-vouched", vendor=body.vendor,
                             core=ledger.core_vendor)
        if core.limited:
            return violation("limited-key-op", key=signer, vendor=ledger.core_vendor)
        if body.limited:
            return violation("first-key-limited", vendor=body.vendor)
        return Accepted(OP_ADD_KEY, (AddKeyEffect(
            at=at, vendor=body.vendor, publickey=body.publickey, name=body.name,
            limited=False, signer=signer, first=True, emergency=False),))
    authority = _authorise(view, ledger, body.vendor, keys, signer, OP_ADD_KEY)
    if isinstance(authority, Violation):
        return authority
    existing = _find(keys, body.publickey)
    if existing is not None:
        return violation("key-exists", key=body.publickey, vendor=body.vendor,
                         index=existing.added.index)
    return Accepted(OP_ADD_KEY, (AddKeyEffect(
        at=at, vendor=body.vendor, publickey=body.publickey, name=body.name,
        limited=body.limited, signer=signer, first=False, emergency=authority.emergency),),
        emergency=authority.emergency)


def _judge_revoke_key(view: ReleaseView, ledger: EnableEffect, at: Position, body: RevokeKey,
                      signer: str) -> Accepted | Violation:
    keys = view.vendor_keys(body.vendor)
    if not keys:
        return violation("unknown-vendor", vendor=body.vendor)
    authority = _authorise(view, ledger, body.vendor, keys, signer, OP_REVOKE_KEY)
    if isinstance(authority, Violation):
        return authority
    if body.publickey == signer:
        return violation("self-revocation", key=signer, vendor=body.vendor)
    target = _find(keys, body.publickey)
    if target is None:
        return violation("key-unknown", key=body.publickey, vendor=body.vendor)
    if target.revoked is not None:
        return violation("key-already-revoked", key=body.publickey, vendor=body.vendor,
                         index=target.revoked.index)
    if not target.limited and sum(1 for k in keys if k.trusted and not k.limited) == 1:
        return violation("last-full-key", key=body.publickey, vendor=body.vendor)
    return Accepted(OP_REVOKE_KEY, (RevokeKeyEffect(
        at=at, vendor=body.vendor, publickey=body.publickey, signer=signer,
        emergency=authority.emergency),), emergency=authority.emergency)


def _judge_update(view: ReleaseView, ledger: EnableEffect, at: Position,
                  message: ReleaseMessage, body: Update | RevokeUpdate,
                  signer: str) -> Accepted | Violation:
    keys = view.vendor_keys(body.vendor)
    if not keys:
        return violation("unknown-vendor", vendor=body.vendor)
    authority = _authorise(view, ledger, body.vendor, keys, signer, body.op)
    if isinstance(authority, Violation):
        return authority
    key = _update_key(body)
    existing = view.update(key)
    names = {"vendor": body.vendor, "name": body.name, "version": body.version}
    effect: AddUpdateEffect | RevokeUpdateEffect
    if isinstance(body, Update):
        if existing is not None:
            return violation("update-exists", index=existing.at.index, **names)
        effect = AddUpdateEffect(
            at=at, vendor=body.vendor, name=body.name, version=body.version,
            version_key=key.version_key, metadata=body.metadata, body=message.body_text,
            op_sig=message.op_sig, signer=signer, emergency=authority.emergency)
    else:
        if existing is None:
            return violation("update-unknown", **names)
        if existing.revoked is not None:
            return violation("update-revoked", index=existing.revoked.index, **names)
        effect = RevokeUpdateEffect(
            at=at, vendor=body.vendor, name=body.name, version=body.version,
            version_key=key.version_key, reason=body.reason, signer=signer,
            emergency=authority.emergency)
    return Accepted(body.op, (effect,), emergency=authority.emergency)


def _judge_attest(view: ReleaseView, at: Position, body: AttestUpdate,
                  signer: str) -> Accepted | Violation:
    keys = view.vendor_keys(body.attestor)
    if not keys:
        return violation("unknown-vendor", vendor=body.attestor)
    own = _find(keys, signer)
    if own is None:
        return violation("attestor-mismatch", key=signer, attestor=body.attestor)
    if own.revoked is not None:
        return violation("key-revoked", key=signer, vendor=body.attestor,
                         index=own.revoked.index)
    if own.limited:
        return violation("limited-key-op", key=signer, vendor=body.attestor)
    key = _update_key(body)
    if view.update(key) is None:
        return violation("update-unknown", vendor=body.vendor, name=body.name,
                         version=body.version)
    return Accepted(OP_ATTEST_UPDATE, (AttestationEffect(
        at=at, vendor=body.vendor, name=body.name, version=body.version,
        version_key=key.version_key, attestor=body.attestor, attestation=body.attestation,
        details=body.details, signer=signer),))


def _judge_enable(view: ReleaseView, entry: ChainEntry, enable: EnableLedger,
                  server_key: str) -> Accepted | Violation:
    if entry.publickey != server_key:
        return violation("enable-not-server")
    current = view.ledger()
    if current is not None:
        return violation("already-enabled", index=current.at.index)
    at = entry.at
    return Accepted("enable", (
        EnableEffect(at=at, now=enable.now, core_vendor=enable.core_vendor,
                     core_key=enable.core_key),
        AddKeyEffect(at=at, vendor=enable.core_vendor, publickey=enable.core_key, name=None,
                     limited=False, signer=server_key, first=True, emergency=False),
    ))


def judge(view: ReleaseView, entry: ChainEntry, *, server_key: str,
          message: Classified | None = None) -> Verdict:
    """Judge one chain entry against ``view`` (the state after every earlier entry).

    Order of checks: parse (``malformed``), ledger enabled, ``op-sig`` (``bad-signature``),
    ``replay``, then the op's rules, authorisation before content. ``message``: the
    entry's contents already classified (:func:`classified`), else they are parsed here.
    """
    if message is None:
        message = classified(entry.contents)
    if isinstance(message, MalformedMessage):
        return violation("malformed", detail=message.message)
    if isinstance(message, NotRelease):
        return Skipped(message.kind)
    if isinstance(message, EnableLedger):
        return _judge_enable(view, entry, message, server_key)
    ledger = view.ledger()
    if ledger is None:
        return violation("not-enabled")
    if not message.signature_valid():
        return violation("bad-signature", key=message.op_public_key)
    used = view.op_sig_index(message.op_sig)
    if used is not None:
        return violation("replay", index=used)
    at, body, signer = entry.at, message.body, message.op_public_key
    verdict: Accepted | Violation
    if isinstance(body, AddKey):
        verdict = _judge_add_key(view, ledger, at, body, signer)
    elif isinstance(body, RevokeKey):
        verdict = _judge_revoke_key(view, ledger, at, body, signer)
    elif isinstance(body, AttestUpdate):
        verdict = _judge_attest(view, at, body, signer)
    else:
        verdict = _judge_update(view, ledger, at, message, body, signer)
    if isinstance(verdict, Accepted):
        return replace(verdict, effects=(*verdict.effects, MarkOpSigEffect(at, message.op_sig)))
    return verdict


# --- the in-memory state --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EmergencyAction:
    """An action the core vendor took for another vendor (clients: off / review / auto)."""

    at: Position
    op: str
    vendor: str
    signer: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """An entry a verifier found in violation (the gate would have refused it)."""

    at: Position
    code: str
    message: str


@dataclass(slots=True)
class _Scope:
    needs: Needs
    core_vendor: str | None


@dataclass(slots=True, eq=False, repr=False)
class ReleaseState:
    """The release ledger's state: a :class:`ReleaseView` that :meth:`apply` updates.

    Built empty and fed every entry (:meth:`ingest`, :func:`replay`) it is the full state a
    verifier holds; built by :meth:`partial` it holds only what a gate prefetched.
    """

    server_key: str
    _ledger: EnableEffect | None = None
    _keys: dict[str, list[KeyRecord]] = field(default_factory=dict)
    _updates: dict[UpdateKey, UpdateRecord] = field(default_factory=dict)
    _attestations: list[Attestation] = field(default_factory=list)
    _op_sigs: dict[str, int] = field(default_factory=dict)
    _emergency: list[EmergencyAction] = field(default_factory=list)
    _skipped: dict[str, int] = field(default_factory=dict)
    _rejected: list[Rejection] = field(default_factory=list)
    _scope: _Scope | None = None

    @classmethod
    def partial(cls, server_key: str, scope: Needs, *, ledger: EnableEffect | None,
                keys: Iterable[KeyRecord] = (), updates: Iterable[UpdateRecord] = (),
                op_sigs: Mapping[str, int] | None = None) -> ReleaseState:
        """A state holding only prefetched rows: the keys of ``scope``'s vendors (and of the
        core vendor when ``scope.core_keys``), ``scope``'s updates and used op-sigs."""
        state = cls(server_key=server_key, _ledger=ledger,
                    _scope=_Scope(scope, ledger.core_vendor if ledger else None))
        for record in sorted(keys, key=lambda k: k.added.index):
            state._keys.setdefault(record.vendor, []).append(record)
        for update in updates:
            state._updates[update.key] = update
        state._op_sigs.update(op_sigs or {})
        return state

    @classmethod
    def restore(cls, server_key: str, *, ledger: EnableEffect | None,
                keys: Iterable[KeyRecord], updates: Iterable[UpdateRecord],
                attestations: Iterable[Attestation], op_sigs: Mapping[str, int],
                skipped: Mapping[str, int]) -> ReleaseState:
        """The full state from the rows a gate persisted (every row, not a prefetch): the
        emergency actions are read off the records' flags. Serialised, it equals a replay
        of the same chain (:meth:`to_json`)."""
        state = cls(server_key=server_key, _ledger=ledger, _op_sigs=dict(op_sigs),
                    _skipped={k: v for k, v in skipped.items() if v})
        for record in sorted(keys, key=lambda k: k.added.index):
            state._keys.setdefault(record.vendor, []).append(record)
            state._note_emergency(record.added_emergency, record.added, OP_ADD_KEY,
                                  record.vendor, record.added_by)
            if record.revoked is not None and record.revoked_by is not None:
                state._note_emergency(record.revoked_emergency, record.revoked, OP_REVOKE_KEY,
                                      record.vendor, record.revoked_by)
        for update in sorted(updates, key=lambda u: u.at.index):
            state._updates[update.key] = update
            state._note_emergency(update.emergency, update.at, OP_UPDATE, update.vendor,
                                  update.signer)
            if update.revoked is not None and update.revoked_by is not None:
                state._note_emergency(update.revoked_emergency, update.revoked,
                                      OP_REVOKE_UPDATE, update.vendor, update.revoked_by)
        state._attestations = sorted(attestations, key=lambda a: a.at.index)
        state._emergency.sort(key=lambda e: e.at.index)
        return state

    def __repr__(self) -> str:
        return (f"ReleaseState(vendors={len(self._keys)}, updates={len(self._updates)}, "
                f"attestations={len(self._attestations)}, partial={self._scope is not None})")

    # -- ReleaseView
    def ledger(self) -> EnableEffect | None:
        return self._ledger

    def vendor_keys(self, vendor: str) -> Sequence[KeyRecord]:
        scope = self._scope
        if scope is not None and vendor not in scope.needs.vendors and not (
                scope.needs.core_keys and vendor == scope.core_vendor):
            raise NotPrefetched(f"keys of vendor {vendor!r} were not prefetched")
        return self._keys.get(vendor, ())

    def update(self, key: UpdateKey) -> UpdateRecord | None:
        if self._scope is not None and key not in self._scope.needs.updates:
            raise NotPrefetched(f"update {key} was not prefetched")
        return self._updates.get(key)

    def op_sig_index(self, op_sig: str) -> int | None:
        if self._scope is not None and op_sig not in self._scope.needs.op_sigs:
            raise NotPrefetched("op-sig was not prefetched")
        return self._op_sigs.get(op_sig)

    # -- judging and applying
    def judge(self, entry: ChainEntry, message: Classified | None = None) -> Verdict:
        return judge(self, entry, server_key=self.server_key, message=message)

    def apply(self, effects: Iterable[Effect]) -> None:
        """Apply an accepted message's effects (what the gate persists, row by row)."""
        for effect in effects:
            self._apply_one(effect)

    def _apply_one(self, effect: Effect) -> None:
        if isinstance(effect, EnableEffect):
            self._ledger = effect
            if self._scope is not None:
                self._scope.core_vendor = effect.core_vendor
        elif isinstance(effect, AddKeyEffect):
            self._keys.setdefault(effect.vendor, []).append(KeyRecord(
                vendor=effect.vendor, publickey=effect.publickey, name=effect.name,
                limited=effect.limited, added=effect.at, added_by=effect.signer,
                added_emergency=effect.emergency))
            self._note_emergency(effect.emergency, effect.at, OP_ADD_KEY, effect.vendor,
                                 effect.signer)
        elif isinstance(effect, RevokeKeyEffect):
            keys = self._keys[effect.vendor]
            for i, record in enumerate(keys):
                if record.publickey == effect.publickey:
                    keys[i] = replace(record, revoked=effect.at, revoked_by=effect.signer,
                                      revoked_emergency=effect.emergency)
            self._note_emergency(effect.emergency, effect.at, OP_REVOKE_KEY, effect.vendor,
                                 effect.signer)
        elif isinstance(effect, AddUpdateEffect):
            update = UpdateRecord.inserted(effect)
            self._updates[update.key] = update
            self._note_emergency(effect.emergency, effect.at, OP_UPDATE, effect.vendor,
                                 effect.signer)
        elif isinstance(effect, RevokeUpdateEffect):
            key = UpdateKey(effect.vendor, effect.name, effect.version_key)
            self._updates[key] = replace(self._updates[key], revoked=effect.at,
                                         revoked_by=effect.signer, revoke_reason=effect.reason,
                                         revoked_emergency=effect.emergency)
            self._note_emergency(effect.emergency, effect.at, OP_REVOKE_UPDATE, effect.vendor,
                                 effect.signer)
        elif isinstance(effect, AttestationEffect):
            self._attestations.append(effect)
        else:
            self._op_sigs[effect.op_sig] = effect.at.index

    def _note_emergency(self, emergency: bool, at: Position, op: str, vendor: str,
                        signer: str) -> None:
        if emergency:
            self._emergency.append(EmergencyAction(at=at, op=op, vendor=vendor, signer=signer))

    def ingest(self, entry: ChainEntry) -> Verdict:
        """The verifier's step: judge, then apply, record the rejection, or count the skip."""
        verdict = self.judge(entry)
        if isinstance(verdict, Accepted):
            self.apply(verdict.effects)
        elif isinstance(verdict, Violation):
            self._rejected.append(Rejection(entry.at, verdict.code, verdict.message))
        else:
            self._skipped[verdict.kind] = self._skipped.get(verdict.kind, 0) + 1
        return verdict

    # -- queries
    def vendors(self) -> list[str]:
        return sorted(self._keys)

    def trusted_keys(self, vendor: str) -> list[KeyRecord]:
        return [k for k in self._keys.get(vendor, ()) if k.trusted]

    def updates(self) -> list[UpdateRecord]:
        return sorted(self._updates.values(), key=lambda u: u.at.index)

    def attestations(self) -> list[Attestation]:
        return list(self._attestations)

    def emergency_actions(self) -> list[EmergencyAction]:
        return list(self._emergency)

    def rejected(self) -> list[Rejection]:
        return list(self._rejected)

    def skipped(self) -> dict[str, int]:
        return dict(sorted(self._skipped.items()))

    def to_json(self) -> bytes:
        """Canonical serialisation: compact ASCII JSON, fixed key order, rows in chain order.

        Two replays of the same entries give the same bytes (release.md: state is a pure
        function of the entries).
        """
        doc: dict[str, Any] = {
            "ledger": None if self._ledger is None else {
                "at": _pos(self._ledger.at), "now": self._ledger.now,
                "core-vendor": self._ledger.core_vendor, "core-key": self._ledger.core_key},
            "vendors": [{"vendor": v, "keys": [_key_obj(k) for k in self._keys[v]]}
                        for v in self.vendors()],
            "updates": [_update_obj(u) for u in self.updates()],
            "attestations": [_attestation_obj(a) for a in
                             sorted(self._attestations, key=lambda a: a.at.index)],
            "emergency": [{"at": _pos(e.at), "op": e.op, "vendor": e.vendor,
                           "signer": e.signer}
                          for e in sorted(self._emergency, key=lambda e: e.at.index)],
            "op-sigs": [[i, s] for s, i in sorted(self._op_sigs.items(), key=lambda p: p[1])],
            "skipped": self.skipped(),
            "rejected": [{"at": _pos(r.at), "code": r.code, "message": r.message}
                         for r in sorted(self._rejected, key=lambda r: r.at.index)],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _pos(at: Position | None) -> list[object] | None:
    return None if at is None else [at.index, at.currhash]


def _key_obj(k: KeyRecord) -> dict[str, Any]:
    return {"publickey": k.publickey, "name": k.name, "limited": k.limited,
            "added": _pos(k.added), "added-by": k.added_by, "added-emergency": k.added_emergency,
            "revoked": _pos(k.revoked), "revoked-by": k.revoked_by,
            "revoked-emergency": k.revoked_emergency}


def _update_obj(u: UpdateRecord) -> dict[str, Any]:
    return {"vendor": u.vendor, "name": u.name, "version": u.version,
            "version-key": u.version_key, "at": _pos(u.at), "signer": u.signer,
            "emergency": u.emergency, "op-sig": u.op_sig, "body": u.body,
            "verifiable": u.metadata.verifiable, "revoked": _pos(u.revoked),
            "revoked-by": u.revoked_by, "revoke-reason": u.revoke_reason,
            "revoked-emergency": u.revoked_emergency}


def _attestation_obj(a: Attestation) -> dict[str, Any]:
    return {"at": _pos(a.at), "vendor": a.vendor, "name": a.name, "version": a.version,
            "version-key": a.version_key, "attestor": a.attestor,
            "attestation": a.attestation, "details": a.details, "signer": a.signer}


def replay(entries: Iterable[ChainEntry], *, server_key: str) -> ReleaseState:
    """A verifier's full state after ``entries`` (chain order)."""
    state = ReleaseState(server_key=server_key)
    for entry in entries:
        state.ingest(entry)
    return state
