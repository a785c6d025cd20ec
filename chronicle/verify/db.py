"""The verifier's release state on disk (``state.db``, SQLite): a
:class:`~chronicle.release.state.ReleaseView` for the gate's pure :func:`judge`, and the
effects of each accepted message applied as rows, as the ledger's gate persists them.

On disk, so memory stays flat however many releases the ledger holds, and a sync touches
only the rows its new entries read or write. One transaction per sync: everything a sync
changes (rows, the sync position in ``meta``, the unjudged entries) commits together or
not at all. :meth:`ReleaseDB.to_state` rebuilds the in-memory :class:`ReleaseState`
(tests hold it to :func:`replay` of the same entries, byte for byte).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from chronicle.core.errors import ChronicleError
from chronicle.release.messages import (
    OP_ADD_KEY,
    OP_REVOKE_KEY,
    OP_REVOKE_UPDATE,
    OP_UPDATE,
    Update,
    parse_body,
)
from chronicle.release.state import (
    Accepted,
    AddKeyEffect,
    AddUpdateEffect,
    AttestationEffect,
    ChainEntry,
    Effect,
    EmergencyAction,
    EnableEffect,
    KeyRecord,
    MarkOpSigEffect,
    Position,
    Rejection,
    ReleaseState,
    RevokeKeyEffect,
    RevokeUpdateEffect,
    Skipped,
    UpdateKey,
    UpdateRecord,
    Verdict,
    Violation,
    judge,
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    vendor TEXT NOT NULL, publickey TEXT NOT NULL, name TEXT, limited INTEGER NOT NULL,
    added_index INTEGER NOT NULL, added_currhash TEXT NOT NULL, added_by TEXT NOT NULL,
    added_emergency INTEGER NOT NULL, revoked_index INTEGER, revoked_currhash TEXT,
    revoked_by TEXT, revoked_emergency INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vendor, publickey));
CREATE TABLE IF NOT EXISTS updates (
    vendor TEXT NOT NULL, name TEXT NOT NULL, version_key TEXT NOT NULL,
    version TEXT NOT NULL, at_index INTEGER NOT NULL, at_currhash TEXT NOT NULL,
    body TEXT NOT NULL, op_sig TEXT NOT NULL, signer TEXT NOT NULL, emergency INTEGER NOT NULL,
    revoked_index INTEGER, revoked_currhash TEXT, revoked_by TEXT, revoke_reason TEXT,
    revoked_emergency INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vendor, name, version_key));
CREATE TABLE IF NOT EXISTS attestations (
    at_index INTEGER NOT NULL, at_currhash TEXT NOT NULL, vendor TEXT NOT NULL,
    name TEXT NOT NULL, version TEXT NOT NULL, version_key TEXT NOT NULL,
    attestor TEXT NOT NULL, attestation TEXT NOT NULL, details TEXT, signer TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS op_sigs (op_sig TEXT PRIMARY KEY, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS emergency (
    at_index INTEGER NOT NULL, at_currhash TEXT NOT NULL, op TEXT NOT NULL,
    vendor TEXT NOT NULL, signer TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    at_index INTEGER NOT NULL, at_currhash TEXT NOT NULL, code TEXT NOT NULL,
    message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    idx INTEGER PRIMARY KEY, currhash TEXT NOT NULL, created TEXT NOT NULL,
    publickey TEXT NOT NULL, contents BLOB NOT NULL);
"""

_KEY_COLS: Final = ("name, limited, added_index, added_currhash, added_by, added_emergency, "
                    "revoked_index, revoked_currhash, revoked_by, revoked_emergency, publickey")
_UPDATE_COLS: Final = ("vendor, name, version, version_key, at_index, at_currhash, body, "
                       "op_sig, signer, emergency, revoked_index, revoked_currhash, "
                       "revoked_by, revoke_reason, revoked_emergency")


class BusyError(ChronicleError):
    """Another process holds the state directory's write transaction."""


def _pos(index: int | None, currhash: str | None) -> Position | None:
    return None if index is None or currhash is None else Position(index, currhash)


class ReleaseDB:
    """``state.db``: the release state as rows, the sync position, the unjudged entries."""

    def __init__(self, path: Path, server_key: str, *, busy_timeout: float = 5.0) -> None:
        self.server_key = server_key
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)
        self._ledger: EnableEffect | None = None
        self._ledger_loaded = False
        self._skipped: dict[str, int] | None = None

    def close(self) -> None:
        self.conn.close()

    # -- transactions
    def begin(self) -> None:
        """Start the one write transaction of a sync; refused while another holds it."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BusyError(f"state.db is busy: another chronicle verify is syncing it "
                            f"({exc})") from None
        self._ledger_loaded = False
        self._skipped = None

    def commit(self) -> None:
        if self._skipped is not None:
            self.set_meta("skipped", self._skipped)
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self._ledger_loaded = False
        self._skipped = None

    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                          "DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    # -- ReleaseView
    def ledger(self) -> EnableEffect | None:
        if not self._ledger_loaded:
            doc = self.get_meta("ledger")
            self._ledger = None if doc is None else EnableEffect(
                at=Position(doc["at"][0], doc["at"][1]), now=doc["now"],
                core_vendor=doc["core-vendor"], core_key=doc["core-key"])
            self._ledger_loaded = True
        return self._ledger

    def vendor_keys(self, vendor: str) -> Sequence[KeyRecord]:
        rows = self.conn.execute(f"SELECT {_KEY_COLS} FROM keys WHERE vendor = ? "  # noqa: S608
                                 "ORDER BY added_index", (vendor,)).fetchall()
        return [KeyRecord(vendor=vendor, publickey=r[10], name=r[0], limited=bool(r[1]),
                          added=Position(r[2], r[3]), added_by=r[4],
                          added_emergency=bool(r[5]), revoked=_pos(r[6], r[7]),
                          revoked_by=r[8], revoked_emergency=bool(r[9])) for r in rows]

    def update(self, key: UpdateKey) -> UpdateRecord | None:
        row = self.conn.execute(
            f"SELECT {_UPDATE_COLS} FROM updates WHERE vendor = ? AND name = ? "  # noqa: S608
            "AND version_key = ?", (key.vendor, key.name, key.version_key)).fetchone()
        return None if row is None else _update_record(row)

    def op_sig_index(self, op_sig: str) -> int | None:
        row = self.conn.execute("SELECT idx FROM op_sigs WHERE op_sig = ?",
                                (op_sig,)).fetchone()
        return None if row is None else int(row[0])

    # -- judging and applying (what ReleaseState.ingest does, on rows)
    def ingest(self, entry: ChainEntry) -> Verdict:
        verdict = judge(self, entry, server_key=self.server_key)
        if isinstance(verdict, Accepted):
            for effect in verdict.effects:
                self._apply(effect)
        elif isinstance(verdict, Violation):
            self.conn.execute("INSERT INTO rejected VALUES (?, ?, ?, ?)",
                              (entry.index, entry.currhash, verdict.code, verdict.message))
        elif isinstance(verdict, Skipped):
            skipped = self.skipped()
            skipped[verdict.kind] = skipped.get(verdict.kind, 0) + 1
        return verdict

    def _apply(self, effect: Effect) -> None:
        ex = self.conn.execute
        if isinstance(effect, EnableEffect):
            self.set_meta("ledger", {"at": [effect.at.index, effect.at.currhash],
                                     "now": effect.now, "core-vendor": effect.core_vendor,
                                     "core-key": effect.core_key})
            self._ledger_loaded = False
        elif isinstance(effect, AddKeyEffect):
            ex("INSERT INTO keys (vendor, publickey, name, limited, added_index, "
               "added_currhash, added_by, added_emergency) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (effect.vendor, effect.publickey, effect.name, int(effect.limited),
                effect.at.index, effect.at.currhash, effect.signer, int(effect.emergency)))
            self._emergency(effect.emergency, effect.at, OP_ADD_KEY, effect.vendor,
                            effect.signer)
        elif isinstance(effect, RevokeKeyEffect):
            ex("UPDATE keys SET revoked_index = ?, revoked_currhash = ?, revoked_by = ?, "
               "revoked_emergency = ? WHERE vendor = ? AND publickey = ?",
               (effect.at.index, effect.at.currhash, effect.signer, int(effect.emergency),
                effect.vendor, effect.publickey))
            self._emergency(effect.emergency, effect.at, OP_REVOKE_KEY, effect.vendor,
                            effect.signer)
        elif isinstance(effect, AddUpdateEffect):
            ex(f"INSERT INTO updates ({_UPDATE_COLS}) VALUES "  # noqa: S608
               "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, 0)",
               (effect.vendor, effect.name, effect.version, effect.version_key,
                effect.at.index, effect.at.currhash, effect.body, effect.op_sig,
                effect.signer, int(effect.emergency)))
            self._emergency(effect.emergency, effect.at, OP_UPDATE, effect.vendor,
                            effect.signer)
        elif isinstance(effect, RevokeUpdateEffect):
            ex("UPDATE updates SET revoked_index = ?, revoked_currhash = ?, revoked_by = ?, "
               "revoke_reason = ?, revoked_emergency = ? WHERE vendor = ? AND name = ? AND "
               "version_key = ?", (effect.at.index, effect.at.currhash, effect.signer,
                                   effect.reason, int(effect.emergency), effect.vendor,
                                   effect.name, effect.version_key))
            self._emergency(effect.emergency, effect.at, OP_REVOKE_UPDATE, effect.vendor,
                            effect.signer)
        elif isinstance(effect, AttestationEffect):
            ex("INSERT INTO attestations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (effect.at.index, effect.at.currhash, effect.vendor, effect.name,
                effect.version, effect.version_key, effect.attestor, effect.attestation,
                effect.details, effect.signer))
        else:
            assert isinstance(effect, MarkOpSigEffect)
            ex("INSERT INTO op_sigs VALUES (?, ?)", (effect.op_sig, effect.at.index))

    def _emergency(self, emergency: bool, at: Position, op: str, vendor: str,
                   signer: str) -> None:
        if emergency:
            self.conn.execute("INSERT INTO emergency VALUES (?, ?, ?, ?, ?)",
                              (at.index, at.currhash, op, vendor, signer))

    # -- queries
    def skipped(self) -> dict[str, int]:
        if self._skipped is None:
            self._skipped = dict(self.get_meta("skipped") or {})
        return self._skipped

    def vendors(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT vendor FROM keys ORDER BY vendor")]

    def count(self, table: str) -> int:
        if table not in ("keys", "updates", "attestations", "emergency", "rejected"):
            raise ValueError(table)
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608

    def releases_of(self, vendor: str, name: str) -> int:
        return int(self.conn.execute("SELECT count(*) FROM updates WHERE vendor = ? AND "
                                     "name = ?", (vendor, name)).fetchone()[0])

    # -- unjudged entries
    def set_pending(self, entries: list[ChainEntry]) -> None:
        self.conn.execute("DELETE FROM pending")
        self.conn.executemany("INSERT INTO pending VALUES (?, ?, ?, ?, ?)", [
            (e.index, e.currhash, e.created, e.publickey, e.contents) for e in entries])

    def pending(self) -> Iterator[ChainEntry]:
        for r in self.conn.execute("SELECT idx, currhash, created, publickey, contents FROM "
                                   "pending ORDER BY idx").fetchall():
            yield ChainEntry(index=r[0], currhash=r[1], created=r[2], publickey=r[3],
                             contents=bytes(r[4]))

    # -- the in-memory state, for comparison with replay()
    def to_state(self) -> ReleaseState:
        """The same state as a :class:`ReleaseState` (its canonical JSON is comparable)."""
        ex = self.conn.execute
        keys: dict[str, list[KeyRecord]] = {}
        for vendor in self.vendors():
            keys[vendor] = list(self.vendor_keys(vendor))
        updates = {u.key: u for u in (_update_record(r) for r in ex(
            f"SELECT {_UPDATE_COLS} FROM updates ORDER BY at_index"))}  # noqa: S608
        attestations = [AttestationEffect(at=Position(r[0], r[1]), vendor=r[2], name=r[3],
                                          version=r[4], version_key=r[5], attestor=r[6],
                                          attestation=r[7], details=r[8], signer=r[9])
                        for r in ex("SELECT * FROM attestations ORDER BY at_index")]
        emergency = [EmergencyAction(at=Position(r[0], r[1]), op=r[2], vendor=r[3],
                                     signer=r[4])
                     for r in ex("SELECT * FROM emergency ORDER BY at_index")]
        rejected = [Rejection(at=Position(r[0], r[1]), code=r[2], message=r[3])
                    for r in ex("SELECT * FROM rejected ORDER BY at_index")]
        op_sigs = {r[0]: int(r[1]) for r in ex("SELECT op_sig, idx FROM op_sigs")}
        return ReleaseState(server_key=self.server_key, _ledger=self.ledger(), _keys=keys,
                            _updates=updates, _attestations=attestations, _op_sigs=op_sigs,
                            _emergency=emergency, _skipped=dict(self.skipped()),
                            _rejected=rejected)


def _update_record(r: Sequence[Any]) -> UpdateRecord:
    parsed = parse_body(OP_UPDATE, r[6])
    assert isinstance(parsed, Update)
    return UpdateRecord(at=Position(r[4], r[5]), vendor=r[0], name=r[1], version=r[2],
                        version_key=r[3], metadata=parsed.metadata, body=r[6], op_sig=r[7],
                        signer=r[8], emergency=bool(r[9]), revoked=_pos(r[10], r[11]),
                        revoked_by=r[12], revoke_reason=r[13],
                        revoked_emergency=bool(r[14]))
