"""The release state kept with a release ledger's entries (issue 12; release-format.md §6).

Tables (schema migration 5), one set per chain that was turned into a release ledger:

- ``release_ledgers``: the chain's row, created by ``chronicle release enable`` (the server
  key that may sign its enable entry, when it was prepared) and completed by the enable
  entry itself (position, ``now``, core vendor and key);
- ``release_keys``, ``release_updates``, ``release_attestations``, ``release_op_sigs``:
  the rows of the :data:`~chronicle.release.state.Effect` s the gate accepted, keyed as
  the rules look them up (an update by ``ident``: vendor/name and normalised version);
- ``release_skipped``: how many entries of each kind were not release messages (so the
  persisted state serialises exactly as a replay of the chain does).

:class:`ReleaseHook` is the gate, a chain hook: inside each batch's transaction it reads
the enable row (no row: not a release ledger, nothing to do), prefetches exactly the rows
the batch's messages need (:func:`~chronicle.release.state.needs`) into a partial state,
judges every entry in order before it is appended (a refusal is the publisher's answer;
nothing of it is stored), applies each accepted entry's effects so the next one in the
batch is judged against them, and writes the effects with the entries. The state is never
rebuilt from the chain on a publish.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import ChronicleError, RequestError
from chronicle.release.messages import OP_UPDATE, Update, parse_body
from chronicle.release.state import (
    Accepted,
    AddKeyEffect,
    AddUpdateEffect,
    Attestation,
    AttestationEffect,
    ChainEntry,
    Classified,
    Effect,
    EnableEffect,
    KeyRecord,
    MarkOpSigEffect,
    Needs,
    Position,
    ReleaseState,
    RevokeKeyEffect,
    RevokeUpdateEffect,
    Skipped,
    UpdateKey,
    UpdateRecord,
    Violation,
    classified,
    needs,
)
from chronicle.store.chains import Candidate, ChainHook, HookBatch, WriteTx
from chronicle.store.sql import IN_LIST, Database, InstanceScoped, Row, Session

_LEDGER_COLS = ("server_key, prepared, enabled_idx, enabled_hash, enabled_now, core_vendor, "
                "core_key")
_KEY_COLUMNS = ("instance", "vendor", "publickey", "name", "limited", "first", "added_idx",
                "added_hash", "added_by", "added_emergency", "revoked_idx", "revoked_hash",
                "revoked_by", "revoked_emergency")
_KEY_COLS = ", ".join(_KEY_COLUMNS[1:])
_UPDATE_COLUMNS = ("instance", "ident", "vendor", "name", "version", "version_key", "idx",
                   "currhash", "body", "op_sig", "signer", "emergency", "revoked_idx",
                   "revoked_hash", "revoked_by", "revoke_reason", "revoked_emergency")
_UPDATE_COLS = ", ".join(_UPDATE_COLUMNS[2:])
_ATTEST_COLUMNS = ("instance", "idx", "currhash", "ident", "vendor", "name", "version",
                   "version_key", "attestor", "attestation", "details", "signer")
_ATTEST_COLS = "idx, currhash, vendor, name, version, version_key, attestor, attestation, " \
               "details, signer"

_KEYS_OF = (f"SELECT {_KEY_COLS} FROM release_keys WHERE instance = ? "  # noqa: S608
            f"AND vendor {IN_LIST}")
_UPDATES_OF = (f"SELECT {_UPDATE_COLS} FROM release_updates WHERE instance = ? "  # noqa: S608
               f"AND ident {IN_LIST}")
_OP_SIGS_OF = f"SELECT op_sig, idx FROM release_op_sigs WHERE instance = ? AND op_sig {IN_LIST}"  # noqa: S608


def ident(key: UpdateKey) -> str:
    """An update's identity as one indexed text (names hold neither ``/`` nor spaces)."""
    return f"{key.vendor}/{key.name} {key.version_key}"


def _pos(index: Any, currhash: Any) -> Position | None:
    return None if index is None else Position(int(index), str(currhash))


def _key(row: Row) -> KeyRecord:
    added = _pos(row[5], row[6])
    assert added is not None
    return KeyRecord(vendor=row[0], publickey=row[1], name=row[2], limited=bool(row[3]),
                     added=added, added_by=row[7], added_emergency=bool(row[8]),
                     revoked=_pos(row[9], row[10]), revoked_by=row[11],
                     revoked_emergency=bool(row[12]))


def _update(row: Row) -> UpdateRecord:
    body = parse_body(OP_UPDATE, row[6])
    assert isinstance(body, Update)
    return UpdateRecord(at=Position(int(row[4]), row[5]), vendor=row[0], name=row[1],
                        version=row[2], version_key=row[3], metadata=body.metadata,
                        body=row[6], op_sig=row[7], signer=row[8], emergency=bool(row[9]),
                        revoked=_pos(row[10], row[11]), revoked_by=row[12],
                        revoke_reason=row[13], revoked_emergency=bool(row[14]))


def _attestation(row: Row) -> Attestation:
    return AttestationEffect(at=Position(int(row[0]), row[1]), vendor=row[2], name=row[3],
                             version=row[4], version_key=row[5], attestor=row[6],
                             attestation=row[7], details=row[8], signer=row[9])


@dataclass(frozen=True, slots=True)
class ReleaseLedger:
    """A chain's release row: ``enable`` is None until its enable entry is on the chain."""

    instance_id: int
    server_key: str
    prepared: str
    enable: EnableEffect | None


def _ledger(instance_id: int, row: Row) -> ReleaseLedger:
    enable = None if row[2] is None else EnableEffect(
        at=Position(int(row[2]), row[3]), now=row[4], core_vendor=row[5], core_key=row[6])
    return ReleaseLedger(instance_id, row[0], row[1], enable)


# --- the gate ---------------------------------------------------------------------------------

@dataclass(slots=True)
class ReleaseBatch(HookBatch):
    """One batch's part: the partial state, the verdicts admitted, the effects to write."""

    instance_id: int
    state: ReleaseState
    parsed: dict[bytes, Classified]
    admitted: dict[int, Accepted | Skipped] = field(default_factory=dict)
    effects: list[Effect] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def admit(self, candidate: Candidate) -> ChronicleError | None:
        verdict = self.state.judge(ChainEntry(
            index=candidate.index, currhash=b64u_encode(candidate.currhash),
            created=candidate.created, publickey=b64u_encode(candidate.publickey),
            contents=candidate.contents), self.parsed.get(candidate.contents))
        if isinstance(verdict, Violation):
            return verdict.error()
        self.admitted[candidate.index] = verdict
        return None

    def appended(self, entry: Entry) -> None:
        verdict = self.admitted.pop(entry.index, None)
        if verdict is None:
            # An import appends verified entries without asking: judge them all the same,
            # so a release ledger never holds what its gate would have refused.
            judged = self.state.judge(ChainEntry.from_entry(entry))
            if isinstance(judged, Violation):
                raise RequestError(f"entry {entry.index} breaks the release rules: "
                                   f"{judged.message}", status=judged.status)
            verdict = judged
        if isinstance(verdict, Skipped):
            self.skipped[verdict.kind] = self.skipped.get(verdict.kind, 0) + 1
            return
        self.state.apply(verdict.effects)
        self.effects.extend(verdict.effects)

    async def commit(self, tx: WriteTx) -> None:
        await write_effects(tx.session, self.instance_id, self.effects, self.skipped)


async def write_effects(session: Session, iid: int, effects: Sequence[Effect],
                        skipped: dict[str, int]) -> None:
    """Persist accepted effects (inserts first, then the revocations of rows that exist
    by then) and the skipped counts, inside the batch's transaction."""
    keys, updates, attestations, sigs = [], [], [], []
    later: list[Effect] = []
    for e in effects:
        if isinstance(e, AddKeyEffect):
            keys.append((iid, e.vendor, e.publickey, e.name, e.limited, e.first, e.at.index,
                         e.at.currhash, e.signer, e.emergency, None, None, None, False))
        elif isinstance(e, AddUpdateEffect):
            updates.append((iid, ident(UpdateKey(e.vendor, e.name, e.version_key)), e.vendor,
                            e.name, e.version, e.version_key, e.at.index, e.at.currhash,
                            e.body, e.op_sig, e.signer, e.emergency, None, None, None, None,
                            False))
        elif isinstance(e, AttestationEffect):
            attestations.append((iid, e.at.index, e.at.currhash,
                                 ident(UpdateKey(e.vendor, e.name, e.version_key)), e.vendor,
                                 e.name, e.version, e.version_key, e.attestor, e.attestation,
                                 e.details, e.signer))
        elif isinstance(e, MarkOpSigEffect):
            sigs.append((iid, e.op_sig, e.at.index))
        else:
            later.append(e)
    for table, columns, rows in (("release_keys", _KEY_COLUMNS, keys),
                                 ("release_updates", _UPDATE_COLUMNS, updates),
                                 ("release_attestations", _ATTEST_COLUMNS, attestations),
                                 ("release_op_sigs", ("instance", "op_sig", "idx"), sigs)):
        if rows:
            await session.bulk_insert(table, columns, rows)
    for e in later:
        await _write_change(session, iid, e)
    for kind, count in sorted(skipped.items()):
        await session.execute(
            "INSERT INTO release_skipped (instance, kind, count) VALUES (?, ?, ?) "
            "ON CONFLICT (instance, kind) DO UPDATE SET count = release_skipped.count + "
            "excluded.count", iid, kind, count)


async def _write_change(session: Session, iid: int, e: Effect) -> None:
    if isinstance(e, EnableEffect):
        changed = await session.execute(
            "UPDATE release_ledgers SET enabled_idx = ?, enabled_hash = ?, enabled_now = ?, "
            "core_vendor = ?, core_key = ? WHERE instance = ? AND enabled_idx IS NULL",
            e.at.index, e.at.currhash, e.now, e.core_vendor, e.core_key, iid)
    elif isinstance(e, RevokeKeyEffect):
        changed = await session.execute(
            "UPDATE release_keys SET revoked_idx = ?, revoked_hash = ?, revoked_by = ?, "
            "revoked_emergency = ? WHERE instance = ? AND vendor = ? AND publickey = ? "
            "AND revoked_idx IS NULL", e.at.index, e.at.currhash, e.signer, e.emergency,
            iid, e.vendor, e.publickey)
    else:
        assert isinstance(e, RevokeUpdateEffect)
        changed = await session.execute(
            "UPDATE release_updates SET revoked_idx = ?, revoked_hash = ?, revoked_by = ?, "
            "revoke_reason = ?, revoked_emergency = ? WHERE instance = ? AND ident = ? "
            "AND revoked_idx IS NULL", e.at.index, e.at.currhash, e.signer, e.reason,
            e.emergency, iid, ident(UpdateKey(e.vendor, e.name, e.version_key)))
    if changed != 1:
        raise RequestError(f"the release state is out of step with its chain at entry "
                           f"{e.at.index}", status=500)


class ReleaseHook(ChainHook):
    """The release gate on every chain that has a ``release_ledgers`` row.

    A chain's row is read inside every batch's transaction until its enable entry is
    committed; from then on it never changes (a release ledger is never disabled), so it
    is kept in memory.
    """

    def __init__(self) -> None:
        self._enabled: dict[int, ReleaseLedger] = {}

    async def begin(self, tx: WriteTx, contents: Sequence[bytes]) -> ReleaseBatch | None:
        ledger = self._enabled.get(tx.instance_id)
        if ledger is None:
            row = await tx.session.fetchrow(
                f"SELECT {_LEDGER_COLS} FROM release_ledgers WHERE instance = ?",  # noqa: S608
                tx.instance_id)
            if row is None:
                return None
            ledger = _ledger(tx.instance_id, row)
            if ledger.enable is not None:
                self._enabled[tx.instance_id] = ledger
        parsed = {body: classified(body) for body in contents}
        each = [needs(message) for message in parsed.values()]
        scope = Needs(vendors=frozenset().union(*(n.vendors for n in each)),
                      core_keys=any(n.core_keys for n in each),
                      updates=frozenset().union(*(n.updates for n in each)),
                      op_sigs=frozenset().union(*(n.op_sigs for n in each)))
        vendors = set(scope.vendors)
        if scope.core_keys and ledger.enable is not None:
            vendors.add(ledger.enable.core_vendor)
        session, iid = tx.session, tx.instance_id
        keys = [_key(r) for r in await session.fetch_in(_KEYS_OF, (iid,), sorted(vendors),
                                                        "text")] if vendors else []
        updates = [_update(r) for r in await session.fetch_in(
            _UPDATES_OF, (iid,), sorted(ident(u) for u in scope.updates), "text")] \
            if scope.updates else []
        sigs = {r[0]: int(r[1]) for r in await session.fetch_in(
            _OP_SIGS_OF, (iid,), sorted(scope.op_sigs), "text")} if scope.op_sigs else {}
        return ReleaseBatch(iid, ReleaseState.partial(
            ledger.server_key, scope, ledger=ledger.enable, keys=keys, updates=updates,
            op_sigs=sigs), parsed)


# --- the store concern --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VendorSummary:
    """A vendor in the listing: keys ever added, how many are trusted, its first key's
    entry."""

    vendor: str
    keys: int
    trusted: int
    since: int


class ReleaseStore(InstanceScoped):
    """The release state's reads (the endpoints, status) and the preparation of enabling."""

    def __init__(self, db: Database, instance_id: Callable[[str], Awaitable[int]]) -> None:
        super().__init__(db, instance_id)
        self.hook = ReleaseHook()

    async def ledger(self, instance: str) -> ReleaseLedger | None:
        iid = await self._instance_id(instance)
        found = await self._db.read(
            f"SELECT {_LEDGER_COLS} FROM release_ledgers WHERE instance = ?", iid)  # noqa: S608
        return _ledger(iid, found[0]) if found else None

    async def prepare(self, tx: WriteTx, server_key: str, when: str,
                      skipped: dict[str, int]) -> None:
        """Under the chain-head lock: make the chain a release ledger awaiting its enable
        entry (the gate runs from this commit on), with the skipped counts of its history."""
        await tx.session.execute(
            "INSERT INTO release_ledgers (instance, server_key, prepared) VALUES (?, ?, ?)",
            tx.instance_id, server_key, when)
        await write_effects(tx.session, tx.instance_id, (), skipped)

    # --- reads --------------------------------------------------------------------------

    async def vendor_page(self, instance: str, after: str, limit: int
                          ) -> tuple[list[VendorSummary], str | None]:
        """Vendors by name after ``after``, and the cursor of the next page (None: last)."""
        iid = await self._instance_id(instance)
        found = await self._db.read(
            "SELECT vendor, COUNT(*), SUM(CASE WHEN revoked_idx IS NULL THEN 1 ELSE 0 END), "
            "MIN(added_idx) FROM release_keys WHERE instance = ? AND vendor > ? "
            "GROUP BY vendor ORDER BY vendor LIMIT ?", iid, after, limit + 1)
        page = [VendorSummary(r[0], int(r[1]), int(r[2]), int(r[3])) for r in found[:limit]]
        return page, page[-1].vendor if len(found) > limit else None

    async def keys(self, instance: str, vendor: str) -> list[KeyRecord]:
        """Every key ever added to ``vendor``, in chain order."""
        iid = await self._instance_id(instance)
        found = await self._db.read(f"SELECT {_KEY_COLS} FROM release_keys "  # noqa: S608
                                    "WHERE instance = ? AND vendor = ? ORDER BY added_idx",
                                    iid, vendor)
        return [_key(r) for r in found]

    async def updates(self, instance: str, vendor: str, name: str, after: int,
                      limit: int) -> tuple[list[UpdateRecord], int | None]:
        """One package's updates in chain order after entry ``after``."""
        iid = await self._instance_id(instance)
        found = await self._db.read(f"SELECT {_UPDATE_COLS} FROM release_updates "  # noqa: S608
                                    "WHERE instance = ? AND vendor = ? AND name = ? "
                                    "AND idx > ? ORDER BY idx LIMIT ?", iid, vendor, name,
                                    after, limit + 1)
        records = [_update(r) for r in found[:limit]]
        return records, records[-1].at.index if len(found) > limit else None

    async def update(self, instance: str, key: UpdateKey) -> UpdateRecord | None:
        iid = await self._instance_id(instance)
        found = await self._db.read(f"SELECT {_UPDATE_COLS} FROM release_updates "  # noqa: S608
                                    "WHERE instance = ? AND ident = ?", iid, ident(key))
        return _update(found[0]) if found else None

    async def attestations(self, instance: str, key: UpdateKey, after: int, limit: int
                           ) -> tuple[list[Attestation], int | None]:
        iid = await self._instance_id(instance)
        found = await self._db.read(f"SELECT {_ATTEST_COLS} FROM release_attestations "  # noqa: S608
                                    "WHERE instance = ? AND ident = ? AND idx > ? "
                                    "ORDER BY idx LIMIT ?", iid, ident(key), after, limit + 1)
        records = [_attestation(r) for r in found[:limit]]
        return records, records[-1].at.index if len(found) > limit else None

    async def counts(self, instance: str) -> dict[str, int]:
        """How many vendors, keys, updates, attestations and op-sigs the state holds."""
        iid = await self._instance_id(instance)
        out: dict[str, int] = {}
        for name, sql in (("vendors", "SELECT COUNT(DISTINCT vendor) FROM release_keys"),
                          ("keys", "SELECT COUNT(*) FROM release_keys"),
                          ("updates", "SELECT COUNT(*) FROM release_updates"),
                          ("attestations", "SELECT COUNT(*) FROM release_attestations"),
                          ("messages", "SELECT COUNT(*) FROM release_op_sigs")):
            found = await self._db.read(f"{sql} WHERE instance = ?", iid)
            out[name] = int(found[0][0])
        return out

    async def skipped(self, instance: str) -> dict[str, int]:
        """How many entries of each kind were not release messages."""
        found = await self._db.read("SELECT kind, count FROM release_skipped WHERE "
                                    "instance = ? ORDER BY kind",
                                    await self._instance_id(instance))
        return {r[0]: int(r[1]) for r in found if int(r[1])}

    async def state(self, instance: str) -> ReleaseState | None:
        """The whole persisted state (every row), or None on a chain that is no release
        ledger: what a replay of the chain must equal, byte for byte."""
        ledger = await self.ledger(instance)
        if ledger is None:
            return None
        iid = ledger.instance_id
        keys = [_key(r) for r in await self._db.scan(
            f"SELECT {_KEY_COLS} FROM release_keys WHERE instance = ?", iid)]  # noqa: S608
        updates = [_update(r) for r in await self._db.scan(
            f"SELECT {_UPDATE_COLS} FROM release_updates WHERE instance = ?", iid)]  # noqa: S608
        attestations = [_attestation(r) for r in await self._db.scan(
            f"SELECT {_ATTEST_COLS} FROM release_attestations WHERE instance = ?", iid)]  # noqa: S608
        sigs = {r[0]: int(r[1]) for r in await self._db.scan(
            "SELECT op_sig, idx FROM release_op_sigs WHERE instance = ?", iid)}
        skipped = {r[0]: int(r[1]) for r in await self._db.scan(
            "SELECT kind, count FROM release_skipped WHERE instance = ?", iid)}
        return ReleaseState.restore(ledger.server_key, ledger=ledger.enable, keys=keys,
                                    updates=updates, attestations=attestations, op_sigs=sigs,
                                    skipped=skipped)

